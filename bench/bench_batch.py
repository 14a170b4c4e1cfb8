"""Batch reads through the front end: ``POST /features/batch`` and ``POST /get-online-features``.

Loads 100,000 entities x 10 features into a real cluster (2 shards), then drives each endpoint
with wrk (a Lua script cycling through pre-built bodies of 100 random existing entities x 10
features) at several connection counts. On the same shards, in the same run, each row runs in
turn (``--reps`` turns; medians of the figures and of the ratios within a turn):

- ``fast``: this tree's front end on the httptools engine (``FS_HTTP_ENGINE=fast``);
- ``tornado``: this tree's front end on Tornado's HTTPServer;
- ``before``: the front end of another commit (``--against``, default ``main``: the parent of
  this work), extracted with ``git archive``, on this tree's shards; skipped with ``--against ''``;
- ``before-store`` (with ``--whole-store``): that commit's whole store, its own 2 shards and
  front end on their own ports, loaded with the same data, so that shard-side changes count too;
- ``bare``: a bare Tornado handler that reads the same POST body and answers a small JSON;
- ``canned``: a plain asyncio + httptools protocol answering a canned body (the ceiling).

    python3 bench/bench_batch.py [--processes 1 2] [--connections 1 4 16 64] [--seconds 5] [--against main] [--whole-store]

Prints requests/s, p50/p99 latency, feature values served per second, the CPU per request of
the front end and of the shards it reads from, and the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_http import cpu_s  # noqa: E402
from tests.support import Cluster, Proc, base_env, free_port, poll_for, request  # noqa: E402

SERVERS = ("bare", "canned", "before", "before-store", "tornado", "fast")

ENTITIES = 100_000
FEATURES = [f"f{i}" for i in range(10)]
VIEW = "driver_hourly_stats"
BATCH = 100  # entities per request
BODIES = 200  # distinct request bodies cycled by wrk

LUA = r"""
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
local headers = {["Content-Type"] = "application/json"}
local path = os.getenv("BENCH_PATH")
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, headers, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT {\"requests\": %d, \"seconds\": %f, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"errors\": %d, \"non2xx\": %d}\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


def bare_server(port: int, processes: int) -> None:
    """The reference: Tornado's HTTP server and a handler that reads the body and answers JSON."""
    import tornado.httpserver
    import tornado.netutil
    import tornado.process
    import tornado.web

    class Bare(tornado.web.RequestHandler):
        def post(self) -> None:
            self.set_header("Content-Type", "application/json")
            self.finish(b'{"results":[]}' if self.request.body else b"{}")

    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    if processes > 1:
        tornado.process.fork_processes(processes)

    async def main() -> None:
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/.*", Bare)]))
        server.add_sockets(sockets)
        await asyncio.Event().wait()

    asyncio.run(main())


def load(url: str) -> float:
    """Write ENTITIES x FEATURES through /write-to-online-store; return values written per second."""
    rng = random.Random(1)
    start = time.perf_counter()
    rows = 1000
    for first in range(0, ENTITIES, rows):
        ids = list(range(first, min(first + rows, ENTITIES)))
        df = {"driver_id": ids, "event_timestamp": ["2026-11-25T12:00:00"] * len(ids)}
        for f in FEATURES:
            df[f] = [round(rng.random(), 6) for _ in ids]
        status, _, body = request("POST", url + "/write-to-online-store",
                                  {"feature_view_name": VIEW, "df": df}, timeout=60)
        assert status == 200, body
    return ENTITIES * len(FEATURES) / (time.perf_counter() - start)


def bodies(path: str) -> list[str]:
    rng = random.Random(7)
    out = []
    for _ in range(BODIES):
        ids = rng.sample(range(ENTITIES), BATCH)
        if path == "/features/batch":
            out.append(json.dumps({"entity_ids": [str(i) for i in ids]}))
        else:
            out.append(json.dumps({"entities": {"driver_id": ids},
                                   "features": [f"{VIEW}:{f}" for f in FEATURES]}))
    return out


def check(url: str, path: str, body: str) -> None:
    """One request before measuring: every entity found, all 10 features."""
    status, _, reply = request("POST", url + path, body, {"Content-Type": "application/json"})
    assert status == 200, reply
    if path == "/features/batch":
        assert all(len(r.get("features", ())) == len(FEATURES) for r in reply["results"]), reply
    else:
        assert all(s == "PRESENT" for col in reply["results"] for s in col["statuses"]), reply


def wrk(url: str, path: str, body_file: str, connections: int, seconds: float, script: str) -> dict:
    env = dict(os.environ, BENCH_BODIES=body_file, BENCH_PATH=path)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "-s", script, url],
                         env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(re.search(r"RESULT (\{.*\})", out).group(1))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def timed(pid: int, shard_pids: list[int], *args) -> dict:
    """:func:`wrk`, plus ``cpu_us``: the CPU time the server ``pid`` used per request, and
    ``shards_cpu_us``: that of the shards ``shard_pids`` (none for a reference server)."""
    before, shards_before = cpu_s(pid), [cpu_s(p) for p in shard_pids]
    result = wrk(*args)
    n = max(result["requests"], 1)
    result["cpu_us"] = (cpu_s(pid) - before) / n * 1e6
    result["shards_cpu_us"] = sum(cpu_s(p) - b for p, b in zip(shard_pids, shards_before)) / n * 1e6
    return result


def extract(ref: str, into: Path) -> str:
    """The tree of commit ``ref`` written to ``into``; its full hash."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def start_frontend(cluster: Cluster, name: str, processes: int, tree: Path | None = None, **fs) -> Proc:
    """A front end on the cluster's shards (of another ``tree`` when given: ``python -P`` keeps
    this checkout off its path); wait until it is ready."""
    port = free_port()
    env = cluster.env(http_port=port, frontend_processes=processes, **fs)
    args = [sys.executable, "-m", "frontend"]
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
        args.insert(1, "-P")
    proc = Proc(args, env, cluster.tmp / f"frontend-{name}{processes}.log")
    cluster.others.append(proc)
    proc.url = f"http://127.0.0.1:{port}"
    poll_for(lambda: proc.alive() and request("GET", proc.url + "/readyz")[0] == 200, 15, what=f"front end {name}")
    return proc


def start_store(tmp: Path, tree: Path, processes: int, shards: int, config: Path) -> tuple[Cluster, Proc]:
    """The whole store of another ``tree`` (shards and front end) on its own ports; its front end."""
    tmp.mkdir()
    store = Cluster(tmp, shards=shards, frontend_processes=processes, config_file=config, shard_timeout_s=10)
    for i in range(shards):
        env = store.env()
        env["PYTHONPATH"] = str(tree)
        store.shards[i] = Proc([sys.executable, "-P", "-m", "shard", "--index", str(i)], env, tmp / f"shard{i}.log")
        store.wait_shard(i)
    return store, start_frontend(store, "before-store", processes, tree)


def run(processes: int, connections: list[int], seconds: float, tmp: Path, script: str,
        shards: int = 2, before: Path | None = None, reps: int = 1, whole_store: bool = False) -> list[dict]:
    config = tmp / "store.toml"
    config.write_text(f'[views.{VIEW}]\njoin_keys = ["driver_id"]\n')
    rows = []
    (tmp / f"p{processes}").mkdir()
    with Cluster(tmp / f"p{processes}", shards=shards, frontend_processes=processes, config_file=config,
                 shard_timeout_s=10, http_engine="fast") as cluster:
        rate = load(cluster.url)
        print(f"loaded {ENTITIES} entities x {len(FEATURES)} features at {rate:,.0f} values/s "
              f"({processes} front-end process(es), {shards} shard(s))", flush=True)
        tornado = start_frontend(cluster, "tornado", processes, http_engine="tornado")
        urls = {"fast": cluster.url, "tornado": tornado.url}
        pids = {"fast": cluster.frontend.pid, "tornado": tornado.pid}
        ours = [p.pid for p in cluster.shards]
        shard_pids = {"fast": ours, "tornado": ours}
        if before is not None:
            proc = start_frontend(cluster, "before", processes, before)
            urls["before"], pids["before"], shard_pids["before"] = proc.url, proc.pid, ours
        if before is not None and whole_store:
            store, proc = start_store(tmp / f"before-store{processes}", before, processes, shards, config)
            cluster.others.append(store)  # stopped with the cluster
            print(f"before-store: loaded at {load(proc.url):,.0f} values/s", flush=True)
            urls["before-store"], pids["before-store"] = proc.url, proc.pid
            shard_pids["before-store"] = [p.pid for p in store.shards]
        refs = {"bare": [__file__, "--bare"], "canned": ["-m", "bench._util", "canned", "--port"]}
        if processes > 1:
            del refs["canned"]  # one process only: it is the ceiling of one process
        for name, args in refs.items():
            port = free_port()
            extra = [str(port), str(processes)] if name == "bare" else [str(port)]
            proc = Proc([sys.executable, *args, *extra], base_env(), tmp / f"{name}{processes}.log")
            cluster.others.append(proc)
            pids[name] = proc.pid
            urls[name] = f"http://127.0.0.1:{port}"
            poll_for(lambda: request("POST", urls[name] + "/", "{}")[0] == 200, 10, what=name)
        servers = [s for s in SERVERS if s in urls]
        for path in ("/features/batch", "/get-online-features"):
            body_file = tmp / f"bodies{path.replace('/', '_')}{processes}.txt"
            lines = bodies(path)
            body_file.write_text("\n".join(lines) + "\n")
            for name in servers:
                if name not in refs:
                    check(urls[name], path, lines[0])
                wrk(urls[name], path, str(body_file), 4, 2, script)  # warm-up (and the render caches)
            for c in connections:
                turns = [{name: timed(pids[name], shard_pids.get(name, []), urls[name], path, str(body_file), c,
                                      seconds, script)
                          for name in servers} for _ in range(reps)]
                for name in servers:
                    got = [t[name] for t in turns]
                    assert all(g["errors"] == 0 and g["non2xx"] == 0 for g in got), got
                    rps = statistics.median(g["rps"] for g in got)
                    row = {"processes": processes, "path": path, "connections": c, "server": name, "rps": rps,
                           "p50_ms": statistics.median(g["p50_us"] for g in got) / 1000,
                           "p99_ms": statistics.median(g["p99_us"] for g in got) / 1000,
                           "values_per_s": rps * BATCH * len(FEATURES),
                           "cpu_us": statistics.median(g["cpu_us"] for g in got),
                           "shards_cpu_us": statistics.median(g["shards_cpu_us"] for g in got)}
                    for ref in servers:
                        row[f"x_{ref}"] = statistics.median(t[name]["rps"] / t[ref]["rps"] for t in turns)
                    rows.append(row)
                    ratios = "  ".join(f"{row[f'x_{r}']:.2f}x {r}" for r in servers if r != name)
                    print(f"{processes} proc  {path:22s} c={c:<3d} {name:<8} {rps:8,.0f} req/s  "
                          f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  {row['cpu_us']:5.0f} us CPU "
                          f"(shards {row['shards_cpu_us']:4.0f})  "
                          f"{row['values_per_s'] if name not in refs else 0:12,.0f} values/s  {ratios}", flush=True)
    return rows


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        bare_server(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--reps", type=int, default=1, help="turns per row, each running every server once")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--against", default="main", help="the commit whose front end is 'before' ('' = none)")
    parser.add_argument("--whole-store", action="store_true",
                        help="also run that commit's whole store (its shards too) as 'before-store'")
    args = parser.parse_args()
    print(f"bench_batch: load average %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        before = None
        if args.against:
            before = Path(tmp) / "before"
            print(f"before: {args.against} = {extract(args.against, before)}", flush=True)
        rows = []
        for p in args.processes:
            rows += run(p, args.connections, args.seconds, Path(tmp), str(script), args.shards, before, args.reps,
                        args.whole_store)
    print("load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    fast = [r for r in rows if r["server"] == "fast"]
    for path in ("/features/batch", "/get-online-features"):
        mine = [r for r in fast if r["path"] == path]
        best = max(mine, key=lambda r: r["values_per_s"])
        line = (f"{path}: best {best['values_per_s']:,.0f} values/s ({best['processes']} proc, "
                f"c={best['connections']}), {best['x_bare']:.2f}x bare")
        for ref, what in (("before", "its front end on these shards"), ("before-store", "its whole store")):
            refs = [r for r in rows if r["server"] == ref and r["path"] == path]
            if not refs:
                continue
            ref_best = max(refs, key=lambda r: r["values_per_s"])
            ratio = best["values_per_s"] / ref_best["values_per_s"]
            line += (f"\n  {ref} ({what}): best {ref_best['values_per_s']:,.0f} values/s: {ratio:.2f}x "
                     f"[{'met' if ratio >= 2 else 'MISSED'}: target >= 2x]")
            same = {r["server"]: r for r in rows if r["path"] == path and r["processes"] == best["processes"]
                    and r["connections"] == best["connections"]}
            ours, other = same["fast"], same[ref]
            line += (f"; CPU per request at c={best['connections']}: fast {ours['cpu_us']:.0f} + shards "
                     f"{ours['shards_cpu_us']:.0f} us, {ref} {other['cpu_us']:.0f} + shards {other['shards_cpu_us']:.0f} us "
                     f"({(other['cpu_us'] + other['shards_cpu_us']) / (ours['cpu_us'] + ours['shards_cpu_us']):.2f}x "
                     "values per CPU second of front end and shards)")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
