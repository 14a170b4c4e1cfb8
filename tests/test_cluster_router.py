"""Membership view, replica choice and retry, and the write path's Kafka/offset waits, with fakes
(no sockets); the real broker and processes are in tests/test_cluster.py."""
from __future__ import annotations

import asyncio
import gc
import threading
import time

import orjson
import pytest
import zmq

from common import membership as M
from common import protocol as P
from common import config
from common.config import Config, ConfigError
from common.murmur2 import KafkaPartitioner, partition_of
from common.records import records
from frontend import cluster as C
from frontend import cluster_router as R
from frontend import cluster_writes as W
from frontend.shard_client import ShardClient, ShardUnavailable
from tests.fake_zmq import FakeContext


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def publish(view: M.View, replica: str, endpoint: str, parts: dict, heartbeat_s: float = 1.0) -> None:
    key, value = M.encode(M.Member(replica, endpoint, parts, heartbeat_s))
    view.update(key, value)


def test_view_keeps_the_latest_record_per_member_and_expires_silent_ones():
    clock = Clock()
    view = M.View(clock)
    publish(view, "a", "tcp://h:1", {0: (5, True), 1: (0, False)})
    publish(view, "b", "tcp://h:2", {0: (4, True), 1: (9, True)})
    assert view.table(3) == [["tcp://h:1", "tcp://h:2"], ["tcp://h:2"], []]
    assert view.uncovered(3) == [2]
    publish(view, "a", "tcp://h:1", {1: (3, True)})  # a moved on: latest record wins
    assert view.table(2) == [["tcp://h:2"], ["tcp://h:1", "tcp://h:2"]]
    clock.t += 2.5
    publish(view, "a", "tcp://h:1", {1: (3, True)})
    clock.t += 1.0
    assert view.table(2)[0] == ["tcp://h:2"]  # b silent for 3.5 heartbeats, but a only for 1
    publish(view, "a", "tcp://h:1", {1: (3, True)})  # a heard from 3.5 heartbeats after b: b is dead
    assert view.table(2) == [[], ["tcp://h:1"]]
    clock.t += 60  # nothing arrives at all (Kafka is down): the view holds
    assert view.table(2) == [[], ["tcp://h:1"]]
    view.update(b"a@tcp://h:1", None)  # left
    assert view.uncovered(2) == [0, 1]


def test_view_ignores_malformed_and_ancient_records():
    view = M.View()
    view.update(b"x", b"{not json")
    view.update(b"y", orjson.dumps({"replica": "a", "endpoint": "e", "heartbeat_s": 1, "time_ms": 1, "partitions": {}}))
    assert view.members == {}


class FakeClient:
    """``submit`` answers from a table: endpoint index -> reply map or exception."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.sent: list[tuple[int, dict, float | None]] = []

    def submit(self, index: int, request: dict, timeout_s: float | None = None):
        self.sent.append((index, request, timeout_s))
        fut = asyncio.get_event_loop().create_future()
        answer = self.answers[index]
        answer = answer(request) if callable(answer) else answer
        if isinstance(answer, Exception):
            fut.set_exception(answer)
        else:
            fut.set_result(dict(answer, id=P.id_of(request)))
        return fut


def router_over(owners: dict[str, list[int]], partitions: int = 2, replicas: dict[str, str] | None = None,
                **kwargs) -> R.Router:
    """A router over members (endpoint -> partitions), each its own replica set unless ``replicas``
    names them (endpoint -> set)."""
    view = M.View()
    for i, (endpoint, parts) in enumerate(owners.items()):
        publish(view, (replicas or {}).get(endpoint, f"r{i}"), endpoint, {p: (0, True) for p in parts})
    index = {e: i for i, e in enumerate(owners)}
    return R.Router(view, partitions, index.__getitem__, **kwargs)


def test_spread_by_request_rotates_and_puts_replicas_with_our_write_first():
    router = router_over({"tcp://a": [0, 1], "tcp://b": [0], "tcp://c": [0]}, spread="request")
    firsts = {router.candidates(0)[0] for _ in range(6)}
    assert firsts == {"tcp://a", "tcp://b", "tcp://c"}  # load spreads over replicas
    assert router.candidates(1) == ["tcp://a"]
    router.wrote(0, "tcp://c")
    assert all(router.candidates(0)[0] == "tcp://c" for _ in range(6))
    assert sorted(router.candidates(0)) == ["tcp://a", "tcp://b", "tcp://c"]


EIGHT = {"tcp://a0": [0, 2, 4, 6], "tcp://a1": [1, 3, 5, 7], "tcp://b0": list(range(8))}  # a: 2 shards, b: 1


def test_spread_by_partition_shares_the_partitions_out_evenly_and_keeps_each_on_one_replica():
    sets = {e: e[-2] for e in EIGHT}
    router = router_over(EIGHT, partitions=8, replicas=sets)
    firsts = [router.candidates(p)[0] for p in range(8)]
    assert all(router.candidates(p)[0] == firsts[p] for p in range(8) for _ in range(3))  # no rotation per read
    load = {e: firsts.count(e) for e in EIGHT}
    assert sorted(load.values()) == [2, 3, 3], load  # 8 partitions over 3 shards
    for p in range(8):  # every owner is still a candidate, the preferred one first
        assert sorted(router.candidates(p)) == sorted(e for e, ps in EIGHT.items() if p in ps)
    backwards = router_over(dict(reversed(EIGHT.items())), partitions=8, replicas=sets)  # the records read in another order
    assert [backwards.candidates(p)[0] for p in range(8)] == firsts  # every front end alike
    router.wrote(1, "tcp://a1" if firsts[1] == "tcp://b0" else "tcp://b0")  # our write: read where it was applied
    assert router.candidates(1)[0] != firsts[1]


def test_preferred_owners_are_as_even_as_the_ownership_allows():
    import random

    rng = random.Random(3)
    for _ in range(200):  # 16 partitions, 3 replica sets of 2 shards, each set splitting them at random
        owners = [[] for _ in range(16)]
        for s in "abc":
            for p in range(16):
                owners[p].append(f"tcp://{s}{rng.randrange(2)}")
        best = R.preferred_owners([sorted(o) for o in owners])
        load = {e: best.count(e) for o in owners for e in o}
        assert all(b in o for b, o in zip(best, owners))
        for p, o in enumerate(owners):  # no partition could move to a co-owner and even the loads out
            assert all(load[best[p]] <= load[e] + 1 for e in o), (owners, best)
    assert R.preferred_owners([["x"], [], ["x", "y"]]) == ["x", None, "y"]


def test_spread_by_partition_moves_a_departed_owners_partitions_to_the_others():
    view = M.View()
    for e, ps in EIGHT.items():
        publish(view, e[-2], e, {p: (0, True) for p in ps})
    router = R.Router(view, 8, {e: i for i, e in enumerate(EIGHT)}.__getitem__)
    assert "tcp://b0" in {router.candidates(p)[0] for p in range(8)}
    publish(view, "b", "tcp://b0", {})  # b0 holds nothing now
    firsts = [router.candidates(p)[0] for p in range(8)]
    assert firsts == ["tcp://a0", "tcp://a1"] * 4


def test_reads_leave_the_first_confirmer_once_every_owner_has_our_write():
    view = M.View()
    for e, ps in EIGHT.items():
        publish(view, e[-2], e, {p: (4, True) for p in ps})
    router = R.Router(view, 8, {e: i for i, e in enumerate(EIGHT)}.__getitem__)
    preferred = router.candidates(0)[0]
    other = next(e for e in ("tcp://a0", "tcp://b0") if e != preferred)
    router.wrote(0, other, 10)  # our write (offset 10) is applied by the other owner first
    assert router.candidates(0)[0] == other
    publish(view, preferred[-2], preferred, {p: (11 if p == 0 else 4, True) for p in EIGHT[preferred]})
    assert router.candidates(0)[0] == other  # the other owner's view is still behind our write
    publish(view, other[-2], other, {p: (11 if p == 0 else 4, True) for p in EIGHT[other]})
    assert router.candidates(0)[0] == preferred and 0 not in router.fresh  # both have it: the usual order


def test_routes_are_the_first_candidates_and_follow_the_view_fresh_replicas_and_time():
    async def main():
        loop = asyncio.get_running_loop()
        view = M.View()
        for e, ps in EIGHT.items():
            publish(view, e[-2], e, {p: (4, True) for p in ps})
        links = {e: i for i, e in enumerate(EIGHT)}
        router = R.Router(view, 8, links.__getitem__)
        router.start(loop)
        router.refresh()
        assert not router.stale
        assert [r[1] for r in router.routes] == [router.candidates(p) for p in range(8)]
        assert all(link == links[order[0]] for link, order in router.routes)
        publish(view, "a", "tcp://a0", {})  # a0 gives its partitions up
        router.expire()
        assert router.stale
        router.refresh()
        assert all(order[0] in ("tcp://a1", "tcp://b0") and "tcp://a0" not in order for _, order in router.routes)
        router.wrote(3, "tcp://b0", 10)  # our write: p3's reads ask candidates(), b0 first
        assert router.routes[3] is None and router.candidates(3)[0] == "tcp://b0"
        router.refresh()
        assert router.routes[3] is None  # until every owner has it
        started = loop.time()
        while not router.stale and loop.time() < started + 2.0:  # the timer: liveness is time-based
            await asyncio.sleep(0.01)
        assert router.stale and loop.time() - started < 1.0
        publish(view, "a", "tcp://a1", {p: (11 if p == 3 else 4, True) for p in EIGHT["tcp://a1"]})
        publish(view, "b", "tcp://b0", {p: (11 if p == 3 else 4, True) for p in range(8)})
        router.expire()
        router.refresh()
        assert router.routes[3] is not None and 3 not in router.fresh
    asyncio.run(main())


SETS = {"tcp://a0": "a", "tcp://a1": "a", "tcp://b0": "b"}
OWNERS = {"tcp://a0": [0], "tcp://a1": [1], "tcp://b0": [0, 1]}  # set a: 2 shards, set b: 1


def test_a_read_replica_set_is_read_first_every_time():
    router = router_over(OWNERS, replicas=SETS, read_replica="a")
    for p in (0, 1):
        got = [router.candidates(p) for _ in range(4)]
        assert all(c == got[0] for c in got)  # no rotation per read
        assert SETS[got[0][0]] == "a" and sorted(got[0]) == sorted(e for e, ps in OWNERS.items() if p in ps)


def test_a_named_read_replica_comes_first_and_our_write_still_goes_first():
    router = router_over(OWNERS, replicas=SETS, read_replica="b")
    assert router.candidates(0) == ["tcp://b0", "tcp://a0"]
    router.wrote(0, "tcp://a0")  # only a0 applied our newest write yet: read it there
    assert router.candidates(0) == ["tcp://a0", "tcp://b0"]
    router.confirmed(0, "tcp://b0")
    assert router.candidates(0) == ["tcp://b0", "tcp://a0"]
    absent = router_over(OWNERS, replicas=SETS, read_replica="z")  # a set with no member: the others
    assert sorted(absent.candidates(1)) == ["tcp://a1", "tcp://b0"]


def test_the_read_replica_setting_is_checked():
    base = {"FS_CLUSTER_KAFKA": "127.0.0.1:9092"}
    assert config.load([], environ={**base, "FS_CLUSTER_READ_REPLICA": "zone-b"}).cluster_read_replica == "zone-b"
    with pytest.raises(ConfigError, match="FS_CLUSTER_READ_REPLICA"):
        config.load([], environ={**base, "FS_CLUSTER_READ_REPLICA": "a b"})


class FakeShards:
    """The ShardClient side the cluster client drives: ``send`` answers from a table."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers  # link index -> reply map or exception
        self.sent: list[tuple[int, float]] = []
        self.endpoints: list[str] = []
        self.on_failed = None  # set by the cluster client

    def add_link(self, endpoint: str) -> int:
        self.endpoints.append(endpoint)
        return len(self.endpoints) - 1

    def send(self, index: int, request: dict, done, timeout_s=None, fallback=None) -> None:
        self.sent.append((index, timeout_s))
        answer = self.answers[self.endpoints[index]]
        outcome = answer if isinstance(answer, Exception) else dict(answer, id=P.id_of(request))
        failed = isinstance(outcome, Exception) or P.CODE in outcome
        entry = (done, time.monotonic() + 1.0, index, request, fallback)  # (as ShardClient's pending)
        if fallback is not None and failed and self.on_failed(entry, outcome):
            return
        done(outcome)


def cluster_client(owners: dict[str, list[int]], answers: dict, partitions: int = 2) -> C.ClusterClient:
    view = M.View()
    for i, (endpoint, parts) in enumerate(owners.items()):
        publish(view, f"r{i}", endpoint, {p: (0, True) for p in parts})
    cfg = Config(shard_timeout_s=1.0)
    reader = type("Reader", (), {"view": view})()
    return C.ClusterClient(cfg, FakeShards(answers), reader, None, partitions)


def test_a_read_retries_past_dead_and_not_owner_replicas():
    answers = {"tcp://a": ShardUnavailable(0, "is not connected"),
               "tcp://b": P.error(None, P.NOT_OWNER, "partition 0 has not caught up here"),
               "tcp://c": P.body_reply(None, b"{}")}
    client = cluster_client({"tcp://a": [0], "tcp://b": [0], "tcp://c": [0]}, answers)
    got = []
    for _ in range(3):  # whichever replica comes first, the answer is c's
        client.send(0, P.get("e"), got.append)
    assert [r[P.BODY] for r in got] == [b"{}"] * 3
    assert all(t <= 1.0 for _, t in client.shards.sent)
    assert min(t for _, t in client.shards.sent) <= 0.5  # no replica may take the whole deadline


def test_an_endpoint_zeromq_refuses_fails_only_the_reads_it_would_serve(caplog):
    client = cluster_client({"tcp://nohost": [0], "tcp://a": [0, 1]},
                            {"tcp://a": P.body_reply(None, b"{}")})
    refused = client.shards.add_link

    def add_link(endpoint):
        if endpoint == "tcp://nohost":
            raise zmq.ZMQError(zmq.EINVAL)  # what connect says to an endpoint without a port
        return refused(endpoint)

    client.shards.add_link = client.router.connect = add_link
    got = []
    with caplog.at_level("WARNING", logger="frontend.cluster"):
        for p in (0, 1, 0, 1):
            client.send(p, P.get("e"), got.append)
    assert [r[P.BODY] for r in got] == [b"{}"] * 4  # p0 from its other owner, p1 as ever
    assert caplog.text.count("tcp://nohost") == 1  # logged once, never retried
    assert "tcp://nohost" in client.router.unreachable and client.router.links == {"tcp://a": 0}


def test_a_read_whose_callback_raises_is_answered_once(caplog):
    """The only owner never answers: the sweep hands the call to the cluster client, which finds
    no other replica and no time left, and answers; a callback that raises is not called again."""
    async def main():
        loop = asyncio.get_running_loop()
        view = M.View()
        publish(view, "a", "tcp://a0", {0: (0, True)})
        shards = ShardClient([], 0.1, ctx=FakeContext())
        reader = type("Reader", (), {"view": view})()
        client = C.ClusterClient(Config(shard_timeout_s=0.1), shards, reader, None, 1)
        shards.start(loop)
        client._loop = loop
        client.router.start(loop)
        calls = []

        def done(outcome):
            calls.append(outcome)
            raise RuntimeError("a callback that fails")

        with caplog.at_level("ERROR"):
            client.send(0, P.get("e"), done)
            started = loop.time()
            while not calls and loop.time() < started + 2.0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # (a second answer came from the same sweep pass)
        shards.close()
        assert len(calls) == 1 and isinstance(calls[0], C.PartitionUnavailable), calls
        assert "a callback that fails" in caplog.text
    asyncio.run(main())


def test_membership_records_and_a_changed_table_mark_the_routes_stale():
    async def main():
        client = cluster_client({"tcp://a": [0, 1], "tcp://b": [0, 1]}, {})
        client.reader.apply = lambda msgs: len(msgs)
        client.router.start(asyncio.get_running_loop())
        client.router.refresh()
        assert not client.router.stale
        client._apply_members([])  # what the membership thread hands the loop
        assert client.router.stale
        client.router.refresh()
        publish(client.reader.view, "r0", "tcp://a", {})  # a gives its partitions up; readiness sees it first
        assert client.readiness()[0] and client.router.stale
        client.router.refresh()
        assert all(order == ["tcp://b"] for _, order in client.router.routes)

        def broken(msgs):
            raise ValueError("a record the view cannot take")

        client.reader.apply = broken
        with pytest.raises(ValueError):
            client._apply_members([object()])
        assert client.router.stale  # (what was applied before the failure is followed at once)
        client.router.close()
        assert client.router._timer is None
    asyncio.run(main())


def test_a_read_names_the_partition_when_no_replica_answers():
    client = cluster_client({"tcp://a": [0]}, {"tcp://a": ShardUnavailable(0, "did not answer in 1 s")})
    got = []
    client.send(0, P.get("e"), got.append)
    client.send(1, P.get("e"), got.append)
    assert isinstance(got[0], C.PartitionUnavailable) and isinstance(got[0], ShardUnavailable)
    assert "partition 0" in str(got[0]) and "did not answer" in str(got[0])
    assert "partition 1" in str(got[1]) and "no live replica" in str(got[1])


def test_kafka_partitioner_groups_by_partition():
    kp = KafkaPartitioner(8)
    ids = [f"u{i}" for i in range(40)]
    groups = kp.group(ids)
    assert sorted(pos for g in groups.values() for pos in g) == list(range(40))
    assert all(kp.shard_for(ids[pos]) == p == partition_of(ids[pos], 8) for p, g in groups.items() for pos in g)


def test_records_group_an_entitys_events_by_time():
    recs = records([("e1", "a", 1, 1_000_000), ("e2", "a", 2, 1_000_000), ("e1", "b", "x", 1_000_000),
                      ("e1", "a", 3, 2_000_000)])
    assert [k for k, _ in recs] == [b"e1", b"e2"]
    assert orjson.loads(recs[0][1]) == [
        {"entity_id": "e1", "features": {"a": 1, "b": "x"}, "event_timestamp": "1970-01-01T00:00:01Z"},
        {"entity_id": "e1", "features": {"a": 3}, "event_timestamp": "1970-01-01T00:00:02Z"}]
    assert orjson.loads(recs[1][1]) == {"entity_id": "e2", "features": {"a": 2},
                                        "event_timestamp": "1970-01-01T00:00:01Z"}


class FakeProducer:
    """A producer whose ``poll`` (from the Writer's reports thread) acks what was produced."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.queued = []
        self.offset = 0
        self.cond = threading.Condition()

    def produce(self, topic, value, key, on_delivery):
        with self.cond:
            self.queued.append((key, on_delivery))
            self.cond.notify()

    def poll(self, timeout):
        with self.cond:
            self.cond.wait_for(lambda: self.queued, timeout)
            queued, self.queued = self.queued, []
        for key, cb in queued:
            self.offset += 1
            msg = type("Msg", (), {"partition": lambda s: len(key) % 2, "offset": lambda s, o=self.offset: o})()
            cb(self.fail, msg)

    def flush(self, _timeout):
        self.poll(0)


def test_writer_returns_partitions_and_offsets_or_refuses():
    async def run(producer):
        writer = W.Writer("", "t", 1.0, producer)
        try:
            return await asyncio.wait_for(writer.send([(b"ab", b"{}"), (b"abc", b"{}")]), 5)
        finally:
            writer.close()

    assert asyncio.run(run(FakeProducer())) == [(0, 1), (1, 2)]
    with pytest.raises(W.KafkaRefused, match="Local: Message timed out"):
        asyncio.run(run(FakeProducer(fail="Local: Message timed out")))


def test_a_full_producer_queue_refuses_the_write_and_leaves_no_unretrieved_failure(caplog):
    class Full(FakeProducer):
        def produce(self, topic, value, key, on_delivery):
            if self.queued or self.offset:  # the second record does not fit
                raise BufferError("Local: Queue full")
            super().produce(topic, value, key, on_delivery)

    async def run():
        writer = W.Writer("", "t", 1.0, Full(fail="Local: Message timed out"))
        try:
            with pytest.raises(W.KafkaRefused, match="queue is full"):
                await writer.send([(b"a", b"{}"), (b"b", b"{}")])
        finally:
            writer.close()  # the first record's report (a failure) has come by now
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(run())
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_applied_watch_waits_for_an_owner_to_pass_the_offset():
    router = router_over({"tcp://a": [0], "tcp://b": [0]})
    applied = {0: 3, 1: 0}  # next offset of partition 0 at each replica
    client = FakeClient({i: (lambda req, i=i: P.offsets_reply(None, {0: (applied[i], True)})) for i in (0, 1)})

    async def run():
        watch = W.AppliedWatch(router, client)
        assert await watch.applied(0, 2, 0.5)  # a has applied offset 2 (its next is 3)
        assert router.candidates(0)[0] == "tcp://a"  # reads go where the write is
        late = asyncio.ensure_future(watch.applied(0, 5, 1.0))
        await asyncio.sleep(0.02)
        applied[1] = 6
        assert await late
        assert router.fresh[0] == {"tcp://b"}
        return await watch.applied(0, 50, 0.05)  # nobody gets there: not applied in time

    assert asyncio.run(run()) is False


def test_read_after_header_names_the_highest_offset_per_partition():
    value = W.render_positions([[3, 10], [1, 7], [3, 12]])
    assert value == "1:7,3:12"
    assert W.position_in(value, 3) == 12 and W.position_in(value, 1) == 7 and W.position_in(value, 0) is None
    assert W.position_in(" 2:5, 2:9", 2) == 9  # a client's own merge of two writes' headers
    for bad in ("", "3", "3:x", "-1:4", "3:4;5:6"):
        with pytest.raises(Exception) as exc:
            W.position_in(bad, 3)
        assert exc.value.status_code == 400 and "partition:offset" in exc.value.detail, bad
