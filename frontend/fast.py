"""The hot path: ``GET /features/{entity_id}`` and ``GET /features/{entity_id}/{name}``.

A Tornado ``RequestHandler`` costs about as much CPU per request as everything else in a
single-entity read put together (its construction, ``prepare``, the handler's task, ETag,
headers, ``flush``). These two reads are the store's most frequent requests, so :class:`Router`
serves them with a small ``HTTPMessageDelegate`` on Tornado's own HTTP/1.1 connection: it sends
the shard request when the request has arrived and writes the response straight from the shard
client's reply callback. ``bench/bench_http.py`` measures the difference.

The responses are byte-for-byte those of ``native.EntityHandler`` and ``native.FeatureHandler``
(status, JSON body, ``Server``/``Date``/``Content-Type``/``Content-Length``/``Etag`` headers,
``Retry-After`` on a 503, the request counters of ``/metrics``, the access log). Every request
these delegates do not handle exactly that way goes to the Tornado application instead: other
methods and paths, a query string, ``If-None-Match``, a configured read token, a path segment
that is not UTF-8, and ``/features/batch``.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from urllib.parse import unquote_to_bytes

import orjson
import tornado
import tornado.routing
import tornado.web
from tornado import httputil

from common import protocol as P
from frontend.base import Context, shard_failure
from frontend.shard_client import ShardError, ShardUnavailable

log = logging.getLogger("frontend")

_ENTITY = re.compile(r"/features/([^/]+)\Z")  # as app.ENTITY in the application's routes
_FEATURE = re.compile(r"/features/([^/]+)/([^/]+)\Z")
_SERVER = "TornadoServer/%s" % tornado.version
_date = [0, ""]  # the Date header, rendered once a second


def _http_date() -> str:
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, httputil.format_timestamp(now)
    return _date[1]


class Router(tornado.routing.Router):
    """Route the two single-entity reads to :class:`_Read`, everything else to ``app``."""

    def __init__(self, app: tornado.web.Application, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs):
        if (request.method == "GET" and not request.query and self.ctx.cfg.read_token is None
                and "If-None-Match" not in request.headers):
            read = self._read(request)
            if read is not None:
                return read
        return self.app.find_handler(request, **kwargs)

    def _read(self, request: httputil.HTTPServerRequest) -> "_Read | None":
        path = request.path
        m = _FEATURE.match(path)
        try:
            if m is not None:
                eid, name = (unquote_to_bytes(g).decode("utf-8") for g in m.groups())
                return _Read(self.ctx, request, "/features/{entity_id}/{name}", eid, P.get1(eid, name))
            m = _ENTITY.match(path)
            if m is not None and m.group(1) != "batch":
                eid = unquote_to_bytes(m.group(1)).decode("utf-8")
                return _Read(self.ctx, request, "/features/{entity_id}", eid, P.get(eid))
        except UnicodeDecodeError:
            pass  # the application answers 400 in its own words
        return None


class _Read(httputil.HTTPMessageDelegate):
    """One read: send the shard request once the request is in, answer from the reply."""

    def __init__(self, ctx: Context, request, route: str, eid: str, message: dict) -> None:
        self.ctx = ctx
        self.request = request
        self.route = route  # the route template of the handler this stands for, for the metrics
        self.eid = eid
        self.message = message

    def finish(self) -> None:
        shard = self.ctx.partitioner.shard_for(self.eid)
        self.ctx.client.send(shard, self.message, lambda reply: self._answer(shard, reply))

    def _answer(self, shard: int, reply) -> None:
        try:
            if type(reply) is dict and P.is_ok(reply):
                body = reply[P.BODY]
                self._respond(200, body, {"Etag": '"%s"' % hashlib.sha1(body).hexdigest()})
                return
            exc = reply if isinstance(reply, ShardUnavailable) else ShardError(shard, reply)
            err = shard_failure(exc, self.ctx.cfg)
            self._respond(err.status_code, orjson.dumps({"detail": err.detail}), err.headers)
        except Exception:
            log.exception("%s %s failed", self.request.method, self.request.uri)
            self._respond(500, b'{"detail":"Internal server error"}', None)

    def _respond(self, status: int, body: bytes, extra: dict | None) -> None:
        headers = httputil.HTTPHeaders({"Server": _SERVER, "Content-Type": "application/json",
                                        "Date": _http_date()})
        if extra:
            headers.update(extra)
        headers["Content-Length"] = str(len(body))
        seconds = self.request.request_time()
        self.ctx.metrics.request(self.route, "GET", status, seconds)  # counted before the client sees it
        conn = self.request.connection
        conn.write_headers(httputil.ResponseStartLine("", status, httputil.responses[status]),
                           headers, body)
        conn.finish()
        if status >= 500 or self.ctx.cfg.access_log:
            log.info("%d GET %s (%s) %.2fms", status, self.request.uri, self.request.remote_ip,
                     1000 * seconds)
