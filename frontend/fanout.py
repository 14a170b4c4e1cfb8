"""Requests to many shards at once: group keys by shard, one request per shard sent together,
replies gathered back in request order, shard failures mapped to HTTP errors.

Native and Feast endpoints both read and write through these functions.
"""
from __future__ import annotations

import operator
from functools import partial
from typing import Callable

from common import protocol as P
from frontend.errors import APIError, reply_failure
from frontend.shard_client import ShardUnavailable

Calls = list  # [(shard, request)]: what :func:`replies` or :func:`gather` sends
Groups = list  # [positions in the request], parallel to the calls


def calls_for(ctx, keys: list, build: Callable[[list[int] | None], dict]) -> tuple[Calls, Groups]:
    """The request ``build(positions)`` for the shard of each group of ``keys`` (entity ids),
    and each group's positions. One shard holding them all gets ``build(None)``: every key, in
    order (no positions list to walk)."""
    if len(keys) == 1:
        return [(ctx.partitioner.shard_for(keys[0]), build(None))], [range(1)]
    groups = ctx.partitioner.group(keys)
    if len(groups) == 1:
        return [(next(iter(groups)), build(None))], [range(len(keys))]
    return [(shard, build(pos)) for shard, pos in groups.items()], list(groups.values())


def _picked(items: list, pos: list[int] | None) -> list:
    return items if pos is None else [items[p] for p in pos]


def gather(ctx, calls: Calls, done: Callable[[list], None]) -> None:
    """Send every call at once; ``done(replies)`` once all are in: one reply (or exception) per
    call, in order. No future or task: the last reply's callback calls ``done``."""
    if len(calls) == 1:
        shard, request = calls[0]
        ctx.client.send(shard, request, lambda reply: done([reply]))
        return
    replies = [None] * len(calls)
    left = [len(calls)]

    def arrived(i: int, reply) -> None:
        replies[i] = reply
        left[0] -= 1
        if not left[0]:
            done(replies)

    send = ctx.client.send
    for i, (shard, request) in enumerate(calls):
        send(shard, request, partial(arrived, i))


async def replies(ctx, calls: Calls) -> list:
    """:func:`gather` for a coroutine: the replies (or ``ShardUnavailable``) of ``calls``."""
    futs = [ctx.client.submit(shard, request) for shard, request in calls]
    out = []
    for fut in futs:
        try:
            out.append(await fut)
        except ShardUnavailable as exc:
            out.append(exc)
    return out


def ok(ctx, shard: int, reply) -> dict:
    """The ok reply; a failure raises its HTTP error (an exception other than ShardUnavailable
    is raised as it is: a 500)."""
    if type(reply) is dict and P.is_ok(reply):
        return reply
    if isinstance(reply, Exception) and not isinstance(reply, ShardUnavailable):
        raise reply
    raise reply_failure(shard, reply, ctx.cfg)


async def call(ctx, shard: int, request: dict) -> dict:
    """Send one request; the ok reply, or its HTTP error raised."""
    return ok(ctx, shard, (await replies(ctx, [(shard, request)]))[0])


def write_calls(ctx, writes: list, ids: list | None = None) -> Calls:
    """The write request of each shard for write tuples (and their event ids, parallel, if given)."""
    return calls_for(ctx, [w[0] for w in writes], lambda pos: P.write(
        _picked(writes, pos), event_ids=None if ids is None else _picked(ids, pos)))[0]


def write_totals(ctx, calls: Calls, replies: list) -> tuple[int, int, list]:
    """(written, stale, the records' ``[partition, offset]`` in cluster mode) of the replies to
    :func:`write_calls`; the first failure is raised once every reply is in."""
    written = stale = 0
    failure = None
    applied: list = []
    for (shard, _), reply in zip(calls, replies):
        try:
            reply = ok(ctx, shard, reply)
        except APIError as exc:
            failure = failure or exc
            continue
        written += reply[P.WRITTEN]
        stale += reply[P.STALE]
        applied.extend(P.applied_of(reply))
    if failure is not None:
        if len(calls) > 1:
            failure.detail += " (writes to the other shards were applied; retrying is safe)"
        raise failure
    return written, stale, applied


async def write_all(ctx, writes: list, ids: list | None = None) -> tuple[int, int, list]:
    """Send write tuples to their shards concurrently: :func:`write_totals` of the replies."""
    calls = write_calls(ctx, writes, ids)
    return write_totals(ctx, calls, await replies(ctx, calls))


def parts_calls(ctx, eids: list, names: list | None, after: dict[int, int] | None = None) -> tuple[Calls, Groups]:
    """The ``mget`` of ``eids`` to their shards; :func:`parts_of` puts the parts in order. With
    ``after`` (cluster mode: partition -> offset), from copies that applied those offsets."""
    return _after(calls_for(ctx, eids, lambda pos: P.mget(_picked(eids, pos), names)), after)


def _after(planned: tuple[Calls, Groups], after: dict[int, int] | None) -> tuple[Calls, Groups]:
    """``planned``, each read stamped with its partition's offset in ``after`` (X-Read-After)."""
    if after:
        for shard, request in planned[0]:
            if shard in after:
                P.read_after(request, after[shard])
    return planned


def parts_of(ctx, n: int, calls: Calls, groups: Groups, replies: list) -> list[bytes]:
    """The JSON object of each of ``n`` entities, in request order; a failure raises."""
    if len(calls) == 1:
        return ok(ctx, calls[0][0], replies[0])[P.PARTS]
    parts: list = [None] * n
    for (shard, _), positions, reply in zip(calls, groups, replies):
        for pos, part in zip(positions, ok(ctx, shard, reply)[P.PARTS]):
            parts[pos] = part
    return parts


def rows_calls(ctx, eids: list, names: list, after: dict[int, int] | None = None) -> tuple[Calls, Groups]:
    """The ``fget`` of ``eids`` (with ``after``: as :func:`parts_calls`); :func:`rows_of` collects the rows."""
    return _after(calls_for(ctx, eids, lambda pos: P.fget(_picked(eids, pos), names)), after)


def rows_of(ctx, n: int, calls: Calls, groups: Groups, replies: list) -> tuple:
    """The (values, statuses, times) rows of :func:`rows_calls`, in request order."""
    v, s, ts = [], [], []
    order = [0] * n
    for (shard, _), positions, reply in zip(calls, groups, replies):
        reply = ok(ctx, shard, reply)
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
