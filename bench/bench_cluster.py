"""Cluster mode (issue 13): reads and writes against embedded mode, peer bootstrap, failover and
scale-out, all on one machine with a Tansu broker, every process real, figures from one run.

- ``reads``: ``GET /features/e{i}`` at 64 connections (wrk), cluster mode (replica set a of 2
  shards, b of 1, the broker; ``--other-spreads request``: also through a second front end
  spreading reads by request; ``--baseline-tree DIR``: also through a front end run from another
  checkout, the A/B of a front-end change) vs embedded mode with as many shard processes (3) and with 2,
  same entities, runs in turns and repeated; the ratio of medians, and the CPU each process used
  per request (``/proc``). The reference with as many shards compares the modes; the one with 2
  shows what a third shard process costs on 2 cores.
- ``footprint``: the same reads against a cluster of one replica set of 2 shards (the broker
  besides) vs embedded mode's 2 shards, after the others.
- ``writes``: ``POST /features`` of one value at 64 and 1 connections; cluster (through Kafka,
  200 once applied) vs embedded (straight to a shard).
- ``bootstrap``: one partition of N entities x 10 values held by a shard; the values/s of a peer
  transfer (``pdump`` chunks over ZeroMQ, each loaded as it arrives: the shard's
  :class:`~shard.cluster.Transfer`) vs a rebuild from the topic's start.
- ``failover``: 4 reader threads over every entity while one shard of replica set a (of two) is
  SIGKILLed: reads failed, and the time from the kill to the last failed read.
- ``scaleout``: req/s (wrk, 64 connections) before, during and after a new shard joins replica set a.

    flock /tmp/bench.lock python3 -m bench.bench_cluster          # about 2 minutes
"""
from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench._util import Cluster, free_port, load_entities, lua_script, poll_for, ratio, request, wrk

from common import protocol as P  # noqa: E402
from common.events import Limits  # noqa: E402
from common.membership import ensure_topic  # noqa: E402
from common.records import records  # noqa: E402
from shard.cluster import Partitions, Transfer  # noqa: E402
from shard.store import Store  # noqa: E402
from tests.cluster_support import KafkaCluster  # noqa: E402
from tests.ingest_support import Broker  # noqa: E402

FEATURES = 10
EVENT_US = 1_700_000_000_000_000


def produce_entities(bootstrap: str, topic: str, n: int, start: int = 0) -> float:
    """``e{start}..`` x 10 features as records of ``topic`` keyed by entity id; seconds taken."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20,
                         "enable.idempotence": True, "queue.buffering.max.messages": 2_000_000})
    t0 = time.perf_counter()
    for i in range(start, start + n):
        eid = f"e{i}"
        ((key, value),) = records((eid, f"f{j}", i + j / 100, EVENT_US) for j in range(FEATURES))
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    return time.perf_counter() - t0


def caught_up(c: KafkaCluster, name: str, records_total: int) -> bool:
    held = c.held(name)
    return held and all(up for _, up in held.values()) and sum(o for o, _ in held.values()) >= records_total


def read_script(n: int) -> str:
    return lua_script(f'  return wrk.format("GET", "/features/e" .. rnd({n}))')


def post_script(n: int) -> str:
    return lua_script(
        f'  local body = string.format(\'{{"entity_id":"e%d","name":"f%d","value":%d}}\',\n'
        f'    rnd({n}), rnd({FEATURES}), rnd(1000000))\n'
        '  return wrk.format("POST", "/features", {["Content-Type"] = "application/json"}, body)')


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes(c: Cluster) -> dict[str, int]:
    """The PIDs of a cluster's front end, shards and (cluster mode) broker, by name."""
    shards = c.shards.items() if isinstance(c.shards, dict) else ((f"s{i}", p) for i, p in enumerate(c.shards))
    out = {"front end": c.frontend.pid, **{name: p.pid for name, p in shards}}
    if isinstance(c, (KafkaCluster, OtherFront)):
        out["broker"] = c.broker.proc.pid
    return out


def measured(c: Cluster, run):
    """``run()``'s result and the CPU seconds each process of ``c`` used meanwhile."""
    pids = processes(c)
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    result = run()
    return result, {name: cpu_s(pid) - before[name] for name, pid in pids.items()}


def cpu_line(rows: list) -> str:
    """Microseconds of CPU per request, by process, summed over the runs ``rows`` of (wrk, cpu)."""
    n = sum(r.requests for r, _ in rows)
    total: dict[str, float] = {}
    for _, cpu in rows:
        for name, s in cpu.items():
            total[name] = total.get(name, 0.0) + s
    return (", ".join(f"{name} {1e6 * s / n:.0f}" for name, s in total.items())
            + f"; all {1e6 * sum(total.values()) / n:.0f} us/request")


def bench_reads(stores: dict, n: int, duration: float, reps: int, label: str) -> None:
    """Whole-entity GETs at 64 connections against each of ``stores`` (name -> Cluster; the last
    one is the cluster, the others its references) in turn, ``reps`` turns; with each process's CPU."""
    rows = {name: [] for name in stores}
    for _ in range(reps):
        for name, c in stores.items():
            rows[name].append(measured(c, lambda: wrk(c.url, 64, duration, read_script(n))))
    *refs, mine = stores
    med = {name: statistics.median(r.rps for r, _ in rs) for name, rs in rows.items()}
    errors = sum(r.errors + r.non2xx for rs in rows.values() for r, _ in rs)
    print(f"read   64 conns, {label}: {mine} {med[mine]:8.0f} req/s, errors/non-2xx {errors}", flush=True)
    for ref in refs:
        pairs = [ratio(c.rps, e.rps) for (e, _), (c, _) in zip(rows[ref], rows[mine])]
        print(f"  against {ref} {med[ref]:8.0f} req/s: ratio {ratio(med[mine], med[ref]):.2f}x "
              f"(turns {', '.join(f'{x:.2f}' for x in pairs)}; median of turns {statistics.median(pairs):.2f}x)",
              flush=True)
    for name in stores:
        print(f"  CPU {name}: {cpu_line(rows[name])}", flush=True)


class OtherFront:
    """The cluster seen through another front end, started with other settings ``fs``
    (``--other-spreads``) or from another checkout ``tree`` (``--baseline-tree``); for
    :func:`bench_reads` and :func:`processes`: ``url``, ``frontend``, ``shards``, ``broker``."""

    def __init__(self, c: KafkaCluster, name: str, tree: Path | None = None, **fs) -> None:
        from bench.bench_batch import start_frontend

        self.frontend = start_frontend(c, name, 1, tree=tree, **fs)
        self.url, self.shards, self.broker = self.frontend.url, c.shards, c.broker


def bench_reads_writes(embedded: Cluster, embedded3: Cluster, cluster: KafkaCluster, n: int, duration: float,
                       reps: int, spreads: list[str] = (), baseline: Path | None = None) -> dict:
    out = {}
    others = {f"cluster, spread by {s}": OtherFront(cluster, f"spread-{s}", cluster_read_spread=s) for s in spreads}
    if baseline is not None:
        others[f"cluster, front end of {baseline}"] = OtherFront(cluster, "baseline", tree=baseline)
    bench_reads({"embedded, 3 shards": embedded3, "embedded, 2 shards": embedded, **others, "cluster": cluster}, n,
                duration, reps, "2 replica sets (a: 2 shards, b: 1; 3 shard processes) and the broker")
    for kind, script, conns in (("write", post_script(n), 64), ("write", post_script(n), 1)):
        rows = {"embedded": [], "cluster": []}
        for _ in range(reps):
            for mode, url in (("embedded", embedded.url), ("cluster", cluster.url)):
                rows[mode].append(wrk(url, conns, duration, script))
        med = {m: (statistics.median(r.rps for r in rs), statistics.median(r.p50_ms for r in rs),
                   sum(r.errors + r.non2xx for r in rs)) for m, rs in rows.items()}
        out[f"{kind}@{conns}"] = med
        print(f"{kind:5} {conns:3} conns  embedded {med['embedded'][0]:8.0f} req/s p50 {med['embedded'][1]:6.2f} ms"
              f"   cluster {med['cluster'][0]:8.0f} req/s p50 {med['cluster'][1]:6.2f} ms   ratio "
              f"{ratio(med['cluster'][0], med['embedded'][0]):.2f}x  errors/non-2xx "
              f"{med['embedded'][2]}/{med['cluster'][2]}", flush=True)
    return out


def bench_bootstrap(broker: Broker, tmp: Path, n: int) -> None:
    (tmp / "boot").mkdir()
    c = KafkaCluster(broker, tmp / "boot", partitions=1)
    try:
        ensure_topic(broker.bootstrap, c.topic, 1)  # before a producer auto-creates it
        produce_entities(broker.bootstrap, c.topic, n)
        c.start_shard("s0")
        poll_for(lambda: caught_up(c, "s0", n), 300, interval=0.2, what="the source shard")
        import zmq

        ctx = zmq.Context.instance()
        peer = []
        for _ in range(3):
            t0 = time.perf_counter()
            parts = Partitions(Store(), 1, Limits(), c.topic)
            transfer = Transfer(ctx, 0, c.endpoints["s0"])
            while not transfer.step(parts):  # as the shard's loop steps it, without the waits between
                transfer.sock.poll(2000)
            transfer.close()
            peer.append(time.perf_counter() - t0)
            assert parts.store.values == n * FEATURES, (transfer.entities, parts.store.values, transfer.offset)
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uuid.uuid4().hex,
                             "enable.auto.commit": False, "fetch.wait.max.ms": 50})
        consumer.assign([TopicPartition(c.topic, 0, 0)])
        parts = Partitions(Store(), 1, Limits(), c.topic)
        h = parts.require(0)
        h.assigned = True
        t0 = time.perf_counter()
        while h.next < n:
            msgs = consumer.consume(5000, 1.0)
            parts.apply([(m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1])
                         for m in msgs if m.error() is None])
        replay = time.perf_counter() - t0
        consumer.close()
        values = n * FEATURES
        best = min(peer)
        print(f"bootstrap of one partition, {n} entities x {FEATURES} values: from a peer "
              f"{values / best / 1e6:.2f}M values/s ({best:.2f} s, best of 3); rebuild from the topic "
              f"{values / replay / 1e6:.2f}M values/s ({replay:.2f} s); ratio {ratio(replay, best):.1f}x", flush=True)
        c.start_shard("b0")  # another replica set: Kafka gives it the partition, it takes it from s0
        poll_for(lambda: caught_up(c, "b0", n), 120, interval=0.1, what="b0 to take the partition from s0")
        line = next(ln for ln in c.shards["b0"].output().splitlines() if "entities from" in ln)
        took = float(line.rsplit(" in ", 1)[1].split()[0])
        print(f"  the same inside a shard's loop (b0 from s0, chunks stepped between its other work): "
              f"{values / took / 1e6:.2f}M values/s ({took:.2f} s)", flush=True)
    finally:
        c.stop()


class Readers:
    """Threads reading e0..e{n-1} in turn over keep-alive connections; failures with their time."""

    def __init__(self, port: int, n: int, threads: int = 4) -> None:
        self.port, self.n = port, n
        self.failures: list[float] = []
        self.ok = 0
        self.running = True
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        i = k
        while self.running:
            try:
                conn.request("GET", f"/features/e{i % self.n}")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(time.monotonic())
            except (OSError, http.client.HTTPException):
                self.failures.append(time.monotonic())
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            i += len(self.threads)

    def stop(self) -> None:
        self.running = False
        for t in self.threads:
            t.join(10)


def bench_failover(c: KafkaCluster, n: int) -> None:
    readers = Readers(c.http_port, n)
    time.sleep(2)  # load before the kill
    before = readers.ok
    killed = time.monotonic()
    c.shards["a1"].kill()
    poll_for(lambda: len(c.held("a0")) == c.partitions and all(up for _, up in c.held("a0").values()), 60,
             interval=0.05, what="a0 to serve a1's partitions")
    recovered = time.monotonic() - killed
    time.sleep(2)
    readers.stop()
    late = [t - killed for t in readers.failures if t >= killed]
    print(f"failover: SIGKILL of a1 (replica set a of 2 shards, b of 1): {len(late)} failed reads of "
          f"{readers.ok - before} after the kill; last failure "
          f"{'none' if not late else f'{max(late):.2f} s after the kill'}; a0 served a1's partitions "
          f"{recovered:.1f} s after it", flush=True)


def bench_scaleout(c: KafkaCluster, n: int, duration: float) -> None:
    script = read_script(n)
    before = wrk(c.url, 64, duration, script)
    c.start_shard("a2", wait=False)
    during = wrk(c.url, 64, duration, script)
    poll_for(lambda: any(up for _, up in c.held("a2").values()), 60, what="a2 to serve")
    after = wrk(c.url, 64, duration, script)
    print(f"scale-out (a2 joins replica set a) under read load, req/s at 64 connections: before "
          f"{before.rps:.0f}, during {during.rps:.0f} ({ratio(during.rps, before.rps):.2f}x), after "
          f"{after.rps:.0f} ({ratio(after.rps, before.rps):.2f}x); errors/non-2xx "
          f"{before.errors + before.non2xx}/{during.errors + during.non2xx}/{after.errors + after.non2xx}",
          flush=True)


def start_cluster(c: KafkaCluster, names, n: int) -> None:
    """Shards ``names`` and a front end; ``e0..`` written to the topic and readable."""
    for name in names:
        c.start_shard(name)
    c.start_frontend()
    produce_entities(c.broker.bootstrap, c.topic, n)

    def applied() -> bool:  # by every replica set
        held = {name: c.held(name) for name in names}
        return all(up for h in held.values() for _, up in h.values()) and all(
            sum(o for name in names if name[0] == r for o, _ in held[name].values()) >= n for r in {m[0] for m in names})

    poll_for(applied, 120, interval=0.2, what="the entities in cluster mode")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=20000)
    ap.add_argument("--boot-entities", type=int, default=100000)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--only", default="reads,bootstrap,failover,scaleout,footprint")
    ap.add_argument("--heartbeat-s", type=float, default=1.0,
                    help="FS_CLUSTER_HEARTBEAT_S of the shards: the product's default (the tests' 0.3 s "
                         "triples the membership records every process reads)")
    ap.add_argument("--fetch-wait-ms", type=int, default=10,
                    help="FS_KAFKA_FETCH_WAIT_MS of the cluster: Tansu answers an idle fetch only after it")
    ap.add_argument("--other-spreads", default="",
                    help="also read through a front end per FS_CLUSTER_READ_SPREAD named here (request), "
                         "on the same cluster, in the same turns")
    ap.add_argument("--baseline-tree", type=Path,
                    help="also read through a front end run from this checkout (an A/B of a front-end "
                         "change: git worktree add /tmp/base <commit>), on the same cluster, in the same turns")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp)
        try:
            if "bootstrap" in only:
                bench_bootstrap(broker, tmp, args.boot_entities)
            c = KafkaCluster(broker, tmp, partitions=8, shard_timeout_s=1.0, kafka_fetch_wait_ms=args.fetch_wait_ms,
                             cluster_heartbeat_s=args.heartbeat_s)
            embedded = Cluster(tmp / "embedded", shards=2) if only & {"reads", "footprint"} else None
            small = None
            try:
                start_cluster(c, ("a0", "a1", "b0"), args.entities)
                if embedded is not None:
                    (tmp / "embedded").mkdir()
                    embedded.start()
                    load_entities(embedded.endpoints, args.entities, FEATURES)
                if "reads" in only:
                    (tmp / "embedded3").mkdir()
                    with Cluster(tmp / "embedded3", shards=3) as embedded3:
                        load_entities(embedded3.endpoints, args.entities, FEATURES)
                        bench_reads_writes(embedded, embedded3, c, args.entities, args.duration, args.reps,
                                           [x for x in args.other_spreads.split(",") if x], args.baseline_tree)
                if "failover" in only:
                    bench_failover(c, args.entities)
                if "scaleout" in only:
                    bench_scaleout(c, args.entities, args.duration)
                if "footprint" in only:
                    c.stop()
                    (tmp / "small").mkdir()
                    small = KafkaCluster(broker, tmp / "small", partitions=8, shard_timeout_s=1.0,
                                         kafka_fetch_wait_ms=args.fetch_wait_ms, cluster_heartbeat_s=args.heartbeat_s)
                    start_cluster(small, ("a0", "a1"), args.entities)
                    bench_reads({"embedded, 2 shards": embedded, "cluster": small}, args.entities, args.duration,
                                args.reps, "1 replica set of 2 shards (2 shard processes) and the broker")
            finally:
                if embedded is not None:
                    embedded.stop()
                for cluster in (small, c):
                    if cluster is not None:
                        cluster.stop()
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
