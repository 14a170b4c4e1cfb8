"""Faults: garbage on a shard's socket, a shard killed and restarted, front-end processes."""
import os
import signal
import socket
import time

import pytest
import zmq

from common import protocol as P
from common.link import connect_dealer
from common.partition import Partitioner
from tests.support import Cluster, Honcho, base_env, free_port, poll_for, request, zmq_call


def ids_on_each_shard(n_shards=2, count=5):
    p = Partitioner(n_shards)
    out = {s: [] for s in range(n_shards)}
    i = 0
    while any(len(v) < count for v in out.values()):
        eid = f"fault-{i}"
        if len(out[p.shard_for(eid)]) < count:
            out[p.shard_for(eid)].append(eid)
        i += 1
    return out


def test_garbage_frames_never_stop_a_shard(tmp_path):
    with Cluster(tmp_path) as c:
        endpoint = c.endpoints[0]
        ctx = zmq.Context.instance()
        dealer = connect_dealer(ctx, endpoint, immediate=False)
        garbage = [[b"\xc1\xc1"], [b""], [b"a", b"b", b"c"], [P.encode([1, "x", None])],
                   [P.encode(P.ping())], [os.urandom(4096)], [P.encode([P.get(5, req_id=1)])]]
        for frames in garbage:
            dealer.send_multipart(frames)
        dealer.send(P.encode([P.ping(99)]))  # one connection keeps order: answered last

        def pong():
            assert dealer.poll(2000), "the shard stopped answering"
            return any(type(r) is dict and r.get(P.ID) == 99 and r.get(P.OK) for r in P.decode(dealer.recv()))

        poll_for(pong, 10, interval=0, what="the ping after the garbage")
        dealer.close()
        # a raw TCP peer that does not speak ZMTP at all
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2) as raw:
            raw.sendall(os.urandom(1000))
        (reply,) = zmq_call(endpoint, [P.ping(100)])
        assert reply[P.OK] and reply[P.ID] == 100
        assert request("POST", c.url + "/features", {"entity_id": "after", "name": "x", "value": 1})[0] == 200
        assert request("GET", c.url + "/readyz")[0] == 200
        assert c.shards[0].alive()
        poll_for(lambda: "dropped" in c.shards[0].output(), 5, what="the shard's log of dropped messages")


def test_a_killed_shard_gives_503_in_time_and_recovers_without_a_front_end_restart(tmp_path):
    with Cluster(tmp_path, shard_timeout_s=0.5) as c:
        ids = ids_on_each_shard()
        for shard, eids in ids.items():
            body = [{"entity_id": e, "name": "x", "value": shard} for e in eids]
            assert request("POST", c.url + "/features", body)[0] == 200
        c.shards[1].kill()
        for eid in ids[1]:
            started = time.monotonic()
            status, headers, body = request("GET", c.url + f"/features/{eid}")
            elapsed = time.monotonic() - started
            assert status == 503 and headers.get("Retry-After") == "1" and "shard 1" in body["detail"]
            assert elapsed < 0.5 + 1.0  # bounded by the timeout (plus the sweep and a loaded machine)
        for eid in ids[0]:
            assert request("GET", c.url + f"/features/{eid}")[2]["features"] == {"x": 0}
        status, _, body = request("GET", c.url + "/readyz")
        assert status == 503 and body["detail"] == "shards not ready: 1"
        status, _, body = request("POST", c.url + "/features", {"entity_id": ids[1][0], "name": "x", "value": 5})
        assert status == 503
        front_pid = c.frontend.pid

        c.start_shard(1)
        poll_for(lambda: request("GET", c.url + "/readyz")[0] == 200, 10, what="readyz after restart")
        assert request("POST", c.url + "/features", {"entity_id": ids[1][0], "name": "x", "value": 7})[0] == 200
        assert request("GET", c.url + f"/features/{ids[1][0]}")[2]["features"] == {"x": 7}
        assert c.frontend.pid == front_pid and c.frontend.alive()


def test_two_front_end_processes_share_the_port_and_one_that_dies_is_replaced(tmp_path):
    with Cluster(tmp_path, frontend_processes=2) as c:
        pids = set()

        def both_seen():
            pids.add(request("GET", c.url + "/healthz")[2]["pid"])
            return len(pids) == 2

        poll_for(both_seen, 20, interval=0, what="both front-end processes answering")
        assert c.frontend.pid not in pids
        os.kill(pids.pop(), signal.SIGKILL)
        survivors = set(pids)

        def replaced():
            pid = request("GET", c.url + "/healthz")[2]["pid"]
            return pid not in survivors and pid

        poll_for(replaced, 20, interval=0, what="a replacement front-end process")
    assert c.frontend.popen.returncode == 0


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free (the Procfile's two shards bind base + i)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise AssertionError("no two consecutive free ports")


def test_honcho_starts_the_procfile_and_ctrl_c_stops_every_process(tmp_path):
    pytest.importorskip("honcho")
    http_port, base = free_port(), two_free_ports()
    env = base_env(http_port=http_port, shard_base_port=base, ingest_endpoint=f"tcp://127.0.0.1:{free_port()}",
                   ingest_stats_endpoint=f"tcp://127.0.0.1:{free_port()}",
                   dead_letter_path=str(tmp_path / "dead.jsonl"))
    honcho = Honcho([], env)
    try:
        url = f"http://127.0.0.1:{http_port}"
        poll_for(lambda: request("GET", url + "/readyz")[0] == 200, 30, what="the Procfile cluster")
        assert request("POST", url + "/features", {"entity_id": "h", "name": "x", "value": 1})[0] == 200
        assert request("GET", url + "/features/h/x")[2]["value"] == 1
        text = honcho.interrupt()
    finally:
        honcho.kill()
    assert honcho.returncode in (0, 130), text  # honcho exits 130 after a Ctrl-C
    for line in ("shard 0 stopped", "shard 1 stopped", "front end stopped", "ingest.1 stopped"):
        assert line in text, text
    for port in (http_port, base, base + 1):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # fails if any process of the cluster still holds it
