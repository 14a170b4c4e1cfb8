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


# ---- property-based: random frames, random msgpack, wrong types, deep structures
import time  # noqa: E402

import msgpack  # noqa: E402
import zmq  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FIELDS = ["t", "id", "e", "es", "f", "n", "w", "json", "ev"]
KINDS = ["ping", "get", "get1", "mget", "fget", "write", "del", "stats", "events", "nope"]

_keys = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8)
_leaves = _keys | st.floats() | st.text(max_size=40)
values = st.recursive(_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
                      max_leaves=12)


def _deep(depth: int, inner: bytes = b"\x01") -> bytes:
    """msgpack bytes of ``depth`` nested one-item arrays around ``inner``."""
    return b"\x91" * depth + inner


@st.composite
def requests(draw):
    """A request map with a real or random type and random or deep fields, as msgpack bytes."""
    fields = {"t": draw(st.sampled_from(KINDS) | values), "id": draw(st.integers(0, 2**32) | values)}
    for name in draw(st.lists(st.sampled_from(FIELDS[2:]), max_size=4, unique=True)):
        fields[name] = draw(values)
    body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in fields.items())
    deep = draw(st.sampled_from([None, "t", "id", "e", "w", "ev"]))
    count = len(fields)
    if deep is not None:  # a field (or the type, or the id) nested deeper than any encoder allows
        fields.pop(deep, None)
        body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in fields.items())
        body += msgpack.packb(deep) + _deep(draw(st.integers(100, 3000)))
        count = len(fields) + 1
    return (b"\xde" + count.to_bytes(2, "big") + body), fields.get("id")


@st.composite
def frames(draw):
    """A frame: random bytes, random msgpack, or an array of (possibly hostile) requests.
    Returns the bytes and, for an array, the ids a reply must echo (None: any id)."""
    kind = draw(st.sampled_from(["bytes", "msgpack", "requests", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), None
    if kind == "msgpack":
        return msgpack.packb(draw(values)), None
    if kind == "deep":
        return _deep(draw(st.integers(100, 5000)), msgpack.packb([{"t": "ping", "id": 1}])), None
    reqs = draw(st.lists(requests(), min_size=1, max_size=6))
    return b"\xdc" + len(reqs).to_bytes(2, "big") + b"".join(r for r, _ in reqs), [i for _, i in reqs]


def _expected_replies(frame: bytes) -> tuple[int, bool]:
    """How many replies a frame must get: one per item of an array, else one (malformed); and
    whether it is an array (its replies then echo the requests' ids)."""
    try:
        decoded = msgpack.unpackb(frame, raw=False)
    except Exception:
        return 1, False
    return (len(decoded), True) if type(decoded) is list else (1, False)


class Dealer:
    """One DEALER kept across examples (a socket per example would be slow)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def replies(self, frame: bytes, expected: int, timeout_s: float = 5.0) -> list:
        """Send ``frame`` and collect ``expected`` replies (across frames); fail on a deadline."""
        self.sock.send(frame)
        got: list = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000) + 1), f"{len(got)} of {expected} replies"
            got.extend(P.decode(self.sock.recv()))
        return got


@pytest.fixture(scope="module")
def shard_dealer(cluster):
    d = Dealer(cluster.endpoints[0])
    yield d
    d.sock.close()


@pytest.fixture(scope="module")
def ingest_dealer(cluster):
    d = Dealer(cluster.ingest_endpoint)
    yield d
    d.sock.close()


def _check_replies(replies: list, expected: int, ids) -> None:
    assert len(replies) == expected
    for reply in replies:
        assert type(reply) is dict and "ok" in reply
        if not reply["ok"]:
            assert reply.get("code") in {P.BAD_REQUEST, P.UNKNOWN_TYPE, P.MALFORMED, P.NOT_FOUND}, reply
    if ids is not None:
        for reply, req_id in zip(replies, ids):
            if type(req_id) is int:
                assert reply.get("id") == req_id


@FUZZ
@given(frames())
def test_the_shard_answers_every_request_of_any_frame(cluster, shard_dealer, frame):
    data, ids = frame
    expected, is_array = _expected_replies(data)
    _check_replies(shard_dealer.replies(data, expected), expected, ids if is_array else None)
    assert cluster.shards[0].alive(), cluster.shards[0].output()[-3000:]


@FUZZ
@given(frames())
def test_ingest_answers_every_request_of_any_frame(cluster, ingest_dealer, frame):
    data, _ = frame
    expected, _ = _expected_replies(data)
    replies = ingest_dealer.replies(data, expected)
    assert len(replies) == expected
    for reply in replies:
        assert type(reply) is dict and "ok" in reply
    assert cluster.ingest.alive(), cluster.ingest.output()[-3000:]


PATHS = ["/features", "/features/batch", "/features/{s}", "/features/{s}/{s}", "/get-online-features", "/push",
         "/write-to-online-store", "/health", "/healthz", "/readyz", "/stats", "/metrics", "/openapi.json", "/{s}"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                       max_size=5), max_leaves=15)


@st.composite
def http_requests(draw):
    import json
    import urllib.parse

    path = draw(st.sampled_from(PATHS))
    while "{s}" in path:
        path = path.replace("{s}", urllib.parse.quote(draw(st.text(min_size=1, max_size=20)), safe=""), 1)
    kind = draw(st.sampled_from(["json", "bytes", "deep", "shaped", "none"]))
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=100))
    elif kind == "deep":
        depth = draw(st.integers(100, 1100))
        body = b"[" * depth + draw(st.sampled_from([b"1", b"1234567890123456789", b'{"a":1}'])) + b"]" * depth
    elif kind == "shaped":  # the right field names with wrong types
        names = ["entity_id", "name", "value", "features", "event_timestamp", "entity_ids", "entities",
                 "feature_service", "feature_view_name", "df", "push_source_name", "full_feature_names"]
        body = json.dumps(draw(st.dictionaries(st.sampled_from(names), json_values, max_size=4))).encode()
    else:
        body = None
    return draw(st.sampled_from(METHODS)), path, body


@FUZZ
@given(http_requests())
def test_no_http_request_gets_a_5xx(cluster, req):
    method, path, body = req
    status, _, answer = request(method, cluster.url + path, body)
    assert status < 500 or path in ("/readyz", "/health") and status == 503, (method, path, body, status, answer)
