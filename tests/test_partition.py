import subprocess
import sys
from collections import Counter

import pytest

from common.partition import SLOTS, Partitioner, default_table, slot_of
from tests.support import ROOT

IDS = ["user_1", "2025-06-01", "a:b", "user/1", "\u00fc 1", "x" * 512] + [f"e{i}" for i in range(200)]


def test_shard_is_the_same_in_another_interpreter_with_another_hash_seed():
    here = [Partitioner(4).shard_for(e) for e in IDS]
    code = ("import json,sys; from common.partition import Partitioner; p=Partitioner(4);"
            "print(json.dumps([p.shard_for(e) for e in json.load(sys.stdin)]))")
    import json

    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(IDS), capture_output=True,
                             text=True, cwd=ROOT, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"},
                             check=True).stdout
        assert json.loads(out) == here


def test_default_table_gives_each_shard_one_contiguous_range():
    for n in (1, 2, 3, 7):
        table = default_table(n)
        assert len(table) == SLOTS and set(table) == set(range(n))
        assert list(table) == sorted(table)


def test_entities_spread_over_shards():
    p = Partitioner(2)
    counts = Counter(p.shard_for(f"user_{i}") for i in range(20000))
    assert abs(counts[0] - counts[1]) < 20000 * 0.05


def test_moving_one_slot_moves_only_its_entities():
    p2 = Partitioner(2)
    moved_slot = slot_of("user_42")
    table = list(p2.table)
    table[moved_slot] = 2
    p3 = Partitioner(3, tuple(table))
    for eid in (f"user_{i}" for i in range(5000)):
        expected = 2 if slot_of(eid) == moved_slot else p2.shard_for(eid)
        assert p3.shard_for(eid) == expected


def test_group_keeps_request_order_per_shard():
    p = Partitioner(3)
    groups = p.group(IDS)
    assert sorted(pos for g in groups.values() for pos in g) == list(range(len(IDS)))
    for shard, positions in groups.items():
        assert positions == sorted(positions)
        assert all(p.shard_for(IDS[pos]) == shard for pos in positions)


def test_a_bad_table_is_refused():
    with pytest.raises(ValueError):
        Partitioner(2, (0, 1, 2) * (SLOTS // 3) + (0,))


def test_route_puts_each_event_where_shard_for_says_in_order():
    p = Partitioner(3)
    events = [[(f"user:{i % 7}", "x", i, i)] for i in range(50)] + [[("user:1", "y", 0, 0), ("user:1", "z", 0, 0)]]
    expected: dict = {}
    for writes in events:
        expected.setdefault(p.shard_for(writes[0][0]), []).extend(writes)
    by_shard: dict = {}
    for writes in events:  # the event lists become buckets: they are the decoder's own
        p.route(by_shard, writes)
    assert by_shard == expected and len(by_shard) > 1
