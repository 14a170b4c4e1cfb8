"""Hostile input over real sockets: no document, frame or event kills a process or gets a 5xx.

One cluster (2 shards, a front end, ingest on ZeroMQ) serves every test of the module; each test
ends by checking that every process is still alive.
"""
from __future__ import annotations

import pytest

from common import protocol as P
from ingest.producer import Producer
from tests.ingest_support import dead_letters, free_port
from tests.support import Cluster, poll_for, request, zmq_call

DEEP = 1000  # deeper than the stdlib JSON parser recurses, within orjson's 1024
LONG = b"1234567890123456789"  # 19 digits: loads_json re-parses such a document exactly

CONFIG = """
[views.driver_hourly_stats]
join_keys = ["driver_id"]
push_source = "driver_push"
"""

POSTS = ["/features", "/features/batch", "/get-online-features", "/push", "/write-to-online-store"]


def deep_documents() -> list[bytes]:
    """Documents nested about 1,000 levels, bare or where a field's value belongs."""
    lists = b"[" * DEEP + LONG + b"]" * DEEP
    maps = b'{"a":' * DEEP + LONG + b"}" * DEEP
    plain = b"[" * DEEP + b"1" + b"]" * DEEP
    fields = [b'{"entity_id":"e","name":"x","value":%s}', b'{"entity_ids":%s}', b'{"features":%s}',
              b'{"entities":{"driver_id":%s},"features":["driver_hourly_stats:x"]}',
              b'{"push_source_name":"driver_push","df":{"driver_id":%s}}',
              b'{"feature_view_name":"driver_hourly_stats","df":{"driver_id":[1],"x":%s}}']
    return [lists, maps, plain] + [f % doc for f in fields for doc in (lists, maps)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "store.toml").write_text(CONFIG)
    with Cluster(tmp, config_file=tmp / "store.toml") as c:
        c.dead = tmp / "dead.jsonl"
        c.ingest_endpoint = f"tcp://127.0.0.1:{free_port()}"
        c.ingest = c.start_process(["-m", "ingest"], "ingest", ingest_endpoint=c.ingest_endpoint,
                                   dead_letter_path=c.dead)
        poll_for(lambda: P.is_ok(zmq_call(c.ingest_endpoint, [P.ping(1)], 200)[0]), 15,
                 what="ingest to answer a ping")
        yield c
        for proc in [c.frontend, *c.shards, c.ingest]:
            assert proc.alive(), proc.output()[-3000:]


def assert_all_alive(cluster) -> None:
    for proc in [cluster.frontend, *cluster.shards, cluster.ingest]:
        assert proc.alive(), proc.output()[-3000:]
    assert request("GET", cluster.url + "/readyz")[0] == 200


@pytest.mark.parametrize("path", POSTS)
def test_deep_documents_are_refused_with_a_4xx_on_every_endpoint(cluster, path):
    for doc in deep_documents():
        status, _, body = request("POST", cluster.url + path, doc)
        assert 400 <= status < 500, (path, doc[:80], status, body)
    assert_all_alive(cluster)


def test_deep_events_are_dead_lettered_and_ingest_lives(cluster):
    lines = deep_documents()[:3] + [b'{"entity_id":"deep-ok","name":"x","value":1}']
    with Producer(cluster.ingest_endpoint, window=2, timeout_s=10) as producer:
        producer.send(b"\n".join(lines))
        deep = [[[[1]]]]
        for _ in range(DEEP // 4):
            deep = [[[[deep]]]]
        producer.send([{"entity_id": "deep-map", "name": "x", "value": deep}])
        totals = producer.flush()
    assert totals["rejected"] == 4 and totals["written"] == 1
    assert_all_alive(cluster)
    assert request("GET", cluster.url + "/features/deep-ok/x")[0] == 200
    reasons = [d["reason"] for d in dead_letters(cluster.dead)]
    assert any("nested too deeply" in r for r in reasons), reasons
