"""Embedded mode's safety: shards refuse entities of another slot table, /readyz names the
mismatch, a data directory refuses another table, and the offline reshard keeps every value."""
from __future__ import annotations

import subprocess
import sys

from common import protocol as P
from shard.handlers import ShardState, dispatch
from shard.topology import SlotOwner, TopologyMismatch, check_data_dir
from tests.support import Cluster, Proc, free_port, poll_for, quote, request

import pytest


def test_a_shard_refuses_what_its_slot_table_gives_another_shard():
    state = ShardState(0, owner=SlotOwner(0, 2))
    mine = next(f"e{i}" for i in range(100) if SlotOwner(0, 2).refusal(f"e{i}") is None)
    theirs = next(f"e{i}" for i in range(100) if SlotOwner(0, 2).refusal(f"e{i}") is not None)
    assert P.is_ok(dispatch(state, P.write([[mine, "x", 1, 5]], req_id=1)))
    for req in (P.get(theirs), P.get1(theirs, "x"), P.mget([mine, theirs]), P.fget([theirs], ["x"]),
                P.write([[mine, "x", 2, 6], [theirs, "x", 1, 5]]), P.delete(theirs)):
        P.stamp(req, 2)
        reply = dispatch(state, req)
        assert P.code_of(reply) == P.NOT_OWNER, (req, reply)
        assert "belongs to shard 1" in P.reason_of(reply) and "2 shards" in P.reason_of(reply)
    batch = dispatch(state, P.mget([mine, mine, theirs, mine], req_id=4))  # the first foreign id is named
    assert P.code_of(batch) == P.NOT_OWNER and f"entity {theirs!r}" in P.reason_of(batch)
    assert P.is_ok(dispatch(state, P.mget([mine, mine], req_id=5)))
    assert P.is_ok(dispatch(state, P.fget([mine], ["x"], req_id=6)))
    for req in (P.mget([mine, theirs]), P.fget([mine, theirs], ["x"])):  # mine's renderings are cached now
        assert P.code_of(dispatch(state, P.stamp(req, 7) and req)) == P.NOT_OWNER, req
    assert state.store.data.keys() == {mine}  # nothing of the refused write was applied
    assert P.code_of(dispatch(state, P.write([[1, "x", 1, 5]], req_id=3))) == P.BAD_REQUEST


def test_a_data_directory_remembers_its_slot_table(tmp_path):
    check_data_dir(str(tmp_path), 1, 2)
    check_data_dir(str(tmp_path), 1, 2)  # the same table: fine
    with pytest.raises(TopologyMismatch, match="written as shard 1 of 2, not shard 1 of 3"):
        check_data_dir(str(tmp_path), 1, 3)


def test_a_front_end_with_another_shard_count_stores_nothing_on_the_wrong_shard(tmp_path):
    with Cluster(tmp_path, shards=2) as c:
        wrong_port = free_port()
        wrong = Proc([sys.executable, "-m", "frontend"],
                     c.env(shard_endpoints=c.endpoints[0], http_port=wrong_port), tmp_path / "wrong.log")
        try:
            url = f"http://127.0.0.1:{wrong_port}"
            mismatch = "shard 0 serves the slot table of 2 shards"

            def named() -> tuple | bool:  # a 503 before the first shard answer says "not ready" instead
                got = request("GET", url + "/readyz")
                assert got[0] == 503, got
                return mismatch in (got[2] or {}).get("detail", "") and got

            poll_for(named, 15, what="the wrong front end's /readyz to name the mismatch")
            saved, refused = [], []
            for i in range(10):
                eid = f"user:{i}"
                status, headers, body = request("POST", url + "/features", {"entity_id": eid, "name": "v", "value": i})
                if status == 200:
                    saved.append(eid)
                else:
                    assert status == 503 and "belongs to shard 1" in body["detail"], (status, body)
                    assert headers["Retry-After"]
                    refused.append(eid)
            assert saved and refused
            for eid in saved:  # the right front end finds each 200 ...
                assert request("GET", c.url + "/features/" + quote(eid))[0] == 200
            for eid in refused:  # ... and none of the refused ones anywhere
                assert request("GET", c.url + "/features/" + quote(eid))[0] == 404
            status, _, body = request("GET", url + "/features/" + quote(refused[0]))
            assert status == 503 and "belongs to shard 1" in body["detail"]
        finally:
            wrong.stop()


def test_a_shard_will_not_start_on_a_directory_of_another_table(tmp_path):
    data = tmp_path / "data"
    with Cluster(tmp_path, shards=2, data_dir=data) as c:
        assert request("POST", c.url + "/features", {"entity_id": "e", "name": "v", "value": 1})[0] == 200
    env = Cluster(tmp_path, shards=3, data_dir=data).env()
    done = subprocess.run([sys.executable, "-m", "shard", "--index", "1"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "was written as shard 1 of 2, not shard 1 of 3" in lines[0], done.stderr


def test_reshard_two_to_three_keeps_every_value(tmp_path):
    data = tmp_path / "data"
    expected = {}
    with Cluster(tmp_path, shards=2, data_dir=data) as c:
        for i in range(300):
            eid = f"ent/{i} ü"
            feats = {"a": i, "b": f"s{i}", "c": [i, None]}
            status, _, body = request("POST", c.url + "/features",
                                      {"entity_id": eid, "features": feats, "event_timestamp": 1_700_000_000 + i})
            assert status == 200, body
            expected[eid] = feats
        request("DELETE", c.url + "/features/" + quote("ent/0 ü") + "/c")
        del expected["ent/0 ü"]["c"]
    done = subprocess.run([sys.executable, "-m", "shard.reshard", "--data-dir", str(data), "--to-shards", "3"],
                          env=Cluster(tmp_path, shards=3).env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"entities": 300' in done.stdout and '"to_shards": 3' in done.stdout
    with Cluster(tmp_path, shards=3, data_dir=data) as c:
        ids = sorted(expected)
        for start in range(0, len(ids), 100):
            status, _, body = request("POST", c.url + "/features/batch", {"entity_ids": ids[start:start + 100]})
            assert status == 200
            for part in body["results"]:
                assert part["features"] == expected[part["entity_id"]], part
        stats = request("GET", c.url + "/stats")[2]
        assert stats["totals"]["entities"] == 300 and stats["totals"]["values"] == 899
        assert all(s["entities"] > 0 for s in stats["shards"])  # the third shard got its share
