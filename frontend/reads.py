"""The single-entity reads, ``GET /features/{entity_id}[/{name}]``, implemented once.

A :class:`Read` takes the parsed request (path arguments and headers), admits it (the same
checks as every other request, :func:`frontend.access.admit`), checks its input, sends the shard
request and renders the reply as a :class:`~frontend.errors.Reply` (status, headers, body). It
needs no ``RequestHandler``: the Tornado handlers (``native.EntityHandler``, ...) and the fast
path (``frontend/fast.py``) both call it and only write what it renders.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

from common import protocol as P
from frontend.access import admit
from frontend.cluster_writes import READ_AFTER, position_in
from frontend.errors import INTERNAL, APIError, Reply, error_reply, reply_failure
from frontend.metrics import counted

log = logging.getLogger("frontend")


class Read:
    """One kind of read; ``route`` (its route template) labels its requests in ``/metrics``."""

    __slots__ = ("route", "parse")

    def __init__(self, route: str, parse: Callable[[tuple], tuple[str, dict]]) -> None:
        self.route = route
        self.parse = parse  # path arguments -> (entity id, shard request), or an APIError

    def start(self, ctx, args: tuple, headers, done: Callable[[Reply], None], started: float | None = None,
              admitted: bool = False) -> None:
        """Serve a GET with path ``args``; ``done(reply)`` is called once, possibly before this
        returns. The request is counted in ``ctx.metrics``, from ``started`` (the
        ``time.perf_counter()`` of its arrival; now when not given), before ``done`` writes it:
        whatever serves the connection, a client that saw the response finds it counted."""
        started = started or time.perf_counter()
        try:
            if not admitted:  # a RequestHandler's prepare() has admitted it already
                admit(ctx.cfg, False, headers)
            eid, request = self.parse(args)
            shard = ctx.partitioner.shard_for(eid)
            if ctx.cfg.cluster_kafka and READ_AFTER in headers:  # a shard here is a partition
                offset = position_in(headers[READ_AFTER], shard)
                if offset is not None:
                    P.read_after(request, offset)
        except APIError as exc:
            counted(ctx.metrics, self.route, "GET", started, done, error_reply(exc))
            return
        ctx.client.send(shard, request, partial(self._answer, ctx, shard, started, done))

    def _answer(self, ctx, shard: int, started: float, done: Callable[[Reply], None], reply) -> None:
        try:
            rendered = render(ctx.cfg, shard, reply)
        except Exception:
            log.exception("rendering a read of shard %d failed", shard)
            rendered = INTERNAL
        counted(ctx.metrics, self.route, "GET", started, done, rendered)


def render(cfg, shard: int, reply) -> Reply:
    """The response to a shard's reply (or exception): its ``body`` with its ETag (the shard's,
    which it keeps with a cached rendering), or the error."""
    if type(reply) is not dict or reply.get(P.OK) is not True:  # (P.is_ok)
        return error_reply(reply_failure(shard, reply, cfg))
    body = reply[P.BODY]
    return 200, {"Etag": reply.get(P.ETAG) or P.etag_for(body)}, body  # (P.etag_of)


def _entity(args: tuple) -> tuple[str, dict]:
    eid = args[0]
    if not eid:
        raise APIError(400, "entity_id must not be empty")
    return eid, P.get(eid)


def _feature(args: tuple) -> tuple[str, dict]:
    eid, name = args
    if not eid or not name:
        raise APIError(400, "entity_id and name must not be empty")
    return eid, P.get1(eid, name)


ENTITY = Read("/features/{entity_id}", _entity)  # args: (entity_id,)
FEATURE = Read("/features/{entity_id}/{name}", _feature)  # args: (entity_id, name)
