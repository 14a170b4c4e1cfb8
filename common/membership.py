"""Cluster membership: which shard (ZeroMQ endpoint) holds which partition, read from Kafka.

Shards write their state to the membership topic (``<topic>.members``, one partition), keyed by
``<replica>@<endpoint>``, on every change and every heartbeat; a null value means the shard left.
Front ends, ingest and shards read it from the start and keep the latest record per key in a
:class:`View`. See docs/CLUSTER.md.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import orjson

log = logging.getLogger("membership")

LIVENESS = 3  # a member is presumed dead after this many heartbeats without a record while
# others' records keep arriving (when none arrive, Kafka or this reader is stuck: nobody expires)
FETCH_WAIT_MS = 500  # the membership topic needs no low latency (reads retry another replica): an
# empty fetch costs Tansu about 1 ms of CPU, and it answers one only after this wait (a change is
# seen up to about half of it late)
MAX_AGE_S = 60.0  # a record written longer ago than this (by its own clock) is ignored at start


def members_topic(topic: str) -> str:
    return f"{topic}.members"


def member_key(replica: str, endpoint: str) -> str:
    return f"{replica}@{endpoint}"


@dataclass
class Member:
    """One shard as it last described itself."""

    replica: str
    endpoint: str
    partitions: dict[int, tuple[int, bool]] = field(default_factory=dict)  # p -> (next, caught up)
    heartbeat_s: float = 1.0
    leaving: bool = False  # stopping: it serves until others took its partitions over
    seen: float = 0.0  # the reader's monotonic time of the last record

    @property
    def key(self) -> str:
        return member_key(self.replica, self.endpoint)

    def serving(self) -> list[int]:
        return sorted(p for p, (_, up) in self.partitions.items() if up)


def encode(member: Member) -> tuple[bytes, bytes]:
    """The key and value of a membership record."""
    value = {"replica": member.replica, "endpoint": member.endpoint, "heartbeat_s": member.heartbeat_s,
             "time_ms": int(time.time() * 1000), "leaving": member.leaving,
             "partitions": {str(p): [o, up] for p, (o, up) in sorted(member.partitions.items())}}
    return member.key.encode(), orjson.dumps(value)


def decode(value: bytes, seen: float) -> Member | None:
    """A membership record's value as a Member; None when it is malformed or too old."""
    try:
        doc = orjson.loads(value)
        if time.time() * 1000 - doc["time_ms"] > MAX_AGE_S * 1000:
            return None
        parts = {int(p): (int(o), bool(up)) for p, (o, up) in doc["partitions"].items()}
        return Member(str(doc["replica"]), str(doc["endpoint"]), parts, float(doc["heartbeat_s"]),
                      bool(doc.get("leaving")), seen)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # (AttributeError: not a map where one is due)
        log.warning("membership: ignored a malformed record: %s", exc)
        return None


class View:
    """The latest record of every member, and the questions readers ask of it."""

    def __init__(self, clock=time.monotonic) -> None:
        self.members: dict[str, Member] = {}
        self.clock = clock
        self.version = 0  # bumped on every change, so callers can cache what they derive
        self.latest = 0.0  # when the newest record of any member arrived

    def update(self, key: bytes, value: bytes | None) -> None:
        """Apply one record of the membership topic."""
        k = key.decode(errors="replace") if key else ""
        self.latest = self.clock()
        member = decode(value, self.latest) if value else None
        if member is None:
            if self.members.pop(k, None) is not None:
                self.version += 1
            return
        old = self.members.get(k)
        if old is None or old.partitions != member.partitions or old.leaving != member.leaving:
            self.version += 1
        self.members[k] = member

    def live(self) -> list[Member]:
        """Members heard from lately, or no later than the others (reads never wait for Kafka:
        while no record arrives at all, the last view holds)."""
        now, latest = self.clock(), self.latest
        return [m for m in self.members.values()
                if now - m.seen <= LIVENESS * m.heartbeat_s or latest - m.seen <= LIVENESS * m.heartbeat_s]

    def owners(self, partition: int) -> list[Member]:
        """Live members whose copy of ``partition`` has caught up, in a stable order."""
        return sorted((m for m in self.live() if m.partitions.get(partition, (0, False))[1]),
                      key=lambda m: m.key)

    def table(self, partitions: int) -> list[list[str]]:
        """For each partition, the endpoints of its caught-up live owners."""
        out: list[list[str]] = [[] for _ in range(partitions)]
        for m in sorted(self.live(), key=lambda m: m.key):
            for p, (_, up) in m.partitions.items():
                if up and 0 <= p < partitions:
                    out[p].append(m.endpoint)
        return out

    def uncovered(self, partitions: int) -> list[int]:
        """Partitions that no live member serves."""
        return [p for p, eps in enumerate(self.table(partitions)) if not eps]


# ---- Kafka I/O (confluent-kafka is imported only by processes in cluster mode)
def ensure_topic(bootstrap: str, name: str, partitions: int, config: dict | None = None,
                 timeout_s: float = 30.0) -> int:
    """Create topic ``name`` with ``partitions`` partitions unless it exists; return its
    partition count (the existing one, when it was there already)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while True:  # the broker may still be starting (a local cluster starts everything at once)
        try:
            meta = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic()))).topics.get(name)
            break
        except KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    if meta is not None and meta.error is None and meta.partitions:
        return len(meta.partitions)
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                            config=config or {})])
    try:
        futures[name].result(timeout_s)
    except KafkaException as exc:
        if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
    return len(admin.list_topics(name, timeout=timeout_s).topics[name].partitions) or partitions


class Reader:
    """Reads the membership topic from its start into a :class:`View`; call :meth:`poll` often."""

    def __init__(self, bootstrap: str, topic: str, fetch_wait_ms: int = FETCH_WAIT_MS,
                 view: View | None = None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        self._eof = KafkaError._PARTITION_EOF
        self._partition = TopicPartition(members_topic(topic), 0)
        self.view = view or View()
        self.at_end = False  # the reader has reached the end of the topic once
        self.next = 0  # the offset after the last record read
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-members-reader",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms,
                                  "enable.partition.eof": True,
                                  "logger": logging.getLogger("membership.kafka")})
        self.consumer.assign([TopicPartition(members_topic(topic), 0, OFFSET_BEGINNING)])

    def poll(self, timeout_s: float = 0.0) -> int:
        """Apply what has arrived; return how many records."""
        return self.apply(self.fetch(timeout_s))

    def fetch(self, timeout_s: float) -> list:
        """What has arrived, waiting up to ``timeout_s`` for something (a thread may wait here
        while another one applies: the consumer's calls release the GIL)."""
        return self.consumer.consume(1000, timeout_s)

    def apply(self, msgs: list) -> int:
        """Apply messages that :meth:`fetch` returned; return how many."""
        for msg in msgs:
            if msg.error() is None:
                self.view.update(msg.key(), msg.value())
                self.next = msg.offset() + 1
            elif msg.error().code() == self._eof:
                self.at_end = True
        return len(msgs)

    def catch_up(self, timeout_s: float) -> bool:
        """Read until the end of the topic as it is now (or ``timeout_s``); whether the end was
        reached. The end is asked for: Tansu reports it (the EOF event) only after an empty
        fetch, one fetch wait later, and never while shards keep heartbeating."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout_s
        try:
            end = self.consumer.get_watermark_offsets(self._partition, timeout=timeout_s, cached=False)[1]
        except KafkaException as exc:
            log.warning("membership: the end of the topic is not known (%s); reading until the EOF event", exc)
            end = None
        while not self.at_end and time.monotonic() < deadline:
            self.poll(0.05)
            if end is not None and self.next >= end:
                self.at_end = True
        return self.at_end

    def close(self) -> None:
        self.consumer.close()


class Writer:
    """Publishes one member's records (a shard's own)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = members_topic(topic)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                                  "enable.idempotence": True,
                                  "logger": logging.getLogger("membership.kafka")})

    def publish(self, member: Member) -> None:
        key, value = encode(member)
        self.producer.produce(self.topic, value, key=key)
        self.producer.poll(0)

    def leave(self, member: Member, timeout_s: float = 2.0) -> None:
        """Say this member left (a null value), and wait for it to be sent."""
        self.producer.produce(self.topic, None, key=member.key.encode())
        self.producer.flush(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        self.producer.flush(timeout_s)
