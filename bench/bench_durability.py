"""Durability benchmark: write cost of each fsync policy, replay speed, snapshot pause, memory.

    python3 bench/bench_durability.py [--values 1000000] [--only write,recovery,pause,memory]

Every figure comes with a reference measured in the same run: write throughput as a ratio to a
memory-only shard, the read pause during a snapshot next to the read latency just before it,
and the memory per value next to Redis holding the same data (a hash per entity).
Shards are real processes talking ZeroMQ on loopback; data goes to a temporary directory.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import protocol as P  # noqa: E402
from common.link import connect_dealer  # noqa: E402
from tests.support import Proc, base_env, free_port, poll_for, zmq_call  # noqa: E402

TS = 1_760_000_000_000_000
FEATURES = 10  # per entity
NAMES = [f"feature_{k}" for k in range(FEATURES)]


class Shard:
    """One shard process (index 0 of 1) on a free port."""

    def __init__(self, tmp: Path, name: str, **fs) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.env = base_env(shard_endpoints=self.endpoint, log_level="WARNING", **fs)
        self.log = tmp / f"{name}.log"
        self.proc: Proc | None = None

    def start(self) -> float:
        """Start and wait until it answers a ping; return the seconds it took."""
        t0 = time.perf_counter()
        self.proc = Proc([sys.executable, "-m", "shard", "--index", "0"], self.env, self.log)
        poll_for(lambda: P.is_ok(self.call(P.ping(1), 100)), 300, 0.005, "shard ready")
        return time.perf_counter() - t0

    def call(self, req: dict, timeout_ms: int = 60_000) -> dict:
        if self.proc is not None and not self.proc.alive():
            raise SystemExit(f"shard exited:\n{self.proc.output()}")
        return zmq_call(self.endpoint, [req], timeout_ms)[0]

    def stats(self) -> dict:
        return self.call(P.stats(1))

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def dataset(n_values: int, seed: int = 1):
    """Batches of write tuples: entities of FEATURES float values each."""
    rng = random.Random(seed)
    entities = n_values // FEATURES
    batch: list = []
    for e in range(entities):
        eid = f"user:{e:08d}"
        for k, name in enumerate(NAMES):
            batch.append([eid, name, round(rng.random() * 1000, 3), TS + e])
        if len(batch) >= 1000:
            yield batch
            batch = []
    if batch:
        yield batch


def pipeline(endpoint: str, frames, inflight: int) -> float:
    """Send encoded request frames keeping ``inflight`` outstanding; return seconds."""
    ctx = zmq.Context.instance()
    sock = connect_dealer(ctx, endpoint, immediate=False)
    it = iter(frames)
    sent = done = 0
    t0 = time.perf_counter()
    for frame in it:
        sock.send(frame)
        sent += 1
        if sent - done >= inflight:
            break
    for frame in it:
        reply = P.decode(sock.recv())
        if not reply[0][P.OK]:
            raise SystemExit(f"write refused: {reply}")
        done += 1
        sock.send(frame)
        sent += 1
    while done < sent:
        P.decode(sock.recv())
        done += 1
    elapsed = time.perf_counter() - t0
    sock.close()
    return elapsed


def load(shard: Shard, n_values: int) -> float:
    frames = [P.encode([P.write(b, i)]) for i, b in enumerate(dataset(n_values))]
    return pipeline(shard.endpoint, frames, 8)


# ---- 1. write throughput per fsync policy
def bench_write(tmp: Path, n_requests: int, rounds: int = 5) -> None:
    print(f"\n## write throughput, {n_requests} requests per mode, best of {rounds} interleaved rounds, "
          "ZeroMQ straight to one shard")
    shapes = {"1 value/request, 64 in flight": (1, 64), "100 values/request, 8 in flight": (100, 8)}
    modes = [("memory", {}), ("no", {"fsync": "no"}), ("everysec", {"fsync": "everysec"}),
             ("always", {"fsync": "always"})]
    for shape, (per, inflight) in shapes.items():
        count = n_requests if per == 1 else n_requests // 10
        frames = []
        for i in range(count):
            w = [[f"user:{(i * per + j) % 50000:08d}", NAMES[j % FEATURES], float(i), TS + i]
                 for j in range(per)]
            frames.append(P.encode([P.write(w, i)]))
        shards = {}
        for mode, fs in modes:  # all started at once, measured in turns: noise hits all alike
            shards[mode] = Shard(tmp, f"write-{mode}", data_dir=tmp / f"w-{mode}-{per}" if fs else None,
                                 snapshot_log_bytes=1 << 40, **fs)
            shards[mode].start()
            pipeline(shards[mode].endpoint, frames[: count // 10], inflight)  # warm up
        best: dict[str, float] = {}
        for _ in range(rounds):
            for mode in shards:
                t = pipeline(shards[mode].endpoint, frames, inflight)
                best[mode] = min(t, best.get(mode, t))
        for mode, shard in shards.items():
            shard.proc.stop()
            rate = count * per / best[mode]
            base = count * per / best["memory"]
            print(f"{shape:34s} {mode:9s} {rate:11,.0f} values/s  {count / best[mode]:9,.0f} req/s"
                  f"  ratio to memory-only {rate / base:5.2f}")


# ---- 2. recovery
def bench_recovery(tmp: Path, n_values: int) -> None:
    print(f"\n## recovery of {n_values:,} values")
    data = tmp / "recovery"
    shard = Shard(tmp, "recovery", data_dir=data, fsync="no", snapshot_log_bytes=1 << 40)
    shard.start()
    live = load(shard, n_values)  # the reference: the same writes taken live, 8 requests in flight
    shard.proc.kill()  # no final snapshot: everything is in the log
    log_bytes = sum(p.stat().st_size for p in (data / "shard-0").glob("log-*"))
    wall = shard.start()
    s = shard.stats()
    assert s["values"] == n_values, s
    print(f"log replay:      {s['replayed_values']:,} values from {log_bytes / 1e6:.1f} MB in "
          f"{s['recovery_s']:.2f} s = {s['replayed_values'] / s['recovery_s']:,.0f} values/s "
          f"({s['replayed_values'] / s['recovery_cpu_s']:,.0f} per CPU second; "
          f"process start to ready {wall:.2f} s)")
    print(f"reference:       the same {n_values:,} values written live over ZeroMQ in {live:.2f} s = "
          f"{n_values / live:,.0f} values/s; replay is {live / s['recovery_s']:.2f}x that")
    shard.proc.stop()  # final snapshot
    snap_bytes = sum(p.stat().st_size for p in (data / "shard-0").glob("snapshot-*"))
    wall = shard.start()
    s = shard.stats()
    assert s["values"] == n_values and s["replayed_records"] == 0, s
    print(f"snapshot load:   {n_values:,} values from {snap_bytes / 1e6:.1f} MB in "
          f"{s['recovery_s']:.2f} s = {n_values / s['recovery_s']:,.0f} values/s "
          f"({n_values / s['recovery_cpu_s']:,.0f} per CPU second; process start to ready {wall:.2f} s)")
    shard.proc.stop()
    shutil.rmtree(data, ignore_errors=True)


# ---- 3. read pause during a snapshot
def read_latencies(endpoint: str, until, eids: list) -> list[float]:
    ctx = zmq.Context.instance()
    sock = connect_dealer(ctx, endpoint, immediate=False)
    out, i = [], 0
    while not until():
        frame = P.encode([P.get(eids[i % len(eids)], req_id=i)])
        t0 = time.perf_counter()
        sock.send(frame)
        sock.recv()
        out.append(time.perf_counter() - t0)
        i += 1
    sock.close()
    return out


def bench_pause(tmp: Path, n_values: int, runs: int) -> None:
    print(f"\n## longest read pause while a snapshot of {n_values:,} values is written, {runs} runs")
    data = tmp / "pause"
    shard = Shard(tmp, "pause", data_dir=data, fsync="everysec", snapshot_log_bytes=1 << 40)
    shard.start()
    load(shard, n_values)
    shard.proc.stop()
    shard.env["FS_SNAPSHOT_LOG_BYTES"] = str(256 * 1024)
    shard.start()
    eids = [f"user:{e:08d}" for e in range(0, n_values // FEATURES, 7)]
    worst_before, worst_during = [], []
    for run in range(runs):
        done = shard.stats()["snapshots"]
        t_end = time.perf_counter() + 1
        before = read_latencies(shard.endpoint, lambda: time.perf_counter() > t_end, eids)
        writer = start_writer(shard.endpoint, run)  # pushes the log over the threshold
        start = time.perf_counter()
        check = {"at": start}

        def finished() -> bool:
            now = time.perf_counter()
            if now - check["at"] < 0.1 or now - start > 120:
                return now - start > 120
            check["at"] = now
            s = shard.stats()
            return writer.poll() is not None and s["snapshots"] > done and not s["snapshotting"]

        during = read_latencies(shard.endpoint, finished, eids)
        s = shard.stats()
        worst_before.append(max(before))
        worst_during.append(max(during))
        print(f"run {run}: 1 s before: {len(before):,} reads, max {1000 * max(before):6.2f} ms | "
              f"{time.perf_counter() - start:.1f} s with {s['snapshots'] - done} snapshot(s): "
              f"{len(during):,} reads, max {1000 * max(during):6.2f} ms, "
              f"p50 {1000 * sorted(during)[len(during) // 2]:.3f} ms")
    s = shard.stats()
    shard.proc.stop()
    shutil.rmtree(data, ignore_errors=True)
    med = sorted(worst_during)[runs // 2]
    print(f"longest read while a snapshot was written: median of runs {1000 * med:.2f} ms, worst "
          f"{1000 * max(worst_during):.2f} ms; longest read with no snapshot: median "
          f"{1000 * sorted(worst_before)[runs // 2]:.2f} ms, worst {1000 * max(worst_before):.2f} ms; "
          f"the shard's own pause (rotation + fork) max {s['fork_ms_max']:.1f} ms")


def start_writer(endpoint: str, run: int) -> subprocess.Popen:
    """A process that writes 400 x 50 values (about 400 KB of log) to the shard."""
    writes = [P.encode([P.write([[f"user:{i:08d}", "feature_0", 1.0, TS * 2 + run]] * 50, i)])
              for i in range(400)]
    code = ("import sys, msgpack; sys.path.insert(0, '.'); from bench.bench_durability import pipeline; "
            "ep, frames = msgpack.unpackb(sys.stdin.buffer.read()); pipeline(ep, frames, 4)")
    writer = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parent.parent)
    writer.stdin.write(msgpack.packb([endpoint, writes]))
    writer.stdin.close()
    return writer


# ---- 4. memory per value, next to Redis
def resp(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def redis_info(port: int) -> dict:
    raw = subprocess.run(["redis-cli", "-p", str(port), "INFO", "memory"], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)


def redis_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))


def bench_memory(tmp: Path, n_values: int) -> None:
    print(f"\n## memory per stored value, {n_values:,} values "
          f"({n_values // FEATURES:,} entities x {FEATURES} float features, each with its event time)")
    shard = Shard(tmp, "memory")
    shard.start()
    rss0 = shard.rss()
    load(shard, n_values)
    assert shard.stats()["values"] == n_values
    ours = shard.rss() - rss0
    shard.proc.stop()

    print(f"shard (RSS growth):         {ours / n_values:6.1f} bytes/value")
    same = redis_memory(tmp, n_values, lambda value, ts: msgpack.packb([value, ts]))
    print(f"redis, the same (value, event time) as msgpack per field: used_memory "
          f"{same[0] / n_values:6.1f} bytes/value, RSS {same[1] / n_values:6.1f} bytes/value")
    bare = redis_memory(tmp, n_values, lambda value, ts: repr(value))
    print(f"redis, the value alone as a string (no event time):      used_memory "
          f"{bare[0] / n_values:6.1f} bytes/value, RSS {bare[1] / n_values:6.1f} bytes/value")
    print(f"ratio shard / redis (same data) used_memory {ours / same[0]:.2f}, RSS {ours / same[1]:.2f}; "
          f"shard / redis (value alone) used_memory {ours / bare[0]:.2f}")


def redis_memory(tmp: Path, n_values: int, field) -> tuple[int, int]:
    """Load the data set into a fresh redis-server, a hash per entity; (used_memory, RSS) growth."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                             stdout=subprocess.DEVNULL)
    try:
        poll_for(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, 10)
        used0, rss0 = int(redis_info(port)["used_memory"]), redis_rss(redis.pid)
        cmds = []
        for batch in dataset(n_values):
            for i in range(0, len(batch), FEATURES):
                group = batch[i:i + FEATURES]
                args = ["HSET", group[0][0]]
                for _, name, value, ts in group:
                    args += [name, field(value, ts)]
                cmds.append(resp(*args))
        subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=b"".join(cmds),
                       capture_output=True, check=True)
        return int(redis_info(port)["used_memory"]) - used0, redis_rss(redis.pid) - rss0
    finally:
        redis.send_signal(signal.SIGTERM)
        redis.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20_000, help="write requests per mode")
    parser.add_argument("--pause-runs", type=int, default=5, help="snapshots measured for the pause")
    parser.add_argument("--only", default="write,recovery,pause,memory")
    args = parser.parse_args()
    parts = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as d:
        tmp = Path(d)
        print(f"# bench_durability: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
        if "write" in parts:
            bench_write(tmp, args.requests)
        if "recovery" in parts:
            bench_recovery(tmp, args.values)
        if "pause" in parts:
            bench_pause(tmp, args.values, args.pause_runs)
        if "memory" in parts:
            bench_memory(tmp, args.values)


if __name__ == "__main__":
    main()
