"""The fast engine's hot paths: the store's most frequent requests served without a RequestHandler.

:class:`Hot` is the ``hot`` router of :class:`frontend.engine.HTTPServer`: when a request's
headers are in, it claims ``GET /features/{entity_id}``, ``GET /features/{entity_id}/{name}``,
``POST /features``, ``POST /features/batch`` and ``POST /get-online-features``. Each runs the
same single implementation of its endpoint that the Tornado handler runs (``frontend/reads.py``
for the single-entity reads, an :class:`frontend.endpoints.Endpoint` for the POSTs: admission,
checks, shard requests, rendering) and writes the :class:`~frontend.errors.Reply` it renders with
:meth:`Exchange.respond`, adding what Tornado would have added (``Server``, ``Date``,
``Content-Type``, ``Content-Length``) and the access log; the endpoint implementation counts the
request for ``/metrics``.
tests/test_http_engine.py sends the same requests to both engines and compares the responses.

:meth:`Hot.admit` is the engine's ``admit`` hook (``frontend/admission.py``, as ``fast.Router``
on Tornado's engine): when a request's turn comes it refuses it with 414, 431 or 503 (counted
under the route ``refused``), or enters it in ``ctx.active`` (the engine takes it out).

Everything else goes to the Tornado application: other methods and paths, a query string,
``If-None-Match`` (Tornado answers 304), ``Expect: 100-continue``, a chunked body (the handler
reads up to 4x the limit before its 413, as with Tornado's engine), a path segment that is not
UTF-8 and an HTTP/1.1 request without ``Host`` (the application answers 400 in its own words),
``GET /features/batch``.
"""
from __future__ import annotations

import re
import time
from functools import partial
from urllib.parse import unquote_to_bytes

from frontend import admission, endpoints, reads
from frontend.errors import Reply
from frontend.feast.catalog import Catalog
from frontend.feast.handlers import online_features_endpoint
from frontend.metrics import REFUSED, counted, method_label
from frontend.ops import log_request, logged

# /features/{entity_id} (as app.ENTITY in the application's routes) or /features/{entity_id}/{name}
_READ = re.compile(rb"/features/([^/?]+)(?:/([^/?]+))?\Z")


_KEYS: dict[str, bytes] = {}  # a header name as the endpoint logic spells it -> its lower-case bytes


def _key(name: str) -> bytes:
    key = name.lower().encode("latin1")
    if len(_KEYS) < 256:
        _KEYS[name] = key
    return key


class Headers:
    """The request headers of an exchange as the endpoint logic reads them (``in``, ``[]``,
    ``get``), looked up in the raw list: no ``HTTPHeaders`` is built for a hot request."""

    __slots__ = ("exchange",)

    def __init__(self, exchange) -> None:
        self.exchange = exchange

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.exchange.fields.get(_KEYS.get(name) or _key(name))  # (what exchange.header reads)
        return default if value is None else value.decode("latin1")

    def __contains__(self, name: str) -> bool:
        return (_KEYS.get(name) or _key(name)) in self.exchange.fields

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value


class Hot:
    """Claim the hot requests of the fast engine (see the module docstring)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.gate = admission.Gate(ctx)
        self.posts = {b"/features": endpoints.WRITE, b"/features/batch": endpoints.BATCH,
                      b"/get-online-features": online_features_endpoint(Catalog.from_config(ctx.cfg))}

    def admit(self, ex):
        """None, with ``ex`` entered in ``ctx.active``; or what answers its refusal."""
        fields = ex.fields_bytes
        refused = self.gate.admit(ex, admission.line_bytes(ex.method, ex.url, ex.version),
                                  admission.header_bytes(ex.raw_headers) if fields is None else fields)
        return None if refused is None else partial(self._refused, refused)

    def __call__(self, ex):
        fields = ex.fields  # (what ex.header reads, without a call per header)
        if ex.version == "HTTP/1.1" and b"host" not in fields:
            return None  # Tornado's 400
        if ex.method == "GET":
            if b"if-none-match" in fields:
                return None
            m = _READ.match(ex.url)
            try:
                if m is not None:
                    eid, name = m.groups()
                    if name is not None:
                        return partial(self._read, reads.FEATURE, _segments(m.string, (eid, name)))
                    if eid != b"batch":
                        return partial(self._read, reads.ENTITY, _segments(m.string, (eid,)))
            except UnicodeDecodeError:
                pass
            return None
        if ex.method == "POST" and ex.content_length is not None and not ex.expect_continue:
            endpoint = self.posts.get(ex.url)
            if endpoint is not None:
                return partial(self._post, endpoint)
        return None

    def _read(self, read: reads.Read, args: tuple, ex) -> None:
        started = time.perf_counter()
        read.start(self.ctx, args, Headers(ex), partial(self._answer, ex, started), started)

    def _post(self, endpoint: endpoints.Endpoint, ex) -> None:
        started = time.perf_counter()
        endpoint.start(self.ctx, Headers(ex), ex.body(), partial(self._answer, ex, started), started)

    def _refused(self, reply: Reply, ex) -> None:
        started = time.perf_counter()
        status, headers, body = reply
        if "Connection" in headers:  # "close": the engine says so (and closes) for a non-keep-alive exchange
            ex.keep_alive = False
            headers = {k: v for k, v in headers.items() if k != "Connection"}
        counted(self.ctx.metrics, REFUSED, method_label(ex.method), started,
                partial(self._respond_refusal, ex, started), (status, headers, body))

    def _respond_refusal(self, ex, started: float, reply: Reply) -> None:
        ex.respond(*reply)
        if self.ctx.cfg.access_log:  # not every 503: admission.InFlight.busy logs how many
            log_request(self.ctx, ex.method, ex.url.decode("latin1")[:1000], ex.context.remote_ip, reply[0],
                        time.perf_counter() - started)

    def _answer(self, ex, started: float, reply: Reply) -> None:
        status, headers, body = reply
        ex.respond(status, headers, body)
        if logged(self.ctx.cfg, status):  # (before building log_request's arguments)
            log_request(self.ctx, ex.method, ex.url.decode("latin1"), ex.context.remote_ip, status,
                        time.perf_counter() - started)


def _segments(url: bytes, groups: tuple) -> tuple:
    """The path arguments of ``url``, percent-decoded (only when it has a ``%``), as UTF-8 strings."""
    return tuple(map(bytes.decode, map(unquote_to_bytes, groups) if b"%" in url else groups))
