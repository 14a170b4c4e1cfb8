"""The ZeroMQ source end to end: producer -> ingest -> shards -> HTTP reads, acks and /stats."""
from __future__ import annotations

import orjson
import pytest
import zmq

from common import protocol as P
from common.link import connect_dealer
from ingest.producer import Producer
from tests.ingest_support import INGEST_LIMITS, assert_store_matches, dead_letters, free_port, make_stream
from tests.support import Cluster, poll_for, request, zmq_call


MAX_REQUEST = 200_000  # FS_MAX_BODY_BYTES of the ingest under test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ingest-zmq")
    stats = f"tcp://127.0.0.1:{free_port()}"
    with Cluster(tmp, ingest_stats_endpoint=stats) as c:
        c.ingest_endpoint = f"tcp://127.0.0.1:{free_port()}"
        c.dead = tmp / "dead.jsonl"
        c.ingest = c.start_process(["-m", "ingest"], "ingest", ingest_endpoint=c.ingest_endpoint,
                                   dead_letter_path=c.dead, ingest_ack_timeout_s=0.5,
                                   ingest_retry_max_s=0.2, max_body_bytes=MAX_REQUEST, **INGEST_LIMITS)
        poll_for(lambda: zmq_call(c.ingest_endpoint, [P.ping(1)], 200)[0][P.OK], 15,
                 what="ingest to answer a ping")
        yield c


def test_json_and_msgpack_requests_are_applied_and_acknowledged(cluster):
    stream = make_stream("zmq", 2000, seed=4, entities=150, bad_every=50)
    with Producer(cluster.ingest_endpoint, window=4, timeout_s=20) as producer:
        for start in range(0, len(stream.lines), 100):
            chunk = stream.lines[start:start + 100]
            if (start // 100) % 2:
                producer.send(b"\n".join(chunk))  # JSON lines
            else:  # msgpack maps; a line that is not JSON goes as a string, which is rejected
                events = []
                for line in chunk:
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        obj = line.decode()
                    events.extend(obj if type(obj) is list and obj and type(obj[0]) is dict else [obj])
                producer.send(events)
        totals = producer.flush()
    assert totals["requests"] == 20
    assert totals[P.REJECTED] == len(stream.bad)
    assert totals[P.WRITTEN] + totals[P.STALE] == stream.good_values
    assert any("entity_id is required" in e for e in totals["errors"])
    # the ack comes after the shards applied: the store is already right, no waiting
    assert_store_matches(cluster.url, stream.oracle(), stream.entities | {"zmq:big", "zmq:huge"}, timeout=0)
    letters = [d for d in dead_letters(cluster.dead) if d["source"].startswith("zmq:")]
    assert len(letters) >= len(stream.bad)
    assert {"reason", "source", "time"} <= letters[0].keys()


def test_front_end_stats_include_ingest(cluster):
    def counted():
        status, _, body = request("GET", cluster.url + "/stats")
        assert status == 200
        return body["ingest"] if body["ingest"].get("events", 0) > 0 else None

    ingest = poll_for(counted, 10, what="ingest counters in /stats")
    assert ingest["source"] == "zmq"
    assert {"applied", "stale", "rejected", "lag", "events_per_s", "in_flight"} <= ingest.keys()
    assert ingest["applied"] > 0


def test_malformed_requests_get_error_replies(cluster):
    replies = zmq_call(cluster.ingest_endpoint, [{P.TYPE: P.EVENTS, P.ID: 5}, {P.TYPE: "nope", P.ID: 6}])
    assert [(r[P.ID], r[P.CODE]) for r in replies] == [(5, P.BAD_REQUEST)]
    sock = connect_dealer(zmq.Context.instance(), cluster.ingest_endpoint, immediate=False)
    try:
        sock.send(b"\xc1garbage")
        assert sock.poll(2000)
        assert P.decode(sock.recv())[0][P.CODE] == P.MALFORMED
    finally:
        sock.close()
    assert cluster.ingest.alive()


def test_an_over_size_request_is_refused_and_dead_lettered_and_the_others_go_on(cluster):
    big = b"\n".join(orjson.dumps({"entity_id": f"big{i}", "name": "x", "value": "v" * 900}) for i in range(300))
    assert len(big) > MAX_REQUEST
    with Producer(cluster.ingest_endpoint, window=4, timeout_s=20) as producer:
        producer.send(b'{"entity_id": "before-big", "name": "x", "value": 1}')
        producer.send(big)
        producer.send(b'{"entity_id": "after-big", "name": "x", "value": 2}')
        totals = producer.flush()
    assert (totals["requests"], totals[P.WRITTEN], totals[P.REJECTED]) == (3, 2, 1)
    assert any(f"request is larger than {MAX_REQUEST} bytes" in e for e in totals["errors"])
    assert request("GET", cluster.url + "/features/before-big/x")[2]["value"] == 1
    assert request("GET", cluster.url + "/features/after-big/x")[2]["value"] == 2
    assert request("GET", cluster.url + "/features/big0")[0] == 404
    poll_for(lambda: any("request is larger than" in d["reason"] for d in dead_letters(cluster.dead)), 10,
             what="the over-size request in the dead-letter file")
    assert cluster.ingest.alive()


def test_acks_wait_for_a_shard_that_is_down(cluster):
    """Nothing is acknowledged before the shards applied it: with shard 0 down the producer gets
    no ack, ingest keeps retrying, and once the shard is back everything is there."""
    stream = make_stream("zdown", 600, seed=5, entities=80)
    retries = cluster.ingest.output().count("resending")
    cluster.shards[0].kill()
    try:
        producer = Producer(cluster.ingest_endpoint, window=8, timeout_s=30)
        for start in range(0, len(stream.lines), 100):
            producer.send(b"\n".join(stream.lines[start:start + 100]))
        poll_for(lambda: cluster.ingest.output().count("resending") > retries, 15, what="ingest to retry shard 0")
        producer._receive(0.2)
        assert len(producer.pending) == 6  # no request was acknowledged
    finally:
        cluster.start_shard(0)  # memory only: it comes back empty
    totals = producer.flush()
    producer.close()
    assert totals[P.WRITTEN] + totals[P.STALE] == stream.good_values
    assert_store_matches(cluster.url, stream.oracle(), stream.entities, timeout=0)


def test_a_shard_that_restarts_gets_the_older_batch_first(cluster, tmp_path):
    """A batch lost with a shard that dies is sent again before any newer one reaches the
    restarted shard: two writes with the same event time keep their stream order."""
    from common.partition import Partitioner

    eid = next(f"restart:{i}" for i in range(100) if Partitioner(2).shard_for(f"restart:{i}") == 1)
    endpoint, stats = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cluster.shards[1].kill()
    fake = zmq.Context.instance().socket(zmq.ROUTER)  # takes the write and never answers
    fake.setsockopt(zmq.LINGER, 0)
    fake.bind(cluster.endpoints[1])
    ingest = cluster.start_process(["-m", "ingest"], "ingest-restart", ingest_endpoint=endpoint,
                                   ingest_stats_endpoint=stats, dead_letter_path=tmp_path / "dead.jsonl",
                                   ingest_ack_timeout_s=60)  # only the lost connection may resend
    event = {"entity_id": eid, "name": "f", "event_timestamp": "2026-01-01T00:00:00Z"}
    producer = Producer(endpoint, timeout_s=30)
    try:
        producer.send([{**event, "value": "older"}])

        def write_arrived():  # answer pings, swallow the write
            while fake.poll(0):
                ident, frame = fake.recv_multipart()
                reqs = P.decode(frame)
                if any(r[P.TYPE] == P.WRITE for r in reqs):
                    return True
                fake.send_multipart([ident, P.encode([P.ping_reply(P.id_of(r), shard=1) for r in reqs])])
            return False

        poll_for(write_arrived, 15, what="the write to reach the shard's endpoint")
        fake.close()  # the shard dies with the batch unanswered
        cluster.start_shard(1)
        poll_for(lambda: 1 in zmq_call(stats, [P.stats(1)])[0]["shards_connected"], 15,
                 what="ingest to connect to the restarted shard")
        producer.send([{**event, "value": "newer"}])
        totals = producer.flush()
    finally:
        producer.close()
        ingest.stop()
    assert totals[P.WRITTEN] == 2
    # the front end may not have reconnected to the restarted shard yet (503 until it has)
    status, _, body = poll_for(lambda: (r := request("GET", f"{cluster.url}/features/{eid}/f"))[0] != 503 and r,
                               10, what="the front end to reach the restarted shard")
    assert (status, body.get("value")) == (200, "newer"), ingest.output()
