"""Window state of aggregated features (shard/aggregate.py) against a brute-force oracle over the
raw events, and the ``[[aggregations]]`` spec (common/aggregations.py)."""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.aggregations import (US, AggregationError, parse_aggregation, parse_aggregations,
                                 worst_case_bytes)
from shard.aggregate import APPLIED, DUPLICATE, EARLY, LATE, Positions, WindowState

SPECS = [
    parse_aggregation({"feature": "clicks", "functions": ["count", "sum", "mean", "min", "max", "last_5"],
                       "windows": ["1h", "24h", "7d"]}),
    parse_aggregation({"feature": "v:spend", "functions": ["min", "count", "max", "sum", "last_3"],
                       "windows": ["10m", "1m", "1h"]}),
    parse_aggregation({"feature": "tag", "functions": ["count", "last_2"], "windows": ["10s", "90s"]}),
]
_LCM = math.lcm(*(lv.tile_us for spec in SPECS for lv in spec.levels))
T0 = 1_800_000_000 * US // _LCM * _LCM  # a multiple of every tile size, about 2027


def _coarsest(spec) -> int:
    return spec.levels[-1].tile_us


def _late_before(spec, clock: int) -> int:
    """The documented late boundary: the longest window back from the clock, rounded down to a
    tile of the coarsest level."""
    longest, tile = spec.windows[-1].us, _coarsest(spec)
    return (clock - longest) // tile * tile


def test_specs_align():
    for spec in SPECS:
        for w in spec.windows:
            assert w.us % spec.error_bound_us(w) == 0  # so reads at tile-aligned times are exact
        assert T0 % _coarsest(spec) == 0


# ---- the oracle: a list of accepted raw events
def _classify(spec, arrivals):
    """Which arrivals the documented rules accept: [(ts, order, value)], and the outcomes."""
    accepted, outcomes, ids = [], [], {}  # ids: event id -> event time, until it is late
    horizon = 0
    for order, (ts, value, event_id, clock) in enumerate(arrivals):
        horizon = max(horizon, clock)
        late = _late_before(spec, horizon)
        if ts < late:
            outcomes.append(LATE)
        elif ts >= horizon + spec.ahead_us:
            outcomes.append(EARLY)
        elif event_id is not None and ids.get(event_id, late - 1) >= late:
            outcomes.append(DUPLICATE)
        else:
            if event_id is not None:
                ids[event_id] = ts
            accepted.append((ts, order, value))
            outcomes.append(APPLIED)
    return accepted, outcomes


def _expected(spec, accepted, now, start_of):
    """Every output at ``now`` from the raw events; tile functions cover [start_of(w), now),
    last_N covers [now - w, now)."""
    out = {}
    for o in spec.outputs:
        lo = now - o.window.us if o.function == "last" else start_of(o.window)
        values = [v for ts, _, v in sorted(accepted) if lo <= ts < now]
        out[o.name] = {
            "count": lambda: len(values),
            "sum": lambda: sum(values) if values else 0,
            "mean": lambda: sum(values) / len(values) if values else None,
            "min": lambda: min(values) if values else None,
            "max": lambda: max(values) if values else None,
            "last": lambda: values[-o.n:],
        }[o.function]()
    return out


def _same(got, want) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        return got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)
    return got == want


def _assert_reads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    bad = {k: (got[k], want[k]) for k in want if not _same(got[k], want[k])}
    assert not bad, bad


# ---- streams
def _steps(spec):
    """One arrival's draws: clock step, event time offset, value, event id, redelivery pick."""
    longest, coarse, fine = spec.windows[-1].us, _coarsest(spec), spec.levels[0].tile_us
    value = (st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False))
             if spec.needs_number else st.one_of(st.none(), st.text(max_size=3), st.integers(-2**63, 2**63 - 1)))
    offset = st.one_of(st.integers(-longest - 2 * coarse, 3 * fine),  # anywhere, to the microsecond
                       st.integers(-longest // US - 2 * coarse // US, 0).map(lambda s: s * US))
    event_id = st.one_of(st.none(), st.just("own"), st.integers(0, 5))
    return st.lists(st.tuples(st.integers(0, longest // 8), offset, value, event_id, st.integers(-40, 100)),
                    min_size=1, max_size=60)


_STEPS = {spec.feature: _steps(spec) for spec in SPECS}


@st.composite
def streams(draw):
    """A spec and arrivals ``(event_us, value, event_id, clock_us)``: events out of order,
    late ones, ones ahead of the clock, redeliveries of earlier ones, a clock that advances."""
    spec = draw(st.sampled_from(SPECS))
    clock, arrivals = T0 - spec.windows[-1].us // 2, []
    for i, (step, offset, value, eid, again) in enumerate(draw(_STEPS[spec.feature])):
        clock += step
        if arrivals and again < 0:  # a redelivery of an earlier event
            ts, value, eid, _ = arrivals[again % len(arrivals)]
            arrivals.append((ts, value, eid, clock))
        else:
            arrivals.append((clock + offset, value, f"ev{i}" if eid == "own" else eid, clock))
    return spec, arrivals


def _run(spec, arrivals, repack_every: int = 0):
    state, outcomes = WindowState(spec), []
    for i, (ts, value, eid, clock) in enumerate(arrivals):
        outcomes.append(state.apply(value, ts, clock, eid))
        if repack_every and i % repack_every == 0:  # a snapshot and a reload mid-stream
            state = WindowState.unpack(spec, state.pack())
    return state, outcomes


SETTINGS = settings(max_examples=100, deadline=None, database=None, phases=[Phase.generate, Phase.shrink], suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(streams(), st.integers(0, 3), st.integers(0, 3))
def test_reads_at_tile_aligned_times_equal_the_oracle(stream, repack_every, later):
    spec, arrivals = stream
    state, outcomes = _run(spec, arrivals, repack_every)
    accepted, want_outcomes = _classify(spec, arrivals)
    assert outcomes == want_outcomes
    coarse = _coarsest(spec)
    last_ts = max(ts for ts, _, _ in accepted) if accepted else 0
    now = -(-max(arrivals[-1][3], last_ts + 1) // coarse) * coarse + later * coarse
    _assert_reads(state.read(now), _expected(spec, accepted, now, lambda w: now - w.us))


@SETTINGS
@given(streams(), st.integers(0, 10**12))
def test_reads_at_any_time_are_off_by_at_most_one_tile_at_the_old_edge(stream, after):
    spec, arrivals = stream
    state, _ = _run(spec, arrivals)
    accepted, _ = _classify(spec, arrivals)
    last_ts = max(ts for ts, _, _ in accepted) if accepted else 0
    now = max(arrivals[-1][3], last_ts + 1) + after % (2 * spec.windows[-1].us)
    for w in spec.windows:
        start, bound = state.window_start(now, w.us), spec.error_bound_us(w)
        assert now - w.us - bound < start <= now - w.us
    _assert_reads(state.read(now), _expected(spec, accepted, now, lambda w: state.window_start(now, w.us)))


@SETTINGS
@given(streams())
def test_a_replay_at_a_later_clock_reads_the_same(stream):
    """Log replay after a restart applies the same events at a later clock reading."""
    spec, arrivals = stream
    state, live = _run(spec, arrivals)
    final = arrivals[-1][3]
    replayed, again = _run(spec, [(ts, v, eid, max(final, clock)) for ts, v, eid, clock in arrivals])
    accepted, outcomes = _classify(spec, arrivals)
    if EARLY in outcomes:  # an event ahead of its clock may count at the later one: not compared
        return
    if any(lo == APPLIED and ro == LATE and any(e == eid and t != ts for t, _, e, _ in arrivals[i + 1:])
           for i, ((ts, _, eid, _), lo, ro) in enumerate(zip(arrivals, live, again)) if eid is not None):
        # a later event *of another time* reuses the id of one that the later clock finds late:
        # live, it was a duplicate; at the later clock, the first one's id is gone (AGGREGATIONS.md)
        return
    now = final + _coarsest(spec) // 3
    _assert_reads(replayed.read(now), state.read(now))


@SETTINGS
@given(streams(), st.integers(0, 10**12))
def test_reads_stay_the_same_until_valid_until(stream, after):
    spec, arrivals = stream
    state, _ = _run(spec, arrivals)
    now = arrivals[-1][3] + after % spec.windows[-1].us
    until = state.valid_until(now)
    assert until > now
    assert state.read(until - 1) == state.read(now)
    assert state.read(now + (until - now) // 2) == state.read(now)


def test_an_empty_window_reads_zero_counts_and_null_statistics():
    spec = SPECS[0]
    state = WindowState(spec)
    assert state.apply(5, T0 - 3 * 3600 * US, T0) == APPLIED
    got = state.read(T0)
    assert got["clicks_count_1h"] == 0 and got["clicks_sum_1h"] == 0
    assert got["clicks_mean_1h"] is None and got["clicks_min_1h"] is None and got["clicks_max_1h"] is None
    assert got["clicks_last_5_1h"] == []
    assert got["clicks_count_24h"] == 1 and got["clicks_mean_24h"] == 5.0 and got["clicks_last_5_24h"] == [5]


def test_an_event_older_than_the_longest_window_is_late_and_ignored():
    spec = SPECS[0]
    state = WindowState(spec)
    assert state.apply(1, T0 - 8 * 86400 * US, T0) == LATE
    assert state.apply(1, T0 + 3600 * US, T0) == EARLY
    assert state.tiles == {} and state.read(T0)["clicks_count_7d"] == 0


def test_a_repeated_event_id_counts_once_and_ids_expire_with_the_longest_window():
    spec = SPECS[0]
    state = WindowState(spec)
    assert state.apply(2, T0 - US, T0, "e1") == APPLIED
    assert state.apply(2, T0 - US, T0 + US, "e1") == DUPLICATE
    assert state.read(T0 + US)["clicks_sum_1h"] == 2
    later = T0 + 9 * 86400 * US
    assert state.apply(3, later - US, later, "e2") == APPLIED
    assert "e1" not in state.seen and state.tiles.keys() == {(later - US) // (300 * US) * 300}


def test_state_size_stays_under_2_kib_with_an_event_in_every_tile():
    """The worst case of the 1h/24h/7d spec: float values every 100 s over more than 7 days,
    arriving out of order while the clock advances; msgpack size of the whole state."""
    spec = SPECS[0]
    rng = random.Random(7)
    state = WindowState(spec)
    times = list(range(T0 - 8 * 86400 * US, T0 + 9 * 86400 * US, 100 * US))
    largest = 0
    for i in range(0, len(times), 500):
        chunk = times[i:i + 500]
        rng.shuffle(chunk)
        for ts in chunk:
            state.apply(rng.uniform(-1e9, 1e9), ts, max(chunk))
        largest = max(largest, len(state.pack()))
    assert largest <= 2048
    assert largest - 5 * 19 <= worst_case_bytes(spec.levels, spec.columns)  # the estimate bounds the tiles


def test_last_n_keeps_the_latest_by_event_time_whatever_the_arrival_order():
    spec = parse_aggregation({"feature": "x", "functions": ["last_3"], "windows": ["1h"]})
    state = WindowState(spec)
    for ts in (5, 1, 9, 3, 7, 9):
        state.apply(f"v{ts}", T0 - 1000 * US + ts * US, T0)
    assert state.read(T0)["x_last_3_1h"] == ["v7", "v9", "v9"]
    for value in ("a", "b", "c"):  # at an equal event time the later arrival is the later value
        state.apply(value, T0 - 10 * US, T0)
    assert state.read(T0)["x_last_3_1h"] == ["a", "b", "c"]
    state.apply("d", T0 - 10 * US, T0)
    assert state.read(T0)["x_last_3_1h"] == ["b", "c", "d"]


def test_positions_recognise_redeliveries():
    pos = Positions()
    assert pos.is_new("t/0", 0)
    pos.advance("t/0", 5)
    assert not pos.is_new("t/0", 5) and not pos.is_new("t/0", 3) and pos.is_new("t/0", 6)
    assert pos.is_new("t/1", 0)
    assert Positions.from_obj(pos.to_obj()).last == {"t/0": 5}


# ---- the spec
def test_names_are_feature_function_window():
    spec = SPECS[1]
    assert [o.name for o in spec.outputs][:3] == ["v:spend_min_1m", "v:spend_min_10m", "v:spend_min_1h"]
    assert spec.windows[0].label == "1m" and spec.last_n == 3 and spec.needs_number
    assert not SPECS[2].needs_number


def test_the_error_bound_is_a_twelfth_of_each_window_for_the_usual_spec():
    spec = SPECS[0]
    assert [spec.error_bound_us(w) // US for w in spec.windows] == [300, 7200, 50400]


@pytest.mark.parametrize("entry, words", [
    ({"feature": "c", "functions": ["median"], "windows": ["1h"]}, "function 'median'"),
    ({"feature": "c", "functions": ["last_0"], "windows": ["1h"]}, "N of last_N must be 1 to 100"),
    ({"feature": "c", "functions": ["last_101"], "windows": ["1h"]}, "N of last_N"),
    ({"feature": "c", "functions": ["count"], "windows": ["8d"]}, "longer than 7d"),
    ({"feature": "c", "functions": ["count"], "windows": ["1w"]}, "unit s, m, h or d"),
    ({"feature": "c", "functions": ["count"], "windows": ["60m", "1h"]}, "same length"),
    ({"feature": "c", "functions": ["count", "count"], "windows": ["1h"]}, "listed twice"),
    ({"feature": "c", "functions": [], "windows": ["1h"]}, "functions must be a non-empty list"),
    ({"feature": "c", "functions": ["count"]}, "windows is required"),
    ({"feature": "c d", "functions": ["count"], "windows": ["1h"]}, "feature must be a feature name"),
    ({"feature": "c", "functions": ["count"], "windows": ["1h"], "window": 1}, "'window' is not a key"),
    ({"feature": "c", "functions": ["sum"], "windows": [f"{i}s" for i in range(1, 200)]}, "fewer or more widely"),
])
def test_bad_entries_are_refused_with_a_clear_reason(entry, words):
    with pytest.raises(AggregationError) as info:
        parse_aggregations([entry])
    assert words in str(info.value) and "aggregations[0]" in str(info.value)


def test_a_feature_is_aggregated_once_and_names_do_not_collide():
    with pytest.raises(AggregationError, match="aggregated twice"):
        parse_aggregations([{"feature": "c", "functions": ["count"], "windows": ["1h"]}] * 2)
    with pytest.raises(AggregationError, match="both an aggregate"):
        parse_aggregations([{"feature": "c", "functions": ["count"], "windows": ["1h"]},
                            {"feature": "c_count_1h", "functions": ["count"], "windows": ["1h"]}])
    with pytest.raises(AggregationError, match="array of tables"):
        parse_aggregations({"feature": "c"})


# ---- the shard's aggregator
def _aggregator():
    from shard.aggregate import Aggregator
    return Aggregator((SPECS[0], SPECS[2]))


def test_the_aggregator_counts_positions_once_and_reads_every_output():
    agg = _aggregator()
    writes = [["u1", "clicks", 2, T0 - 10 * US], ["u1", "other", "x", T0 - 10 * US], ["u2", "clicks", 3, T0 - 5 * US]]
    assert agg.apply(writes, T0, source="kafka:t/0", positions=[7, 7, 8]) == {"u1", "u2"}
    # a redelivery overlapping what was applied: only position 9 is new
    agg.apply(writes + [["u1", "clicks", 5, T0 - US]], T0, source="kafka:t/0", positions=[7, 7, 8, 9])
    got, until = agg.read("u1", T0)
    values = {name: value for name, (value, _) in got.items()}
    assert values["clicks_count_1h"] == 2 and values["clicks_sum_24h"] == 7 and values["clicks_last_5_7d"] == [2, 5]
    assert got["clicks_sum_1h"][1] == T0 - US and T0 < until <= T0 + 300 * US
    assert agg.stats()["agg_redelivered"] == 2 and agg.stats()["agg_events"] == 3
    assert agg.read("nobody", T0) is None
    assert agg.read("u1", T0, {"clicks_sum_1h"})[0] == {"clicks_sum_1h": (7, T0 - US)}


def test_the_aggregator_refuses_what_it_cannot_aggregate():
    agg = _aggregator()
    with pytest.raises(ValueError, match="clicks is aggregated with sum, mean, min, max: its value must be a number, not a string"):
        agg.check([["u", "clicks", "3", T0]])
    with pytest.raises(ValueError, match="not a boolean"):
        agg.check([["u", "clicks", True, T0]])
    with pytest.raises(ValueError, match="computed by the aggregation of clicks"):
        agg.check([["u", "clicks_sum_1h", 3, T0]])
    with pytest.raises(ValueError, match="event id"):
        agg.check([["u", "clicks", 3, T0]], [[1]])
    agg.check([["u", "tag", "any value", T0], ["u", "clicks", 1.5, T0]], ["e1", 2])  # count/last_N take anything


def test_the_aggregator_survives_its_snapshot_and_forgets_deleted_entities():
    from shard.aggregate import Aggregator
    agg = _aggregator()
    agg.apply([["u", "clicks", 1, T0 - US], ["u", "tag", "a", T0 - US]], T0, ["e1", "e1"], "f.jsonl", [3, 3])
    copy = Aggregator((SPECS[0], SPECS[2]))
    copy.load(agg.to_obj())
    assert copy.read("u", T0) == agg.read("u", T0)
    copy.apply([["u", "clicks", 1, T0 - US]], T0, ["e1"])  # the same event id: counted once
    assert copy.read("u", T0)[0]["clicks_count_1h"][0] == 1
    assert copy.delete("u", "tag") and "tag_count_10s" not in copy.read("u", T0)[0]
    assert copy.delete("u") and copy.read("u", T0) is None and not copy.delete("u")


def test_states_beyond_the_hot_ones_are_packed_and_read_the_same():
    from shard.aggregate import Aggregator
    agg, hot = Aggregator((SPECS[0],)), Aggregator((SPECS[0],))
    agg.HOT_ENTITIES = 2
    for i in range(30):
        writes = [[f"u{i % 7}", "clicks", i, T0 - i * US], [f"u{(i * 3) % 7}", "clicks", 1, T0 - 2 * i * US]]
        agg.apply(writes, T0)
        hot.apply(writes, T0)
        assert len(agg.hot) <= 2 and len(agg) == len(hot)
    for i in range(7):
        assert agg.read(f"u{i}", T0) == hot.read(f"u{i}", T0)
    assert dict(agg.packed()) == dict(hot.packed())
