"""Sends units of writes to the shards: batched, several batches in flight, acknowledged in order.

Units are collected into a :class:`Batch` until it holds ``ingest_batch_events`` events or its
window passes (or, when the shards are idle, as soon as the source has nothing more to give).
A closed batch becomes one frame per shard that got writes from it: a msgpack array of one
``write`` request per unit, so each unit learns its own ``written``/``stale`` counts.

At most ``ingest_max_in_flight`` batches are sent and unacknowledged; the source is not read
while that many are out, so a slow or dead shard slows the source down and memory stays bounded.
Batches are released to the source strictly in order, only when every shard that got writes
from them acknowledged those writes: that is when a source may commit its Kafka offsets or
answer its producer.

A shard that does not answer within ``ingest_ack_timeout_s`` (or answers ``unavailable`` /
``disk_full``) gets every unacknowledged frame resent, oldest first, after a backoff that doubles
up to ``ingest_retry_max_s``. Frames to one shard are never reordered: a resend always starts
at the oldest unacknowledged one. Writes are last-write-wins by event time, so a write applied
twice changes nothing.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from functools import partial

import zmq
from zmq.utils.monitor import recv_monitor_message

from common import protocol as P
from common.config import Config
from common.link import connect_dealer, drain
from ingest.decode import DeadLetters, Unit

log = logging.getLogger("ingest")

RETRY_FIRST_S = 0.05  # first backoff after a failed send or a missed ack
RETRYABLE = (P.UNAVAILABLE, P.DISK_FULL)  # shard errors worth a resend; others are dead letters


class Batch:
    """Units collected together; done when every shard that got writes acknowledged them."""

    __slots__ = ("seq", "units", "events", "opened", "waiting")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.units: list[Unit] = []
        self.events = 0
        self.opened = time.monotonic()
        self.waiting: set[int] = set()  # shards whose ack is still missing


class Frame:
    """The writes of one batch for one shard: one ``write`` request per unit."""

    __slots__ = ("batch", "shard", "payload", "ids", "sent")

    def __init__(self, batch: Batch, shard: int, payload: bytes, ids: dict) -> None:
        self.batch = batch
        self.shard = shard
        self.payload = payload
        self.ids = ids  # request id -> unit, for the requests not yet answered
        self.sent = 0.0  # monotonic time of the last send; 0 = not sent


class ShardBacklog:
    """One shard: its DEALER socket, its unacknowledged frames (oldest first) and its backoff."""

    __slots__ = ("index", "name", "sock", "frames", "retry_at", "backoff", "connected")

    def __init__(self, index: int, sock: zmq.Socket) -> None:
        self.index = index
        self.name = f"shard {index}"
        self.sock = sock
        self.frames: deque[Frame] = deque()
        self.retry_at = 0.0  # while in the future, nothing is sent to this shard
        self.backoff = RETRY_FIRST_S
        self.connected = False  # from the socket's monitor


class ShardWriter:
    """Batches units, sends them to the shards, and releases finished batches in order.

    ``connect(ctx, endpoint)`` makes each shard's DEALER (:func:`common.link.connect_dealer`;
    the unit tests pass fakes)."""

    def __init__(self, cfg: Config, ctx: zmq.Context, dead: DeadLetters, connect=connect_dealer) -> None:
        self.batch_events = cfg.ingest_batch_events
        self.window_s = cfg.ingest_batch_window_s
        self.max_in_flight = cfg.ingest_max_in_flight
        self.ack_timeout_s = cfg.ingest_ack_timeout_s
        self.retry_max_s = cfg.ingest_retry_max_s
        self.dead = dead
        if cfg.curve_dir:
            connect = partial(connect, curve_dir=cfg.curve_dir)
        self.links = [ShardBacklog(i, connect(ctx, e)) for i, e in enumerate(cfg.endpoints())]
        self.poller = zmq.Poller()
        self._by_sock = {}
        self._monitors = {}  # monitor socket -> link: a lost connection fails the link at once
        for link in self.links:
            self.poller.register(link.sock, zmq.POLLIN)
            self._by_sock[link.sock] = link
            mon = link.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            self.poller.register(mon, zmq.POLLIN)
            self._monitors[mon] = link
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self.current: Batch | None = None
        self.in_flight: deque[Batch] = deque()  # sent, oldest first
        self.pending: dict[int, Frame] = {}  # request id -> its frame
        # counters
        self.events = 0  # events released (acknowledged by every shard)
        self.rejected = 0  # events released as dead letters
        self.written = 0
        self.stale = 0
        self.refused = 0  # values a shard refused for good (dead-lettered)
        self.resends = 0  # frames sent again (or late) after a failure
        self.retries = 0  # failures: missed acks, sends to a shard not connected, retryable errors

    def wait_connected(self, timeout_s: float) -> list[int]:
        """Ping every shard until it answers or ``timeout_s`` passes (a first batch is then not
        delayed by a backoff while the connections come up); return the shards that answered."""
        deadline = time.monotonic() + timeout_s
        waiting = {link.index for link in self.links}
        while waiting and time.monotonic() < deadline:
            for i in waiting:
                try:
                    self.links[i].sock.send(P.encode([P.ping(0)]), zmq.NOBLOCK)
                except zmq.Again:
                    pass
            for sock, _ in self.poller.poll(50):
                if sock in self._monitors:
                    self._monitor(sock)
                    continue
                link = self._by_sock[sock]
                drain(sock, lambda _replies, i=link.index: waiting.discard(i), link.name, log)
        return [link.index for link in self.links if link.index not in waiting]

    def close(self) -> None:
        for mon in self._monitors:
            mon.close(0)
        for link in self.links:
            link.sock.disable_monitor()
            link.sock.close(0)

    # ---- the source side
    def can_accept(self) -> bool:
        """Whether the source may be read: fewer than the maximum batches are out."""
        return len(self.in_flight) < self.max_in_flight

    def busy(self) -> bool:
        """Whether anything is buffered or unacknowledged."""
        return bool(self.in_flight) or (self.current is not None and bool(self.current.units))

    def add(self, unit: Unit) -> None:
        """Queue a unit; a batch that reaches its size is sent at once."""
        batch = self.current
        if batch is None:
            batch = self.current = Batch(next(self._seq))
        batch.units.append(unit)
        batch.events += unit.events + unit.rejected
        if batch.events >= self.batch_events:
            self.flush()

    def flush_due(self, source_idle: bool) -> None:
        """Send the open batch if its window passed, or at once when the source is idle and the
        shards have room (small batches when load is light, full ones when it is heavy)."""
        batch = self.current
        if batch is None or not batch.units or not self.can_accept():
            return
        if (source_idle and len(self.in_flight) < 2) or time.monotonic() - batch.opened >= self.window_s:
            self.flush()

    def flush(self) -> None:
        """Close the open batch: one frame per shard, sent now unless that shard is backing off."""
        batch, self.current = self.current, None
        if batch is None or not batch.units:
            return
        per_shard: dict[int, tuple[list, dict]] = {}
        for unit in batch.units:
            for shard, writes in unit.by_shard.items():
                entry = per_shard.get(shard)
                if entry is None:
                    entry = per_shard[shard] = ([], {})
                req_id = next(self._ids)
                meta = unit.meta.get(shard)
                if meta is None:
                    entry[0].append(P.write(writes, req_id))
                else:  # aggregations: the shard counts a redelivered event once
                    ids = meta[0] if any(e is not None for e in meta[0]) else None
                    entry[0].append(P.write(writes, req_id, ids, unit.origin,
                                            meta[1] if unit.origin is not None else None))
                entry[1][req_id] = unit
        self.in_flight.append(batch)
        now = time.monotonic()
        for shard, (requests, ids) in per_shard.items():
            frame = Frame(batch, shard, P.encode(requests), ids)
            batch.waiting.add(shard)
            for req_id in ids:
                self.pending[req_id] = frame
            link = self.links[shard]
            link.frames.append(frame)
            if link.retry_at <= now and (len(link.frames) == 1 or link.frames[-2].sent):
                self._send(link, frame, now)
        for unit in batch.units:
            unit.by_shard, unit.meta = {}, {}  # the frames hold the encoded writes; free the objects

    # ---- the shard side
    def _send(self, link: ShardBacklog, frame: Frame, now: float) -> bool:
        try:
            link.sock.send(frame.payload, zmq.NOBLOCK)
        except zmq.Again:
            self._fail(link, now, "is not connected")
            return False
        frame.sent = now
        return True

    def _fail(self, link: ShardBacklog, now: float, why: str) -> None:
        """Mark every unacknowledged frame of a shard for resending after a backoff."""
        self.retries += 1
        if link.retry_at <= now:
            log.warning("shard %d %s; resending %d batch(es) in %.2f s", link.index, why,
                        len(link.frames), link.backoff)
        for frame in link.frames:
            frame.sent = 0.0
        link.retry_at = now + link.backoff
        link.backoff = min(link.backoff * 2, self.retry_max_s)

    def poll(self, timeout_ms: int, extra: list | None = None) -> set:
        """Wait up to ``timeout_ms`` for shard replies (and ``extra`` sockets or fds); handle the
        replies, resends and timeouts; return the ``extra`` items that are readable."""
        for item in extra or ():
            self.poller.register(item, zmq.POLLIN)
        try:
            events = self.poller.poll(timeout_ms)
        finally:
            for item in extra or ():
                self.poller.unregister(item)
        ready = set()
        for item, _ in events:
            link = self._by_sock.get(item)
            if link is not None:
                self._drain(link)
            elif item in self._monitors:
                self._monitor(item)
            else:
                ready.add(item)
        self._chores(time.monotonic())
        return ready

    def _drain(self, link: ShardBacklog) -> None:
        drain(link.sock, partial(self._on_replies, link), link.name, log)

    def _on_replies(self, link: ShardBacklog, replies: list) -> None:
        for reply in replies:
            if type(reply) is dict:
                self._on_reply(link, reply)

    def _monitor(self, mon: zmq.Socket) -> None:
        """Connection events of a shard. When the connection drops, what the shard had not
        acknowledged may be lost, so it is all sent again, oldest first, before anything newer:
        a shard that restarts quickly never gets a newer batch ahead of an older one."""
        link = self._monitors[mon]
        while mon.poll(0):
            event = recv_monitor_message(mon)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                link.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                link.connected = False
                if link.frames:
                    self._fail(link, time.monotonic(), "disconnected")

    def connected(self) -> list[int]:
        """The shards this process is connected to now."""
        return [link.index for link in self.links if link.connected]

    def _on_reply(self, link: ShardBacklog, reply: dict) -> None:
        req_id = P.id_of(reply)
        frame = self.pending.get(req_id)
        if frame is None:
            return  # the reply to a resent request that was already answered
        if not P.is_ok(reply):
            code = P.code_of(reply)
            if code in RETRYABLE:
                self._fail(link, time.monotonic(), f"answered {code}: {P.reason_of(reply)}")
                return
            self._refuse(frame, reply)
        else:
            unit = frame.ids[req_id]
            unit.written += reply.get(P.WRITTEN, 0)
            unit.stale += reply.get(P.STALE, 0)
        del self.pending[req_id]
        del frame.ids[req_id]
        if not frame.ids:
            self._acked(link, frame)

    def _refuse(self, frame: Frame, reply: dict) -> None:
        """A shard refused a write for good (not a fault that a resend cures): dead-letter it."""
        req_id = P.id_of(reply)
        reason = f"shard {frame.shard} refused the write: {P.code_of(reply)}: {P.reason_of(reply)}"
        log.error("%s", reason)
        for req in P.decode(frame.payload):
            if P.id_of(req) == req_id:
                writes = req[P.WRITES]
                for w in writes:
                    self.dead.add(f"shard {frame.shard}", reason, {"entity_id": w[0], "name": w[1],
                                                                   "value": w[2], "event_us": w[3]})
                self.refused += len(writes)
                frame.ids[req_id].errors.append(reason)

    def _acked(self, link: ShardBacklog, frame: Frame) -> None:
        try:
            link.frames.remove(frame)  # the oldest one but for a late reply to an older send
        except ValueError:
            pass
        link.backoff = RETRY_FIRST_S
        frame.batch.waiting.discard(frame.shard)

    def _chores(self, now: float) -> None:
        for link in self.links:
            frames = link.frames
            if not frames:
                continue
            head = frames[0]
            if head.sent and now - head.sent > self.ack_timeout_s:
                self._fail(link, now, f"did not acknowledge in {self.ack_timeout_s:g} s")
            if link.retry_at > now:
                continue
            for frame in frames:  # oldest first: a resend never reorders a shard's writes
                if not frame.sent:
                    if not self._send(link, frame, now):
                        break
                    self.resends += 1

    def done(self) -> list[Batch]:
        """Batches that every shard acknowledged, in order; their counts go to the totals."""
        out = []
        while self.in_flight and not self.in_flight[0].waiting:
            batch = self.in_flight.popleft()
            for unit in batch.units:
                self.events += unit.events
                self.rejected += unit.rejected
                self.written += unit.written
                self.stale += unit.stale
            out.append(batch)
        return out
