"""A cluster-mode shard: an in-memory view of the topic partitions Kafka assigns it.

:class:`Partitions` is the socket-free core: per partition the next offset to apply, the entities
held and whether the copy serves reads; it applies records, hands a partition to a peer in chunks
(``pdump``), loads one from a peer, and snapshots with per-partition offsets. :class:`Tail` is
the Kafka consumer (one group per replica set, cooperative-sticky) that feeds it; it fills a
partition it is given from a peer (:class:`Transfer`, a few chunks per loop pass, so the loop
keeps serving) or its snapshot before reading on. See docs/CLUSTER.md.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Iterable

import msgpack
import zmq

from common import protocol as P
from common.events import Limits
from common.link import connect_dealer
from common.murmur2 import partition_of
from common.records import read_record
from shard.store import Store, values_in

log = logging.getLogger("shard.cluster")

DUMP_CHUNK = 4000  # entities per pdump reply (about 0.8 MB with 10 values each; ~5 ms to pack)
DUMP_KEEP_S = 120.0  # a transfer no peer asked on for this long is dropped
RELEASE_KEEP_S = 60.0  # a released partition is freed after this long even if no peer took it
PEER_TIMEOUT_S = 2.0  # a pdump reply later than this: try another source
UNREACHABLE_S = 30.0  # a peer that failed a transfer is not asked again for this long
TRANSFER_PASS_S = 0.01  # the longest one loop pass spends loading chunks
PROBE_WAIT_S = 2.0  # the longest a parked tail waits for the end offsets it asked for
AWAKE_S = 2.0  # the tail fetches on this long after the last record applied or writer waiting


class SnapshotMismatch(Exception):
    """The data directory holds partitions of another topic or partition count."""


class Held:
    """One partition held by this shard."""

    __slots__ = ("next", "serving", "assigned", "loading", "entities", "released_at", "counted", "counted_until")

    def __init__(self, next_offset: int = 0) -> None:
        self.next = next_offset  # the next offset to apply
        self.serving = False  # caught up (once), and not taken over since
        self.assigned = False  # Kafka gave it to this shard's consumer
        self.loading = False  # a peer's copy is arriving: incomplete until the transfer ends
        self.entities: set[str] = set()
        self.released_at: float | None = None  # monotonic time it stopped being assigned
        # entity -> the offset its window states came counting up to, from a peer: the replay
        # from the transfer's offset does not count those records again
        self.counted: dict[str, int] = {}
        self.counted_until = 0  # the largest of them


class Partitions:
    """The partitions of one shard, over one :class:`Store`."""

    def __init__(self, store: Store, n_partitions: int, limits: Limits, topic: str = "",
                 max_features: int | None = None) -> None:
        self.store = store
        self.n = n_partitions
        self.limits = limits
        self.max_features = max_features  # FS_MAX_FEATURES_PER_ENTITY
        self.topic = topic
        self.held: dict[int, Held] = {}
        self.misrouted = 0  # events whose entity is not of the record's partition
        self.rejected = 0  # events that do not parse or validate
        self.applied = 0  # records applied
        self.changes = 0  # bumped by every change of the held data (snapshots are skipped without)
        self.assigned_once = False  # until Kafka assigned something, a loaded snapshot is kept whole
        self._dumps: dict[int, list] = {}  # token -> [p, offset, eids, last asked, Held]
        self._tokens = itertools.count(1)
        self._warned = 0.0
        self.behind: Callable[[], None] = lambda: None  # a read wanted an offset not applied yet

    # ---- reads
    def refusal(self, eid: str, after: int | None = None) -> str | None:
        """Why this shard may not answer for ``eid`` (None: it may); with ``after``, also until
        its copy of the entity's partition has applied that offset."""
        p = partition_of(eid, self.n)
        h = self.held.get(p)
        if h is not None and h.serving:
            if after is None or h.next > after:
                return None
            self.behind()
            return f"partition {p} of entity {eid!r} has applied offsets below {h.next} here, not yet {after}"
        state = "is not held here" if h is None else "has not caught up here"
        return f"partition {p} of entity {eid!r} {state}"

    def first_refusal(self, eids, after: int | None = None, held: bool = False) -> str | None:
        """:meth:`refusal` of the first of ``eids`` that this shard may not answer for, or None.
        ``held`` changes nothing: a copy that is moving away still holds what it rendered."""
        if after is None:
            return next(filter(None, map(self.refusal, eids)), None)
        return next(filter(None, (self.refusal(eid, after) for eid in eids)), None)

    def states(self) -> dict[int, tuple[int, bool]]:
        """``{partition: (next offset, serving)}`` of the partitions assigned to this shard, or
        still served while they move."""
        return {p: (h.next, h.serving) for p, h in sorted(self.held.items()) if h.assigned or h.serving}

    # ---- records
    def apply(self, records: Iterable[tuple[int, int, bytes | None, bytes | None, int]]) -> int:
        """Apply ``(partition, offset, key, value, timestamp_ms)`` records in order; records at
        an offset already applied are skipped. Return how many were applied.

        A record is untrusted input (any producer may write to the topic): its events are
        checked as an HTTP write's are (:func:`common.records.read_record`), then as the shard
        checks every write (:meth:`Store.prepare`: features per entity, aggregations). A record
        refused anywhere is skipped whole, counted in ``rejected`` and logged (a line a second at
        most); it never stops the shard, which would meet it again on every restart."""
        pending: list[tuple[Held, str, list, list | None]] = []  # (held, where, writes, event ids) not in the store yet
        count = 0
        for part, offset, key, value, ts_ms in records:
            h = self.held.get(part)
            if h is None or offset < h.next:
                continue
            h.next = offset + 1
            count += 1
            if value is None:  # a tombstone deletes the entity of its key
                if key:
                    self._delete(pending, h, key.decode("utf-8", "replace"), None)
                continue
            new, deletes, ids = self._read(part, value, ts_ms * 1000, offset)
            if deletes is not None:
                self._delete(pending, h, *deletes)
            elif new and h.counted:
                self._replay(pending, h, f"{self.topic}[{part}]@{offset}", offset, new, ids)
            elif new:
                pending.append((h, f"{self.topic}[{part}]@{offset}", new, ids))
        self._flush(pending)
        self.applied += count
        self.changes += count
        return count

    def _replay(self, pending: list, h: Held, where: str, offset: int, new: list, ids: list | None) -> None:
        """A record a peer's window states may already count (see :attr:`Held.counted`): its
        writes of those entities are applied without entering their windows again."""
        counted = h.counted
        again = [w for w in new if offset < counted.get(w[0], -1)]
        if again:
            self._flush(pending)
            self._flush([(h, where, again, None)], windows=False)
            keep = [i for i, w in enumerate(new) if offset >= counted.get(w[0], -1)]
            new, ids = [new[i] for i in keep], None if ids is None else [ids[i] for i in keep]
        if new:
            pending.append((h, where, new, ids))
        if offset + 1 >= h.counted_until:
            h.counted = {}

    def _delete(self, pending: list, h: Held, eid: str, names: list | None) -> None:
        """Delete the entity (``names`` None) or those features of it, after the writes before."""
        self._flush(pending)
        delete = self.store.delete
        for name in names or (None,):
            delete(eid, name)
        if eid not in self.store.data:
            h.entities.discard(eid)

    def _read(self, part: int, value: bytes, default_us: int, offset: int) -> tuple[list, tuple | None]:
        try:
            writes, deletes, ids = read_record(value, self.limits, default_us)
        except Exception as exc:  # EventError, ValueError; anything else is a bug, not a reason to die
            self.rejected += 1
            self._warn(f"record {self.topic}[{part}]@{offset} not applied: {getattr(exc, 'detail', exc)}")
            return [], None, None
        if deletes is not None:
            if partition_of(deletes[0], self.n) == part:
                return [], deletes, None
            writes, ids = [deletes], None  # counted as misrouted below
        good = [w for w in writes if partition_of(w[0], self.n) == part]
        if len(good) != len(writes) and ids is not None:
            ids = [i for w, i in zip(writes, ids) if partition_of(w[0], self.n) == part]
        if len(good) != len(writes):
            self.misrouted += len(writes) - len(good)
            self._warn(f"record {self.topic}[{part}]@{offset}: {len(writes) - len(good)} values of entities "
                       f"of other partitions not applied (key records by entity id)")
        return good, None, ids

    def _flush(self, pending: list, windows: bool = True) -> None:
        """Put the writes of the ``pending`` records in the store (not in the windows unless
        ``windows``): at once, or, if that is refused, record by record, skipping each record refused."""
        if not pending:
            return
        try:
            self._install([w for _, _, writes, _ in pending for w in writes], _joined_ids(pending), windows)
        except Exception:
            for h, where, writes, ids in pending:
                try:
                    self._install(writes, ids, windows)
                except Exception as exc:  # TooWide, AggregateRefused, a malformed write
                    self.rejected += 1
                    self._warn(f"record {where} not applied: {exc}")
                else:
                    h.entities.update(w[0] for w in writes)
        else:
            for h, _, writes, _ in pending:
                h.entities.update(w[0] for w in writes)
        pending.clear()

    def _install(self, writes: list, ids: list | None, windows: bool = True) -> None:
        """Put ``writes`` in the store; ``ids`` (their event ids, or None): a repeated one counts once."""
        store = self.store
        meta = None if ids is None else [None, ids, None, None]  # see Store.prepare
        store.install(store.prepare(writes, meta, self.max_features, windows))  # prepare changes nothing

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 1.0:  # at most one line a second
            self._warned = now
            log.warning("%s", text)

    # ---- moving partitions: the peer side
    def require(self, p: int) -> Held:
        h = self.held.get(p)
        if h is None:
            h = self.held[p] = Held()
        return h

    def dump(self, p: int, token: int | None, at: int) -> tuple[int, int, bytes, int | None] | None:
        """A chunk of partition ``p`` for a peer: (token, offset, packed chunk, next position).

        The first request (no token) takes the list of the partition's entities and its next
        offset; each chunk packs their blobs as they are when it is asked for (no copy of the
        data is kept). The receiver reads the partition from that offset on: replaying records
        that a chunk already reflects changes nothing (last write wins by event time, and a
        delete replayed before its later writes is undone by them again). None: unknown token,
        or the partition was freed or replaced since the transfer began (its copy is gone)."""
        now = time.monotonic()
        if token is None:
            h = self.held[p]
            token = next(self._tokens)
            self._dumps = {t: d for t, d in self._dumps.items() if now - d[3] < DUMP_KEEP_S}
            self._dumps[token] = [p, h.next, list(h.entities), now, h]
        dump = self._dumps.get(token)
        if dump is None or dump[0] != p or self.held.get(p) is not dump[4] or dump[4].loading:
            self._dumps.pop(token, None)
            return None
        _, offset, eids, _, _ = dump
        dump[3] = now
        end = at + DUMP_CHUNK
        get, packed_of = self.store.data.get, self.store.aggs.packed_of
        flat: list = []
        states: list = []  # [e, packed window states, ...]: they count every record below dump[4].next
        for eid in eids[at:end]:
            blob = get(eid)
            if blob is not None:  # deleted since: the replay deletes it again anyway
                flat.append(eid)
                flat.append(blob)
            if self.store.aggs:
                packed = packed_of(eid)
                if packed is not None:
                    states.append(eid)
                    states.append(packed)
        if end >= len(eids):
            del self._dumps[token]
            end = None
        pack = msgpack.packb
        if not self.store.aggs:
            return token, offset, pack(flat, use_bin_type=True), end
        return token, offset, pack(flat, use_bin_type=True), end, pack(states, use_bin_type=True), dump[4].next

    # ---- moving partitions: the receiving side
    def receive(self, p: int, offset: int, chunk: bytes, first: bool, states: bytes | None = None,
                states_at: int | None = None) -> int:
        """Load a peer's chunk of ``p`` (the first one replaces this shard's copy, and sets the
        offset to read on from), with its entities' window states counting the records below
        ``states_at``; return the entities it held."""
        h = self.require(p)
        if first:
            self._drop(h)
            h.next, h.loading, h.serving, h.counted = offset, True, False, {}
        flat = msgpack.unpackb(chunk, raw=False)
        it = iter(flat)
        self.store.data.update(zip(it, it))
        h.entities.update(flat[::2])
        self.store.values += sum(map(values_in, flat[1::2]))
        if states is not None and self.store.aggs:
            pairs = msgpack.unpackb(states, raw=False)
            it = iter(pairs)
            for eid, packed in zip(it, it):
                self.store.aggs.install(eid, packed)
            h.entities.update(pairs[::2])
            h.counted.update(dict.fromkeys(flat[::2], states_at))
            h.counted.update(dict.fromkeys(pairs[::2], states_at))
            h.counted_until = max(h.counted_until, states_at)
        self.changes += 1
        return len(flat) // 2

    def release(self, p: int) -> None:
        """Kafka took the partition away: it stops being read; it is still served (a copy as of
        now) and kept for peers until another shard of the replica set serves it."""
        h = self.held.get(p)
        if h is not None:
            h.assigned = False
            if h.released_at is None:
                h.released_at = time.monotonic()

    def free(self, p: int) -> None:
        """Drop the partition's entities from memory."""
        h = self.held.pop(p, None)
        if h is not None:
            self._drop(h)

    def _drop(self, h: Held) -> None:
        self.changes += 1
        delete = self.store.delete
        for eid in h.entities:
            delete(eid)
        h.entities = set()

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

    # ---- snapshots (the embedded mode's files, one group of entities per partition)
    def snapshot_args(self) -> tuple[Callable, dict]:
        """``(groups, meta)`` for :func:`shard.persistence.snapshot.write_snapshot`: every
        complete partition's entities (listed by the writer, in a forked child) and offsets."""
        complete = {p: h for p, h in self.held.items() if not h.loading}
        meta = {"topic": self.topic, "partitions": self.n, "offsets": {p: h.next for p, h in complete.items()}}
        return (lambda: ((p, h.entities) for p, h in complete.items())), meta

    def load_snapshot(self, directory: str) -> dict[int, int]:
        """Load the newest snapshot of ``directory`` that reads back whole, as held (not
        assigned) partitions; return their offsets. :class:`SnapshotMismatch` if it is of
        another topic or partition count."""
        from shard.persistence import RecoveryError, files, snapshot  # persistence imports the handlers

        snaps = files.generations(directory)[0] if os.path.isdir(directory) else []
        for gen in reversed(snaps):
            path = files.path(directory, "snapshot", gen)
            try:
                loaded = snapshot.read_snapshot(path, self.store)
            except RecoveryError as exc:
                log.error("%s; trying an older snapshot (Kafka and the peers hold everything)", exc)
                self.store.data.clear()
                continue
            head = loaded.header
            if head.get("topic") != self.topic or head.get("partitions") != self.n:
                raise SnapshotMismatch(f"{path} holds topic {head.get('topic')!r} with {head.get('partitions')} "
                                       f"partitions, not {self.topic!r} with {self.n}")
            now = time.monotonic()
            for p, eids in loaded.groups.items():
                h = self.require(p)
                h.entities, h.next, h.released_at = set(eids), head["offsets"][p], now
            break
        return {p: h.next for p, h in self.held.items()}


# ---- the peer side and the receiving side of a transfer
def answer_pdump(parts: Partitions, req: dict) -> dict:
    """``{p, dump?, at}`` -> ``{dump, o, chunk, next}``: a chunk of this shard's copy of ``p``."""
    p, token, at = req.get(P.PARTITION), req.get(P.DUMP), req.get(P.AT) or 0
    req_id = P.id_of(req)
    if token is None:
        h = parts.held.get(p) if type(p) is int else None
        if h is None or h.loading or not (h.serving or h.released_at is not None):
            return P.error(req_id, P.NOT_OWNER, f"partition {p!r} is not held here")
    got = parts.dump(p, token, at) if type(at) is int and at >= 0 else None
    if got is None:
        return P.error(req_id, P.BAD_REQUEST, f"no transfer {token!r} of partition {p!r} (expired?)")
    return P.dump_reply(req_id, *got)


class TransferFailed(Exception):
    """A peer did not answer a pdump in time, or refused it."""


class Transfer:
    """A partition arriving from a peer: one pdump in flight, stepped from the shard's loop."""

    def __init__(self, ctx: zmq.Context, p: int, endpoint: str, curve_dir: str | None = None) -> None:
        self.p = p
        self.endpoint = endpoint
        self.sock = connect_dealer(ctx, endpoint, immediate=False, curve_dir=curve_dir)  # waits to connect
        self.token = None
        self.at: int | None = 0
        self.offset = 0
        self.entities = 0
        self.started = time.monotonic()
        self._send()

    def _send(self) -> None:
        self.sock.send(P.encode([P.pdump(self.p, self.token, self.at, req_id=1)]))
        self.sent = time.monotonic()

    def step(self, parts: Partitions) -> bool:
        """Load the next chunk if it has arrived (asking for the one after it first); whether
        the transfer is complete. Raises :class:`TransferFailed`."""
        if not self.sock.poll(0):
            if time.monotonic() - self.sent > PEER_TIMEOUT_S:
                raise TransferFailed(f"{self.endpoint} did not answer pdump in {PEER_TIMEOUT_S:g} s")
            return False
        try:
            reply = P.decode(self.sock.recv())[0]
            if not P.is_ok(reply):
                raise TransferFailed(f"{self.endpoint}: {P.code_of(reply)}: {P.reason_of(reply)}")
            first = self.token is None
            self.token, self.offset, self.at, chunk = reply[P.DUMP], reply[P.OFFSET], reply[P.NEXT], reply[P.CHUNK]
            states, states_at = reply.get(P.STATES), reply.get(P.STATES_AT)  # none from a peer without aggregations
        except (P.ProtocolError, KeyError, IndexError, TypeError) as exc:
            raise TransferFailed(f"{self.endpoint}: a malformed pdump reply: {exc!r}") from None
        if self.at is not None:
            self._send()  # the peer packs the next chunk while this one loads
        self.entities += parts.receive(self.p, self.offset, chunk, first, states, states_at)
        return self.at is None

    def close(self) -> None:
        self.sock.close()


class Tail:
    """The shard's Kafka consumer: the group of its replica set decides which partitions it holds.

    Assignment is cooperative-sticky: a rebalance moves only the partitions it must, and the
    others go on being read. A partition given to this shard is read from Kafka once filled: at
    once from its own copy, or after a :class:`Transfer` from a peer, stepped by :meth:`poll`.

    Fetching paces itself (``FS_CLUSTER_IDLE_FETCH_S``): an empty fetch every fetch wait costs
    the broker CPU (Tansu: about 1 ms each), so once no record arrived and no writer waited
    (:meth:`wake`) for ``AWAKE_S``, the serving partitions are parked (taken out of the
    consumer's own assignment; the group still gives them to this shard). Every ``idle_fetch_s``
    one ``ListOffsets`` request (an admin client's, answered off the loop) asks for their end
    offsets, and only a partition that has records past its copy wakes the tail. The old probe,
    assigning them again for two fetch waits, cost an idle shard 2% of a core and the broker 7%
    with 3 shards; the request costs the broker about 0.5 ms. :meth:`wake` assigns them again at
    their next offsets, which fetches at once (a paused partition, resumed, waited up to seconds
    for librdkafka's next fetch).

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
        self.sources: dict[int, str] = {}  # where each partition was filled from (stats, tests)
        self.transfers: dict[int, Transfer] = {}
        self.idle_fetch_s = cfg.cluster_idle_fetch_s
        self.probe_s = 2 * cfg.kafka_fetch_wait_ms / 1000 + 0.02  # an idle round: a fetch is answered in it
        self.awake_until = time.monotonic() + AWAKE_S
        self.parked: set[int] = set()  # serving partitions taken out of the consumer's assignment while idle
        self._settled = False  # every serving partition is parked: nothing to park until something changes
        self._probe_at = 0.0
        self._ends: dict | None = None  # TopicPartition -> future of its end offset, while a probe is out
        self._ends_at = 0.0
        self._admin = None  # the admin client of the probes, made at the first
        self._kafka = cfg.cluster_kafka
        self._unassigned: list = []  # TopicPartitions whose incremental_assign failed: retried
        self._unreachable: dict[str, float] = {}  # peer endpoint -> until when it is not asked again
        self.consumer = Consumer({
            "bootstrap.servers": cfg.cluster_kafka,
            "group.id": f"{cfg.cluster_topic}.replica-{cfg.replica}",
            "partition.assignment.strategy": "cooperative-sticky",
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

    # ---- the rebalance callbacks (incremental: only what changes)
    def _assigned(self, consumer, tps) -> None:
        from confluent_kafka import TopicPartition

        self.parts.assigned_once = True
        ready = []
        for p in sorted(tp.partition for tp in tps):
            plan = self._plan(p)
            if type(plan) is int:
                ready.append(TopicPartition(self.topic, p, self._reading(p, plan)))
            else:
                self._begin_transfer(p, plan)
        consumer.incremental_assign(ready)  # the others once their transfer ends
        self.wake()
        if tps:
            log.info("assigned partitions %s (%s)", sorted(tp.partition for tp in tps),
                     ", ".join(f"{p}: {self.sources.get(p, 'from a peer')}" for p in sorted(tp.partition for tp in tps)))
        self.changed()

    def _revoked(self, consumer, tps) -> None:
        gone = {tp.partition for tp in tps}
        for p in gone:
            t = self.transfers.pop(p, None)
            if t is not None:
                t.close()
                if self.parts.held[p].loading:
                    self.parts.free(p)  # half a copy serves nobody
            self.parts.release(p)
        self.parked -= gone  # (not in the consumer's assignment)
        self._unassigned = [tp for tp in self._unassigned if tp.partition not in gone]  # (not to be assigned again)
        # Always called, even with nothing: a callback that unassigns nothing has confluent-kafka
        # unassign every revoked partition itself, and a parked one is not in the assignment
        # ("Can't subtract from empty assignment", raised from the consumer's next consume).
        consumer.incremental_unassign([tp for tp in consumer.assignment() if tp.partition in gone])
        log.info("partitions %s revoked", sorted(gone))
        self.changed()

    # ---- filling a partition
    def _plan(self, p: int) -> int | list[str]:
        """Where ``p`` comes from: an offset to read on from (its own copy, or the topic's
        start), or the peers to ask, best first."""
        own = self.parts.held.get(p)
        if own is not None and own.released_at is None and not own.loading:
            self.sources.setdefault(p, f"own copy at {own.next}")
            return own.next  # still ours
        now = time.monotonic()
        have = own.next if own is not None and not own.loading else 0
        peers = sorted((e for e in self.peers(p) if e[1] > have and self._unreachable.get(e[0], 0) <= now),
                       key=lambda e: -e[1])  # ahead of us
        if own is not None and not own.loading and (not peers or peers[0][1] - own.next <= self.tail_records):
            self.sources[p] = f"own copy at {own.next}"
            return own.next
        if peers:
            return [e for e, _ in peers]
        if own is not None and not own.loading:
            self.sources[p] = f"own copy at {own.next}"
            return own.next
        self.parts.free(p)
        self.sources[p] = "topic start"
        return 0

    def _reading(self, p: int, offset: int) -> int:
        h = self.parts.require(p)
        h.assigned, h.loading, h.released_at = True, False, None
        return offset

    def _begin_transfer(self, p: int, endpoints: list[str]) -> None:
        h = self.parts.held.get(p)
        if h is None:  # nothing here: an empty copy, loading (its own copy stays until a chunk comes)
            h = self.parts.require(p)
            h.loading = True
        h.assigned = True
        self.transfers[p] = Transfer(self.ctx, p, endpoints[0], self.curve_dir)

    def _step_transfers(self) -> None:
        """Load arrived chunks, at most ``TRANSFER_PASS_S`` of them per loop pass."""
        from confluent_kafka import TopicPartition

        deadline = time.monotonic() + TRANSFER_PASS_S
        for p, t in list(self.transfers.items()):
            if time.monotonic() > deadline:
                break
            try:
                done = t.step(self.parts)
            except (TransferFailed, zmq.ZMQError) as exc:
                log.warning("partition %d: bootstrap from %s failed: %s", p, t.endpoint, exc)
                self._unreachable[t.endpoint] = time.monotonic() + UNREACHABLE_S
                del self.transfers[p]
                t.close()
                if self.parts.held[p].loading:
                    self.parts.free(p)
                plan = self._plan(p)
                if type(plan) is int:
                    self._unassigned.append(TopicPartition(self.topic, p, self._reading(p, plan)))
                else:
                    self._begin_transfer(p, plan)
                continue
            if done:
                del self.transfers[p]
                t.close()
                self.sources[p] = f"peer {t.endpoint} at {t.offset}"
                log.info("partition %d: %d entities from %s in %.3f s", p, t.entities, t.endpoint,
                         time.monotonic() - t.started)
                self._unassigned.append(TopicPartition(self.topic, p, self._reading(p, t.offset)))
        if self._unassigned:
            from confluent_kafka import KafkaException

            todo, self._unassigned = self._unassigned, []
            try:
                self.consumer.incremental_assign(todo)
            except KafkaException as exc:  # in the middle of a rebalance: next pass
                log.warning("incremental_assign %s: %s; retried", [tp.partition for tp in todo], exc)
                self._unassigned = [tp for tp in todo if self.parts.held.get(tp.partition) is not None
                                    and self.parts.held[tp.partition].assigned]
                return
            self._settled = False  # assigned: serving ones among them are parked again when idle

    def poll(self, timeout_s: float = 0.0) -> int:
        """Apply the records that arrived; mark partitions that reached their end as serving;
        step the transfers."""
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
        now = time.monotonic()
        if count:
            self.awake_until = max(self.awake_until, now + AWAKE_S)
        flipped = False
        for p, end in caught:
            h = self.parts.held.get(p)
            if h is not None and h.assigned and not h.serving and not h.loading and h.next >= end:
                h.serving = flipped = True
                log.info("partition %d caught up at offset %d", p, h.next)
        if self.transfers or self._unassigned:
            self._step_transfers()
        if flipped:
            self._settled = False
            self.changed()
        if self.idle_fetch_s:
            self._pace(now)
        return count

    # ---- pacing the fetches
    @property
    def awake(self) -> bool:
        return not self.idle_fetch_s or time.monotonic() < self.awake_until

    def wake(self, seconds: float = AWAKE_S) -> None:
        """Fetch every fetch wait for ``seconds`` from now (a writer waits, a read wants a newer
        offset, the assignment changed)."""
        self.awake_until = max(self.awake_until, time.monotonic() + seconds)
        self._settled = False
        if self.parked:
            self._unpark()

    def _pace(self, now: float) -> None:
        if now < self.awake_until:
            if self.parked:
                self._unpark()
        elif self.parked and (self._ends is not None or now >= self._probe_at):
            self._probe(now)
        else:
            if not self._settled:  # (asking for the assignment every pass cost an idle shard 1% of a core)
                self._park()
            if self._probe_at <= now:
                self._probe_at = now + self.idle_fetch_s

    def _probe(self, now: float) -> None:
        """Ask for the parked partitions' end offsets; when the answer is in, wake the tail if a
        partition has records past its copy (a producer other than a front end wrote, or a
        writer's offsets request has not come yet). An answer that does not come in
        ``PROBE_WAIT_S``, or an error, wakes it too: fetching finds out."""
        if self._ends is None:
            from confluent_kafka import TopicPartition
            from confluent_kafka.admin import AdminClient, OffsetSpec

            if self._admin is None:
                self._admin = AdminClient({"bootstrap.servers": self._kafka,
                                           "logger": logging.getLogger("shard.kafka")})
            try:
                self._ends = self._admin.list_offsets(
                    {TopicPartition(self.topic, p): OffsetSpec.latest() for p in sorted(self.parked)},
                    request_timeout=PROBE_WAIT_S)
            except Exception as exc:  # (a full client queue, say): one idle round of fetches
                log.debug("list_offsets: %s", exc)
                self.wake(self.probe_s)
            self._ends_at, self._probe_at = now, now + self.idle_fetch_s
            return
        self._admin.poll(0)  # (its log lines: a client with a logger queues them until polled)
        if not all(f.done() for f in self._ends.values()) and now - self._ends_at < PROBE_WAIT_S:
            return
        from confluent_kafka import KafkaException

        ends, self._ends = self._ends, None
        held = self.parts.held
        for tp, fut in ends.items():
            p = tp.partition
            if p not in self.parked or p not in held:
                continue  # revoked meanwhile
            try:
                behind = fut.result(0).offset > held[p].next
            except (KafkaException, FutureTimeout) as exc:  # an error, or no answer in time
                log.debug("partition %d: no end offset (%s): fetching", p, exc)
                behind = True
            if behind:
                self.wake(self.probe_s)  # records applied keep it awake
                return

    def _park(self) -> None:
        """Stop fetching the serving partitions (the others are still catching up)."""
        from confluent_kafka import KafkaException

        held = self.parts.held
        todo = [tp for tp in self.consumer.assignment() if tp.partition not in self.parked
                and held.get(tp.partition) is not None and held[tp.partition].serving]
        if todo:
            try:
                self.consumer.incremental_unassign(todo)
            except KafkaException as exc:  # in the middle of a rebalance: next pass
                log.debug("parking %s: %s", [tp.partition for tp in todo], exc)
                return
            self.parked.update(tp.partition for tp in todo)
        self._settled = True

    def _unpark(self) -> None:
        from confluent_kafka import TopicPartition

        held = self.parts.held
        self._unassigned += [TopicPartition(self.topic, p, held[p].next) for p in sorted(self.parked)
                             if p in held and held[p].assigned]
        self.parked.clear()
        self._step_transfers()  # assigns them (or retries next pass)

    def close(self) -> None:
        for t in self.transfers.values():
            t.close()
        self.consumer.close()


def _joined_ids(pending: list) -> list | None:
    """The event ids of the writes of ``pending`` records, in order (None for a record without
    them), or None when no record has any."""
    if all(ids is None for *_, ids in pending):
        return None
    return [i for _, _, writes, ids in pending for i in (ids or [None] * len(writes))]
