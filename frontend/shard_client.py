"""Asynchronous calls from one process to every shard over ZeroMQ DEALER sockets.

One DEALER per shard, read from the asyncio loop (``add_reader`` on the socket's edge-triggered
file descriptor). Requests made in the same loop iteration to the same shard travel in one
message, and every wake-up drains all queued replies: per-request overhead on the front end is
what limits reads (../shared/PERFORMANCE.md). Replies are matched to requests by id. Every call
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

import zmq

from common import protocol as P

log = logging.getLogger("frontend.shards")

SWEEP_S = 0.05  # how often expired calls are failed


class ShardUnavailable(Exception):
    """The shard did not answer in time, or is not connected."""

    def __init__(self, shard: int, why: str) -> None:
        super().__init__(f"shard {shard} {why}")
        self.shard = shard


class ShardError(Exception):
    """The shard answered with an error reply."""

    def __init__(self, shard: int, reply: dict) -> None:
        super().__init__(f"shard {shard}: {reply.get('code')}: {reply.get('reason')}")
        self.shard = shard
        self.code = reply.get("code")
        self.reason = reply.get("reason")


class _Link:
    """The DEALER socket to one shard, its outbox and its pending calls."""

    __slots__ = ("index", "sock", "outbox")

    def __init__(self, index: int, sock: zmq.Socket) -> None:
        self.index = index
        self.sock = sock
        self.outbox: list[dict] = []


class ShardClient:
    """Calls shards by index: ``reply = await client.call(shard, request)``."""

    def __init__(self, endpoints, timeout_s: float, ctx: zmq.Context | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.timeout_s = timeout_s
        self.links = [_Link(i, self._connect(e)) for i, e in enumerate(endpoints)]
        self.pending: OrderedDict[int, tuple[asyncio.Future, float, int]] = OrderedDict()
        self._ids = itertools.count(1)
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def _connect(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a shard that is not connected
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.connect(endpoint)
        return sock

    @property
    def n_shards(self) -> int:
        return len(self.links)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach the sockets to the running loop."""
        self._loop = loop or asyncio.get_running_loop()
        for link in self.links:
            self._loop.add_reader(link.sock.getsockopt(zmq.FD), self._drain, link)
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def close(self) -> None:
        if self._loop is not None:
            for link in self.links:
                self._loop.remove_reader(link.sock.getsockopt(zmq.FD))
        if self._sweeper is not None:
            self._sweeper.cancel()
        for link in self.links:
            link.sock.close(0)
        for fut, _, shard in self.pending.values():
            if not fut.done():
                fut.set_exception(ShardUnavailable(shard, "client closed"))
        self.pending.clear()

    # ---- calls
    def submit(self, shard: int, kind: str, **fields) -> asyncio.Future:
        """Queue a request; the future resolves to the ok reply or raises."""
        req_id = next(self._ids)
        fields["t"] = kind
        fields["id"] = req_id
        fut = self._loop.create_future()
        self.pending[req_id] = (fut, time.monotonic() + self.timeout_s, shard)
        self.links[shard].outbox.append(fields)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    async def call(self, shard: int, kind: str, **fields) -> dict:
        """Send one request and wait for its ok reply (:class:`ShardError` on an error reply)."""
        reply = await self.submit(shard, kind, **fields)
        if not reply["ok"]:
            raise ShardError(shard, reply)
        return reply

    async def call_all(self, kind: str, shards=None, **fields) -> dict[int, dict | Exception]:
        """Send the same request to several shards at once; return reply or exception by shard."""
        shards = range(self.n_shards) if shards is None else shards
        futs = {s: self.submit(s, kind, **fields) for s in shards}
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
            if not link.outbox:
                continue
            batch, link.outbox = link.outbox, []
            try:
                link.sock.send(P.encode(batch), zmq.NOBLOCK)
            except zmq.Again:
                self._fail(batch, link.index, "is not connected")
            self._drain(link)  # the fd is edge-triggered: a send may have eaten a read event

    def _fail(self, batch: list[dict], shard: int, why: str) -> None:
        for req in batch:
            entry = self.pending.pop(req["id"], None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(ShardUnavailable(shard, why))

    def _drain(self, link: _Link) -> None:
        sock, pending = link.sock, self.pending
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                replies = P.decode(frame)
            except P.ProtocolError as exc:
                log.warning("shard %d sent a malformed frame: %s", link.index, exc)
                continue
            for reply in replies:
                entry = pending.pop(reply.get("id"), None) if type(reply) is dict else None
                if entry is not None and not entry[0].done():
                    entry[0].set_result(reply)

    def _sweep(self) -> None:
        now = time.monotonic()
        pending = self.pending
        while pending:
            req_id, (fut, deadline, shard) = next(iter(pending.items()))
            if deadline > now:
                break
            del pending[req_id]
            if not fut.done():
                fut.set_exception(ShardUnavailable(shard, f"did not answer in {self.timeout_s:g} s"))
        self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)
