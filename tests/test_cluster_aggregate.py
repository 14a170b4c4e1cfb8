"""Cluster mode with aggregations, through real processes and the real Tansu broker: a
partition a new shard takes from its peer (``pdump``) arrives with its window states, so the new
shard serves the aggregates of events it never read from the topic itself (without them it
would serve the plain values and no aggregate)."""
from __future__ import annotations

import sys
import time

import orjson

from common import protocol as P
from common.murmur2 import partition_of
from tests.cluster_support import KafkaCluster
from ingest.producer import Producer
from tests.support import Proc, free_port, poll_for, quote, request, zmq_call

PARTITIONS = 4
CONFIG = """
[[aggregations]]
feature = "clicks"
functions = ["count", "sum", "last_2"]
windows = ["1h", "24h"]
"""
MIN = 60


def test_a_partition_taken_from_a_peer_carries_its_windows(broker, tmp_path):
    config = tmp_path / "store.toml"
    config.write_text(CONFIG)
    c = KafkaCluster(broker, tmp_path, PARTITIONS, config_file=config)
    try:
        for name in ("a0", "b0"):  # two replica sets: b0 holds every partition while a's change
            c.start_shard(name)
        c.start_frontend()
        now = time.time()
        events = {f"u{i}": [(now - (3 + 7 * k) * MIN, i + k) for k in range(3)] for i in range(12)}
        for eid, evs in events.items():
            for ts, value in evs:
                body = {"entity_id": eid, "features": {"clicks": value}, "event_timestamp": ts}
                assert request("POST", c.url + "/features", body)[0] == 200
        want = {eid: {"clicks_count_1h": 3, "clicks_sum_24h": sum(v for _, v in evs),
                      "clicks_last_2_1h": [v for _, v in sorted(evs)[-2:]]} for eid, evs in events.items()}

        def aggregates(body: bytes) -> dict:
            return {k: v for k, v in orjson.loads(body)["features"].items() if k.startswith("clicks_")}

        for eid in events:  # served
            status, _, body = request("GET", f"{c.url}/features/{quote(eid)}")
            assert status == 200 and {k: body["features"][k] for k in want[eid]} == want[eid], body
        poll_for(lambda: all(up for _, up in c.held("b0").values()), 10, what="b0 to serve")
        c.start_shard("a1")  # Kafka gives it some of a0's partitions; it fills them from a peer
        def copied() -> list[int]:  # the partitions a1 serves from a peer's copy, not rebuilt from the topic
            sources = c.stats("a1")["bootstrapped_from"]
            return [p for p, (_, up) in c.held("a1").items() if up and sources.get(str(p), "").startswith("peer ")]

        poll_for(copied, 30, what="a1 to serve a partition copied from a peer")
        mine = [eid for eid in events if partition_of(eid, PARTITIONS) in copied()]
        assert mine, c.stats("a1")["bootstrapped_from"]
        for eid in mine:  # straight from a1
            reply = zmq_call(c.endpoints["a1"], [P.get(eid, req_id=1)], 2000)[0]
            assert P.is_ok(reply), reply
            got = aggregates(reply[P.BODY])
            assert {k: got.get(k) for k in want[eid]} == want[eid], (eid, got)
    finally:
        c.stop()


def test_a_resent_event_id_counts_once_on_every_replica(broker, tmp_path):
    """An HTTP write's ``event_id`` travels in its Kafka record, so every owner of the partition
    counts a resend once, as an embedded shard does; a write without an id counts each time."""
    config = tmp_path / "store.toml"
    config.write_text(CONFIG)
    c = KafkaCluster(broker, tmp_path, PARTITIONS, config_file=config)
    try:
        for name in ("a0", "b0"):  # two replica sets: each holds every partition
            c.start_shard(name)
        c.start_frontend()
        ts = time.time() - 5 * MIN
        with_id = {"entity_id": "r1", "features": {"clicks": 2}, "event_timestamp": ts, "event_id": "click-1"}
        without = {"entity_id": "r2", "features": {"clicks": 2}, "event_timestamp": ts}
        for _ in range(3):  # a client retrying what it thinks was lost
            for body in (with_id, without):
                assert request("POST", c.url + "/features", body)[0] == 200
        endpoint = f"tcp://127.0.0.1:{free_port()}"  # the same through ingest's ZeroMQ source
        ingest = Proc([sys.executable, "-m", "ingest"], c.env(ingest_endpoint=endpoint), tmp_path / "ingest.log")
        c.others.append(ingest)
        with Producer(endpoint, timeout_s=30) as producer:
            for _ in range(3):
                producer.send([{**with_id, "entity_id": "i1"}, {**without, "entity_id": "i2"}])
            producer.flush()
        for name in ("a0", "b0"):
            poll_for(lambda: all(up for _, up in c.held(name).values()), 10, what=f"{name} to serve")
            for eid, count in (("r1", 1), ("r2", 3), ("i1", 1), ("i2", 3)):
                def counted():
                    reply = zmq_call(c.endpoints[name], [P.get(eid, req_id=1)], 2000)[0]
                    feats = orjson.loads(reply[P.BODY])["features"] if P.is_ok(reply) else {}
                    return feats.get("clicks_count_1h") == count and feats
                feats = poll_for(counted, 10, what=f"{name} to count {eid} {count} times")
                assert feats["clicks_sum_24h"] == 2 * count, (name, eid, feats)
    finally:
        c.stop()
