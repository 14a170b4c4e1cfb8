"""The cluster shard's partition core, without sockets or Kafka: records in offset order,
last write wins, misrouted events, tombstones, frozen copies for peers, snapshots with offsets."""
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
    parts.release(2)
    assert parts.refusal(a) is not None and parts.states() == {}


def test_a_frozen_copy_streams_in_chunks_and_loads_elsewhere(monkeypatch):
    import shard.cluster as C

    monkeypatch.setattr(C, "DUMP_CHUNK", 7)  # 30 entities: 5 chunks
    src = serving(Partitions(Store(), N, Limits(), "t"), 3, 1)
    ids = ids_of(3, 30)
    src.apply([rec(3, i, eid, {"f": i, "g": [i]}) for i, eid in enumerate(ids)] + [rec(1, 0, ids_of(1, 1)[0], {"f": 0})])
    reply = answer_pdump(src, P.pdump(3, req_id=1))
    eids, blobs, token = list(reply[P.ENTITIES]), list(reply[P.BLOBS]), reply[P.DUMP]
    src.apply([rec(3, 30, ids[0], {"f": "later"}, ts=1_800_000_000)])  # after the freeze: not in it
    while reply[P.NEXT] is not None:
        reply = answer_pdump(src, P.pdump(3, token, reply[P.NEXT], req_id=2))
        eids.extend(reply[P.ENTITIES])
        blobs.extend(reply[P.BLOBS])
    assert reply[P.OFFSET] == 30 and len(eids) == len(blobs) == 30
    dst = Partitions(Store(), N, Limits(), "t")
    dst.load(3, reply[P.OFFSET], eids, blobs)
    assert dst.store.values == 60 and dst.held[3].entities == set(ids)
    assert entity(dst.store, ids[0]) == {"f": 0, "g": [0]}
    dst.apply([rec(3, 30, ids[0], {"f": "later"}, ts=1_800_000_000)])  # the tail from the offset
    assert entity(dst.store, ids[0])["f"] == "later"
    assert not P.is_ok(answer_pdump(src, P.pdump(2, req_id=3)))  # not held
    assert P.code_of(answer_pdump(src, P.pdump(3, 999, 0, req_id=4))) == P.BAD_REQUEST


def test_snapshot_keeps_offsets_and_refuses_another_topic(tmp_path):
    parts = serving(Partitions(Store(), N, Limits(), "t"), 0, 2)
    a, b = ids_of(0, 1)[0], ids_of(2, 1)[0]
    parts.apply([rec(0, 0, a, {"x": 1}), rec(0, 1, a, {"y": 2}), rec(2, 0, b, {"z": 3})])
    parts.write_snapshot(str(tmp_path))
    back = Partitions(Store(), N, Limits(), "t")
    assert back.load_snapshot(str(tmp_path)) == {0: 2, 2: 1}
    assert entity(back.store, a) == {"x": 1, "y": 2} and back.store.values == 3
    assert back.refusal(a) is not None  # held, but not serving until Kafka assigns it
    with pytest.raises(SnapshotMismatch):
        Partitions(Store(), N + 1, Limits(), "t").load_snapshot(str(tmp_path))
    with pytest.raises(SnapshotMismatch):
        Partitions(Store(), N, Limits(), "other").load_snapshot(str(tmp_path))
    assert Partitions(Store(), N, Limits(), "t").load_snapshot(str(tmp_path / "none")) == {}


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


def test_a_frozen_copy_and_a_snapshot_carry_the_window_states(monkeypatch, tmp_path):
    """A partition handed to a peer, or written to a snapshot, reads back with its aggregates:
    the new copy counts the events it never saw itself."""
    import shard.cluster as C

    monkeypatch.setattr(C, "DUMP_CHUNK", 4)
    now_s = time.time()
    src = serving(Partitions(Store(aggregations=AGG), N, Limits(aggregations=AGG), "t"), 1)
    ids = ids_of(1, 9)
    src.apply([rec(1, k, eid, {"clicks": k, "n": 1}, ts=now_s - 60 * k) for k, eid in enumerate(ids * 2)])
    want = {eid: entity(src.store, eid) for eid in ids}
    assert want[ids[1]]["clicks_count_1h"] == 2 and want[ids[1]]["clicks_sum_1d"] == 1 + 10
    reply = answer_pdump(src, P.pdump(1, req_id=1))
    eids, blobs, states = list(reply[P.ENTITIES]), list(reply[P.BLOBS]), list(reply[P.STATES])
    while reply[P.NEXT] is not None:
        reply = answer_pdump(src, P.pdump(1, reply[P.DUMP], reply[P.NEXT], req_id=2))
        eids += reply[P.ENTITIES]
        blobs += reply[P.BLOBS]
        states += reply[P.STATES]
    dst = Partitions(Store(aggregations=AGG), N, Limits(aggregations=AGG), "t")
    dst.load(1, reply[P.OFFSET], eids, blobs, states)
    assert {eid: entity(dst.store, eid) for eid in ids} == want
    src.write_snapshot(str(tmp_path))
    back = Partitions(Store(aggregations=AGG), N, Limits(aggregations=AGG), "t")
    back.load_snapshot(str(tmp_path))
    assert {eid: entity(back.store, eid) for eid in ids} == want
    back.apply([rec(1, 18, ids[0], {"clicks": 5}, ts=now_s - 1)])  # the tail adds to the carried windows
    assert entity(back.store, ids[0])["clicks_count_1h"] == want[ids[0]]["clicks_count_1h"] + 1
