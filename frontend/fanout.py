"""Requests to many shards at once: group keys by shard, one request per shard sent together,
replies gathered back in request order, shard failures mapped to HTTP errors.

Native and Feast endpoints both read and write through these functions.
"""
from __future__ import annotations

import asyncio
import operator
from typing import Callable

from common import protocol as P
from frontend.errors import APIError, reply_failure
from frontend.shard_client import ShardUnavailable

Calls = list  # [(shard, positions in the request, future)]


def submit(ctx, keys: list, build: Callable[[list[int]], dict]) -> Calls:
    """Send ``build(positions)`` to the shard of each group of ``keys`` (entity ids); return the calls."""
    client = ctx.client
    return [(shard, pos, client.submit(shard, build(pos))) for shard, pos in ctx.partitioner.group(keys).items()]


async def outcome(ctx, shard: int, fut: asyncio.Future) -> dict | APIError:
    """The ok reply of a submitted request, or the HTTP error it failed with."""
    try:
        reply = await fut
    except ShardUnavailable as exc:
        reply = exc
    failure = reply_failure(shard, reply, ctx.cfg)
    return reply if failure is None else failure


async def ok_reply(ctx, shard: int, fut: asyncio.Future) -> dict:
    """The ok reply of a submitted request; a failure raises its HTTP error."""
    reply = await outcome(ctx, shard, fut)
    if isinstance(reply, APIError):
        raise reply
    return reply


async def call(ctx, shard: int, request: dict) -> dict:
    """Send one request; the ok reply, or its HTTP error raised."""
    return await ok_reply(ctx, shard, ctx.client.submit(shard, request))


async def write_all(ctx, writes: list, ids: list | None = None) -> tuple[int, int, list]:
    """Send write tuples (and their event ids, parallel, if given) to their shards
    concurrently; return (written, stale, the records' ``[partition, offset]`` in cluster mode).
    Every shard's reply is awaited before the first failure is raised."""
    calls = submit(ctx, [w[0] for w in writes], lambda pos: P.write(
        [writes[p] for p in pos], event_ids=None if ids is None else [ids[p] for p in pos]))
    written = stale = 0
    failure = None
    applied: list = []
    for shard, _, fut in calls:
        reply = await outcome(ctx, shard, fut)
        if isinstance(reply, APIError):
            failure = failure or reply
            continue
        written += reply[P.WRITTEN]
        stale += reply[P.STALE]
        applied.extend(P.applied_of(reply))
    if failure is not None:
        if len(calls) > 1:
            failure.detail += " (writes to the other shards were applied; retrying is safe)"
        raise failure
    return written, stale, applied


async def read_parts(ctx, eids: list, names: list | None, after: dict[int, int] | None = None) -> list[bytes]:
    """The JSON object of each entity (``mget``), in request order; with ``after`` (cluster
    mode: partition -> offset), from copies that applied those offsets."""
    def build(shard: int, pos: list[int]) -> dict:
        request = P.mget([eids[p] for p in pos], names)
        offset = after.get(shard) if after else None
        return request if offset is None else P.read_after(request, offset)

    calls = [(shard, pos, ctx.client.submit(shard, build(shard, pos)))
             for shard, pos in ctx.partitioner.group(eids).items()]
    parts: list = [None] * len(eids)
    for shard, positions, fut in calls:
        reply = await ok_reply(ctx, shard, fut)
        for pos, part in zip(positions, reply[P.PARTS]):
            parts[pos] = part
    return parts


def submit_rows(ctx, eids: list, names: list) -> Calls:
    """Send the ``fget`` of ``eids``; :func:`gather_rows` collects the rows."""
    return submit(ctx, eids, lambda pos: P.fget([eids[p] for p in pos], names))


async def gather_rows(ctx, n: int, calls: Calls) -> tuple:
    """The (values, statuses, times) rows of :func:`submit_rows`, in request order."""
    v, s, ts = [], [], []
    order = [0] * n
    for shard, positions, fut in calls:
        reply = await ok_reply(ctx, shard, fut)
        base = len(v)
        v += reply[P.VALUES]
        s += reply[P.STATUSES]
        ts += reply[P.TIMES]
        for i, p in enumerate(positions, base):
            order[p] = i
    if len(calls) == 1 or n < 2:
        return v, s, ts
    get = operator.itemgetter(*order)
    return get(v), get(s), get(ts)


async def replies_of_all(ctx, build: Callable[[], dict]) -> tuple[dict, list[int]]:
    """Every shard's reply to ``build()`` (an exception for one that failed), and the failed shards."""
    replies = await ctx.client.call_all(build)
    down = [s for s, r in sorted(replies.items()) if isinstance(r, Exception) or not P.is_ok(r)]
    return replies, down
