"""Batch reads through the front end: ``POST /features/batch`` and ``POST /get-online-features``.

Loads 100,000 entities x 10 features into a real cluster (2 shards), then drives each endpoint
with wrk (a Lua script cycling through pre-built bodies of 100 random existing entities x 10
features) at several connection counts, and a bare Tornado handler (reads the same POST body,
answers a small JSON) with the same number of processes in the same run, as the reference.

    python3 bench/bench_batch.py [--processes 1 2] [--connections 1 4 16 64] [--seconds 5] [--shards 2]

Prints requests/s, p50/p99 latency, feature values served per second, and the ratio of
requests/s to the bare handler's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Cluster, Proc, base_env, free_port, poll_for, request  # noqa: E402

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


def run(processes: int, connections: list[int], seconds: float, tmp: Path, script: str,
        shards: int = 2) -> list[dict]:
    config = tmp / "store.toml"
    config.write_text(f'[views.{VIEW}]\njoin_keys = ["driver_id"]\n')
    rows = []
    (tmp / f"p{processes}").mkdir()
    with Cluster(tmp / f"p{processes}", shards=shards, frontend_processes=processes, config_file=config,
                 shard_timeout_s=10) as cluster:
        rate = load(cluster.url)
        print(f"loaded {ENTITIES} entities x {len(FEATURES)} features at {rate:,.0f} values/s "
              f"({processes} front-end process(es), {shards} shard(s))", flush=True)
        bare_port = free_port()
        bare = Proc([sys.executable, __file__, "--bare", str(bare_port), str(processes)], base_env(),
                    tmp / f"bare{processes}.log")
        try:
            poll_for(lambda: request("POST", f"http://127.0.0.1:{bare_port}/", "{}")[0] == 200, 10, what="bare")
            for path in ("/features/batch", "/get-online-features"):
                body_file = tmp / f"bodies{path.replace('/', '_')}.txt"
                lines = bodies(path)
                body_file.write_text("\n".join(lines) + "\n")
                check(cluster.url, path, lines[0])
                wrk(cluster.url, path, str(body_file), 4, 2, script)  # warm the render caches
                for c in connections:
                    ref = wrk(f"http://127.0.0.1:{bare_port}", path, str(body_file), c, seconds, script)
                    got = wrk(cluster.url, path, str(body_file), c, seconds, script)
                    assert got["errors"] == 0 and got["non2xx"] == 0, got
                    row = {"processes": processes, "path": path, "connections": c, "rps": got["rps"],
                           "p50_ms": got["p50_us"] / 1000, "p99_ms": got["p99_us"] / 1000,
                           "values_per_s": got["rps"] * BATCH * len(FEATURES), "bare_rps": ref["rps"],
                           "ratio": got["rps"] / ref["rps"]}
                    rows.append(row)
                    print(f"{processes} proc  {path:22s} c={c:<3d} {row['rps']:8,.0f} req/s  "
                          f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                          f"{row['values_per_s']:12,.0f} values/s  bare {row['bare_rps']:8,.0f} req/s  "
                          f"ratio {row['ratio']:.2f}", flush=True)
        finally:
            bare.stop()
    return rows


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        bare_server(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        rows = []
        for p in args.processes:
            rows += run(p, args.connections, args.seconds, Path(tmp), str(script), args.shards)
    best = max(rows, key=lambda r: r["values_per_s"])
    print(f"best: {best['values_per_s']:,.0f} values/s ({best['path']}, {best['processes']} proc, "
          f"c={best['connections']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
