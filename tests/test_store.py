"""The shard's Store as a unit: prepare/install, last-write-wins, deletes, render caches, stats."""
import orjson
import pytest

from common import protocol as P
from shard.store import NOT_FOUND_DETAIL, Store

TS = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
NOW = TS + 3_600_000_000


def fresh(**kw) -> Store:
    return Store(clock=lambda: NOW, **kw)


def native(st: Store, eid: str):
    body = st.render_entity(eid)
    return None if body is None else orjson.loads(body)


# ---- prepare / install
def test_prepare_changes_nothing_and_install_puts_it_in_place():
    st = fresh()
    st.apply([["a", "x", 1, TS]])
    before = (dict(st.data), st.stats())
    prepared = st.prepare([["a", "x", 2, TS + 1], ["b", "y", 3, TS], ["a", "z", 4, TS]])
    assert (st.data, st.stats()) == before
    assert st.install(prepared) == (3, 0)
    assert st.features("a") == {"x": [2, TS + 1], "z": [4, TS]} and st.features("b") == {"y": [3, TS]}
    assert st.stats() == {"entities": 2, "values": 3, "writes": 4, "stale": 0, "reclaimed": 0}


def test_an_entity_whose_writes_are_all_stale_is_not_reencoded():
    st = fresh()
    st.apply([["a", "x", 1, TS]])
    blobs, written, stale, added, _ = st.prepare([["a", "x", 0, TS - 1], ["b", "x", 1, TS]])
    assert list(blobs) == ["b"] and (written, stale, added) == (1, 1, 1)


@pytest.mark.parametrize("bad", [[1, "x", 1, TS], ["a", 2, 1, TS], ["a", "x", 1, 1.5], ["a", "x", 1, "0"]])
def test_a_malformed_item_raises_from_prepare(bad):
    st = fresh()
    with pytest.raises(TypeError):
        st.prepare([["a", "x", 1, TS], bad])


# ---- last write wins by event time
def test_an_older_event_is_stale_and_a_newer_one_replaces_the_value():
    st = fresh()
    assert st.apply([["a", "x", "first", TS]]) == (1, 0)
    assert st.apply([["a", "x", "older", TS - 1]]) == (0, 1)
    assert st.features("a") == {"x": ["first", TS]}
    assert st.apply([["a", "x", "newer", TS + 1]]) == (1, 0)
    assert st.features("a") == {"x": ["newer", TS + 1]}
    assert st.stats()["values"] == 1 and st.stats()["writes"] == 2 and st.stats()["stale"] == 1


def test_on_an_equal_event_time_the_later_arrival_wins():
    st = fresh()
    st.apply([["a", "x", 1, TS], ["a", "x", 2, TS]])  # within one batch
    assert st.features("a") == {"x": [2, TS]}
    st.apply([["a", "x", 3, TS]])  # across batches
    assert st.features("a") == {"x": [3, TS]} and st.stats()["stale"] == 0


def test_within_a_batch_the_newest_event_wins_whatever_the_order():
    st = fresh()
    st.apply([["a", "x", "mid", TS], ["b", "x", 0, TS], ["a", "x", "new", TS + 5], ["a", "x", "old", TS - 5]])
    assert st.features("a") == {"x": ["new", TS + 5]} and st.stats()["stale"] == 1


# ---- deletes
def test_delete_one_feature_then_the_last_one_removes_the_entity():
    st = fresh()
    st.apply([["a", "x", 1, TS], ["a", "y", 2, TS], ["b", "x", 3, TS]])
    assert st.delete("a", "x") == 1 and st.features("a") == {"y": [2, TS]}
    assert st.delete("a", "x") == 0  # already gone
    assert st.delete("a", "y") == 1 and st.features("a") is None and "a" not in st.data
    assert st.stats()["entities"] == 1 and st.stats()["values"] == 1


def test_delete_a_whole_entity_and_a_missing_one():
    st = fresh()
    st.apply([["a", "x", 1, TS], ["a", "y", 2, TS]])
    assert st.delete("nobody") == 0 and st.delete("nobody", "x") == 0
    assert st.delete("a") == 2 and st.features("a") is None and st.stats()["values"] == 0
    assert st.apply([["a", "x", 0, TS - 10]]) == (1, 0)  # a delete forgets the event times too


# ---- rendered reads
def test_native_renderings():
    st = fresh()
    st.apply([["a", "x", 1.5, TS], ["a", "y", [1, None], TS + 1_000_000]])
    assert native(st, "a") == {"entity_id": "a", "features": {"x": 1.5, "y": [1, None]},
                               "last_updated": "2023-11-14T22:13:21Z"}
    assert orjson.loads(st.render_entity("a", ["x", "nope"]))["features"] == {"x": 1.5}
    assert st.render_entity("a", ["nope"]) is None and native(st, "b") is None
    assert orjson.loads(st.render_feature("a", "x")) == {
        "entity_id": "a", "name": "x", "value": 1.5, "event_timestamp": "2023-11-14T22:13:20Z"}
    assert st.render_feature("a", "nope") is None and st.render_feature("b", "x") is None
    many = [orjson.loads(p) for p in st.render_many(["b", "a"], ["y"])]
    assert many == [{"entity_id": "b", "detail": NOT_FOUND_DETAIL},
                    {"entity_id": "a", "features": {"y": [1, None]}, "last_updated": "2023-11-14T22:13:21Z"}]


def test_render_rows_statuses_and_timestamps():
    st = fresh()
    st.apply([["a", "x", 1, TS], ["a", "y", None, TS + 1_000_000], ["c", "x", "s", TS]])
    v, s, ts = st.render_rows(["a", "b", "c"], ["x", "y"])
    assert v == [b"1\x1fnull", b"null\x1fnull", b'"s"\x1fnull']
    assert s == [P.PRESENT + P.NULL_VALUE, P.NOT_FOUND_S * 2, P.PRESENT + P.NOT_FOUND_S]
    assert ts[0] == b'"2023-11-14T22:13:20Z"\x1f"2023-11-14T22:13:21Z"'  # one per value when they differ
    assert ts[1] == P.EPOCH_TS  # one for the row when they are all the same
    assert ts[2] == b'"2023-11-14T22:13:20Z"' + P.SEP + P.EPOCH_TS


# ---- render caches
def test_renderings_are_cached_per_entity_and_dropped_when_it_changes():
    st = fresh()
    st.apply([["a", "x", 1, TS], ["b", "x", 2, TS]])
    a, b = st.render_entity("a"), st.render_entity("b")
    assert st.render_entity("a") is a and st.render_many(["a", "b"]) == [a, b]  # served from the cache
    row = st.render_rows(["a"], ["x"])
    assert st.render_rows(["a"], ["x"]) == row
    st.install(st.prepare([["a", "x", 3, TS + 1]]))
    assert native(st, "a")["features"] == {"x": 3} and st.render_entity("b") is b  # only a is dropped
    assert st.render_rows(["a"], ["x"])[0] == [b"3"]
    st.delete("b", "x")
    assert st.render_entity("b") is None and st.render_rows(["b"], ["x"])[1] == [P.NOT_FOUND_S]


def test_a_row_cache_entry_holds_for_its_feature_list_only():
    st = fresh()
    st.apply([["a", "x", 1, TS], ["a", "y", 2, TS]])
    assert st.render_rows(["a"], ["x"])[0] == [b"1"]
    assert st.render_rows(["a"], ["y", "x"])[0] == [b"2\x1f1"]
    assert st.render_rows(["a"], ["x"])[0] == [b"1"]


def test_a_stale_write_leaves_the_cache_in_place():
    st = fresh()
    st.apply([["a", "x", 1, TS]])
    body = st.render_entity("a")
    st.apply([["a", "x", 0, TS - 1]])
    assert st.render_entity("a") is body


def test_no_cache_renders_every_time():
    st = fresh(cache_entities=0)
    st.apply([["a", "x", 1, TS]])
    first = st.render_entity("a")
    assert st.render_entity("a") is not first and st.render_entity("a") == first
    st.render_rows(["a"], ["x"])
    assert not st._json and not st._rows


def decoded_stamps(st: Store, eid: str, names=None, live=True) -> list:
    """What :meth:`Store.stamps` must return: from the blob itself, every time."""
    feats = st.features(eid) or {}
    if names is not None:
        feats = {n: feats[n] for n in names if n in feats}
    if live:
        feats = {n: vt for n, vt in feats.items()
                 if st.ttl_of(n) is None or st.clock() <= vt[1] + st.ttl_of(n)}
    return [(n, vt[1]) for n, vt in feats.items()]


def test_sampled_event_times_are_kept_until_the_entity_or_the_clock_changes_them():
    now = [NOW]
    st = Store(clock=lambda: now[0], view_ttls={"v:": 60})
    st.apply([["a", "v:x", 1, NOW - 30_000_000], ["a", "y", 2, TS], ["a", "z", 3, TS], ["b", "y", 1, TS]])
    for names, live in ((None, True), (["z", "v:x", "nope"], True), (["y", "z"], False)):
        assert st.stamps(["a", "b", "nobody"], names, live) == (
            decoded_stamps(st, "a", names, live) + decoded_stamps(st, "b", names, live))
    assert st.stamps(["a"], None) == st.stamps(["a"], None)  # kept: the second is not decoded
    st.apply([["a", "y", 5, TS + 1]])  # a write drops what was kept
    assert ("y", TS + 1) in st.stamps(["a"], None) and st.stamps(["a"], None) == decoded_stamps(st, "a")
    now[0] += 31_000_000  # v:x expires: a live sample no longer counts it
    assert st.stamps(["a"], None) == decoded_stamps(st, "a") and ("v:x", NOW - 30_000_000) not in st.stamps(["a"], None)
    assert ("v:x", NOW - 30_000_000) in st.stamps(["a"], None, live=False)
    st.delete("a", "z")
    assert st.stamps(["a"], ["z"]) == []
    st.delete("b")
    assert st.stamps(["b"], None) == []
