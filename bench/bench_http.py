"""HTTP reads and writes through the front end, as ratios to a bare Tornado handler (issue 2).

Starts 2 shards and the front end as real processes on free loopback ports, loads
100,000 entities x 10 features straight into the shards (ZeroMQ WRITE messages), and measures
with wrk (a random entity per request, from a Lua script):

- ``feature``: ``GET /features/e{i}/f{j}``
- ``entity``:  ``GET /features/e{i}``
- ``post``:    ``POST /features`` with one ``{"entity_id","name","value"}``

at 64 connections and at 1 connection, through one front-end process and then two. In the same
run it measures a bare Tornado handler returning a small JSON dict (one process; two processes
on one port for the two-process rows), before and after each block, and prints every figure as
a ratio to the mean of the two. It also prints the p50 of a blocking ZeroMQ ping to a shard.

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). Run from the repository root::

    python3 -m bench.bench_http                 # about 3 minutes
    python3 -m bench.bench_http --duration 2    # quicker, noisier
    python3 -m bench.bench_http --transport ipc # shards on ipc:// sockets instead of tcp://

The targets of issue 2 (2 cores) are checked at the end: whole-entity GET through one front-end
process >= 0.85x the bare handler's requests/s at 64 connections; p50 of a whole-entity GET at
one connection <= 0.4 ms; two front-end processes serve more requests/s than one.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench._util import (BareServer, Cluster, WrkResult, cpu_count, load_entities, lua_script,
                         ratio, wrk, zmq_round_trip)

KINDS = ("feature", "entity", "post")
CONNECTIONS = (64, 1)


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
    }


def measure_bare(tmp: Path, processes: int, duration: float) -> dict[int, WrkResult]:
    with BareServer(tmp, processes) as bare:
        wrk(bare.url, 16, 1)  # warm-up
        return {c: wrk(bare.url, c, duration) for c in CONNECTIONS}


def mean_result(a: WrkResult, b: WrkResult) -> WrkResult:
    return WrkResult(a.requests + b.requests, a.duration_s + b.duration_s, a.errors + b.errors,
                     a.non2xx + b.non2xx, (a.p50_ms + b.p50_ms) / 2, (a.p90_ms + b.p90_ms) / 2,
                     (a.p99_ms + b.p99_ms) / 2, (a.mean_ms + b.mean_ms) / 2)


def run_block(cluster: Cluster, tmp: Path, processes: int, duration: float,
              lua: dict[str, str]) -> tuple[dict, dict]:
    """Bare reference, the front end's rows, bare reference again; returns (ref, rows)."""
    before = measure_bare(tmp, processes, duration)
    cluster.frontend_processes = processes
    cluster.start_frontend()
    try:
        wrk(cluster.url + "/", 16, 1, lua["entity"])  # warm-up
        rows = {(k, c): wrk(cluster.url + "/", c, duration, lua[k]) for k in KINDS for c in CONNECTIONS}
    finally:
        cluster.frontend.stop()
    after = measure_bare(tmp, processes, duration)
    ref = {c: mean_result(before[c], after[c]) for c in CONNECTIONS}
    print(f"  bare Tornado x{processes}: before/after "
          + ", ".join(f"{c} conn {before[c].rps:,.0f}/{after[c].rps:,.0f} req/s "
                      f"p50 {before[c].p50_ms:.3f}/{after[c].p50_ms:.3f} ms" for c in CONNECTIONS),
          flush=True)
    return ref, rows


def print_block(processes: int, ref: dict, rows: dict) -> None:
    print(f"\nfront end x{processes} (reference: bare Tornado x{processes}, mean of before and after)")
    print(f"  {'request':<9}{'conns':>6}{'req/s':>10}{'x bare':>8}{'p50 ms':>9}{'x bare':>8}"
          f"{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for c in CONNECTIONS:
        r = ref[c]
        print(f"  {'bare':<9}{c:>6}{r.rps:>10,.0f}{1:>8.2f}{r.p50_ms:>9.3f}{1:>8.2f}"
              f"{r.p90_ms:>9.3f}{r.p99_ms:>9.3f}{r.errors + r.non2xx:>8}")
    for (k, c), r in rows.items():
        print(f"  {k:<9}{c:>6}{r.rps:>10,.0f}{ratio(r.rps, ref[c].rps):>8.2f}{r.p50_ms:>9.3f}"
              f"{ratio(r.p50_ms, ref[c].p50_ms):>8.2f}{r.p90_ms:>9.3f}{r.p99_ms:>9.3f}"
              f"{r.errors + r.non2xx:>8}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run (default 5)")
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                    help="shard endpoints: tcp://127.0.0.1 (the default) or ipc:// sockets")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    lua = scripts(args.entities, args.features)
    print(f"bench_http: {cpu_count()} cores, {args.duration:g} s per wrk run, 1 wrk thread, "
          f"{args.transport} shard endpoints", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_http.") as tmpdir:
        tmp = Path(tmpdir)
        cluster = Cluster(tmp, shards=2, frontend_processes=1)
        if args.transport == "ipc":
            cluster.endpoints = [f"ipc://{tmp}/shard{i}.sock" for i in range(2)]
        try:
            for i in range(2):
                cluster.start_shard(i)
            took = load_entities(cluster.endpoints, args.entities, args.features)
            n = args.entities * args.features
            print(f"loaded {args.entities:,} entities x {args.features} features in {took:.1f} s "
                  f"({n / took:,.0f} values/s, ZeroMQ WRITE messages)", flush=True)
            zrt = zmq_round_trip(cluster.endpoints[0])
            print(f"ZeroMQ DEALER->ROUTER ping, one in flight: p50 {zrt:.3f} ms", flush=True)
            blocks = {p: run_block(cluster, tmp, p, args.duration, lua) for p in (1, 2)}
        finally:
            cluster.stop()
    for p, (ref, rows) in blocks.items():
        print_block(p, ref, rows)

    ref1, rows1 = blocks[1]
    ref2, rows2 = blocks[2]
    ent1, ent1_lat, ent2 = rows1[("entity", 64)], rows1[("entity", 1)], rows2[("entity", 64)]
    errors = sum(r.errors + r.non2xx for _, rows in blocks.values() for r in rows.values())
    checks = [
        (f"whole-entity GET, 1 front-end process, 64 conns: {ratio(ent1.rps, ref1[64].rps):.2f}x "
         f"bare (target >= 0.85)", ratio(ent1.rps, ref1[64].rps) >= 0.85),
        (f"whole-entity GET p50 at 1 conn: {ent1_lat.p50_ms:.3f} ms (target <= 0.4 ms; "
         f"bare {ref1[1].p50_ms:.3f} ms, ZeroMQ ping {zrt:.3f} ms)", ent1_lat.p50_ms <= 0.4),
        (f"two front-end processes vs one, whole-entity GET at 64 conns: {ent2.rps:,.0f} vs "
         f"{ent1.rps:,.0f} req/s ({ratio(ent2.rps, ent1.rps):.2f}x)", ent2.rps > ent1.rps),
        (f"errors and non-2xx responses: {errors}", errors == 0),
    ]
    print("\ntargets")
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    if args.json:
        out = {"zmq_ping_p50_ms": zrt, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "blocks": {p: {"ref": {c: vars(r) for c, r in ref.items()},
                              "rows": {f"{k}@{c}": vars(r) for (k, c), r in rows.items()}}
                          for p, (ref, rows) in blocks.items()}}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
