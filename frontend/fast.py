"""The hot path: ``GET /features/{entity_id}`` and ``GET /features/{entity_id}/{name}``.

A Tornado ``RequestHandler`` costs about as much CPU per request as everything else in a
single-entity read put together (its construction, ``prepare``, the handler's task, headers,
``flush``). These two reads are the store's most frequent requests, so :class:`Router` serves
them with a small ``HTTPMessageDelegate`` on Tornado's own HTTP/1.1 connection: once the request
has arrived it runs the read of ``frontend/reads.py`` (the same one the Tornado handlers run:
admission, checks, shard request, rendering) and writes the :class:`~frontend.errors.Reply` it
renders straight from the shard client's reply callback. ``bench/bench_http.py`` measures it.

What this module adds is only the connection layer Tornado would have added: the ``Server``,
``Date`` and ``Content-Length`` headers, the request counters of ``/metrics`` and the access log,
so responses are byte-for-byte those of the handlers (tests/test_http_fastpath.py compares them).
Requests served another way go to the application: other methods and paths, a query string,
``If-None-Match`` (Tornado answers 304), a path segment that is not UTF-8, ``/features/batch``.
"""
from __future__ import annotations

import re
import time
from urllib.parse import unquote_to_bytes

import tornado
import tornado.routing
import tornado.web
from tornado import httputil

from frontend import admission, reads
from frontend.base import Context
from frontend.errors import Reply
from frontend.metrics import REFUSED, counted, method_label
from frontend.ops import log_request

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
        self.gate = admission.Gate(ctx)

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs):
        refusal = self.gate.admit_request(request)  # entered in ctx.active until it is answered,
        if refusal is not None:  # or its connection closes
            return _Answer(self.ctx, request, refusal)
        if request.method == "GET" and not request.query and "If-None-Match" not in request.headers:
            read = self._read(request)
            if read is not None:
                return read
        return _Admitted(self.app.find_handler(request, **kwargs), self.ctx.active, request)

    def _read(self, request: httputil.HTTPServerRequest) -> "_Read | None":
        path = request.path
        try:
            m = _FEATURE.match(path)
            if m is not None:
                eid, name = m.groups()
                return _Read(self.ctx, request, reads.FEATURE, (_text(eid), _text(name)))
            m = _ENTITY.match(path)
            if m is not None and m.group(1) != "batch":
                return _Read(self.ctx, request, reads.ENTITY, (_text(m.group(1)),))
        except UnicodeDecodeError:
            pass  # the application answers 400 in its own words
        return None


def _text(segment: str) -> str:
    """A percent-decoded path segment, as Tornado decodes its route arguments."""
    return unquote_to_bytes(segment).decode("utf-8") if "%" in segment else segment


class _Admitted(httputil.HTTPMessageDelegate):
    """The application's delegate for a request, which is no longer in flight if its connection
    closes before the handler answers (a client that sends headers and leaves)."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, active: admission.InFlight, request) -> None:
        self.inner = inner
        self.active = active
        self.request = request

    def headers_received(self, start_line, headers):
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.active.leave(self.request)
        self.inner.on_connection_close()


class _Answer(httputil.HTTPMessageDelegate):
    """A request refused before it is routed (:mod:`frontend.admission`): its reply, written once
    the request is in, and counted under the route ``refused``. Not counted as in flight."""

    logs_5xx = False

    def __init__(self, ctx: Context, request, reply: Reply) -> None:
        self.ctx = ctx
        self.request = request
        self.reply = reply
        self.started = time.perf_counter()

    def finish(self) -> None:
        counted(self.ctx.metrics, REFUSED, method_label(self.request.method), self.started, self._respond,
                self.reply)

    def _respond(self, reply: Reply) -> None:
        status, extra, body = reply
        headers = httputil.HTTPHeaders({"Server": _SERVER, "Content-Type": "application/json",
                                        "Date": _http_date()})
        if extra:
            headers.update(extra)
        headers["Content-Length"] = str(len(body))
        conn = self.request.connection
        conn.write_headers(httputil.ResponseStartLine("", status, httputil.responses[status]),
                           headers, body)
        conn.finish()
        self.ctx.active.leave(self.request)
        if self.logs_5xx or self.ctx.cfg.access_log:  # refusals: admission.InFlight.busy logs them
            log_request(self.ctx, self.request.method, self.request.uri[:1000], self.request.remote_ip, status,
                        self.request.request_time())


class _Read(_Answer):
    """One read on its connection: run it once the request is in, write what it renders (the
    read counts itself in the metrics)."""

    logs_5xx = True

    def __init__(self, ctx: Context, request, read: reads.Read, args: tuple) -> None:
        self.ctx = ctx
        self.request = request
        self.read = read
        self.args = args
        self.started = time.perf_counter()  # the headers are in: the request has arrived

    def finish(self) -> None:
        self.read.start(self.ctx, self.args, self.request.headers, self._respond, self.started)

    def on_connection_close(self) -> None:
        self.ctx.active.leave(self.request)
