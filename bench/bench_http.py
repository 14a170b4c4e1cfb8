"""HTTP reads and writes through the front end, as ratios to a bare Tornado handler (issue 2).

Starts 2 shards and two front ends on them as real processes on free loopback ports (one with
one process, one with two processes sharing its port), loads 100,000 entities x 10 features
straight into the shards (ZeroMQ WRITE messages), and measures with wrk (a random entity, and
feature, per request from a Lua script):

- ``feature``: ``GET /features/e{i}/f{j}``
- ``entity``:  ``GET /features/e{i}``
- ``post``:    ``POST /features`` with one ``{"entity_id","name","value"}``

at 64 connections and at 1 connection. The references run at the same time: a bare Tornado
handler returning a small JSON dict, one process, and two processes on one port for the
two-process rows. The machine is shared and noisy, so every front-end run is paired with a run
of its reference just before it, each pair is repeated (``--reps``), and the table shows the
medians: of the figures, and of the ratios within each pair. It also prints the p50 of a
blocking ZeroMQ ping to a shard.

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). Run from the repository root::

    python3 -m bench.bench_http                 # about 2.5 minutes
    python3 -m bench.bench_http --duration 1 --reps 1   # a quick look, noisier
    python3 -m bench.bench_http --transport ipc # shards on ipc:// sockets instead of tcp://
    python3 -m bench.bench_http --busy-cpus     # no idle vCPU: what waking idle vCPUs costs

The targets of issue 2 (2 cores) are checked at the end: whole-entity GET through one front-end
process >= 0.85x the bare handler's requests/s at 64 connections; p50 of a whole-entity GET at
one connection <= 0.4 ms; two front-end processes serve more requests/s than one.
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
FIGURES = ("rps", "p50_ms", "p90_ms", "p99_ms")


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


def start_second_frontend(cluster: Cluster, processes: int) -> tuple[str, object]:
    """Another front end on the same shards, with ``processes`` processes on its own port."""
    port = free_port()
    proc = cluster.start_process(["-m", "frontend"], f"frontend{processes}", http_port=port,
                                 frontend_processes=processes)
    url = f"http://127.0.0.1:{port}"
    poll_for(lambda: proc.alive() and request("GET", url + "/readyz")[0] == 200, 15,
             what=f"front end with {processes} processes")
    return url, proc


def summarise(runs: list) -> dict:
    """Medians of each figure over the runs, plus the error count."""
    out = {f: statistics.median(getattr(r, f) for r in runs) for f in FIGURES}
    out["errors"] = sum(r.errors + r.non2xx for r in runs)
    out["runs"] = len(runs)
    return out


def measure(targets: dict, lua: dict, duration: int, reps: int) -> dict:
    """For each row, ``reps`` pairs (reference run, front-end run); medians and paired ratios."""
    rows = {}
    for conns in CONNECTIONS:
        for kind in KINDS:
            for procs, (bare_url, fe_url) in targets.items():
                pairs = []
                for _ in range(reps):
                    ref = wrk(bare_url, conns, duration, lua["bare"])
                    got = wrk(fe_url, conns, duration, lua[kind])
                    pairs.append((ref, got))
                ref_s, got_s = summarise([p[0] for p in pairs]), summarise([p[1] for p in pairs])
                got_s["rps_ratio"] = statistics.median(g.rps / r.rps for r, g in pairs)
                got_s["p50_ratio"] = statistics.median(g.p50_ms / r.p50_ms for r, g in pairs)
                rows[(procs, kind, conns)] = (ref_s, got_s)
                print(f"  x{procs} {kind:<8}{conns:>3} conns: {got_s['rps']:>8,.0f} req/s "
                      f"({got_s['rps_ratio']:.2f}x bare {ref_s['rps']:,.0f}), p50 {got_s['p50_ms']:.3f} ms "
                      f"({got_s['p50_ratio']:.2f}x bare {ref_s['p50_ms']:.3f})", flush=True)
    return rows


def print_table(rows: dict) -> None:
    for procs in (1, 2):
        print(f"\nfront end x{procs} vs bare Tornado x{procs} (medians; 'x bare' = median of paired ratios)")
        print(f"  {'request':<9}{'conns':>6}{'req/s':>10}{'x bare':>8}{'p50 ms':>9}{'x bare':>8}"
              f"{'p90 ms':>9}{'p99 ms':>9}{'bare req/s':>12}{'bare p50':>10}{'errors':>8}")
        for (p, kind, conns), (ref, got) in rows.items():
            if p != procs:
                continue
            print(f"  {kind:<9}{conns:>6}{got['rps']:>10,.0f}{got['rps_ratio']:>8.2f}{got['p50_ms']:>9.3f}"
                  f"{got['p50_ratio']:>8.2f}{got['p90_ms']:>9.3f}{got['p99_ms']:>9.3f}"
                  f"{ref['rps']:>12,.0f}{ref['p50_ms']:>10.3f}{got['errors'] + ref['errors']:>8}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=2, help="whole seconds per wrk run (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="pairs of runs per row (default 3)")
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
    print(f"bench_http: {cpu_count()} cores, {args.duration} s per wrk run, {args.reps} pairs per row, "
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
            cluster.start_frontend()
            url2, _ = start_second_frontend(cluster, 2)
            bares = [BareServer(tmp, 1), BareServer(tmp, 2)]
            targets = {1: (bares[0].url, cluster.url + "/"), 2: (bares[1].url, url2 + "/")}
            for bare_url, fe_url in targets.values():  # warm-up
                wrk(bare_url, 16, 1, lua["bare"])
                wrk(fe_url, 16, 1, lua["entity"])
            rows = measure(targets, lua, args.duration, args.reps)
        finally:
            for bare in bares:
                bare.stop()
            cluster.stop()
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    print_table(rows)
    print("\nload average (1, 5, 15 min) at the end: %.2f %.2f %.2f" % os.getloadavg())

    ent1, ent1_lat, ent2 = rows[(1, "entity", 64)][1], rows[(1, "entity", 1)][1], rows[(2, "entity", 64)][1]
    errors = sum(ref["errors"] + got["errors"] for ref, got in rows.values())
    checks = [
        (f"whole-entity GET, 1 front-end process, 64 conns: {ent1['rps_ratio']:.2f}x bare "
         f"(target >= 0.85)", ent1["rps_ratio"] >= 0.85),
        (f"whole-entity GET p50 at 1 conn: {ent1_lat['p50_ms']:.3f} ms (target <= 0.4 ms; bare "
         f"{rows[(1, 'entity', 1)][0]['p50_ms']:.3f} ms, ZeroMQ ping {zping:.3f} ms)",
         ent1_lat["p50_ms"] <= 0.4),
        (f"two front-end processes vs one, whole-entity GET at 64 conns: {ent2['rps']:,.0f} vs "
         f"{ent1['rps']:,.0f} req/s ({ent2['rps'] / ent1['rps']:.2f}x)", ent2["rps"] > ent1["rps"]),
        (f"errors and non-2xx responses: {errors}", errors == 0),
    ]
    print("\ntargets")
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    if args.json:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "zmq_ping_p50_ms": zping,
               "rows": [{"processes": p, "request": k, "connections": c, "bare": ref, "frontend": got}
                        for (p, k, c), (ref, got) in rows.items()]}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
