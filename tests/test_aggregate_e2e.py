"""Aggregations through the real processes: HTTP writes and every read path, a shard kill and
restart, ingest from a file read twice, and a Kafka ingest killed mid-stream, each against an
oracle over the raw events.

Event times sit well inside their windows (minutes away from every edge, more than the one-tile
error at the old edge), so the oracle is exact whatever the second the test reads at.
"""
from __future__ import annotations

import random
import time
import uuid

import orjson
import pytest

from common import protocol as P
from ingest.producer import Producer
from tests.ingest_support import Broker, free_port
from tests.support import Cluster, poll_for, quote, request, zmq_call

US = 1_000_000
MIN, HOUR, DAY = 60 * US, 3600 * US, 86400 * US
FUNCTIONS = ["count", "sum", "mean", "min", "max", "last_3"]
WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY}
CONFIG = """
[views.view]
join_keys = ["user_id"]

[[aggregations]]
feature = "clicks"
functions = ["count", "sum", "mean", "min", "max", "last_3"]
windows = ["1h", "24h", "7d"]

[[aggregations]]
feature = "view:clicks"
functions = ["count", "sum"]
windows = ["1h"]
"""
# ages that are far from every window edge (the 1h window reaches at most 5 min further back,
# the 24h one 2 h, the 7d one 14 h): in 1h, in 24h only, in 7d only, and late
AGES = [3 * MIN, 20 * MIN, 45 * MIN, 2 * HOUR, 10 * HOUR, 20 * HOUR, 30 * HOUR, 3 * DAY, 6 * DAY]
LATE = 8 * DAY


def now_us() -> int:
    return time.time_ns() // 1000


def oracle(events: list[tuple[int, object]], now: int, feature: str = "clicks", functions=FUNCTIONS,
           windows=WINDOWS) -> dict:
    """Every aggregate of ``events`` ``[(event_us, value)]`` (each counted once) at ``now``."""
    out = {}
    for fn in functions:
        for label, length in windows.items():
            inside = [v for ts, v in sorted(events, key=lambda e: e[0]) if now - length <= ts < now]
            name = f"{feature}_{fn}_{label}"
            if fn == "count":
                out[name] = len(inside)
            elif fn == "sum":
                out[name] = sum(inside)
            elif fn == "mean":
                out[name] = sum(inside) / len(inside) if inside else None
            elif fn == "min":
                out[name] = min(inside, default=None)
            elif fn == "max":
                out[name] = max(inside, default=None)
            else:
                out[name] = inside[-int(fn[5:]):]
    return out


def aggregates(feats: dict, feature: str = "clicks") -> dict:
    return {k: v for k, v in feats.items() if k.startswith(feature + "_")}


def entity(cluster: Cluster, eid: str) -> dict:
    status, _, body = request("GET", f"{cluster.url}/features/{quote(eid)}")
    assert status == 200, body
    return body["features"]


def post(cluster: Cluster, body) -> tuple[int, dict]:
    status, _, reply = request("POST", cluster.url + "/features", body)
    return status, reply


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("aggcfg") / "store.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, config_file):
    tmp = tmp_path_factory.mktemp("agg")
    with Cluster(tmp, config_file=config_file, data_dir=tmp / "data") as c:
        yield c


def test_http_writes_are_served_everywhere_and_survive_restarts(cluster):
    t0 = now_us()
    rng = random.Random(3)
    events = [(t0 - age, rng.randrange(-50, 100)) for age in AGES for _ in range(2)]
    rng.shuffle(events)  # out of order: older events arrive after newer ones
    for i, (ts, value) in enumerate(events):
        status, reply = post(cluster, {"entity_id": "u1", "name": "clicks", "value": value,
                                       "event_timestamp": ts / US, "event_id": f"e{i}"})
        assert status == 200, reply
    # a redelivery with its event id counts once; a late event is ignored; a bad value is refused
    ts, value = events[0]
    assert post(cluster, {"entity_id": "u1", "name": "clicks", "value": value, "event_timestamp": ts / US,
                          "event_id": "e0"})[0] == 200
    assert post(cluster, {"entity_id": "u1", "name": "clicks", "value": 1000, "event_timestamp": (t0 - LATE) / US})[0] == 200
    status, reply = post(cluster, {"entity_id": "u1", "features": {"clicks": "many"}})
    assert status == 400 and "clicks is aggregated with sum, mean, min, max" in reply["detail"]
    status, reply = post(cluster, {"entity_id": "u1", "name": "clicks_sum_1h", "value": 3})
    assert status == 400 and "write clicks" in reply["detail"]
    assert post(cluster, [{"entity_id": "u1", "name": "city", "value": "Oslo"},
                          {"entity_id": "v:1", "name": "view:clicks", "value": 2.5, "event_id": 7},
                          {"entity_id": "v:1", "name": "view:clicks", "value": 2.5, "event_id": 7}])[0] == 200

    want = oracle(events, now_us())
    feats = entity(cluster, "u1")
    assert aggregates(feats) == want
    newest = max(ts for ts, _ in events)  # the plain value: last write wins, the later arrival on a tie
    assert feats["city"] == "Oslo" and feats["clicks"] == [v for ts, v in events if ts == newest][-1]
    status, _, one = request("GET", f"{cluster.url}/features/u1/clicks_sum_24h")
    assert status == 200 and one["value"] == want["clicks_sum_24h"]
    status, _, batch = request("POST", cluster.url + "/features/batch",
                               {"entity_ids": ["u1", "nobody"], "features": ["clicks_count_7d", "city"]})
    assert status == 200 and batch["results"][0]["features"] == {"clicks_count_7d": want["clicks_count_7d"],
                                                                 "city": "Oslo"}
    assert batch["results"][1]["detail"] == "No features found for entity"
    status, _, feast = request("POST", cluster.url + "/get-online-features",
                               {"features": ["view:clicks_sum_1h", "view:clicks_count_1h"],
                                "entities": {"user_id": ["v:1", "nobody"]}})
    assert status == 200, feast
    assert [r["values"] for r in feast["results"][1:]] == [[2.5, None], [1, None]]
    assert [r["statuses"] for r in feast["results"][1:]] == [["PRESENT", "NOT_FOUND"]] * 2
    stats = request("GET", cluster.url + "/stats")[2]
    assert sum(s.get("agg_late", 0) for s in stats["shards"]) >= 1
    assert sum(s.get("agg_duplicates", 0) for s in stats["shards"]) >= 2

    before = {eid: entity(cluster, eid) for eid in ("u1", "v:1")}
    for i in range(2):  # a clean stop (final snapshot), then a crash (log replay)
        cluster.shards[i].stop()
        cluster.start_shard(i)
    for i in range(2):
        cluster.shards[i].kill()
        cluster.start_shard(i)
    poll_for(lambda: request("GET", cluster.url + "/readyz")[0] == 200, 10, what="readyz")
    assert {eid: entity(cluster, eid) for eid in ("u1", "v:1")} == before
    assert aggregates(entity(cluster, "u1")) == oracle(events, now_us())


def run_ingest(cluster: Cluster, path, name: str) -> None:
    proc = cluster.start_process(["-m", "ingest", "--file", str(path)], name,
                                 dead_letter_path=cluster.tmp / f"{name}.dead", ingest_stats_endpoint="")
    poll_for(lambda: not proc.alive(), 30, what=f"{name} to reach the end of its file")
    assert proc.popen.returncode == 0, proc.output()


def stream_lines(prefix: str, n: int, t0: int, seed: int) -> tuple[list[bytes], dict[str, list]]:
    """``n`` JSON lines of ``clicks`` events over a few entities, out of order, some late; and
    per entity the events the oracle counts."""
    rng = random.Random(seed)
    lines, counted = [], {}
    for i in range(n):
        eid = f"{prefix}{rng.randrange(8)}"
        ts = t0 - (LATE if i % 17 == 0 else rng.choice(AGES))
        value = rng.randrange(100)
        lines.append(orjson.dumps({"entity_id": eid, "features": {"clicks": value, "other": i},
                                   "event_timestamp": ts / US}))
        if i % 17:
            counted.setdefault(eid, []).append((ts, value))
    return lines, counted


def test_a_file_ingested_twice_counts_each_line_once(cluster):
    lines, counted = stream_lines("file:", 400, now_us(), seed=5)
    path = cluster.tmp / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run_ingest(cluster, path, "ingest-file-1")
    run_ingest(cluster, path, "ingest-file-2")  # the same lines again: the shards know their positions
    now = now_us()
    for eid, events in counted.items():
        assert aggregates(entity(cluster, eid)) == oracle(events, now), eid


def test_a_zeromq_resend_counts_once_by_its_event_ids(cluster):
    """ZeroMQ has no positions to carry: it never redelivers by itself, and a producer's resend
    (after no answer) is known only by its events' ids. With them it counts once; without, twice."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = cluster.start_process(["-m", "ingest"], "ingest-zmq", ingest_endpoint=endpoint, ingest_stats_endpoint="",
                                 dead_letter_path=cluster.tmp / "zmq.dead")
    poll_for(lambda: zmq_call(endpoint, [P.ping(1)], 200)[0][P.OK], 15, what="the zmq ingest source")
    t0 = now_us()
    maps = [{"entity_id": "zmq:1", "features": {"clicks": i}, "event_timestamp": (t0 - age) / US, "event_id": f"z{i}"}
            for i, age in enumerate(AGES)]
    lines = b"\n".join(orjson.dumps({**m, "entity_id": "zmq:2", "event_id": 100 + i}) for i, m in enumerate(maps))
    bare = [{k: v for k, v in m.items() if k != "event_id"} | {"entity_id": "zmq:3"} for m in maps]
    try:
        with Producer(endpoint, timeout_s=20) as producer:
            for _ in range(2):  # the same requests again, as a producer resends what it got no answer to
                producer.send(maps)
                producer.send(lines)
                producer.send(bare)
                producer.flush()
    finally:
        proc.stop()
    events = [(t0 - age, i) for i, age in enumerate(AGES)]
    now = now_us()
    assert aggregates(entity(cluster, "zmq:1")) == oracle(events, now)
    assert aggregates(entity(cluster, "zmq:2")) == oracle(events, now)
    assert aggregates(entity(cluster, "zmq:3")) == oracle(events + events, now)  # no ids: counted twice


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("aggkafka"))
    yield b
    b.stop()


class Lines:
    """Lines in the shape Broker.produce takes."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.keys = [orjson.loads(line)["entity_id"] for line in lines]


def test_kafka_ingest_killed_mid_stream_counts_every_event_once(cluster, broker):
    lines, counted = stream_lines("kafka:", 3000, now_us(), seed=9)
    topic, group = broker.create_topic(4), f"g-{uuid.uuid4().hex[:8]}"
    stream = Lines(lines)
    broker.produce(topic, stream, range(len(lines) // 2))

    def start(name: str, **extra):
        stats = f"tcp://127.0.0.1:{free_port()}"
        proc = cluster.start_process(
            ["-m", "ingest"], name, ingest_source="kafka", kafka_bootstrap=broker.bootstrap, kafka_topic=topic,
            kafka_group=group, ingest_stats_endpoint=stats, dead_letter_path=cluster.tmp / f"{group}.dead",
            kafka_session_timeout_ms=2000, kafka_fetch_wait_ms=50, **extra)
        return proc, lambda: zmq_call(stats, [P.stats(1)], 1000)[0]

    first, first_stats = start("agg-kafka-a", ingest_batch_events=50, ingest_max_in_flight=2)
    poll_for(lambda: first_stats()["events"] >= 500, 30, what="the first ingest to apply 500 events")
    first.kill()  # SIGKILL mid-stream: batches applied but not committed are read again
    broker.produce(topic, stream, range(len(lines) // 2, len(lines)))
    second, second_stats = start("agg-kafka-b")
    poll_for(lambda: second_stats()["lag"] == 0 and second_stats()["in_flight"] == 0, 30, what="lag 0")

    def exact():
        now = now_us()
        return all(aggregates(entity(cluster, eid)) == oracle(events, now) for eid, events in counted.items())

    poll_for(exact, 15, what="the aggregates to equal the oracle")
    stats = request("GET", cluster.url + "/stats")[2]
    assert sum(s.get("agg_redelivered", 0) for s in stats["shards"]) > 0  # the kill did redeliver some
