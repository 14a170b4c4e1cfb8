"""The POST endpoints that take a JSON body and are on the hot paths, implemented once.

An :class:`Endpoint` turns the request body into a :class:`~frontend.errors.Reply`: it parses
and checks the body, calls the shards and renders the response, raising an ``APIError`` (or a
Feast error) to refuse. It needs no ``RequestHandler``: the Tornado handler awaits
``endpoint.run(ctx, body)`` and writes the reply (``BodyHandler.serve``), and the fast engine's
hot path (``frontend/hot.py``) calls :meth:`Endpoint.start`, which also admits the request as
the handler's ``prepare`` does.

- :data:`WRITE`: ``POST /features``
- :data:`BATCH`: ``POST /features/batch``
- ``frontend.feast.handlers.GET_ONLINE_FEATURES``: ``POST /get-online-features``
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Awaitable, Callable

import orjson

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
    if not body.strip():
        raise APIError(400, "body is empty: send a JSON document")
    try:
        return loads_json(body)
    except ValueError as exc:
        raise APIError(400, f"body is not valid JSON: {exc}") from None


class Endpoint:
    """One endpoint's logic: ``await run(ctx, body, size)`` -> Reply. ``route`` (its route
    template) labels its requests in ``/metrics``, ``handler_name`` its log lines; ``error_reply``
    renders what it raises."""

    __slots__ = ("handler_name", "route", "mutates", "run", "error_reply", "reads_headers")

    def __init__(self, handler_name: str, route: str, mutates: bool, run: Callable[..., Awaitable[Reply]],
                 render_error: Callable[[APIError], Reply] = error_reply, reads_headers: bool = False) -> None:
        self.handler_name = handler_name
        self.route = route
        self.mutates = mutates
        self.run = run
        self.error_reply = render_error
        self.reads_headers = reads_headers  # run(ctx, body, size, headers=...): X-Read-After

    def start(self, ctx, headers, body: bytes, done: Callable[[Reply], None], started: float | None = None) -> None:
        """Admit and serve a request without a handler; ``done(reply)`` is called once. The
        request is counted in ``ctx.metrics`` from ``started`` (``time.perf_counter()`` of its
        arrival; now when not given) before ``done`` writes it. (Through a handler, ``run`` is
        called instead and the application counts the request.)"""
        done = partial(counted, ctx.metrics, self.route, "POST", started or time.perf_counter(), done)
        try:
            admit(ctx.cfg, self.mutates, headers)
        except APIError as exc:
            done(error_reply(exc))
            return
        run = self.run(ctx, body, headers=headers) if self.reads_headers else self.run(ctx, body)
        asyncio.ensure_future(run).add_done_callback(partial(self._finished, done))

    def _finished(self, done: Callable[[Reply], None], task: asyncio.Task) -> None:
        try:
            reply = task.result()
        except APIError as exc:  # as BaseHandler's log_exception and write_error
            if exc.status_code >= 500:
                log.warning("%s: %d %s", self.handler_name, exc.status_code, exc.detail)
            reply = self.error_reply(exc)
        except Exception:
            log.exception("%s failed", self.handler_name)
            reply = INTERNAL
        done(reply)


async def write(ctx, body: bytes, size: int | None = None) -> Reply:
    """``POST /features``: one write or an array of them -> ``{message, written, stale}``."""
    ids = [] if ctx.limits.aggregations else None  # event ids matter to aggregations only
    try:
        writes = parse_body(parse_json(body, ctx.cfg, size), ctx.limits, timefmt.now_us(), ids)
    except EventError as exc:
        raise APIError(exc.status, exc.detail) from None
    if ids is not None and all(i is None for i in ids):
        ids = None
    written, stale, applied = await fanout.write_all(ctx, writes, ids)
    headers = {READ_AFTER: render_positions(applied)} if applied else {}
    return 200, headers, orjson.dumps({"message": "feature saved", "written": written, "stale": stale})


async def batch(ctx, body: bytes, size: int | None = None, headers=None) -> Reply:
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
    extra = body.keys() - {"entity_ids", "features"}
    try:
        if extra:
            raise EventError(f"{sorted(extra)[0]} is not a field of a batch read")
        check_entity_ids(eids, limits)
        if names is not None:
            if type(names) is not list or not names:
                raise EventError("features must be a non-empty array of names")
            for i, name in enumerate(names):
                check_name(name, limits, f"features[{i}]")
    except EventError as exc:
        raise APIError(exc.status, exc.detail) from None
    parts = await fanout.read_parts(ctx, eids, names, after)
    size = sum(map(len, parts)) + len(parts) + 16
    if size > cfg.max_response_bytes:
        raise APIError(413, f"the response would be {size} bytes; the limit is "
                            f"{cfg.max_response_bytes} (FS_MAX_RESPONSE_BYTES)")
    return 200, {}, b'{"results":[' + b",".join(parts) + b"]}"


WRITE = Endpoint("FeaturesHandler", "/features", True, write)
BATCH = Endpoint("BatchHandler", "/features/batch", False, batch, reads_headers=True)
