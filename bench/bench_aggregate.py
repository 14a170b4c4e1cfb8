"""Windowed aggregations (issue 12): their cost on ingest and on whole-entity reads, and their
memory, each against the same entities without aggregations, in one run.

    python3 -m bench.bench_aggregate [--events 100000] [--entities 20000] [--repeat 3] [--duration 5]

Each repeat starts two fresh clusters side by side (2 shards and a front end each, memory only):
one without ``[[aggregations]]``, one with 2 aggregated features x 6 functions (count, sum,
mean, min, max, last_5) x 3 windows (1h, 24h, 7d). Both hold the same entities:

- ingest: ``python -m ingest --file`` of the same JSON lines into each, one after the other,
  the order alternating between repeats (5 numeric features an event, event times over the last
  6 days, in random order); the clock runs from its start to the last value readable over HTTP;
  values/s = 5 x events/s; and the CPU seconds the ingest process and the shards used, per value;
- GET: every entity read once in both (the shards keep its JSON rendered, as a serving store's
  hot entities are), then wrk runs, 64 connections, ``GET /features/user:{random}``, alternating
  between the clusters (ABAB, then BABA): the same entity with its 36 aggregates and without,
  under the same load; req/s, and the CPU microseconds per request of the front end and shards;
- an uncached read (in this process, ``Store``): the rendering of an entity with its aggregates
  after each write, against the same entity without;
- memory: the shards' resident set after the ingest.

``--same-cluster`` instead measures whole-entity GETs in one cluster with the aggregations, of
500 entities each: 5 plain features; the 2 aggregated and 3 plain features (41 in the JSON);
41 plain features.

Then, in this process: the msgpack bytes of the window states (per entity and aggregation) after
the same stream, and the worst case (an event in every tile of the 7-day layout).
The targets: ingest >= 0.7x and GET >= 0.8x of the run without aggregations.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from bench._util import Cluster, lua_script, poll_for, request, wrk
from common.aggregations import parse_aggregations
from shard.store import Store

FEATURES = 5
CONFIG = "".join(f"""
[[aggregations]]
feature = "{feature}"
functions = ["count", "sum", "mean", "min", "max", "last_5"]
windows = ["1h", "24h", "7d"]
""" for feature in ("f0", "f1"))


def make_lines(n: int, entities: int, now_s: float, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [orjson.dumps({"entity_id": f"user:{i % entities}",
                          "features": {f"f{j}": round(rng.uniform(0, 100), 2) for j in range(FEATURES)},
                          "event_timestamp": round(now_s - rng.uniform(0, 6 * 86400), 3)}) for i in range(n)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(cluster: Cluster, tmp: Path, path: Path, config: Path | None) -> dict:
    """The file through ``python -m ingest --file``: seconds until the last value is readable,
    and CPU seconds of the ingest process and the shards."""
    shards = [p.pid for p in cluster.shards]
    before = sum(map(cpu_s, shards))
    t0 = time.perf_counter()
    proc = cluster.start_process(["-m", "ingest", "--file", str(path)], "ingest", ingest_stats_endpoint="",
                                 dead_letter_path=tmp / "dead.jsonl", config_file=config)
    last = orjson.loads(path.read_bytes().rsplit(b"\n", 2)[-2])

    def visible():
        status, _, body = request("GET", f"{cluster.url}/features/{last['entity_id'].replace(':', '%3A')}")
        return status == 200 and "f4" in body["features"]

    poll_for(visible, 60, interval=0.005, what="the last value")
    elapsed = time.perf_counter() - t0
    shards_cpu = sum(map(cpu_s, shards)) - before
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.popen.wait(600) == 0, proc.output()[-2000:]
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # now with the ingest process's
    ingest_cpu = done.ru_utime + done.ru_stime - reaped.ru_utime - reaped.ru_stime
    return {"seconds": elapsed, "cpu_s": ingest_cpu + shards_cpu,
            "rss_kib": sum(rss_kib(p) for p in shards)}


def warm(cluster: Cluster, entities: int) -> int:
    """Every entity read once (the shards keep it rendered); the features of one."""
    ids = [f"user:{i}" for i in range(entities)]
    for start in range(0, entities, 100):
        status, _, reply = request("POST", cluster.url + "/features/batch", {"entity_ids": ids[start:start + 100]})
        assert status == 200, reply
    status, _, body = request("GET", f"{cluster.url}/features/user%3A0")
    assert status == 200
    return len(body["features"])


def get_rps(cluster: Cluster, script: str, duration: float) -> tuple[float, float]:
    """wrk at 64 connections: req/s, and CPU microseconds per request of the front end and shards."""
    pids = [cluster.frontend.pid] + [p.pid for p in cluster.shards]
    before = sum(map(cpu_s, pids))
    got = wrk(cluster.url, 64, duration, script)
    assert got.errors == 0 and got.non2xx == 0, got
    return got.rps, (sum(map(cpu_s, pids)) - before) / max(got.requests, 1) * 1e6


def paired(tmp: Path, path: Path, config: Path, entities: int, duration: float, aggregated_first: bool) -> dict:
    """One repeat: both clusters side by side, ingests in turn, then alternating GET runs."""
    modes = ("aggregated", "plain") if aggregated_first else ("plain", "aggregated")
    out: dict = {m: {} for m in modes}
    with contextlib.ExitStack() as stack:
        clusters = {}
        for mode in modes:
            where = tmp / mode
            where.mkdir()
            clusters[mode] = stack.enter_context(Cluster(where, config_file=config if mode == "aggregated" else None))
        for mode in modes:
            out[mode].update(ingest(clusters[mode], tmp / mode, path, config if mode == "aggregated" else None))
        script = lua_script(f'  return wrk.format("GET", "/features/user%3A" .. rnd({entities}))')
        for mode in modes:
            out[mode]["features"] = warm(clusters[mode], entities)
            wrk(clusters[mode].url, 64, 1, script)  # warm-up
        runs: dict = {m: [] for m in modes}
        for mode in modes + modes[::-1]:  # ABBA: a drift in the load weighs on both alike
            runs[mode].append(get_rps(clusters[mode], script, duration))
        for mode in modes:
            out[mode]["rps"] = statistics.mean(r for r, _ in runs[mode])
            out[mode]["cpu_us"] = statistics.mean(c for _, c in runs[mode])
    return out


def state_bytes(lines: list[bytes]) -> tuple[float, float, float, int, float]:
    """After the stream, in one Store: mean msgpack bytes of a state per entity and aggregation;
    heap bytes (tracemalloc) per entity and aggregation of the states packed, and decoded (hot);
    the worst case msgpack bytes of one aggregation (an event in every tile), and decoded."""
    from shard.aggregate import WindowState

    aggs = parse_aggregations(_toml(CONFIG))
    now = time.time_ns() // 1000
    heaps = []
    for hot in (0, len(lines)):
        tracemalloc.start()
        store = Store(clock=lambda: now, aggregations=aggs)
        store.aggs.HOT_ENTITIES = hot
        base = tracemalloc.get_traced_memory()[0]
        for line in lines:
            ev = orjson.loads(line)
            ts = int(ev["event_timestamp"] * 1e6)
            store.apply([[ev["entity_id"], n, v, ts] for n, v in ev["features"].items() if n in ("f0", "f1")])
        data = store.data  # the plain values too: counted out below
        heaps.append((tracemalloc.get_traced_memory()[0] - base - sum(len(b) + 33 for b in data.values()))
                     / (len(store.aggs) * 2))
        tracemalloc.stop()
    pairs = len(store.aggs) * 2
    mean = sum(len(b) for _, b in store.aggs.packed()) / pairs
    worst = WindowState(aggs[0])
    rng = random.Random(2)
    for ts in range(now - 8 * 86400_000_000, now, 60_000_000):
        worst.apply(rng.uniform(-1e9, 1e9), ts, now)
    tracemalloc.start()
    decoded = WindowState.unpack(aggs[0], worst.pack())
    decoded_heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del decoded
    return mean, heaps[0], heaps[1], len(worst.pack()), decoded_heap


def uncached_reads(n: int = 2000) -> tuple[float, float]:
    """Microseconds to render an entity's JSON right after a write (no cache to hit), without
    aggregations and with them (f0 and f1 aggregated, events every 10 minutes for 8 days)."""
    aggs = parse_aggregations(_toml(CONFIG))
    now = time.time_ns() // 1000
    out = []
    for specs in ((), aggs):
        store = Store(clock=lambda: now, aggregations=specs)
        for ts in range(now - 8 * 86400_000_000, now, 600_000_000):
            store.apply([["u", f"f{j}", float(ts % 97 + j), ts] for j in range(FEATURES)])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(n):
                store._forget("u")  # as a write does
                store.render_entity("u")
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        out.append(best)
    return out[0], out[1]


def _toml(text: str):
    import tomllib
    return tomllib.loads(text)["aggregations"]


def same_cluster(tmp: Path, duration: float) -> None:
    """GET of entities with and without aggregates, in one cluster, one after the other."""
    now = time.time()
    config = tmp / "store.toml"
    config.write_text(CONFIG)
    kinds = {"5 plain features": {f"g{j}": 1.5 + j for j in range(5)},
             "f0, f1 aggregated + 3 plain (41 in the JSON)": {f"f{j}": 1.5 + j for j in range(5)},
             "41 plain features": {f"h{j}": 1.5 + j for j in range(41)}}
    with Cluster(tmp, config_file=config) as cluster:
        for k, feats in enumerate(kinds.values()):
            for i in range(500):
                body = {"entity_id": f"k{k}:{i}", "features": feats, "event_timestamp": now - 60}
                assert request("POST", cluster.url + "/features", body)[0] == 200
        for k, what in enumerate(kinds):
            script = lua_script(f'  return wrk.format("GET", "/features/k{k}%3A" .. rnd(500))')
            wrk(cluster.url, 64, 1, script)
            got = wrk(cluster.url, 64, duration, script)
            print(f"GET, 64 connections, {what}: {got.rps:,.0f} req/s ({got.errors + got.non2xx} errors)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each wrk run")
    parser.add_argument("--same-cluster", action="store_true", help="GETs of three kinds of entity in one cluster")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}", flush=True)
    if args.same_cluster:
        with tempfile.TemporaryDirectory() as tmpdir:
            same_cluster(Path(tmpdir), args.duration)
        print(f"load average: {os.getloadavg()}")
        return 0
    lines = make_lines(args.events, args.entities, time.time())
    values = args.events * FEATURES
    figures: dict[str, list[dict]] = {"plain": [], "aggregated": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "events.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        config = tmp / "store.toml"
        config.write_text(CONFIG)
        for r in range(args.repeat):
            where = tmp / f"run-{r}"
            where.mkdir()
            got = paired(where, path, config, args.entities, args.duration, aggregated_first=r % 2 == 1)
            for mode in ("plain", "aggregated"):
                f = got[mode]
                figures[mode].append(f)
                print(f"run {r + 1} {mode:10s}: ingest {values / f['seconds']:,.0f} values/s "
                      f"({f['cpu_s'] / values * 1e6:.2f} us CPU a value, ingest and shards), GET {f['rps']:,.0f} "
                      f"req/s ({f['cpu_us']:.0f} us CPU a request; {f['features']} features an entity), "
                      f"shards RSS {f['rss_kib'] / 1024:,.1f} MiB", flush=True)
    pairs = list(zip(figures["plain"], figures["aggregated"]))
    ingest_x = [p["seconds"] / a["seconds"] for p, a in pairs]
    ingest_cpu_x = [p["cpu_s"] / a["cpu_s"] for p, a in pairs]
    get_x = [a["rps"] / p["rps"] for p, a in pairs]
    get_cpu_x = [p["cpu_us"] / a["cpu_us"] for p, a in pairs]
    rss = statistics.median((a["rss_kib"] - p["rss_kib"]) * 1024 / (args.entities * 2) for p, a in pairs)
    uncached = uncached_reads()
    mean, heap, hot_heap, worst, worst_heap = state_bytes(lines)
    med = {m: {k: statistics.median(f[k] for f in figures[m]) for k in ("seconds", "rps", "cpu_s", "cpu_us")}
           for m in figures}
    x = lambda xs: ", ".join(f"{v:.2f}" for v in xs)  # noqa: E731
    print(f"\n{args.events:,} events x {FEATURES} features over {args.entities:,} entities, 2 shards; medians of "
          f"{args.repeat} paired runs; load average now {os.getloadavg()}")
    print(f"ingest (file): {values / med['plain']['seconds']:,.0f} values/s without, "
          f"{values / med['aggregated']['seconds']:,.0f} with aggregations: {statistics.median(ingest_x):.2f}x "
          f"(pairs: {x(ingest_x)}; target >= 0.7x); values per CPU second of ingest and shards: "
          f"{statistics.median(ingest_cpu_x):.2f}x (pairs: {x(ingest_cpu_x)})")
    print(f"GET whole entity, 64 connections, the same entities, alternating runs: {med['plain']['rps']:,.0f} req/s "
          f"without, {med['aggregated']['rps']:,.0f} with: {statistics.median(get_x):.2f}x (pairs: {x(get_x)}; "
          f"target >= 0.8x); requests per CPU second of front end and shards: {statistics.median(get_cpu_x):.2f}x "
          f"(pairs: {x(get_cpu_x)})")
    print(f"uncached read (rendered after each write; in-process): {uncached[0]:.1f} us for an entity with 5 values, "
          f"{uncached[1]:.1f} us with its 36 aggregates too: {uncached[0] / uncached[1]:.2f}x")
    print(f"memory per entity and aggregation: {mean:,.0f} B msgpack (mean after this stream); heap "
          f"(tracemalloc) {heap:,.0f} B packed, {hot_heap:,.0f} B decoded (the hot entities); "
          f"{rss:,.0f} B of shard RSS (difference of the runs); worst case (an event every minute for "
          f"8 days): {worst:,} B msgpack, {worst_heap:,} B decoded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
