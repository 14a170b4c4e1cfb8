"""TTL, the background sweep, Feast rows and the render caches of the shard's Store (clock injected)."""
import orjson
import pytest

from common import protocol as P
from shard.handlers import ShardState, dispatch
from shard.store import Store

S = 1_000_000  # one second in microseconds
T0 = 1_764_072_329 * S  # 2025-11-25T12:05:29Z


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def store(clock, **kw):
    return Store(clock=clock, **kw)


def entity(st, eid, names=None):
    body = st.render_entity(eid, names)
    return None if body is None else orjson.loads(body)


def rows(st, eids, names):
    """render_rows decoded: per entity, a list of (value, status, timestamp) per name."""
    v, s, ts = st.render_rows(eids, names)
    out = []
    for vr, sr, tr in zip(v, s, ts):
        values = [orjson.loads(x) for x in vr.split(P.SEP)]
        stamps = [orjson.loads(x) for x in tr.split(P.SEP)] if P.SEP in tr else [orjson.loads(tr)] * len(names)
        out.append([(val, P.FEAST_STATUS[c], t) for val, c, t in zip(values, sr, stamps)])
    return out


def test_a_batch_is_served_from_the_caches_only_while_every_rendering_there_is_valid(clock):
    st = store(clock, view_ttls={"v:": 10})
    st.apply([("a", "v:x", 1, T0), ("b", "v:x", 2, T0 - 5 * S), ("c", "w:y", 3, T0)])
    names = ["v:x", "w:y"]
    assert st.cached_many(["a", "b"]) is None and st.cached_rows(["a", "b"], names) is None  # nothing rendered yet
    bodies, got = st.render_many(["a", "b", "c"]), st.render_rows(["a", "b", "c"], names)
    assert st.cached_many(["c", "a", "b"]) == [bodies[2], bodies[0], bodies[1]]
    assert st.cached_rows(["c", "a", "b"], names) == tuple([r[2], r[0], r[1]] for r in got)
    assert st.cached_many(["a", "zz"]) is None and st.cached_rows(["a", "zz"], names) is None  # zz: not cached
    assert st.cached_rows(["a", "b"], ["v:x"]) is None  # rows of another name list
    clock.now = T0 + 5 * S + 1  # b's value has expired: its renderings are stale
    assert st.cached_many(["a", "b"]) is None and st.cached_rows(["a", "b"], names) is None
    assert st.cached_many(["a", "c"]) == [bodies[0], bodies[2]]
    st.apply([("a", "v:x", 9, T0 + 6 * S)])  # a write drops a's renderings
    assert st.cached_many(["a", "c"]) is None and st.cached_rows(["a", "c"], names) is None


def test_native_reads_omit_expired_values_and_entities(clock):
    st = store(clock, ttl_s=10)
    st.apply([("u", "old", 1, T0 - 11 * S), ("u", "new", 2, T0 - 5 * S), ("gone", "x", 3, T0 - 20 * S)])
    assert entity(st, "u") == {"entity_id": "u", "features": {"new": 2},
                               "last_updated": "2025-11-25T12:05:24Z"}
    assert entity(st, "gone") is None
    assert st.render_feature("u", "old") is None
    assert orjson.loads(st.render_feature("u", "new"))["value"] == 2
    parts = [orjson.loads(p) for p in st.render_many(["gone", "u"])]
    assert parts[0] == {"entity_id": "gone", "detail": "No features found for entity"}
    assert parts[1]["features"] == {"new": 2}
    assert entity(st, "u", ["old"]) is None and entity(st, "u", ["old", "new"])["features"] == {"new": 2}


def test_a_value_expires_exactly_after_its_ttl_even_from_the_cache(clock):
    st = store(clock, ttl_s=10)
    st.apply([("u", "x", 1, T0)])
    clock.now = T0 + 10 * S  # age == TTL: still live
    assert entity(st, "u")["features"] == {"x": 1}
    assert st.render_many(["u"])[0] == st.render_entity("u")  # now cached
    clock.now += 1  # one microsecond later: expired, the cached rendering is not used
    assert entity(st, "u") is None
    assert orjson.loads(st.render_many(["u"])[0])["detail"] == "No features found for entity"


def test_view_ttls_override_the_default_and_zero_means_none(clock):
    st = store(clock, ttl_s=100, view_ttls={"short:": 1, "forever:": 0})
    st.apply([("u", "short:a", 1, T0 - 2 * S), ("u", "forever:b", 2, T0 - 10**6 * S),
              ("u", "plain", 3, T0 - 50 * S), ("u", "other:c", 4, T0 - 101 * S)])
    assert entity(st, "u")["features"] == {"forever:b": 2, "plain": 3}
    assert st.ttl_of("short:a") == 1 * S and st.ttl_of("forever:b") is None and st.ttl_of("other:c") == 100 * S


def test_no_ttl_keeps_everything(clock):
    st = store(clock)
    st.apply([("u", "x", 1, 0)])
    clock.now = T0 * 2
    assert entity(st, "u")["features"] == {"x": 1}
    assert st.sweep() == 0


def test_feast_rows_report_present_null_missing_and_outside_max_age_with_the_value(clock):
    st = store(clock, view_ttls={"v:": 60})
    st.apply([("1", "v:a", 0.5, T0 - 10 * S), ("1", "v:b", None, T0 - 10 * S), ("1", "v:c", 7, T0 - 61 * S)])
    got = rows(st, ["1", "2"], ["v:a", "v:b", "v:c", "v:d"])
    assert got[0] == [(0.5, "PRESENT", "2025-11-25T12:05:19Z"), (None, "NULL_VALUE", "2025-11-25T12:05:19Z"),
                      (7, "OUTSIDE_MAX_AGE", "2025-11-25T12:04:28Z"), (None, "NOT_FOUND", "1970-01-01T00:00:00Z")]
    assert got[1] == [(None, "NOT_FOUND", "1970-01-01T00:00:00Z")] * 4


def test_feast_row_with_one_event_time_sends_it_once(clock):
    st = store(clock)
    st.apply([("1", "v:a", 1, T0), ("1", "v:b", "x", T0)])
    v, s, ts = st.render_rows(["1"], ["v:a", "v:b"])
    assert (v, s, ts) == ([b'1\x1f"x"'], [b"PP"], [b'"2025-11-25T12:05:29Z"'])


def test_feast_row_turns_outside_max_age_when_the_clock_passes_the_ttl(clock):
    st = store(clock, ttl_s=5)
    st.apply([("1", "v:a", 1, T0)])
    assert rows(st, ["1"], ["v:a"])[0][0][1] == "PRESENT"
    clock.now = T0 + 5 * S + 1
    assert rows(st, ["1"], ["v:a"])[0][0] == (1, "OUTSIDE_MAX_AGE", "2025-11-25T12:05:29Z")


def test_caches_are_dropped_on_write_delete_and_another_feature_list(clock):
    st = store(clock)
    st.apply([("1", "v:a", 1, T0)])
    assert entity(st, "1")["features"] == {"v:a": 1} and rows(st, ["1"], ["v:a"])[0][0][0] == 1
    st.apply([("1", "v:a", 2, T0 + 1)])
    assert entity(st, "1")["features"] == {"v:a": 2} and rows(st, ["1"], ["v:a"])[0][0][0] == 2
    assert rows(st, ["1"], ["v:a", "v:b"])[0][1][1] == "NOT_FOUND"
    st.delete("1", "v:a")
    assert entity(st, "1") is None and rows(st, ["1"], ["v:a"])[0][0][1] == "NOT_FOUND"


def test_cache_is_bounded(clock):
    st = store(clock, cache_entities=3)
    st.apply([(str(i), "x", i, T0) for i in range(10)])
    assert [orjson.loads(p)["features"]["x"] for p in st.render_many([str(i) for i in range(10)])] == list(range(10))
    st.render_rows([str(i) for i in range(10)], ["x"])
    assert len(st._json) <= 3 and len(st._rows) <= 3
    uncached = store(clock, cache_entities=0)
    uncached.apply([("1", "x", 1, T0)])
    assert entity(uncached, "1")["features"] == {"x": 1} and not uncached._json


def sweep_pass(st, clock):
    """Run sweep steps, advancing the clock by the step interval, until a pass over all ids ends."""
    steps = []
    for _ in range(1000):
        clock.now = max(clock.now, st._ttl_walk.at)
        steps.append(st.sweep())
        assert st.sweep() == 0  # a second call in the same instant waits for the interval
        if st._ttl_walk.at == clock.now + st.SWEEP_PAUSE_US:
            return steps
    raise AssertionError("the sweep pass did not end")


def test_sweep_reclaims_after_ttl_plus_grace_in_bounded_steps(clock):
    st = store(clock, ttl_s=10, grace_s=5)
    st._ttl_walk.batch = 4
    st.apply([(f"e{i}", "x", i, T0) for i in range(10)] + [("keep", "x", 1, T0 + 100 * S), ("e0", "y", 0, T0 + 100 * S)])
    clock.now = T0 + 14 * S  # expired (past 10 s) but inside the grace: kept for Feast reads
    assert sum(sweep_pass(st, clock)) == 0
    assert rows(st, ["e1"], ["x"])[0][0] == (1, "OUTSIDE_MAX_AGE", "2025-11-25T12:05:29Z")
    clock.now = T0 + 15 * S + 1
    st._ttl_walk.at = clock.now
    steps = sweep_pass(st, clock)
    assert sum(steps) == 10 and max(steps) <= 4 and len(steps) == 4  # 11 ids, 4 per step, then the end
    assert st.stats()["reclaimed"] == 10 and st.stats()["values"] == 2 and st.stats()["entities"] == 2
    assert rows(st, ["e1"], ["x"])[0][0][1] == "NOT_FOUND"  # the cached OUTSIDE_MAX_AGE row was dropped
    assert entity(st, "e0")["features"] == {"y": 0}


def test_default_grace_is_one_more_ttl(clock):
    st = store(clock, ttl_s=10)
    st.apply([("u", "x", 1, T0)])
    clock.now = T0 + 20 * S
    assert sum(sweep_pass(st, clock)) == 0
    clock.now = st._ttl_walk.at = T0 + 20 * S + 1
    assert sum(sweep_pass(st, clock)) == 1 and "u" not in st.data


def test_sweep_skips_ids_deleted_during_a_pass(clock):
    st = store(clock, ttl_s=1)
    st._ttl_walk.batch = 1
    st.apply([("a", "x", 1, T0), ("b", "x", 1, T0)])
    clock.now = T0 + 3 * S
    assert st.sweep() == 1  # "a"; the pass holds ["a", "b"]
    st.delete("b")
    clock.now += st.SWEEP_INTERVAL_US
    assert st.sweep() == 0 and st.stats()["values"] == 0


def test_old_writes_are_stored_and_reported_outside_max_age(clock):
    """A write already past its TTL (a backfill) is kept: Feast clients see it OUTSIDE_MAX_AGE."""
    st = store(clock, ttl_s=60)
    assert st.apply([("u", "x", 1, T0 - 90 * S)]) == (1, 0)
    assert entity(st, "u") is None
    assert rows(st, ["u"], ["x"])[0][0][1] == "OUTSIDE_MAX_AGE"


def test_fget_handler_validates_and_answers_rows():
    shard = ShardState(0, Store())
    shard.store.apply([("1", "v:a", 1, T0)])
    reply = dispatch(shard, P.fget(["1", "2"], ["v:a"], 3))
    assert reply == P.rows_reply(3, [b"1", b"null"], [b"P", b"N"], [b'"2025-11-25T12:05:29Z"', P.EPOCH_TS])
    for bad in (P.fget("1", ["v:a"], 4), P.fget([1], ["v:a"], 4), P.fget(["1"], [], 4), P.fget(["1"], None, 4)):
        reply = dispatch(shard, bad)
        assert (P.is_ok(reply), P.code_of(reply)) == (False, P.BAD_REQUEST)


_MEASURE_CACHE = """
import tracemalloc
from shard import store as store_module
T0 = %d
st = store_module.Store(view_ttls={"v:": 3600}, clock=lambda: T0)
ids = [str(i) for i in range(2000)]
st.apply([(e, f"v:f{k}", k * 0.5, T0) for e in ids for k in range(10)])
tracemalloc.start()
before = tracemalloc.take_snapshot()
st.render_many(ids)
st.render_rows(ids, [f"v:f{k}" for k in range(10)])
after = tracemalloc.take_snapshot()
only_store = [tracemalloc.Filter(True, store_module.__file__)]
grown = after.filter_traces(only_store).compare_to(before.filter_traces(only_store), "filename")
print(sum(d.size_diff for d in grown) / len(ids))
"""


def test_cached_renderings_cost_about_their_size():
    """orjson's output holds a 4 KiB buffer: the cache must keep exact copies, not 4 KiB per entity.

    Measured in a fresh interpreter: modules other tests import (Feast's) change what a
    process's allocator keeps around, and this is about the store alone."""
    import subprocess
    import sys

    from tests.support import ROOT
    out = subprocess.run([sys.executable, "-c", _MEASURE_CACHE % T0], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    per_entity = float(out)
    assert per_entity < 1500, per_entity


def test_a_full_render_cache_lets_the_oldest_rendering_go():
    st = Store(cache_entities=3)
    st.apply([(f"e{i}", "x", i, T0) for i in range(6)])
    st.render_many([f"e{i}" for i in range(6)])
    assert list(st._json) == ["e3", "e4", "e5"]
