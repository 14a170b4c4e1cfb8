"""The POST endpoints that take a JSON body and are on the hot paths, implemented once.

An :class:`Endpoint` turns the request body into a :class:`~frontend.errors.Reply` in two steps
that both engines share: ``plan`` parses and checks the body and builds the shard requests,
``finish`` renders the shards' replies; either raises an ``APIError`` (or a Feast error) to
refuse. It needs no ``RequestHandler``: the Tornado handler awaits ``endpoint.run(ctx, body)``
and writes the reply (``BodyHandler.serve``), and the fast engine's hot path
(``frontend/hot.py``) calls :meth:`Endpoint.start`, which also admits the request as the
handler's ``prepare`` does, and runs on shard-reply callbacks, without a future or a task.

- :data:`WRITE`: ``POST /features``
- :data:`BATCH`: ``POST /features/batch``
- ``frontend.feast.handlers.online_features_endpoint``: ``POST /get-online-features``
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Callable

from common import timefmt
from common.events import EventError, check_entity_ids, check_name, loads_json, parse_body
from frontend import fanout
from frontend.cluster_writes import READ_AFTER, read_positions, render_positions
from frontend.access import admit, too_large
from frontend.errors import INTERNAL, APIError, Reply, error_reply
from frontend.metrics import counted

log = logging.getLogger("frontend")


def parse_json(body: bytes, cfg, size: int | None = None) -> Any:
    """The request body parsed as JSON, or the 400 (413) that says why not. ``size``: the bytes
    received, when more came than ``body`` holds (a chunked body past the limit)."""
    if (len(body) if size is None else size) > cfg.max_body_bytes:
        raise too_large(cfg)
    try:
        return loads_json(body)
    except ValueError as exc:
        if not body.strip():
            raise APIError(400, "body is empty: send a JSON document") from None
        raise APIError(400, f"body is not valid JSON: {exc}") from None


Plan = tuple  # (calls, finish): the shard requests of a request, and ``finish(replies) -> Reply``


class Endpoint:
    """One endpoint's logic, ``plan(ctx, body, size, headers) -> (calls, finish)``: the body checked and
    turned into shard requests (``fanout.Calls``), and ``finish``, which renders the replies
    (one per call, in order) as a Reply. Either raises an ``APIError`` to refuse. ``route`` (its
    route template) labels its requests in ``/metrics``, ``handler_name`` its log lines;
    ``error_reply`` renders what it raises."""

    __slots__ = ("handler_name", "route", "mutates", "plan", "error_reply")

    def __init__(self, handler_name: str, route: str, mutates: bool, plan: Callable[..., Plan],
                 render_error: Callable[[APIError], Reply] = error_reply) -> None:
        self.handler_name = handler_name
        self.route = route
        self.mutates = mutates
        self.plan = plan
        self.error_reply = render_error

    async def run(self, ctx, body: bytes, size: int | None = None, headers=None) -> Reply:
        """Serve a request that a handler has admitted: the Reply, or the ``APIError`` raised."""
        calls, finish = self.plan(ctx, body, size, headers)
        return finish(await fanout.replies(ctx, calls) if calls else [])

    def start(self, ctx, headers, body: bytes, done: Callable[[Reply], None], started: float | None = None) -> None:
        """Admit and serve a request without a handler, a future or a task: ``done(reply)`` is
        called once, from the last shard reply's callback. The request is counted in
        ``ctx.metrics`` from ``started`` (``time.perf_counter()`` of its arrival; now when not
        given) before ``done`` writes it. (Through a handler, :meth:`run` is awaited instead and
        the application counts the request.)"""
        done = partial(counted, ctx.metrics, self.route, "POST", started or time.perf_counter(), done)
        try:
            admit(ctx.cfg, self.mutates, headers)
        except APIError as exc:
            done(error_reply(exc))
            return
        try:
            calls, finish = self.plan(ctx, body, None, headers)
        except Exception as exc:
            done(self._refusal(exc))
            return
        if calls:
            fanout.gather(ctx, calls, partial(self._finish, finish, done))
        else:
            self._finish(finish, done, [])

    def _finish(self, finish: Callable[[list], Reply], done: Callable[[Reply], None], replies: list) -> None:
        try:
            reply = finish(replies)
        except Exception as exc:
            reply = self._refusal(exc)
        done(reply)

    def _refusal(self, exc: Exception) -> Reply:
        """What answers ``exc`` (raised in ``plan`` or ``finish``), as BaseHandler's log_exception
        and write_error: an APIError's reply, else a logged 500. Called in its ``except``."""
        if isinstance(exc, APIError):
            if exc.status_code >= 500:
                log.warning("%s: %d %s", self.handler_name, exc.status_code, exc.detail)
            return self.error_reply(exc)
        log.exception("%s failed", self.handler_name)
        return INTERNAL


def write(ctx, body: bytes, size: int | None = None, headers=None) -> Plan:
    """``POST /features``: one write or an array of them -> ``{message, written, stale}``."""
    ids = [] if ctx.limits.aggregations else None  # event ids matter to aggregations only
    try:
        writes = parse_body(parse_json(body, ctx.cfg, size), ctx.limits, timefmt.now_us(), ids)
    except EventError as exc:
        raise APIError(exc.status, exc.detail) from None
    if ids is not None and all(i is None for i in ids):
        ids = None
    calls = fanout.write_calls(ctx, writes, ids)
    return calls, partial(_written, ctx, calls)


def _written(ctx, calls: fanout.Calls, replies: list) -> Reply:
    written, stale, applied = fanout.write_totals(ctx, calls, replies)
    headers = {READ_AFTER: render_positions(applied)} if applied else {}
    return 200, headers, b'{"message":"feature saved","written":%d,"stale":%d}' % (written, stale)


def batch(ctx, body: bytes, size: int | None = None, headers=None) -> Plan:
    """``POST /features/batch``: ``{entity_ids, features?}`` -> ``{results}`` in request order;
    in cluster mode, with ``X-Read-After``, from replicas that applied those positions."""
    after = read_positions(ctx.cfg, headers)
    body = parse_json(body, ctx.cfg, size)
    cfg, limits = ctx.cfg, ctx.limits
    if type(body) is not dict:
        raise APIError(400, "body must be a JSON object with entity_ids")
    eids = body.get("entity_ids")
    if type(eids) is not list or not eids:
        raise APIError(400, "entity_ids must be a non-empty array of strings")
    if len(eids) > cfg.max_batch_entities:
        raise APIError(413, f"entity_ids has {len(eids)} items; the limit is "
                            f"{cfg.max_batch_entities} (FS_MAX_BATCH_ENTITIES)")
    names = body.get("features")
    try:
        if len(body) > 1 and not body.keys() <= _BATCH_FIELDS:
            raise EventError(f"{sorted(body.keys() - _BATCH_FIELDS)[0]} is not a field of a batch read")
        check_entity_ids(eids, limits)
        if names is not None:
            if type(names) is not list or not names:
                raise EventError("features must be a non-empty array of names")
            for i, name in enumerate(names):
                check_name(name, limits, f"features[{i}]")
    except EventError as exc:
        raise APIError(exc.status, exc.detail) from None
    calls, groups = fanout.parts_calls(ctx, eids, names, after)
    return calls, partial(_results, ctx, len(eids), calls, groups)


_BATCH_FIELDS = frozenset(("entity_ids", "features"))


def _results(ctx, n: int, calls: fanout.Calls, groups: fanout.Groups, replies: list) -> Reply:
    parts = fanout.parts_of(ctx, n, calls, groups, replies)
    parts[0] = b'{"results":[' + parts[0]  # (one copy of the whole body, not three)
    parts[-1] += b"]}"
    body = b",".join(parts)  # (measured once joined: a pass over the parts to add up their sizes cost as much)
    size = len(body) + 3  # (as the parts' sizes, a comma each and 16 bytes were counted)
    limit = ctx.cfg.max_response_bytes
    if size > limit:
        raise APIError(413, f"the response would be {size} bytes; the limit is {limit} (FS_MAX_RESPONSE_BYTES)")
    return 200, {}, body


WRITE = Endpoint("FeaturesHandler", "/features", True, write)
BATCH = Endpoint("BatchHandler", "/features/batch", False, batch)
