"""``python -m shard.reshard --data-dir D --to-shards M``: redistribute stopped shards' data
directories to another shard count, offline.

Reads every ``D/shard-<i>/`` (its ``TOPOLOGY.json`` gives the old count; ``--from-shards`` when a
directory predates it), recovers each into memory exactly as a shard would, splits the entities
by the new slot table, writes each new shard's directory (a snapshot and its topology) under
``D/.reshard-new/``, then moves the old directories to ``D/.reshard-old-<time>/`` and the new ones
into place. Run it only while every shard is stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

from common.partition import Partitioner
from shard.cluster import values_in
from shard.persistence import Journal, RecoveryError, write_snapshot
from shard.store import Store
from shard.topology import TOPOLOGY_FILE, write_topology

log = logging.getLogger("shard.reshard")


def old_count(data_dir: str, given: int | None) -> int:
    """The shard count the directories were written under."""
    try:
        with open(os.path.join(data_dir, "shard-0", TOPOLOGY_FILE)) as fh:
            found = json.load(fh)["shards"]
    except FileNotFoundError:
        if given is None:
            raise SystemExit(f"reshard: {data_dir}/shard-0 has no {TOPOLOGY_FILE}: give --from-shards") from None
        return given
    if given is not None and given != found:
        raise SystemExit(f"reshard: {data_dir} holds {found} shards, not {given}")
    return found


def reshard(data_dir: str, to_shards: int, from_shards: int | None = None) -> dict:
    """Redistribute ``data_dir``; return counts of what moved."""
    n = old_count(data_dir, from_shards)
    new = [Store() for _ in range(to_shards)]
    route = Partitioner(to_shards).shard_for
    entities = 0
    for i in range(n):
        directory = os.path.join(data_dir, f"shard-{i}")
        if not os.path.isdir(directory):
            raise SystemExit(f"reshard: {directory} is missing (the data of {n} shards is expected)")
        old = Store()
        journal = Journal(directory, old, i, fsync="no")
        journal.recover()
        journal.close()
        for eid, blob in old.data.items():
            new[route(eid)].data[eid] = blob
        entities += len(old.data)
    staging = os.path.join(data_dir, ".reshard-new")
    shutil.rmtree(staging, ignore_errors=True)
    for j, store in enumerate(new):
        directory = os.path.join(staging, f"shard-{j}")
        os.makedirs(directory)
        store.values = sum(map(values_in, store.data.values()))
        write_snapshot(directory, 1, store, j)
        write_topology(directory, j, to_shards)
    backup = os.path.join(data_dir, f".reshard-old-{time.strftime('%Y%m%dT%H%M%S')}")
    os.makedirs(backup)
    for i in range(n):
        os.rename(os.path.join(data_dir, f"shard-{i}"), os.path.join(backup, f"shard-{i}"))
    for j in range(to_shards):
        os.rename(os.path.join(staging, f"shard-{j}"), os.path.join(data_dir, f"shard-{j}"))
    os.rmdir(staging)
    return {"from_shards": n, "to_shards": to_shards, "entities": entities, "old_dirs": backup}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shard.reshard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="FS_DATA_DIR of the shards (all stopped)")
    parser.add_argument("--to-shards", type=int, required=True, help="the new FS_SHARDS")
    parser.add_argument("--from-shards", type=int, help="the old FS_SHARDS, when no TOPOLOGY.json says it")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.to_shards < 1:
        print("reshard: --to-shards must be at least 1", file=sys.stderr)
        return 2
    try:
        done = reshard(args.data_dir, args.to_shards, args.from_shards)
    except (RecoveryError, OSError) as exc:
        print(f"reshard: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
