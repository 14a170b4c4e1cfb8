"""Asynchronous calls from one process to every shard over ZeroMQ DEALER sockets.

One DEALER per shard, read from the asyncio loop (``add_reader`` on the socket's edge-triggered
file descriptor). Requests made in the same loop iteration to the same shard travel in one
message, and every wake-up drains all queued replies: per-request overhead on the front end is
what limits reads (docs/BENCHMARKS.md). Replies are matched to requests by id. Every call
is bounded by ``timeout_s``; a shard that is down fails fast because the sockets set
``ZMQ_IMMEDIATE`` (nothing is queued for a peer that is not connected) and its calls raise
:class:`ShardUnavailable`. When the shard comes back, ZeroMQ reconnects by itself.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from functools import partial
from typing import Callable

import zmq

from common import protocol as P
from common.link import connect_dealer, drain

log = logging.getLogger("frontend.shards")

SWEEP_S = 0.05  # how often expired calls are failed, while any call is in flight
HWM = 100_000  # messages queued per socket and direction before a send fails


class ShardUnavailable(Exception):
    """The shard did not answer in time, or is not connected."""

    def __init__(self, shard: int, why: str) -> None:
        super().__init__(f"shard {shard} {why}")
        self.shard = shard


class ShardError(Exception):
    """The shard answered with an error reply."""

    def __init__(self, shard: int, reply: dict) -> None:
        super().__init__(f"shard {shard}: {P.code_of(reply)}: {P.reason_of(reply)}")
        self.shard = shard
        self.code = P.code_of(reply)
        self.reason = P.reason_of(reply)


class ShardOutbox:
    """The DEALER socket to one shard and the requests queued for it, not sent yet."""

    __slots__ = ("index", "name", "sock", "outbox")

    def __init__(self, index: int, sock: zmq.Socket) -> None:
        self.index = index
        self.name = f"shard {index}"
        self.sock = sock
        self.outbox: list[dict] = []


def _settle(fut: asyncio.Future, outcome) -> None:
    """Resolve a :meth:`ShardClient.submit` future with a reply or an exception."""
    if fut.done():
        return
    if isinstance(outcome, Exception):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


class ShardClient:
    """Calls shards by index: ``reply = await client.submit(shard, P.get(eid))``.

    Two ways to be told of a reply: a future (:meth:`submit`, :meth:`call_all`), or a callback run
    straight from the socket's reader (:meth:`send`), which saves a loop iteration per request.
    A request goes out at once when nothing else is in flight (the lowest latency at light
    load); otherwise it waits for the end of the loop iteration and leaves with the others
    queued for the same shard in one message (the most requests per CPU second under load).
    """

    def __init__(self, endpoints, timeout_s: float, ctx: zmq.Context | None = None, curve_dir: str | None = None,
                 max_frame_requests: int = 4096, max_frame_bytes: int = 256 << 20) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.timeout_s = timeout_s
        self.max_frame_requests = max_frame_requests  # FS_MAX_FRAME_REQUESTS: the shard refuses more
        self.max_frame_bytes = max_frame_bytes  # FS_MAX_FRAME_BYTES: the shard drops the peer past it
        self.curve_dir = curve_dir  # FS_CURVE_DIR: every link, those added later included, uses it
        self.links = [ShardOutbox(i, connect_dealer(self.ctx, e, hwm=HWM, curve_dir=curve_dir))
                      for i, e in enumerate(endpoints)]
        # request id -> (callback, deadline, shard[, request, fallback]), oldest first
        self.pending: OrderedDict[int, tuple] = OrderedDict()
        self._short: dict[int, float] = {}  # request id -> deadline, for calls with a shorter timeout
        self._ids = itertools.count(1)
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.on_roundtrip: Callable[[int, float], None] | None = None  # (shard, seconds) per reply frame
        # a call sent with a fallback failed (an exception, or an error reply): (its pending entry,
        # the outcome) -> whether the hook took the call over (cluster mode: another replica)
        self.on_failed: Callable[[tuple, object], bool] | None = None

    @property
    def n_shards(self) -> int:
        return len(self.links)

    def add_link(self, endpoint: str) -> int:
        """Connect one more shard (cluster mode finds shards as they appear); return its index."""
        link = ShardOutbox(len(self.links), connect_dealer(self.ctx, endpoint, hwm=HWM, curve_dir=self.curve_dir))
        self.links.append(link)
        if self._loop is not None:
            self._loop.add_reader(link.sock.getsockopt(zmq.FD), self._drain, link)
        return link.index

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach the sockets to the running loop."""
        self._loop = loop or asyncio.get_running_loop()
        for link in self.links:
            self._loop.add_reader(link.sock.getsockopt(zmq.FD), self._drain, link)

    def close(self) -> None:
        if self._loop is not None:
            for link in self.links:
                self._loop.remove_reader(link.sock.getsockopt(zmq.FD))
        if self._sweeper is not None:
            self._sweeper.cancel()
        for link in self.links:
            link.sock.close(0)
        pending, self.pending = self.pending, OrderedDict()
        for entry in pending.values():
            _run(entry[0], ShardUnavailable(entry[2], "client closed"))

    # ---- calls
    def send(self, shard: int, request: dict, done: Callable[[dict | Exception], None],
             timeout_s: float | None = None, fallback=None) -> None:
        """Send ``request`` (a builder's map, without an id) to ``shard``; ``done`` is called
        once with the reply map or a :class:`ShardUnavailable`: from the loop, or before this
        returns when the shard is not connected. ``timeout_s`` (at most the client's, which is the
        default) bounds it. With a ``fallback`` (not None), a failure goes to :attr:`on_failed`
        first, with the call's entry ``(done, deadline, shard, request, fallback)``: the request's
        deadline, and what the hook needs to send it elsewhere."""
        req_id = P.stamp(request, next(self._ids))
        idle = not self.pending
        if self._sweeper is None:  # the sweep sleeps while nothing is in flight
            self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)
        now = time.monotonic()
        # pending: in deadline order for the sweep, and the deadline - timeout_s is when it was sent
        self.pending[req_id] = ((done, now + self.timeout_s, shard) if fallback is None
                                else (done, now + self.timeout_s, shard, request, fallback))
        if timeout_s is not None and timeout_s < self.timeout_s:
            self._short[req_id] = now + timeout_s
        link = self.links[shard]
        if idle and not self._flush_scheduled:
            self._send(link, [request])
            return
        link.outbox.append(request)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def submit(self, shard: int, request: dict) -> asyncio.Future:
        """Queue ``request`` (built by a ``common.protocol`` builder, without an id); the future
        resolves to the reply map or raises."""
        fut = self._loop.create_future()
        self.send(shard, request, partial(_settle, fut))
        return fut

    async def call_all(self, build: Callable[[], dict], shards=None) -> dict[int, dict | Exception]:
        """Send the request that ``build()`` makes (``P.ping``, ``P.stats``) to several shards at
        once; return the reply or exception by shard."""
        shards = range(self.n_shards) if shards is None else shards
        futs = {s: self.submit(s, build()) for s in shards}
        out: dict[int, dict | Exception] = {}
        for s, fut in futs.items():
            try:
                out[s] = await fut
            except ShardUnavailable as exc:
                out[s] = exc
        return out

    # ---- loop callbacks
    def _flush(self) -> None:
        self._flush_scheduled = False
        for link in self.links:
            if link.outbox:
                batch, link.outbox = link.outbox, []
                step = self.max_frame_requests
                for start in range(0, len(batch), step):
                    self._send(link, batch[start:start + step] if len(batch) > step else batch)

    def _send(self, link: ShardOutbox, batch: list[dict]) -> None:
        frame = P.encode(batch)
        if len(frame) > self.max_frame_bytes:  # the shard would drop the connection: split, or refuse
            if len(batch) > 1:
                self._send(link, batch[:len(batch) // 2])
                self._send(link, batch[len(batch) // 2:])
            else:
                self._refuse(batch[0], len(frame))
            return
        try:
            link.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._fail(batch, link.index, "is not connected")
        self._drain(link)  # the fd is edge-triggered: a send may have eaten a read event

    def _refuse(self, request: dict, size: int) -> None:
        entry = self.pending.pop(P.id_of(request), None)
        if entry is not None:
            _run(entry[0], P.error(P.id_of(request), P.TOO_LARGE, f"the shard message would be {size} bytes; "
                                   f"the limit is {self.max_frame_bytes} (FS_MAX_FRAME_BYTES)"))

    def _fail(self, batch: list[dict], shard: int, why: str) -> None:
        for req in batch:
            entry = self.pending.pop(P.id_of(req), None)
            if entry is not None:
                self._failed(entry, ShardUnavailable(shard, why))

    def _drain(self, link: ShardOutbox) -> None:
        drain(link.sock, self._on_replies, link.name, log)

    def _on_replies(self, replies: list) -> None:
        pending = self.pending
        timed = self.on_roundtrip is None
        for reply in replies:
            entry = pending.pop(reply.get(P.ID), None) if type(reply) is dict else None  # (P.id_of)
            if entry is not None:
                if not timed:  # the first request of the frame: sent at its deadline - timeout
                    timed = True
                    self.on_roundtrip(entry[2], time.monotonic() - entry[1] + self.timeout_s)
                try:  # (what _run does, without a call per reply)
                    if len(entry) > 3 and P.CODE in reply:  # an error reply to a call with a fallback
                        self._failed(entry, reply)
                    else:
                        entry[0](reply)
                except Exception:
                    log.exception("a shard reply callback failed")

    def _sweep(self) -> None:
        now = time.monotonic()
        pending = self.pending
        while pending:
            req_id, entry = next(iter(pending.items()))
            if entry[1] > now:
                break
            del pending[req_id]
            self._failed(entry, ShardUnavailable(entry[2], f"did not answer in {self.timeout_s:g} s"))
        if self._short:
            for req_id, deadline in list(self._short.items()):
                if req_id not in pending or deadline <= now:
                    del self._short[req_id]
                    entry = pending.pop(req_id, None)
                    if entry is not None:
                        self._failed(entry, ShardUnavailable(entry[2], "did not answer in time"))
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep) if pending else None

    def _failed(self, entry: tuple, outcome) -> None:
        """A call failed: its fallback's hook takes it over, or its callback gets ``outcome``."""
        try:
            if len(entry) > 3 and self.on_failed is not None and self.on_failed(entry, outcome):
                return
        except Exception:
            log.exception("a shard call's fallback failed")
        _run(entry[0], outcome)


def _run(done: Callable, outcome) -> None:
    """Call a reply callback; a failing callback is logged and never stops the reader."""
    try:
        done(outcome)
    except Exception:
        log.exception("a shard reply callback failed")
