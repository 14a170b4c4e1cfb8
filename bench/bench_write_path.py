"""The shard's write path without sockets: frame -> handle_frame (decode, validate, log, apply).

    python3 bench/bench_write_path.py [--values 1000000] [--repeat 3] [--profile]

Shapes, each 1,000,000 values by default, run in-process (CPU-bound, one core):
- ingest: frames of 10 ``write`` requests of 100 events x 5 features (what ``python -m ingest``
  sends), over 100,000 entities, so half the writes update an existing entity;
- batch: one ``write`` request of 1000 values a frame, 10 features per entity (bench_durability);
each memory-only and with a journal (``FS_FSYNC=no``, a temporary directory); then the replay of
that journal's log into an empty store (``Journal.recover``).
Reference measured in the same run: ``msgpack.unpackb`` of the same frames alone (the decode
every path pays), printed as the ratio write path / decode.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import tempfile
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import protocol as P  # noqa: E402
from shard.handlers import ShardState, handle_frame  # noqa: E402
from shard.persistence import Journal  # noqa: E402
from shard.store import Store  # noqa: E402

TS = 1_767_225_600_000_000


def ingest_frames(n_values: int, entities: int = 100_000) -> list[bytes]:
    frames, rid, i = [], 0, 0
    events = n_values // 5
    while i < events:
        reqs = []
        for _ in range(10):
            w = []
            for _ in range(100):
                eid = f"user:{i % entities}"
                w.extend([eid, f"f{j}", i * 10 + j + 0.5, TS + i] for j in range(5))
                i += 1
            rid += 1
            reqs.append({"t": P.WRITE, "id": rid, "w": w})
        frames.append(P.encode(reqs))
    return frames


def batch_frames(n_values: int) -> list[bytes]:
    frames, batch = [], []
    for e in range(n_values // 10):
        eid = f"user:{e:08d}"
        batch.extend([eid, f"feature_{k}", e * 0.001 + k, TS + e] for k in range(10))
        if len(batch) >= 1000:
            frames.append(P.encode([P.request(P.WRITE, len(frames), w=batch)]))
            batch = []
    if batch:
        frames.append(P.encode([P.request(P.WRITE, len(frames), w=batch)]))
    return frames


def run(frames: list[bytes], journal_dir: str | None) -> float:
    """CPU seconds to hand every frame to a fresh shard; checks every reply is ok."""
    store = Store(cache_entities=0)
    journal = None
    if journal_dir is not None:
        journal = Journal(journal_dir, store, 0, fsync="no", snapshot_log_bytes=1 << 40)
        journal.recover()
    shard = ShardState(0, store, journal)
    gc.collect()
    t0 = time.process_time()
    for f in frames:
        handle_frame(shard, f)
    t = time.process_time() - t0
    check = P.decode(handle_frame(shard, frames[-1]))
    assert all(r["ok"] for r in check), check[:1]
    if journal is not None:
        journal._stop_syncer()
        import os
        os.close(journal.fd)
    return t


def replay(journal_dir: str) -> tuple[float, int]:
    store = Store(cache_entities=0)
    journal = Journal(journal_dir, store, 0, fsync="no", snapshot_log_bytes=1 << 40)
    info = journal.recover()
    import os
    os.close(journal.fd)
    return info["recovery_cpu_s"], info["replayed_values"]


def decode_only(frames: list[bytes]) -> float:
    gc.collect()
    t0 = time.process_time()
    for f in frames:
        msgpack.unpackb(f, raw=False)
    return time.process_time() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of")
    parser.add_argument("--profile", action="store_true", help="cProfile the ingest shape")
    args = parser.parse_args()
    n = args.values
    shapes = {"ingest (10 req x 500 values)": ingest_frames(n), "batch (1 req x 1000 values)": batch_frames(n)}
    if args.profile:
        frames = shapes["ingest (10 req x 500 values)"]
        shard = ShardState(0, Store(cache_entities=0))
        cProfile.runctx("for f in frames: handle_frame(shard, f)", globals(), locals(), "/tmp/wp.prof")
        pstats.Stats("/tmp/wp.prof").sort_stats("tottime").print_stats(15)
        return
    print(f"# bench_write_path: {n:,} values per shape, best of {args.repeat}, CPU time in-process")
    for shape, frames in shapes.items():
        ref = min(decode_only(frames) for _ in range(args.repeat))
        mem = min(run(frames, None) for _ in range(args.repeat))
        best_j, best_r = None, None
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                j = run(frames, tmp)
                r, values = replay(tmp)
                assert values == n + sum(len(q["w"]) for q in P.decode(frames[-1])), values
            best_j = j if best_j is None else min(best_j, j)
            best_r = r if best_r is None else min(best_r, r)
        print(f"{shape:30s} decode only  {n / ref:12,.0f} values/s ({1e6 * ref / n:.2f} us/value)  reference")
        print(f"{shape:30s} memory only  {n / mem:12,.0f} values/s ({1e6 * mem / n:.2f} us/value)  {mem / ref:.2f}x decode")
        print(f"{shape:30s} with journal {n / best_j:12,.0f} values/s ({1e6 * best_j / n:.2f} us/value)  {best_j / ref:.2f}x decode")
        print(f"{shape:30s} log replay   {n / best_r:12,.0f} values/s ({1e6 * best_r / n:.2f} us/value)  {best_r / ref:.2f}x decode")


if __name__ == "__main__":
    main()
