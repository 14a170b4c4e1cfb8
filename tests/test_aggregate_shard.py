"""Aggregations in the shard without sockets: the Store's reads and render caches, the write
handler's event ids and source positions, the log, snapshots and recovery."""
from __future__ import annotations

import orjson

from common import protocol as P
from common.aggregations import US, parse_aggregations
from shard.handlers import ShardState, dispatch
from shard.persistence import Journal
from shard.store import Store

NOW = 1_800_000_000 * US // (50400 * US) * (50400 * US)  # a multiple of every tile size
AGGS = parse_aggregations([
    {"feature": "clicks", "functions": ["count", "sum", "mean", "min", "max", "last_2"], "windows": ["1h", "24h"]},
    {"feature": "v:tag", "functions": ["count"], "windows": ["10m"]},
])


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def store(clock=None, **kw) -> Store:
    return Store(clock=clock or Clock(NOW), aggregations=AGGS, **kw)


def entity(st: Store, eid: str) -> dict | None:
    body = st.render_entity(eid)
    return None if body is None else orjson.loads(body)["features"]


def write(shard: ShardState, writes, **meta) -> dict:
    return dispatch(shard, P.write([list(w) for w in writes], 1, **meta))


def test_aggregates_read_with_the_entitys_other_features():
    st = store()
    st.apply([["u", "clicks", 5, NOW - 10 * US], ["u", "name", "ann", NOW - 10 * US],
              ["u", "clicks", 1, NOW - 7200 * US]])  # older: loses last-write-wins, still counts
    feats = entity(st, "u")
    assert feats["clicks"] == 5 and feats["name"] == "ann"
    assert feats["clicks_count_1h"] == 1 and feats["clicks_count_24h"] == 2 and feats["clicks_sum_24h"] == 6
    assert feats["clicks_mean_24h"] == 3.0 and feats["clicks_min_24h"] == 1 and feats["clicks_last_2_24h"] == [1, 5]
    assert "v:tag_count_10m" not in feats  # the entity never had a v:tag event
    one = orjson.loads(st.render_feature("u", "clicks_sum_24h"))
    assert one["value"] == 6 and one["event_timestamp"].endswith("Z")
    assert st.render_feature("u", "v:tag_count_10m") is None
    assert orjson.loads(st.render_entity("u", ["clicks_max_1h", "name"]))["features"] == {"clicks_max_1h": 5, "name": "ann"}


def test_reclaimed_windows_read_empty_in_every_read_path_after_their_value_expired():
    """A TTL on the aggregated feature itself: once its value has expired and its windows were
    reclaimed, the whole-entity read shows the empty windows as the named and Feast reads do."""
    clock = Clock(NOW)
    st = store(clock, ttl_s=3600, grace_s=10 * 86400)  # the expired value stays until the grace ends
    st.apply([["u", "clicks", 5, NOW - 600 * US], ["u", "name", "ann", NOW - 600 * US]])
    clock.now = NOW + 2 * 86400 * US
    st.apply([["u", "name", "bob", clock.now - US]])  # a live value, so the entity is there
    for _ in range(100):
        st.sweep()
        clock.now += st.SWEEP_INTERVAL_US
    assert len(st.aggs) == 0 and st.stats()["agg_reclaimed"] == 1
    named = orjson.loads(st.render_entity("u", ["clicks_count_24h", "name"]))["features"]
    assert named == {"clicks_count_24h": 0, "name": "bob"}
    whole = entity(st, "u")
    assert whole["clicks_count_24h"] == 0 and whole["clicks_mean_1h"] is None and "clicks" not in whole
    vs, ss, _ = st.render_rows(["u"], ["clicks_count_24h"])
    assert vs == [b"0"] and ss == [P.PRESENT]


def test_the_render_cache_never_serves_a_stale_window():
    clock = Clock(NOW)
    st = store(clock)
    st.apply([["u", "clicks", 5, NOW - 10 * US]])
    assert entity(st, "u")["clicks_count_1h"] == 1
    clock.now = NOW + 3600 * US  # the event is now older than an hour; nothing was written
    feats = entity(st, "u")
    assert feats["clicks_count_1h"] == 0 and feats["clicks_sum_1h"] == 0 and feats["clicks_mean_1h"] is None
    assert feats["clicks_count_24h"] == 1
    v, s, _ = st.render_rows(["u"], ["clicks_count_1h", "clicks_mean_1h", "v:tag_count_10m"])
    assert v[0].split(P.SEP) == [b"0", b"null", b"null"] and s[0] == P.NULL_VALUE.join([P.PRESENT, P.NOT_FOUND_S])


def test_feast_rows_say_present_or_not_found():
    st = store()
    st.apply([["u", "clicks", 2, NOW - US]])
    v, s, _ = st.render_rows(["u", "nobody"], ["clicks_sum_1h", "clicks"])
    assert v[0].split(P.SEP) == [b"2", b"2"] and s[0] == P.PRESENT * 2
    assert s[1] == P.NOT_FOUND_S * 2


def test_a_bad_write_of_an_aggregated_feature_is_refused_whole():
    shard = ShardState(0, store())
    reply = write(shard, [["u", "other", 1, NOW], ["u", "clicks", "three", NOW]])
    assert reply["code"] == P.BAD_REQUEST and "clicks is aggregated with sum, mean, min, max" in reply["reason"]
    reply = write(shard, [["u", "clicks_sum_1h", 1, NOW]])
    assert reply["code"] == P.BAD_REQUEST and "write clicks" in reply["reason"]
    assert shard.store.data == {} and len(shard.store.aggs) == 0
    assert write(shard, [["u", "clicks", 1, NOW]], event_ids=[1, 2])["code"] == P.BAD_REQUEST
    assert write(shard, [["u", "clicks", 1, NOW]], origin="f", positions=["x"])["code"] == P.BAD_REQUEST


def test_event_ids_and_positions_count_a_redelivery_once():
    shard = ShardState(0, store())
    writes = [["u", "clicks", 1, NOW - 5 * US], ["u", "clicks", 2, NOW - 4 * US]]
    for _ in range(2):
        assert write(shard, writes, event_ids=["a", "b"])["ok"]
        assert write(shard, writes, origin="kafka:t/0", positions=[10, 11])["ok"]
    assert entity(shard.store, "u")["clicks_count_1h"] == 4
    assert shard.store.stats()["agg_duplicates"] == 2 and shard.store.stats()["agg_redelivered"] == 2


def test_deleting_the_feature_or_the_entity_deletes_its_windows():
    st = store()
    st.apply([["u", "clicks", 1, NOW - US], ["u", "v:tag", "x", NOW - US], ["w", "clicks", 1, NOW - US]])
    assert st.delete("u", "clicks") == 1
    feats = entity(st, "u")
    assert "clicks_count_1h" not in feats and feats["v:tag_count_10m"] == 1
    assert st.delete("u") == 1 and entity(st, "u") is None and st.render_feature("u", "v:tag_count_10m") is None
    assert st.delete("w") == 1 and len(st.aggs) == 0


def _journal(path, clock) -> Journal:
    j = Journal(str(path), store(clock), 0, fsync="always")
    j.recover()
    return j


def test_the_log_and_snapshots_bring_the_windows_back(tmp_path):
    clock = Clock(NOW)
    j = _journal(tmp_path, clock)
    shard = ShardState(0, j.store, j)
    write(shard, [["u", "clicks", 3, NOW - 100 * US], ["u", "clicks", 4, NOW - 50 * US]],
          event_ids=["a", "b"], origin="file:/x", positions=[1, 2])
    j.snapshot_now()
    clock.now = NOW + 600 * US
    write(shard, [["u", "clicks", 5, NOW + 100 * US], ["u", "clicks", 5, NOW + 100 * US]], event_ids=["c", "c"])
    write(shard, [["u", "v:tag", None, NOW + 200 * US]], origin="file:/x", positions=[3])
    j.sync_pending()
    before = j.store.render_entity("u")
    assert orjson.loads(before)["features"]["clicks_count_1h"] == 3
    # a crash (no final snapshot): the snapshot, then the log replayed, hours later
    again = _journal(tmp_path, Clock(NOW + 5 * 3600 * US))
    again.store.clock = Clock(NOW + 600 * US)  # reads at the time of the first ones match them
    assert again.store.render_entity("u") == before
    assert again.store.aggs.positions.last == {"file:/x": 3}
    shard = ShardState(0, again.store, again)
    write(shard, [["u", "clicks", 3, NOW - 100 * US]], origin="file:/x", positions=[1])  # redelivered
    write(shard, [["u", "clicks", 5, NOW + 100 * US]], event_ids=["c"])  # its id was seen
    assert again.store.render_entity("u") == before
    again.close()  # a clean stop: the final snapshot alone holds it all
    third = _journal(tmp_path, Clock(NOW + 600 * US))
    assert third.store.render_entity("u") == before and third.store.aggs.positions.last == {"file:/x": 3}
    third.close()


def test_the_write_builder_spells_its_optional_fields():
    assert P.write([["a", "x", 1, 10]], 3, ["e1"], "kafka:t/0", [5]) == {
        "t": "write", "id": 3, "w": [["a", "x", 1, 10]], "ids": ["e1"], "src": "kafka:t/0", "at": [5]}
    assert P.write([["a", "x", 1, 10]], 3) == {"t": "write", "id": 3, "w": [["a", "x", 1, 10]]}
    assert P.write_origin(P.write([], 1, None, "f", [])) == (None, "f", [])


def test_windows_whose_events_all_aged_out_are_reclaimed_and_read_empty():
    """An entity that stops receiving events stops costing window memory: the sweep drops its
    states once every event is older than the longest window; its aggregates then read as
    empty windows, as they did just before, in every read path."""
    clock = Clock(NOW)
    st = store(clock)
    st.apply([[f"quiet{i}", "clicks", i, NOW - 600 * US] for i in range(50)] + [["quiet0", "v:tag", "x", NOW - US]])
    before = entity(st, "quiet1")
    assert before["clicks_count_1h"] == 1 and len(st.aggs) == 50
    clock.now = NOW + 2 * 86400 * US  # past 24h and its last tile: every event of theirs is late
    st.apply([["busy", "clicks", 7, clock.now - US]])
    empty = entity(st, "quiet1")
    for _ in range(100):  # sweep steps until a pass over every entity has run
        st.sweep()
        clock.now += st.SWEEP_INTERVAL_US
    assert len(st.aggs) == 1 and st.stats()["agg_reclaimed"] == 51 and st.stats()["agg_entities"] == 1
    assert entity(st, "quiet1") == empty and empty["clicks_count_24h"] == 0 and empty["clicks_mean_1h"] is None
    assert empty["clicks_last_2_24h"] == [] and empty["clicks"] == 1
    assert orjson.loads(st.render_feature("quiet1", "clicks_sum_24h"))["value"] == 0
    vs, ss, _ = st.render_rows(["quiet1", "nobody"], ["clicks_count_1h"])
    assert ss == [P.PRESENT, P.NOT_FOUND_S] and vs[0] == b"0"
    assert entity(st, "busy")["clicks_count_1h"] == 1  # a live one keeps its windows
    st.apply([["quiet1", "clicks", 3, clock.now - US]])  # events again: windows again
    assert entity(st, "quiet1")["clicks_count_1h"] == 1 and len(st.aggs) == 2
