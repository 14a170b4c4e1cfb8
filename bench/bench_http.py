"""HTTP reads and writes through the front end on both HTTP engines, against two references.

Starts 2 shards, loads 100,000 entities x 10 features straight into them (ZeroMQ WRITE
messages), and front ends on them as real processes on free loopback ports: ``fast`` (the
httptools engine, frontend/engine.py) with one process and with two sharing a port, and
``tornado`` (Tornado's HTTPServer) with one. The references run at the same time: ``bare``, a bare
Tornado handler returning a small JSON dict, and ``canned``, a plain asyncio + httptools protocol
answering a canned 60-byte JSON body (the ceiling of any Python front end). wrk drives, with a
random entity (and feature) per request from a Lua script:

- ``feature``: ``GET /features/e{i}/f{j}``
- ``entity``:  ``GET /features/e{i}``
- ``post``:    ``POST /features`` with one ``{"entity_id","name","value"}``

at 64 connections and at 1 connection. The machine is shared and noisy, so each row runs every
server in turn (bare, canned, tornado, fast; fast x2 for the GETs at 64), ``--reps`` times, and
shows the medians: of the figures, and of the ratios within each turn. Beside requests/s it
reports each server's CPU time per request (its process and workers, from /proc): requests per
CPU second is the figure a busy machine distorts least. It also prints the p50 of a blocking
ZeroMQ ping to a shard.

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). Run from the repository root::

    python3 -m bench.bench_http                 # about 4 minutes
    python3 -m bench.bench_http --duration 1 --reps 1   # a quick look, noisier
    python3 -m bench.bench_http --transport ipc # shards on ipc:// sockets instead of tcp://
    python3 -m bench.bench_http --busy-cpus     # no idle vCPU: what waking idle vCPUs costs

The targets of issue 9 (2 cores, one front-end process, 2 shards) are checked at the end:
single-feature and whole-entity GET >= 5x the bare handler's requests/s and >= 0.3x the canned
responder's at 64 connections; whole-entity GET p50 <= 0.15 ms at one connection; POST /features
>= 4x the bare handler; two front-end processes serve more than one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._util import (BareServer, Cluster, cpu_count, free_port, load_entities, lua_script,
                         poll_for, request, wrk, zmq_round_trip)

KINDS = ("feature", "entity", "post")
CONNECTIONS = (64, 1)
FIGURES = ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us")


def scripts(n_entities: int, n_features: int) -> dict[str, str]:
    """The wrk script of each kind of request: a random entity (and feature) each time."""
    return {
        "feature": lua_script(
            f'  return wrk.format("GET", "/features/e" .. rnd({n_entities}) .. "/f" .. rnd({n_features}))'),
        "entity": lua_script(f'  return wrk.format("GET", "/features/e" .. rnd({n_entities}))'),
        "post": lua_script(
            f'  local body = string.format(\'{{"entity_id":"e%d","name":"f%d","value":%d}}\',\n'
            f'    rnd({n_entities}), rnd({n_features}), rnd(1000000))\n'
            '  return wrk.format("POST", "/features", {["Content-Type"] = "application/json"}, body)'),
        "bare": lua_script("  return wrk.format(nil)"),
    }


def start_frontend(cluster: Cluster, engine: str, processes: int) -> tuple[str, int]:
    """Another front end on the cluster's shards, on its own port; its URL and pid."""
    port = free_port()
    proc = cluster.start_process(["-m", "frontend"], f"frontend-{engine}{processes}", http_port=port,
                                 frontend_processes=processes, http_engine=engine)
    url = f"http://127.0.0.1:{port}"
    poll_for(lambda: proc.alive() and request("GET", url + "/readyz")[0] == 200, 15,
             what=f"{engine} front end with {processes} processes")
    return url + "/", proc.pid


def cpu_s(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and its children (the front end's workers)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def timed_wrk(target: tuple[str, int], *args):
    """wrk against ``target`` (url, pid); the result also has ``cpu_us``: the server's CPU per request."""
    url, pid = target
    before = cpu_s(pid)
    result = wrk(url, *args)
    result.cpu_us = (cpu_s(pid) - before) / max(result.requests, 1) * 1e6
    return result


def summarise(runs: list) -> dict:
    """Medians of each figure over the runs, plus the error count."""
    out = {f: statistics.median(getattr(r, f) for r in runs) for f in FIGURES}
    out["errors"] = sum(r.errors + r.non2xx for r in runs)
    out["runs"] = len(runs)
    return out


SERVERS = ("bare", "canned", "tornado", "fast", "fast x2")
REFERENCES = ("bare", "canned")


def measure(urls: dict, lua: dict, duration: int, reps: int) -> dict:
    """{(kind, conns): {server: summary}}; each turn runs every server once, and the ratios of
    a server to bare, canned and tornado are the medians of the ratios within a turn."""
    rows = {}
    for conns in CONNECTIONS:
        for kind in KINDS:
            servers = [s for s in SERVERS if s != "fast x2" or (conns > 1 and kind != "post")]
            turns = []
            for _ in range(reps):
                turns.append({s: timed_wrk(urls[s], conns, duration, lua["bare" if s in REFERENCES else kind])
                              for s in servers})
            row = {s: summarise([t[s] for t in turns]) for s in servers}
            for s in servers:
                for ref in ("bare", "canned", "tornado", "fast"):
                    row[s][f"x_{ref}"] = statistics.median(t[s].rps / t[ref].rps for t in turns)
                row[s]["p50_x_bare"] = statistics.median(t[s].p50_ms / t["bare"].p50_ms for t in turns)
                # requests per CPU second, as a ratio to bare Tornado's (robust to a busy machine)
                row[s]["per_cpu_x_bare"] = statistics.median(t["bare"].cpu_us / max(t[s].cpu_us, 1e-9)
                                                             for t in turns)
            rows[(kind, conns)] = row
            fast = row["fast"]
            print(f"  {kind:<8}{conns:>3} conns: fast {fast['rps']:>8,.0f} req/s ({fast['x_bare']:.2f}x bare "
                  f"{row['bare']['rps']:,.0f}, {fast['x_canned']:.2f}x canned {row['canned']['rps']:,.0f}, "
                  f"{fast['x_tornado']:.2f}x tornado {row['tornado']['rps']:,.0f}), p50 {fast['p50_ms']:.3f} ms, "
                  f"{fast['cpu_us']:.0f} us CPU/request ({fast['per_cpu_x_bare']:.2f}x bare's requests per CPU s)",
                  flush=True)
    return rows


def print_table(rows: dict) -> None:
    print("\nmedians; 'x bare' etc. = median of the ratios within each turn")
    print(f"  {'request':<9}{'conns':>6} {'server':<9}{'req/s':>10}{'x bare':>8}{'x canned':>9}"
          f"{'x tornado':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'CPU us':>8}{'/CPU x bare':>12}{'errors':>8}")
    for (kind, conns), row in rows.items():
        for server, got in row.items():
            print(f"  {kind:<9}{conns:>6} {server:<9}{got['rps']:>10,.0f}{got['x_bare']:>8.2f}"
                  f"{got['x_canned']:>9.2f}{got['x_tornado']:>10.2f}{got['p50_ms']:>9.3f}{got['p90_ms']:>9.3f}"
                  f"{got['p99_ms']:>9.3f}{got['cpu_us']:>8.0f}{got['per_cpu_x_bare']:>12.2f}{got['errors']:>8}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=2, help="whole seconds per wrk run (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="turns per row, each running every server once (default 3)")
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                    help="shard endpoints: tcp://127.0.0.1 (the default) or ipc:// sockets")
    ap.add_argument("--busy-cpus", action="store_true",
                    help="run one nice-19 busy loop per core meanwhile, so that no vCPU sits idle: "
                         "shows how much of the latency is waking idle vCPUs (not the recorded figure)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    lua = scripts(args.entities, args.features)
    print(f"bench_http: {cpu_count()} cores, {args.duration} s per wrk run, {args.reps} turns per row, "
          f"1 wrk thread, {args.transport} shard endpoints; load average %.2f %.2f %.2f"
          % os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_http.") as tmpdir:
        tmp = Path(tmpdir)
        cluster = Cluster(tmp, shards=2, frontend_processes=1)
        if args.transport == "ipc":
            cluster.endpoints = [f"ipc://{tmp}/shard{i}.sock" for i in range(2)]
        bares, spinners = [], []
        try:
            if args.busy_cpus:
                spinners = [subprocess.Popen([sys.executable, "-c", "import os\nos.nice(19)\nwhile True: pass"])
                            for _ in range(cpu_count())]
                print(f"--busy-cpus: {len(spinners)} nice-19 busy loops running", flush=True)
            for i in range(2):
                cluster.start_shard(i)
            took = load_entities(cluster.endpoints, args.entities, args.features)
            n = args.entities * args.features
            print(f"loaded {args.entities:,} entities x {args.features} features in {took:.1f} s "
                  f"({n / took:,.0f} values/s, ZeroMQ WRITE messages)", flush=True)
            zping = zmq_round_trip(cluster.endpoints[0])
            print(f"ZeroMQ DEALER->ROUTER ping, one in flight: p50 {zping:.3f} ms", flush=True)
            urls = {"fast": start_frontend(cluster, "fast", 1), "fast x2": start_frontend(cluster, "fast", 2),
                    "tornado": start_frontend(cluster, "tornado", 1)}
            bares = [BareServer(tmp, 1), BareServer(tmp, 1, "canned")]
            urls["bare"], urls["canned"] = (bares[0].url, bares[0].proc.pid), (bares[1].url, bares[1].proc.pid)
            for server, (url, _) in urls.items():  # warm-up
                wrk(url, 16, 1, lua["bare" if server in REFERENCES else "entity"])
            rows = measure(urls, lua, args.duration, args.reps)
        finally:
            for bare in bares:
                bare.stop()
            cluster.stop()
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    print_table(rows)
    print("\nload average (1, 5, 15 min) at the end: %.2f %.2f %.2f" % os.getloadavg())

    feature, entity, post = rows[("feature", 64)], rows[("entity", 64)], rows[("post", 64)]
    latency = rows[("entity", 1)]["fast"]["p50_ms"]
    errors = sum(got["errors"] for row in rows.values() for got in row.values())
    checks = []
    for name, row in (("single-feature", feature), ("whole-entity", entity)):
        checks.append((f"{name} GET, 64 conns: {row['fast']['rps']:,.0f} req/s = {row['fast']['x_bare']:.2f}x bare "
                       f"(target >= 5)", row["fast"]["x_bare"] >= 5))
        checks.append((f"{name} GET, 64 conns: {row['fast']['x_canned']:.2f}x canned (target >= 0.3)",
                       row["fast"]["x_canned"] >= 0.3))
        checks.append((f"{name} GET, 64 conns, requests per CPU second: {row['fast']['per_cpu_x_bare']:.2f}x bare "
                       f"({row['fast']['cpu_us']:.0f} vs {row['bare']['cpu_us']:.0f} us; target >= 5)",
                       row["fast"]["per_cpu_x_bare"] >= 5))
    checks += [
        (f"whole-entity GET p50 at 1 conn: {latency:.3f} ms (target <= 0.15 ms; bare "
         f"{rows[('entity', 1)]['bare']['p50_ms']:.3f} ms, canned {rows[('entity', 1)]['canned']['p50_ms']:.3f} ms, "
         f"ZeroMQ ping {zping:.3f} ms)", latency <= 0.15),
        (f"POST /features, 64 conns: {post['fast']['rps']:,.0f} req/s = {post['fast']['x_bare']:.2f}x bare "
         f"(target >= 4)", post["fast"]["x_bare"] >= 4),
        (f"POST /features, 64 conns, requests per CPU second: {post['fast']['per_cpu_x_bare']:.2f}x bare "
         f"(target >= 4)", post["fast"]["per_cpu_x_bare"] >= 4),
        (f"two fast front-end processes vs one, whole-entity GET at 64 conns: {entity['fast x2']['rps']:,.0f} vs "
         f"{entity['fast']['rps']:,.0f} req/s ({entity['fast x2']['x_fast']:.2f}x)", entity["fast x2"]["x_fast"] > 1),
        (f"errors and non-2xx responses: {errors}", errors == 0),
    ]
    print("\ntargets")
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    if args.json:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "zmq_ping_p50_ms": zping,
               "rows": [{"request": k, "connections": c, **row} for (k, c), row in rows.items()]}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
