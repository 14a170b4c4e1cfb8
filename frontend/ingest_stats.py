"""Asks the ingest process for its counters (``stats`` on ``FS_INGEST_STATS_ENDPOINT``) for ``/stats``."""
from __future__ import annotations

import asyncio
import itertools

import zmq
import zmq.asyncio

from common import protocol as P
from common.link import connect_dealer

CONNECT_WAIT_S = 0.05  # a socket made by this call gets this long to connect before giving up


class IngestStats:
    """One DEALER per front-end process, made on first use; answers in at most ``timeout_s``."""

    def __init__(self, endpoint: str, timeout_s: float, curve_dir: str | None = None) -> None:
        self.endpoint = endpoint
        self.curve_dir = curve_dir
        self.timeout_s = timeout_s
        self.sock: zmq.asyncio.Socket | None = None
        self.lock = asyncio.Lock()
        self.ids = itertools.count(1)

    async def fetch(self) -> dict:
        """The ingest counters, or ``{"detail"}`` when ingest is not running or does not answer."""
        async with self.lock:
            fresh = self.sock is None
            if fresh:
                # immediate: a send fails at once when no ingest process is connected
                self.sock = connect_dealer(zmq.asyncio.Context.instance(), self.endpoint, curve_dir=self.curve_dir)
            req_id = next(self.ids)
            frame = P.encode([P.stats(req_id)])
            try:
                await self.sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                if not fresh:
                    return {"detail": f"ingest is not running at {self.endpoint}"}
                await asyncio.sleep(CONNECT_WAIT_S)
                try:
                    await self.sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    return {"detail": f"ingest is not running at {self.endpoint}"}
            try:
                async with asyncio.timeout(self.timeout_s):
                    while True:  # skip late answers to earlier calls that timed out
                        reply = P.decode(await self.sock.recv())[0]
                        if P.id_of(reply) == req_id:
                            return P.counters_of(reply)
            except (TimeoutError, P.ProtocolError, IndexError, AttributeError):
                return {"detail": f"ingest did not answer in {self.timeout_s:g} s"}


_fetchers: dict[str, IngestStats] = {}  # one per endpoint in this process, made on first use


async def ingest_stats(ctx) -> dict | None:
    """Ingest's counters (``{"detail"}`` when it does not answer); None when not configured."""
    endpoint = ctx.cfg.ingest_stats_endpoint
    if not endpoint:
        return None
    if endpoint not in _fetchers:
        _fetchers[endpoint] = IngestStats(endpoint, ctx.cfg.shard_timeout_s, ctx.cfg.curve_dir)
    return await _fetchers[endpoint].fetch()
