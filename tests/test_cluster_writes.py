"""Cluster-mode writes when something is slow: 202 when Kafka has the write but no owner applied
it in time (the value arrives later), 503 when Kafka does not acknowledge it."""
from __future__ import annotations

import signal

from tests.cluster_support import KafkaCluster
from tests.ingest_support import Broker
from tests.support import poll_for, request, stopped


def test_a_write_no_owner_applies_in_time_gets_202_and_lands_later(broker, tmp_path):
    c = KafkaCluster(broker, tmp_path, partitions=2, cluster_apply_timeout_s=0.5)
    try:
        c.start_shard("a0")
        c.start_frontend()
        c.shards["a0"].signal(signal.SIGSTOP)  # the only owner stops applying (and answering)
        try:
            status, _, body = request("POST", c.url + "/features", {"entity_id": "late", "name": "x", "value": 1})
            assert status == 202, body
            assert "durable in Kafka" in body["detail"] and "within 0.5 s" in body["detail"], body
        finally:
            c.shards["a0"].signal(signal.SIGCONT)
        poll_for(lambda: request("GET", c.url + "/features/late/x")[2].get("value") == 1, 15,
                 what="the 202 write to be applied")
    finally:
        c.stop()


def test_a_write_kafka_does_not_acknowledge_gets_503(tmp_path):
    own = Broker(tmp_path)  # this test stops its broker
    c = KafkaCluster(own, tmp_path, partitions=2, cluster_apply_timeout_s=1.0)
    try:
        c.start_shard("a0")
        c.start_frontend()
        assert request("POST", c.url + "/features", {"entity_id": "ok", "name": "x", "value": 1})[0] == 200
        own.proc.signal(signal.SIGSTOP)
        try:
            poll_for(lambda: stopped(own.proc.pid), 5, what="every thread of the broker to stop")
            status, headers, body = request("POST", c.url + "/features", {"entity_id": "lost", "name": "x", "value": 2})
            read = request("GET", c.url + "/features/ok/x")  # reads never touch Kafka
        finally:
            own.proc.signal(signal.SIGCONT)
        assert status == 503 and "Kafka did not acknowledge" in body["detail"], (status, body)
        assert headers["Retry-After"]
        assert read[0] == 200 and read[2]["value"] == 1, read
    finally:
        c.stop()
        own.stop()


def test_a_listener_is_told_apart_from_another_processs():
    """What the readiness checks rely on: a port that another process took is not ours."""
    import os
    import socket
    import subprocess
    import sys

    from tests.support import free_port, owns_listener

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert owns_listener(os.getpid(), port) is True
            assert owns_listener(other.pid, port) is False
        finally:
            other.kill()
            other.wait()
    assert owns_listener(os.getpid(), free_port()) is None
