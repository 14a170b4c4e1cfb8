"""The shard's write path without sockets: frame -> handle_frame (decode, check, log, apply), and replay.

    python3 bench/bench_write_path.py [--values 200000] [--rounds 9] [--against /work/main]

Shapes, run in-process (CPU-bound, one core), each on a fresh memory-only shard:
- ingest: frames of 10 ``write`` requests of 100 events x 5 features (what ``python -m ingest``
  sends), entities repeated every 20,000 events, so half the writes update an existing entity;
- batch: one ``write`` request of 1000 values a frame, 10 features per entity (bench_durability);
and the replay (``Journal.recover``) of the log those frames leave with ``FS_FSYNC=no``; and
``parse events``: ingest's decode stage (``Decoder.add_lines``: JSON lines of 5-feature events,
1000 a chunk, validated and routed to 4 shards), the same events as the ingest shape.

Reference, measured in the same run: the code of another checkout (``--against``, default
/work/main), run in a second worker process; the two workers take turns, ``--rounds`` times, and
the best CPU time of each is kept (this VM's speed drifts by 2x within minutes), then printed
as the ratio this tree / reference. Without ``--against ''`` only this tree is measured, next to
``msgpack.unpackb`` of the same frames (the decode every write pays).
"""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent.parent)
TS = 1_767_225_600_000_000
TESTS = ("memory ingest", "memory batch", "replay ingest", "replay batch", "parse events")


def ingest_frames(P, n_values: int, entities: int) -> list[bytes]:
    frames, rid, i = [], 0, 0
    while i < n_values // 5:
        reqs = []
        for _ in range(10):
            w = []
            for _ in range(100):
                w.extend([f"user:{i % entities}", f"f{j}", i * 10 + j + 0.5, TS + i] for j in range(5))
                i += 1
            rid += 1
            reqs.append(P.write(w, rid))
        frames.append(P.encode(reqs))
    return frames


def batch_frames(P, n_values: int) -> list[bytes]:
    frames, batch = [], []
    for e in range(n_values // 10):
        batch.extend([f"user:{e:08d}", f"feature_{k}", e * 0.001 + k, TS + e] for k in range(10))
        if len(batch) >= 1000:
            frames.append(P.encode([P.write(batch, len(frames))]))
            batch = []
    if batch:
        frames.append(P.encode([P.write(batch, len(frames))]))
    return frames


def event_chunks(n_values: int, entities: int) -> list[list[bytes]]:
    import orjson
    lines = [orjson.dumps({"entity_id": f"user:{i % entities}", "event_timestamp": "2026-01-01T00:00:00Z",
                           "features": {f"f{j}": i * 10 + j + 0.5 for j in range(5)}})
             for i in range(n_values // 5)]
    return [lines[i:i + 1000] for i in range(0, len(lines), 1000)]


def parse_events(chunks: list[list[bytes]], n_values: int) -> float:
    """CPU seconds of ingest's decode stage over ``chunks``, with the code on ``sys.path``."""
    from common.events import Limits
    from common.partition import Partitioner
    from ingest.decode import DeadLetters, Decoder, Unit

    decoder = Decoder(Limits(), Partitioner(4), DeadLetters(os.devnull), 1 << 20)
    units = []
    t0 = time.process_time()
    for chunk in chunks:
        unit = Unit()
        decoder.add_lines(unit, chunk, str)
        units.append(unit)
    t = time.process_time() - t0
    assert sum(len(w) for u in units for w in u.by_shard.values()) == n_values
    return t


def worker(root: str, n_values: int) -> None:
    """Answer test names on stdin with the CPU seconds each took, using the code under ``root``."""
    sys.path.insert(0, root)
    import msgpack
    from common import protocol as P
    from shard.handlers import ShardState, handle_frame
    from shard.persistence import Journal
    from shard.store import Store

    shapes = {"ingest": ingest_frames(P, n_values, n_values // 50), "batch": batch_frames(P, n_values)}
    chunks = event_chunks(n_values, n_values // 50)
    logs = {}
    for shape, frames in shapes.items():  # the log each shape leaves, replayed by "replay <shape>"
        logs[shape] = tempfile.mkdtemp(prefix="bench-write-path-")
        store = Store(cache_entities=0)
        journal = Journal(logs[shape], store, 0, fsync="no", snapshot_log_bytes=1 << 40)
        journal.recover()
        shard = ShardState(0, store, journal)
        for f in frames:
            assert all(r[P.OK] for r in P.decode(handle_frame(shard, f)))
        journal._stop_syncer()
        os.close(journal.fd)
    for line in sys.stdin:
        kind, shape = line.split()
        gc.collect()
        if kind == "decode":
            t0 = time.process_time()
            for f in shapes[shape]:
                msgpack.unpackb(f, raw=False)
            t = time.process_time() - t0
        elif kind == "parse":
            t = parse_events(chunks, n_values)
        elif kind == "memory":
            shard = ShardState(0, Store(cache_entities=0))
            t0 = time.process_time()
            for f in shapes[shape]:
                handle_frame(shard, f)
            t = time.process_time() - t0
            assert shard.store.writes == n_values, shard.store.stats()
        else:
            store = Store(cache_entities=0)
            journal = Journal(logs[shape], store, 0, fsync="no", snapshot_log_bytes=1 << 40)
            info = journal.recover()
            os.close(journal.fd)
            assert info["replayed_values"] == n_values, info
            t = info["recovery_cpu_s"]
            for name in os.listdir(logs[shape]):  # the empty log recover() opened: next replay alike
                path = os.path.join(logs[shape], name)
                if os.path.getsize(path) == 0:
                    os.unlink(path)
        print(t, flush=True)
    for d in logs.values():
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=200_000, help="values per shape")
    parser.add_argument("--rounds", type=int, default=9, help="turns each tree takes; best kept")
    parser.add_argument("--against", default="/work/main", help="the reference checkout ('' = none)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.values)
    trees = {"this tree": HERE}
    if args.against:
        trees["reference"] = str(Path(args.against).resolve())
    procs = {k: subprocess.Popen([sys.executable, __file__, "--worker", v, "--values", str(args.values)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for k, v in trees.items()}
    tests = TESTS if args.against else ("decode ingest", "decode batch", *TESTS)
    best: dict = {}
    for _ in range(args.rounds):
        for test in tests:
            for k, p in procs.items():
                p.stdin.write(test + "\n")
                p.stdin.flush()
                t = float(p.stdout.readline())
                best[test, k] = min(t, best.get((test, k), t))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    n = args.values
    print(f"# bench_write_path: {n:,} values per shape, best CPU time of {args.rounds} turns")
    for test in tests:
        mine = best[test, "this tree"]
        line = f"{test:14s} this tree {1e6 * mine / n:5.2f} us/value ({n / mine:10,.0f} values/s)"
        if args.against:
            ref = best[test, "reference"]
            line += (f"   reference {1e6 * ref / n:5.2f} us/value ({n / ref:10,.0f} values/s)"
                     f"   ratio {mine / ref:.2f}")
        elif test.split()[0] in ("memory", "replay"):
            line += f"   {mine / best['decode ' + test.split()[1], 'this tree']:.1f}x decode"
        print(line)


if __name__ == "__main__":
    main()
