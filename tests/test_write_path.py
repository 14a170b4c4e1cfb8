"""The shard's one-pass write path (Store.prepare/commit, handle_write) against a plain model."""
import os
import random

import orjson
import pytest

from common import protocol as P
from shard.handlers import ShardState, handle_frame
from shard.persistence import Journal
from shard.store import Store



def model_apply(state: dict, writes) -> tuple[int, int]:
    """Last-write-wins by event time, an equal time to the later write, one write at a time."""
    written = stale = 0
    for eid, name, value, ts in writes:
        cur = state.setdefault(eid, {}).get(name)
        if cur is not None and cur[1] > ts:
            stale += 1
            continue
        state[eid][name] = [value, ts]
        written += 1
    return written, stale


def random_batch(rng: random.Random, size: int) -> list:
    """Runs of writes to a few entities, entities repeated far apart, names repeated in a run,
    event times from a small range: stale writes, ties and fresh ones all mixed."""
    out = []
    while len(out) < size:
        eid = f"e{rng.randrange(12)}"
        for _ in range(rng.randrange(1, 6)):
            value = rng.choice([rng.random(), rng.randrange(-5, 5), "s", None, True, [1, {"k": 2}]])
            out.append([eid, f"n{rng.randrange(4)}", value, rng.randrange(8)])
    return out


@pytest.mark.parametrize("seed", range(20))
def test_batches_match_one_write_at_a_time(seed):
    rng = random.Random(seed)
    store, model = Store(), {}
    for _ in range(15):
        batch = random_batch(rng, rng.randrange(0, 40))
        for eid in list(model)[:4]:  # fill the render caches: a write must drop them
            store.render_entity(eid)
            store.render_rows([eid], ["n0", "n1"])
        assert store.apply(batch) == model_apply(model, batch)
        assert {eid: store.features(eid) for eid in store.data} == {e: f for e, f in model.items() if f}
        assert store.values == sum(len(f) for f in model.values())
        for eid, feats in model.items():
            body = store.render_entity(eid)
            assert orjson.loads(body)["features"] == {n: vt[0] for n, vt in feats.items()}
            v, _, _ = store.render_rows([eid], ["n0", "n1"])
            want = [orjson.dumps(feats[n][0]) if n in feats else b"null" for n in ("n0", "n1")]
            assert v[0] == P.SEP.join(want)


def test_an_entity_whose_writes_are_all_stale_is_left_as_it_was():
    store = Store()
    store.apply([["u", "a", 1, 10], ["u", "b", 2, 10], ["v", "a", 1, 1]])
    blob, body = store.data["u"], store.render_entity("u")
    assert store.apply([["u", "a", 9, 5], ["v", "a", 2, 2], ["u", "b", 9, 9]]) == (1, 2)
    assert store.data["u"] is blob and store.render_entity("u") is body  # not re-encoded, cache kept
    assert store.features("v") == {"a": [2, 2]}


def journaled(tmp_path) -> ShardState:
    store = Store()
    journal = Journal(str(tmp_path), store, 0, fsync="no")
    journal.recover()
    return ShardState(0, store, journal)


@pytest.mark.parametrize("bad", [
    "abcd",  # four characters unpack like four strings
    {"a": 1, "b": 2, "c": 3, "d": 4},  # a map of four keys
    ["u", "x", 1],
    ["u", "x", 1, 5, 6],
    ["u", "x", 1, True],  # a bool is not an event time
    ["u", "x", 1, 1.5],
    [7, "x", 1, 5],
    [None, "x", 1, 5],
    ["u", 7, 1, 5],
    ["u", None, 1, 5],
    ["u", ["x"], 1, 5],
    None,
    5,
])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_bad_item_among_good_ones_refuses_the_request_and_changes_nothing(tmp_path, bad, where):
    shard = journaled(tmp_path)
    shard.store.apply([["u", "x", 0, 1]])
    good = [["u", "x", 1, 5], ["w", "y", 2, 5], ["u", "z", 3, 5]]
    items = {"first": [bad, *good], "middle": [good[0], bad, *good[1:]], "last": [*good, bad]}[where]
    before = (dict(shard.store.data), shard.store.stats(), shard.journal.size)
    index = items.index(bad)
    (alone,) = P.decode(handle_frame(shard, P.encode([P.write(items, 3)])))
    assert (P.id_of(alone), P.code_of(alone)) == (3, P.BAD_REQUEST)
    assert P.reason_of(alone).startswith(f"w[{index}]")  # the shard names the bad item
    assert (shard.store.data, shard.store.stats(), shard.journal.size) == before  # nothing logged
    frame = P.encode([P.write(items, 4), P.write(good, 5)])
    bad_reply, ok_reply = P.decode(handle_frame(shard, frame))
    assert bad_reply == P.error(4, P.BAD_REQUEST, P.reason_of(alone))
    assert ok_reply == P.write_reply(5, 3, 0)  # the next request is served
    assert shard.store.features("u") == {"x": [1, 5], "z": [3, 5]}
    # only the good requests reached the log: a replay gives the same state
    os.close(shard.journal.fd)
    replayed = Store()
    Journal(str(tmp_path), replayed, 0, fsync="no").recover()
    assert replayed.data == shard.store.data and replayed.values == shard.store.values == 3

def test_a_value_that_cannot_be_stored_raises_before_anything_changes():
    store = Store()
    store.apply([["a", "x", 0, 1]])
    deep = 0
    for _ in range(2000):  # deeper than msgpack packs (a frame this deep does not decode either)
        deep = [deep]
    before = (dict(store.data), store.stats())
    with pytest.raises(ValueError):
        store.apply([["a", "x", 1, 5], ["b", "x", deep, 5], ["c", "x", 1, 5]])
    assert (store.data, store.stats()) == before

def test_replay_of_tuples_gives_the_blobs_of_live_writes(tmp_path):
    shard = journaled(tmp_path)
    writes = [["u", "x", [1, [2, {"k": [3]}]], 5], ["u", "y", {"a": [1.5, None]}, 6], ["v", "x", "s", 1]]
    frame = P.encode([P.write(writes, 1)])
    assert P.decode(handle_frame(shard, frame))[0][P.OK]
    os.close(shard.journal.fd)
    replayed = Store()
    Journal(str(tmp_path), replayed, 0, fsync="no").recover()
    assert replayed.data == shard.store.data
    assert replayed.features("u") == {"x": [[1, [2, {"k": [3]}]], 5], "y": [{"a": [1.5, None]}, 6]}
