"""What the metrics cost: whole-entity GET req/s with FS_METRICS=1 against FS_METRICS=0 (issue 10).

Starts two clusters of real processes on free loopback ports, identical but for FS_METRICS (the
front end's request and round-trip histograms, the shards' freshness sampling), each with 2
shards holding the same 100,000 entities x 10 features, and a front end of 1 and of 2 processes.
wrk drives a random whole entity per request at 64 connections, alternating on and off runs
(``--reps`` pairs); the table shows the medians and the median of the paired ratios::

    flock /tmp/bench.lock python3 -m bench.bench_metrics            # about 1.5 minutes
    flock /tmp/bench.lock python3 -m bench.bench_metrics --duration 2 --reps 3

The target of issue 10: metrics on >= 0.95x metrics off.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench._util import Cluster, cpu_count, load_entities, wrk
from bench.bench_http import scripts, start_second_frontend, summarise

CONNECTIONS = 64


def start(tmp: Path, metrics: int, entities: int, features: int) -> tuple[Cluster, dict[int, str]]:
    """A loaded cluster with FS_METRICS=``metrics``; the URL of its 1- and 2-process front ends."""
    tmp.mkdir()
    cluster = Cluster(tmp, shards=2, frontend_processes=1, metrics=metrics)
    for i in range(2):
        cluster.start_shard(i)
    load_entities(cluster.endpoints, entities, features)
    cluster.start_frontend()
    url2, _ = start_second_frontend(cluster, 2)
    return cluster, {1: cluster.url + "/", 2: url2 + "/"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=3, help="whole seconds per wrk run (default 3)")
    ap.add_argument("--reps", type=int, default=5, help="pairs of runs per row (default 5)")
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=10)
    args = ap.parse_args(argv)
    lua = scripts(args.entities, args.features)["entity"]
    print(f"bench_metrics: {cpu_count()} cores, {args.duration} s per wrk run, {args.reps} pairs per row, "
          f"{CONNECTIONS} connections; load average %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_metrics.") as tmpdir:
        clusters = []
        try:
            on, urls_on = start(Path(tmpdir) / "on", 1, args.entities, args.features)
            clusters.append(on)
            off, urls_off = start(Path(tmpdir) / "off", 0, args.entities, args.features)
            clusters.append(off)
            for url in (*urls_on.values(), *urls_off.values()):  # warm-up
                wrk(url, 16, 1, lua)
            for procs in (1, 2):
                pairs = []
                for _ in range(args.reps):
                    got_off = wrk(urls_off[procs], CONNECTIONS, args.duration, lua)
                    got_on = wrk(urls_on[procs], CONNECTIONS, args.duration, lua)
                    pairs.append((got_off, got_on))
                ratio = statistics.median(b.rps / a.rps for a, b in pairs)
                rows[procs] = (summarise([p[0] for p in pairs]), summarise([p[1] for p in pairs]), ratio)
                print(f"  x{procs}: on {rows[procs][1]['rps']:,.0f} req/s, off {rows[procs][0]['rps']:,.0f} "
                      f"req/s, on/off {ratio:.3f}", flush=True)
        finally:
            for c in clusters:
                c.stop()
    print(f"\n  {'processes':<10}{'on req/s':>10}{'off req/s':>11}{'on/off':>8}{'on p99 ms':>11}{'off p99 ms':>12}"
          f"{'errors':>8}")
    for procs, (off_s, on_s, ratio) in rows.items():
        print(f"  {procs:<10}{on_s['rps']:>10,.0f}{off_s['rps']:>11,.0f}{ratio:>8.3f}{on_s['p99_ms']:>11.2f}"
              f"{off_s['p99_ms']:>12.2f}{on_s['errors'] + off_s['errors']:>8}")
    print("\nload average (1, 5, 15 min) at the end: %.2f %.2f %.2f" % os.getloadavg())
    met = rows[1][2] >= 0.95
    print(f"\ntarget\n  [{'met' if met else 'MISSED'}] whole-entity GET, 1 front-end process, metrics on/off "
          f"{rows[1][2]:.3f} (target >= 0.95); 2 processes {rows[2][2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
