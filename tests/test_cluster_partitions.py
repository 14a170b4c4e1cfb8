"""The cluster shard's partition core, without sockets or Kafka: records in offset order,
last write wins, misrouted events, tombstones and feature deletes, chunked copies for peers,
snapshots with offsets."""
from __future__ import annotations

import time

import orjson
import pytest

from common import protocol as P
from common.aggregations import parse_aggregations
from common.events import Limits
from common.murmur2 import partition_of
from shard.cluster import Partitions, SnapshotMismatch, answer_pdump
from shard.store import Store

N = 4


def ids_of(p: int, count: int) -> list[str]:
    out, i = [], 0
    while len(out) < count:
        if partition_of(f"e{i}", N) == p:
            out.append(f"e{i}")
        i += 1
    return out


def rec(p, off, eid, feats=None, ts=1_700_000_000, key=None):
    value = None if feats is None else orjson.dumps({"entity_id": eid, "features": feats, "event_timestamp": ts})
    return (p, off, (key or eid).encode(), value, 1_700_000_000_000)


def serving(parts: Partitions, *ps) -> Partitions:
    for p in ps:
        h = parts.require(p)
        h.assigned = h.serving = True
    return parts


def entity(store: Store, eid: str):
    body = store.render_entity(eid)
    return None if body is None else orjson.loads(body)["features"]


def test_records_apply_in_offset_order_with_last_write_wins():
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0)
    a, b = ids_of(0, 2)
    n = parts.apply([rec(0, 0, a, {"x": 1}, ts=10), rec(0, 1, a, {"x": 2}, ts=5),  # older: stale
                     rec(0, 2, b, {"y": "v"}), rec(0, 1, a, {"x": 9}, ts=99)])  # offset 1 again: skipped
    assert n == 3 and parts.held[0].next == 3
    assert entity(parts.store, a) == {"x": 1} and entity(parts.store, b) == {"y": "v"}
    assert parts.held[0].entities == {a, b}


def test_a_record_without_event_time_takes_the_record_timestamp():
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0)
    (a,) = ids_of(0, 1)
    parts.apply([(0, 0, a.encode(), orjson.dumps({"entity_id": a, "name": "x", "value": 1}), 1_600_000_000_123)])
    assert orjson.loads(parts.store.render_entity(a))["last_updated"] == "2020-09-13T12:26:40.123000Z"


def test_misrouted_and_bad_events_are_counted_not_applied():
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0, 1)
    (a,) = ids_of(0, 1)
    (other,) = ids_of(1, 1)
    parts.apply([rec(0, 0, other, {"x": 1}, key=a), (0, 1, b"k", b"not json", 0),
                 (0, 2, b"k", b'{"entity_id": 3}', 0)])
    assert parts.misrouted == 1 and parts.rejected == 2
    assert parts.held[0].next == 3 and entity(parts.store, other) is None


def test_a_record_past_the_features_per_entity_limit_is_skipped_and_the_others_applied():
    """Records are untrusted input: the shard checks them as it checks every write (here
    FS_MAX_FEATURES_PER_ENTITY), skipping only the record refused, in a batch or alone."""
    parts = serving(Partitions(Store(), N, Limits(), "t", max_features=3), 0)
    a, b = ids_of(0, 2)
    batch = [rec(0, 0, a, {"x": 1, "y": 2}), rec(0, 1, a, {"z": 3, "w": 4}),  # 4 features: refused
             rec(0, 2, b, {"x": 1}), rec(0, 3, a, {"x": 5}, ts=1_700_000_001)]
    assert parts.apply(batch) == 4 and parts.held[0].next == 4
    assert parts.rejected == 1
    assert entity(parts.store, a) == {"x": 5, "y": 2} and entity(parts.store, b) == {"x": 1}
    assert parts.held[0].entities == {a, b}
    parts.apply([rec(0, 4, a, {"v": 1, "u": 2})])  # alone: refused too
    assert parts.rejected == 2 and entity(parts.store, a) == {"x": 5, "y": 2}


def test_a_tombstone_deletes_the_entity():
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0)
    (a,) = ids_of(0, 1)
    parts.apply([rec(0, 0, a, {"x": 1}), rec(0, 1, a, None)])
    assert entity(parts.store, a) is None and parts.store.values == 0


def test_refusal_names_the_partition_until_it_serves():
    parts = Partitions(Store(), N, Limits(), "t")
    (a,) = ids_of(2, 1)
    assert "partition 2" in parts.refusal(a) and "not held" in parts.refusal(a)
    parts.require(2).assigned = True
    assert "has not caught up" in parts.refusal(a)
    parts.held[2].serving = True
    assert parts.refusal(a) is None
    parts.release(2)  # moving away: still served (as of now) until another shard serves it
    assert parts.refusal(a) is None and parts.states() == {2: (0, True)}
    parts.free(2)
    assert "not held" in parts.refusal(a) and parts.states() == {}


def test_a_tombstone_and_a_delete_record_delete_the_entity_or_features():
    from common.records import delete_record

    parts = serving(Partitions(Store(), N, Limits(), "t"), 0)
    a, b = ids_of(0, 2)
    key, value = delete_record(a, ["x"])
    parts.apply([rec(0, 0, a, {"x": 1, "y": 2}), rec(0, 1, b, {"x": 3}), (0, 2, key, value, 0)])
    assert entity(parts.store, a) == {"y": 2} and parts.store.values == 2
    key, value = delete_record(b, ["x"])
    parts.apply([(0, 3, key, value, 0), rec(0, 4, a, {"x": 5}, ts=1)])  # an older write after: applied
    assert entity(parts.store, b) is None and parts.held[0].entities == {a}
    assert entity(parts.store, a) == {"x": 5, "y": 2}
    parts.apply([(0, 5, a.encode(), orjson.dumps({"entity_id": a, "delete": "x"}), 0)])
    assert parts.rejected == 1 and entity(parts.store, a) == {"x": 5, "y": 2}


def test_a_partition_streams_in_chunks_and_the_replay_from_its_offset_converges(monkeypatch):
    """The peer packs each chunk as it is asked for (no frozen copy); what changed meanwhile is
    in the records after the transfer's offset, which the receiver replays."""
    import shard.cluster as C

    monkeypatch.setattr(C, "DUMP_CHUNK", 7)  # 30 entities: 5 chunks
    src = serving(Partitions(Store(), N, Limits(), "t"), 3, 1)
    ids = ids_of(3, 30)
    log = [rec(3, i, eid, {"f": i, "g": [i]}) for i, eid in enumerate(ids)]
    src.apply(log + [rec(1, 0, ids_of(1, 1)[0], {"f": 0})])
    reply = answer_pdump(src, P.pdump(3, req_id=1))
    chunks, token = [reply[P.CHUNK]], reply[P.DUMP]
    later = [rec(3, 30, ids[0], {"f": "later"}, ts=1_800_000_000), rec(3, 31, ids[29], None),
             rec(3, 32, ids[28], {"f": "older"}, ts=1), rec(3, 33, ids[29], {"f": "back"})]
    src.apply(later)  # during the transfer: some chunks show it, some not
    while reply[P.NEXT] is not None:
        reply = answer_pdump(src, P.pdump(3, token, reply[P.NEXT], req_id=2))
        chunks.append(reply[P.CHUNK])
    assert reply[P.OFFSET] == 30 and len(chunks) == 5
    dst = Partitions(Store(), N, Limits(), "t")
    for i, chunk in enumerate(chunks):
        dst.receive(3, reply[P.OFFSET], chunk, i == 0)
    assert dst.held[3].loading and dst.held[3].next == 30
    dst.held[3].assigned = True
    dst.apply(later)  # the tail from the transfer's offset
    for eid in ids:
        assert entity(dst.store, eid) == entity(src.store, eid), eid
    assert dst.store.values == src.store.values - 1 and dst.held[3].entities == src.held[3].entities
    assert not P.is_ok(answer_pdump(src, P.pdump(2, req_id=3)))  # not held
    assert P.code_of(answer_pdump(src, P.pdump(3, 999, 0, req_id=4))) == P.BAD_REQUEST
    assert P.code_of(answer_pdump(dst, P.pdump(3, req_id=5))) == P.NOT_OWNER  # still loading
    reply = answer_pdump(src, P.pdump(3, req_id=6))
    src.free(3)  # taken over meanwhile: the rest of the copy is gone, the transfer fails
    assert P.code_of(answer_pdump(src, P.pdump(3, reply[P.DUMP], reply[P.NEXT], req_id=7))) == P.BAD_REQUEST


def test_snapshot_keeps_offsets_and_refuses_another_topic(tmp_path):
    from shard.persistence import files, snapshot

    parts = serving(Partitions(Store(), N, Limits(), "t"), 0, 2, 3)
    a, b = ids_of(0, 1)[0], ids_of(2, 1)[0]
    parts.apply([rec(0, 0, a, {"x": 1}), rec(0, 1, a, {"y": 2}), rec(2, 0, b, {"z": 3}),
                 rec(3, 0, ids_of(3, 1)[0], {"w": 4})])
    parts.held[3].loading = True  # half a peer's copy: not in a snapshot
    snapshot.write_snapshot(str(tmp_path), 4, parts.store, 0, *parts.snapshot_args())
    assert files.generations(str(tmp_path))[0] == [4]
    back = Partitions(Store(), N, Limits(), "t")
    assert back.load_snapshot(str(tmp_path)) == {0: 2, 2: 1}
    assert entity(back.store, a) == {"x": 1, "y": 2} and back.store.values == 3
    assert back.held[0].entities == {a} and back.held[2].entities == {b}
    assert back.refusal(a) is not None  # held, but not serving until Kafka assigns it
    with pytest.raises(SnapshotMismatch):
        Partitions(Store(), N + 1, Limits(), "t").load_snapshot(str(tmp_path))
    with pytest.raises(SnapshotMismatch):
        Partitions(Store(), N, Limits(), "other").load_snapshot(str(tmp_path))
    assert Partitions(Store(), N, Limits(), "t").load_snapshot(str(tmp_path / "none")) == {}


def test_a_read_after_an_offset_waits_for_the_copy_to_pass_it():
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0)
    (a,) = ids_of(0, 1)
    parts.apply([rec(0, 0, a, {"x": 1}), rec(0, 1, a, {"x": 2})])
    assert parts.refusal(a, 1) is None and "not yet 2" in parts.refusal(a, 2)


def test_free_drops_only_that_partition():
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0, 1)
    a, b = ids_of(0, 1)[0], ids_of(1, 1)[0]
    parts.apply([rec(0, 0, a, {"x": 1}), rec(1, 0, b, {"x": 1, "y": 2})])
    parts.release(0)
    assert parts.free_released(lambda p: True) == []  # a loaded snapshot waits for an assignment
    parts.assigned_once = True
    assert parts.free_released(lambda p: p == 0) == [0]
    assert entity(parts.store, a) is None and entity(parts.store, b) == {"x": 1, "y": 2}
    assert parts.store.values == 2 and 0 not in parts.held


AGG = parse_aggregations([{"feature": "clicks", "functions": ["count", "sum", "last_2"], "windows": ["1h", "1d"]}])


def test_a_partition_moves_with_its_windows_and_the_replay_counts_each_event_once(monkeypatch):
    """A peer's chunks carry the window states as they are when each is packed; the records
    after the transfer's offset are replayed, and an event a carried state already counts (it
    arrived during the transfer) is not counted again."""
    import shard.cluster as C

    monkeypatch.setattr(C, "DUMP_CHUNK", 4)
    now_s = time.time()
    src = serving(Partitions(Store(aggregations=AGG), N, Limits(aggregations=AGG), "t"), 1)
    ids = ids_of(1, 9)
    log = [rec(1, k, eid, {"clicks": k, "n": 1}, ts=now_s - 60 * k) for k, eid in enumerate(ids * 2)]
    src.apply(log)
    reply = answer_pdump(src, P.pdump(1, req_id=1))
    replies = [reply]
    later = [rec(1, 18 + k, eid, {"clicks": 100 + k}, ts=now_s - 1) for k, eid in enumerate(ids)]
    src.apply(later)  # during the transfer: chunks packed after this count it already
    while reply[P.NEXT] is not None:
        reply = answer_pdump(src, P.pdump(1, reply[P.DUMP], reply[P.NEXT], req_id=2))
        replies.append(reply)
    assert reply[P.OFFSET] == 18 and {r[P.STATES_AT] for r in replies} == {18, 27}
    dst = Partitions(Store(aggregations=AGG), N, Limits(aggregations=AGG), "t")
    for i, r in enumerate(replies):
        dst.receive(1, r[P.OFFSET], r[P.CHUNK], i == 0, r[P.STATES], r[P.STATES_AT])
    dst.held[1].assigned = True
    dst.apply(later)  # the tail from the transfer's offset
    for eid in ids:
        assert entity(dst.store, eid) == entity(src.store, eid), eid
    assert entity(dst.store, ids[0])["clicks_count_1h"] == 3 and entity(dst.store, ids[0])["clicks_sum_1h"] == 109
    dst.apply([rec(1, 27, ids[0], {"clicks": 1}, ts=now_s - 1)])  # past the transfer: counted as usual
    assert entity(dst.store, ids[0])["clicks_count_1h"] == 4 and not dst.held[1].counted


class FakeAdmin:
    """``list_offsets`` answered from ``ends`` (partition -> end offset, an exception, or None:
    never answered)."""

    def __init__(self, ends: dict) -> None:
        self.ends = ends
        self.asked: list[list[int]] = []

    def poll(self, timeout: float) -> int:
        return 0

    def list_offsets(self, wanted: dict, request_timeout: float) -> dict:
        import concurrent.futures
        import types

        self.asked.append(sorted(tp.partition for tp in wanted))
        out = {}
        for tp in wanted:
            fut = concurrent.futures.Future()
            end = self.ends.get(tp.partition)
            if isinstance(end, Exception):
                fut.set_exception(end)
            elif end is not None:
                fut.set_result(types.SimpleNamespace(offset=end))
            out[tp] = fut
        return out


def parked_tail(ends: dict, nexts=(5, 7)):
    """A Tail (no consumer) whose partitions 0 and 1 serve at ``nexts`` and are parked; it counts
    its wake-ups instead of assigning anything."""
    from shard.cluster import Tail

    tail = Tail.__new__(Tail)
    tail.parts = serving(Partitions(Store(), N, Limits(), "t"), 0, 1)
    for p, nxt in enumerate(nexts):
        tail.parts.held[p].next = nxt
    tail.topic, tail.parked, tail.probe_s, tail.idle_fetch_s = "t", {0, 1}, 0.04, 0.25
    tail._ends, tail._ends_at, tail._probe_at, tail._kafka = None, 0.0, 0.0, "unused"
    tail._admin = FakeAdmin(ends)
    tail.woken = []
    tail.wake = lambda seconds=2.0: tail.woken.append(seconds)
    return tail


@pytest.mark.parametrize("ends, woken", [
    ({0: 5, 1: 7}, []),  # the ends are where the copies are: stay parked
    ({0: 5, 1: 8}, [0.04]),  # a record past partition 1's copy: one round of fetches
])
def test_a_parked_tail_wakes_only_for_records_past_its_copies(ends, woken):
    tail = parked_tail(ends)
    tail._probe(100.0)  # asks
    assert tail._admin.asked == [[0, 1]] and tail.woken == []
    tail._probe(100.05)  # reads the answer
    assert tail.woken == woken and tail._ends is None
    assert tail._probe_at == pytest.approx(100.25)  # the next probe, one idle period after the first


def test_a_probe_without_an_answer_or_with_an_error_wakes_the_tail():
    from confluent_kafka import KafkaError, KafkaException
    from shard.cluster import PROBE_WAIT_S

    tail = parked_tail({0: 5})  # partition 1 never answered
    tail._probe(100.0)
    tail._probe(100.0 + PROBE_WAIT_S / 2)
    assert tail.woken == []  # still waiting
    tail._probe(100.0 + PROBE_WAIT_S)
    assert tail.woken == [0.04]
    tail = parked_tail({0: KafkaException(KafkaError(KafkaError._TIMED_OUT)), 1: 7})
    tail._probe(100.0)
    tail._probe(100.05)
    assert tail.woken == [0.04]


def test_a_partition_revoked_while_its_probe_was_out_is_ignored():
    tail = parked_tail({0: 5, 1: 99})
    tail._probe(100.0)
    tail.parked.discard(1)  # revoked meanwhile (_revoked takes it out of parked)
    tail._probe(100.05)
    assert tail.woken == []
