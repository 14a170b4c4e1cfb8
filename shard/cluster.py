"""A cluster-mode shard: an in-memory view of the topic partitions Kafka assigns it.

:class:`Partitions` is the socket-free core: per partition the next offset to apply, the entities
held and whether the copy serves reads; it applies records, freezes a partition for a peer
(``pdump``), loads one from a peer, and snapshots with per-partition offsets. :class:`Tail` is
the Kafka consumer (one group per replica set) that feeds it, and bootstraps a partition it is
given from a peer or its snapshot before reading on. See docs/CLUSTER.md.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any, Callable, Iterable

import msgpack
import zmq

from common import protocol as P
from common.link import connect_dealer
from common.events import EventError, Limits
from common.murmur2 import partition_of
from common.records import writes_of
from shard.store import Store

log = logging.getLogger("shard.cluster")

DUMP_CHUNK = 10000  # entities per pdump reply (about 2 MB with 10 values each)
DUMP_KEEP_S = 120.0  # a frozen copy no peer asked for in this long is dropped
RELEASE_KEEP_S = 60.0  # a released partition is freed after this long even if no peer took it
PEER_TIMEOUT_MS = 2000  # one pdump round trip longer than this: try another source
UNREACHABLE_S = 30.0  # a peer that failed a transfer is not asked again for this long
SNAPSHOT_FILE = "partitions.snap"


class SnapshotMismatch(Exception):
    """The data directory holds partitions of another topic or partition count."""


class Held:
    """One partition held by this shard."""

    __slots__ = ("next", "serving", "assigned", "entities", "released_at")

    def __init__(self, next_offset: int = 0) -> None:
        self.next = next_offset  # the next offset to apply
        self.serving = False  # caught up (once), and not released since
        self.assigned = False  # Kafka gave it to this shard's consumer
        self.entities: set[str] = set()
        self.released_at: float | None = None  # monotonic time it stopped being assigned


def values_in(blob: bytes) -> int:
    """The number of values in a store blob (a msgpack map), from its header alone."""
    first = blob[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE:
        return int.from_bytes(blob[1:3], "big")
    return int.from_bytes(blob[1:5], "big")


class Partitions:
    """The partitions of one shard, over one :class:`Store`."""

    def __init__(self, store: Store, n_partitions: int, limits: Limits, topic: str = "") -> None:
        self.store = store
        self.n = n_partitions
        self.limits = limits
        self.topic = topic
        self.held: dict[int, Held] = {}
        self.misrouted = 0  # events whose entity is not of the record's partition
        self.rejected = 0  # events that do not parse or validate
        self.applied = 0  # records applied
        self.changes = 0  # bumped by every change of the held data (snapshots are skipped without)
        self.assigned_once = False  # until Kafka assigned something, a loaded snapshot is kept whole
        self._dumps: dict[int, tuple] = {}  # token -> (p, offset, eids, blobs, last asked)
        self._tokens = itertools.count(1)
        self._warned = 0.0

    # ---- reads
    def refusal(self, eid: str) -> str | None:
        """Why this shard may not answer for ``eid`` (None: it may)."""
        p = partition_of(eid, self.n)
        h = self.held.get(p)
        if h is not None and h.serving:
            return None
        state = "is not held here" if h is None else "has not caught up here"
        return f"partition {p} of entity {eid!r} {state}"

    def states(self) -> dict[int, tuple[int, bool]]:
        """``{partition: (next offset, serving)}`` of the partitions assigned to this shard, or
        still served in a rebalance window."""
        return {p: (h.next, h.serving) for p, h in sorted(self.held.items()) if h.assigned or h.serving}

    # ---- records
    def apply(self, records: Iterable[tuple[int, int, bytes | None, bytes | None, int]]) -> int:
        """Apply ``(partition, offset, key, value, timestamp_ms)`` records in order; records at
        an offset already applied are skipped. Return how many were applied."""
        pending: list = []
        touched: list[tuple[Held, set]] = []
        count = 0
        for part, offset, key, value, ts_ms in records:
            h = self.held.get(part)
            if h is None or offset < h.next:
                continue
            h.next = offset + 1
            count += 1
            if value is None:  # a tombstone deletes the entity of its key
                self._flush(pending)
                if key:
                    eid = key.decode("utf-8", "replace")
                    self.store.delete(eid)
                    h.entities.discard(eid)
                continue
            new = self._writes(part, value, ts_ms * 1000, offset)
            if new:
                pending.extend(new)
                touched.append((h, {w[0] for w in new}))
        self._flush(pending)
        for h, eids in touched:
            h.entities |= eids
        self.applied += count
        self.changes += count
        return count

    def _writes(self, part: int, value: bytes, default_us: int, offset: int) -> list:
        try:
            writes = writes_of(value, self.limits, default_us)
        except (ValueError, EventError, RecursionError) as exc:
            self.rejected += 1
            self._warn(f"record {self.topic}[{part}]@{offset} not applied: {getattr(exc, 'detail', exc)}")
            return []
        good = [w for w in writes if partition_of(w[0], self.n) == part]
        if len(good) != len(writes):
            self.misrouted += len(writes) - len(good)
            self._warn(f"record {self.topic}[{part}]@{offset}: {len(writes) - len(good)} values of entities "
                       f"of other partitions not applied (key records by entity id)")
        return good

    def _flush(self, pending: list) -> None:
        if pending:
            self.store.apply(pending)
            pending.clear()

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 1.0:  # at most one line a second
            self._warned = now
            log.warning("%s", text)

    # ---- moving partitions
    def require(self, p: int) -> Held:
        h = self.held.get(p)
        if h is None:
            h = self.held[p] = Held()
        return h

    def copy(self, p: int) -> tuple[list, list, list]:
        """The partition's entities as they are now: (eids, blobs, packed window states), parallel
        lists (None where an entity has no blob or no states). Both are immutable bytes: the
        lists hold the copy, whatever comes next."""
        data, aggs = self.store.data, self.store.aggs
        eids = [e for e in self.held[p].entities if e in data or aggs.has(e)]
        return eids, [data.get(e) for e in eids], [aggs.packed_of(e) for e in eids]

    def freeze(self, p: int) -> tuple[int, int, list, list, list]:
        """Freeze the partition's current copy for a peer: (token, next offset, eids, blobs, states)."""
        eids, blobs, states = self.copy(p)
        token = next(self._tokens)
        now = time.monotonic()
        self._dumps = {t: d for t, d in self._dumps.items() if now - d[5] < DUMP_KEEP_S}
        self._dumps[token] = (p, self.held[p].next, eids, blobs, states, now)
        return token, self.held[p].next, eids, blobs, states

    def chunk(self, token: int, at: int) -> tuple[int, list, list, list, int | None] | None:
        """The frozen copy ``token`` from entity ``at`` on: (offset, eids, blobs, states, next position)."""
        dump = self._dumps.get(token)
        if dump is None:
            return None
        _, offset, eids, blobs, states, _ = dump
        end = at + DUMP_CHUNK
        if end >= len(eids):
            del self._dumps[token]
            return offset, eids[at:], blobs[at:], states[at:], None
        self._dumps[token] = dump[:5] + (time.monotonic(),)
        return offset, eids[at:end], blobs[at:end], states[at:end], end

    def load(self, p: int, offset: int, eids: list, blobs: list, states: list | None = None) -> None:
        """Replace the partition's copy with a peer's (``eids[i]`` holds ``blobs[i]`` and the window
        states ``states[i]``, either None for none) at ``offset``."""
        self.free(p)
        h = self.require(p)
        store = self.store
        store.data.update((e, b) for e, b in zip(eids, blobs) if b is not None)
        store.values += sum(values_in(b) for b in blobs if b is not None)
        for eid, packed in zip(eids, states or ()):
            if packed is not None:
                store.aggs.install(eid, packed)
        h.entities = set(eids)
        h.next = offset
        self.changes += 1

    def release(self, p: int) -> None:
        """Kafka took the partition away: stop serving it, keep it for peers for a while."""
        h = self.held.get(p)
        if h is not None:
            h.assigned = h.serving = False
            if h.released_at is None:
                h.released_at = time.monotonic()

    def free(self, p: int) -> None:
        """Drop the partition's entities from memory."""
        h = self.held.pop(p, None)
        if h is None:
            return
        self.changes += 1
        delete = self.store.delete
        for eid in h.entities:
            delete(eid)

    def free_released(self, taken: Callable[[int], bool]) -> list[int]:
        """Free released partitions that ``taken(p)`` says another member serves, or that were
        released long ago; return them. Nothing is freed before the first assignment."""
        if not self.assigned_once:
            return []
        now = time.monotonic()
        gone = [p for p, h in self.held.items() if not h.assigned and h.released_at is not None
                and (taken(p) or now - h.released_at > RELEASE_KEEP_S)]
        for p in gone:
            self.free(p)
        return gone

    # ---- snapshots
    def write_snapshot(self, directory: str) -> str:
        """Every held partition with its next offset, to ``directory`` (temp file, fsync, rename)."""
        from shard.persistence import frame
        from shard.persistence.files import fsync_dir

        os.makedirs(directory, exist_ok=True)
        final = os.path.join(directory, SNAPSHOT_FILE)
        tmp = final + ".tmp"
        pack = msgpack.Packer(use_bin_type=True).pack
        with open(tmp, "wb", buffering=1 << 20) as fh:
            fh.write(frame(pack({"topic": self.topic, "partitions": self.n,
                                 "offsets": {p: h.next for p, h in self.held.items()}})))
            for p in self.held:
                fh.write(frame(pack([p, *self.copy(p)])))
            fh.write(frame(pack({"end": len(self.held)})))
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
        fsync_dir(directory)
        return final

    def load_snapshot(self, directory: str) -> dict[int, int]:
        """Load ``directory``'s snapshot, if any, as held (not assigned) partitions; return
        their offsets. :class:`SnapshotMismatch` if it is of another topic or partition count."""
        from shard.persistence import scan

        path = os.path.join(directory, SNAPSHOT_FILE)
        try:
            with open(path, "rb") as fh:
                buf = fh.read()
        except FileNotFoundError:
            return {}
        records = [msgpack.unpackb(r, raw=False, strict_map_key=False)
                   for r in scan(buf, path, last=False, skip=False).payloads]
        head = records[0]
        if head.get("topic") != self.topic or head.get("partitions") != self.n:
            raise SnapshotMismatch(f"{path} holds topic {head.get('topic')!r} with {head.get('partitions')} "
                                   f"partitions, not {self.topic!r} with {self.n}")
        if len(records) != len(head["offsets"]) + 2 or records[-1].get("end") != len(head["offsets"]):
            raise SnapshotMismatch(f"{path} is not complete")
        now = time.monotonic()
        for p, eids, blobs, *states in records[1:-1]:  # [p, eids, blobs, states]; no states before issue 12
            self.load(p, head["offsets"][p], eids, blobs, states[0] if states else None)
            self.held[p].released_at = now
        return {p: h.next for p, h in self.held.items()}


# ---- the peer side and the Kafka side
def answer_pdump(parts: Partitions, req: dict) -> dict:
    """``{p, dump?, at}`` -> ``{dump, o, es, blobs, next}``: a chunk of the frozen copy of ``p``."""
    p, token, at = req.get(P.PARTITION), req.get(P.DUMP), req.get(P.AT) or 0
    req_id = P.id_of(req)
    if token is None:
        h = parts.held.get(p) if type(p) is int else None
        if h is None or not (h.serving or h.released_at is not None):
            return P.error(req_id, P.NOT_OWNER, f"partition {p!r} is not held here")
        token = parts.freeze(p)[0]
    got = parts.chunk(token, at) if type(at) is int else None
    if got is None:
        return P.error(req_id, P.BAD_REQUEST, f"no frozen copy {token!r} (expired?)")
    offset, eids, blobs, states, next_at = got
    return P.dump_reply(req_id, token, offset, eids, blobs, next_at, states)


def fetch_from_peer(ctx: zmq.Context, endpoint: str, p: int,
                    curve_dir: str | None = None) -> tuple[int, list, list, list]:
    """A peer's copy of partition ``p``: (next offset, eids, blobs, window states); raises on failure."""
    sock = connect_dealer(ctx, endpoint, immediate=False, curve_dir=curve_dir)  # the first request waits for the connection
    try:
        eids: list = []
        blobs: list = []
        states: list = []
        token, at, offset = None, 0, 0
        while at is not None:
            sock.send(P.encode([P.pdump(p, token, at, req_id=1)]))
            if not sock.poll(PEER_TIMEOUT_MS):
                raise TimeoutError(f"{endpoint} did not answer pdump in {PEER_TIMEOUT_MS} ms")
            reply = P.decode(sock.recv())[0]
            if not P.is_ok(reply):
                raise RuntimeError(f"{endpoint}: {P.code_of(reply)}: {P.reason_of(reply)}")
            token, offset, at = reply[P.DUMP], reply[P.OFFSET], reply[P.NEXT]
            eids.extend(reply[P.ENTITIES])
            blobs.extend(reply[P.BLOBS])
            states.extend(reply.get(P.STATES) or [None] * len(reply[P.ENTITIES]))  # none from an older peer
        return offset, eids, blobs, states
    finally:
        sock.close()


class Tail:
    """The shard's Kafka consumer: the group of its replica set decides which partitions it holds.

    :arg peers: ``peers(p)`` -> [(endpoint, next offset)] of other members serving ``p``.
    :arg changed: called when the assignment or a partition's serving state changes.
    """

    BATCH = 5000  # records per consume call

    def __init__(self, cfg, parts: Partitions, peers: Callable[[int], list], ctx: zmq.Context,
                 changed: Callable[[], None] = lambda: None, tail_records: int = 100_000) -> None:
        from confluent_kafka import Consumer

        self.parts = parts
        self.peers = peers
        self.ctx = ctx
        self.changed = changed
        self.tail_records = tail_records
        self.topic = cfg.cluster_topic
        self.curve_dir = cfg.curve_dir  # FS_CURVE_DIR: the DEALER to a peer uses it
        self.sources: dict[int, str] = {}  # where each partition was bootstrapped from (stats, tests)
        self._unreachable: dict[str, float] = {}  # peer endpoint -> until when it is not asked again
        self.consumer = Consumer({
            "bootstrap.servers": cfg.cluster_kafka,
            "group.id": f"{cfg.cluster_topic}.replica-{cfg.replica}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": cfg.kafka_session_timeout_ms,
            "heartbeat.interval.ms": max(100, cfg.kafka_session_timeout_ms // 4),
            "fetch.wait.max.ms": cfg.kafka_fetch_wait_ms,
            "logger": logging.getLogger("shard.kafka"),
        })
        self.consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked,
                                on_lost=self._revoked)

    def _assigned(self, consumer, tps) -> None:
        from confluent_kafka import TopicPartition

        got = {tp.partition for tp in tps}
        self.parts.assigned_once = True
        for p, h in list(self.parts.held.items()):
            if p not in got and (h.serving or h.released_at is None):
                self.parts.release(p)
        out = []
        for p in sorted(got):
            start = self._start(p)
            self.parts.held[p].assigned = True
            self.parts.held[p].released_at = None
            out.append(TopicPartition(self.topic, p, start))
        consumer.assign(out)
        log.info("assigned partitions %s (%s)", sorted(got),
                 ", ".join(f"{p}: {self.sources.get(p)}" for p in sorted(got)))
        self.changed()

    def _revoked(self, consumer, tps) -> None:
        # keep serving until the next assignment says where they went (the rebalance window)
        for tp in tps:
            h = self.parts.held.get(tp.partition)
            if h is not None:
                h.assigned = False

    def _start(self, p: int) -> int:
        """Fill partition ``p`` from the best source; return the offset to read on from."""
        own = self.parts.held.get(p)
        if own is not None and own.released_at is None:
            self.sources.setdefault(p, f"own copy at {own.next}")
            return own.next  # still ours: it was being read until the rebalance
        have = own.next if own is not None else 0
        peers = sorted((e for e in self.peers(p) if e[1] > have), key=lambda e: -e[1])  # ahead of us
        if own is not None and (not peers or peers[0][1] - own.next <= self.tail_records):
            self.sources[p] = f"own copy at {own.next}"
            return own.next
        for endpoint, _ in peers:
            if self._unreachable.get(endpoint, 0) > time.monotonic():
                continue
            try:
                t0 = time.monotonic()
                offset, eids, blobs, states = fetch_from_peer(self.ctx, endpoint, p, self.curve_dir)
            except (TimeoutError, RuntimeError, zmq.ZMQError, KeyError, IndexError, P.ProtocolError) as exc:
                log.warning("partition %d: bootstrap from %s failed: %s", p, endpoint, exc)
                self._unreachable[endpoint] = time.monotonic() + UNREACHABLE_S
                continue
            self.parts.load(p, offset, eids, blobs, states)
            self.sources[p] = f"peer {endpoint} at {offset}"
            log.info("partition %d: %d entities from %s in %.3f s", p, len(eids), endpoint,
                     time.monotonic() - t0)
            return offset
        if own is not None:
            self.sources[p] = f"own copy at {own.next}"
            return own.next
        self.parts.require(p)
        self.sources[p] = "topic start"
        return 0

    def poll(self, timeout_s: float = 0.0) -> int:
        """Apply the records that arrived; mark partitions that reached their end as serving."""
        from confluent_kafka import KafkaError

        msgs = self.consumer.consume(self.BATCH, timeout_s)
        records = []
        caught: list[tuple[int, int]] = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                records.append((msg.partition(), msg.offset(), msg.key(), msg.value(), msg.timestamp()[1]))
            elif err.code() == KafkaError._PARTITION_EOF:
                caught.append((msg.partition(), msg.offset()))
            else:
                self.parts._warn(f"kafka: {err}")
        count = self.parts.apply(records) if records else 0
        flipped = False
        for p, end in caught:
            h = self.parts.held.get(p)
            if h is not None and h.assigned and not h.serving and h.next >= end:
                h.serving = flipped = True
                log.info("partition %d caught up at offset %d", p, h.next)
        if flipped:
            self.changed()
        return count

    def close(self) -> None:
        self.consumer.close()
