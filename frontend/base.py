"""The base handler: admission, JSON errors, body parsing, and serving a read of ``frontend/reads.py``."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.web

from common.config import Config
from common.events import Limits
from common.partition import Partitioner
from frontend.access import admit
from frontend.admission import InFlight
from frontend.endpoints import Endpoint, parse_json
from frontend.errors import INTERNAL, APIError, Reply, error_reply
from frontend.reads import Read
from frontend.shard_client import ShardClient

log = logging.getLogger("frontend")

HARD_BODY_FACTOR = 4  # Tornado reads bodies up to this many times FS_MAX_BODY_BYTES, to answer 413


@dataclass(frozen=True)
class Context:
    """What every handler needs, built once per process and passed through ``initialize``."""

    cfg: Config
    client: ShardClient
    partitioner: Partitioner
    limits: Limits
    metrics: Any = None  # frontend.metrics.Metrics: request and shard round-trip histograms
    active: InFlight = field(default_factory=InFlight)  # requests admitted, not answered (FS_HTTP_MAX_CONCURRENT_REQUESTS)


class BaseHandler(tornado.web.RequestHandler):
    """Shared hooks. Subclasses list in ``read_methods`` the methods that do not mutate."""

    read_methods = frozenset(("GET", "HEAD", "OPTIONS"))
    open_access = False  # probes set this: they carry no token
    counted = False  # True once a read of frontend/reads.py counted this request in the metrics

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def prepare(self) -> None:
        mutates = self.request.method not in self.read_methods
        admit(self.ctx.cfg, mutates, self.request.headers, self.open_access)

    def head(self, *args: str) -> Any:
        """``HEAD`` wherever ``GET`` works: the GET's status and headers, no body (Tornado drops it)."""
        if type(self).get is tornado.web.RequestHandler.get:
            raise tornado.web.HTTPError(405)
        return self.get(*args)

    def allowed_methods(self) -> list[str]:
        """The methods this endpoint serves: what a 405's ``Allow`` lists."""
        base = tornado.web.RequestHandler
        served = [m for m in self.SUPPORTED_METHODS
                  if getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)]
        return [m for m in served if m != "HEAD" or "GET" in served]

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return  # a client's mistake is answered, not logged
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            _, headers, body = error_reply(exc)
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            _, headers, body = error_reply(APIError(status_code, exc.log_message or self._reason))
        else:
            _, headers, body = INTERNAL
        for name, value in headers.items():
            self.set_header(name, value)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    # ---- helpers for subclasses
    def answer(self, read: Read, *args: str) -> asyncio.Future:
        """Serve ``read`` (see ``frontend/reads.py``) and write what it renders. The response is
        written from the shard socket's reader, without waking a coroutine; Tornado awaits the
        future returned."""
        done = asyncio.get_running_loop().create_future()

        def write(reply: Reply) -> None:
            if done.done():  # Tornado stopped waiting: the handler's task was cancelled
                return
            try:
                self.write_reply(reply)
                done.set_result(None)
            except Exception as exc:  # becomes a 500 through Tornado's one error path
                done.set_exception(exc)

        self.counted = True  # by the read (a 304 counts as the 200 it renders); not again on finish
        read.start(self.ctx, args, self.request.headers, write, time.perf_counter(), admitted=True)
        return done

    def write_reply(self, reply: Reply) -> None:
        """Finish with what an endpoint rendered (a 304 for a GET whose ETag matches)."""
        status, headers, body = reply
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        if status == 200 and self.check_etag_header():
            self.set_status(304)  # If-None-Match: as Tornado answers its own ETags
            self.finish()
        else:
            self.finish(body)


class NotFoundHandler(BaseHandler):
    """Any path the store does not serve."""

    def prepare(self) -> None:
        raise APIError(404, f"no such endpoint: {self.request.method} {self.request.path}")


@tornado.web.stream_request_body
class BodyHandler(BaseHandler):
    """A handler that takes a body: an over-size body gets a 413, before it is read when it
    says its length, else once it is in (past ``HARD_BODY_FACTOR`` times the limit, Tornado
    closes the connection)."""

    def prepare(self) -> None:
        self.request.connection.set_max_body_size(HARD_BODY_FACTOR * self.ctx.cfg.max_body_bytes)
        self._chunks: list[bytes] = []
        self._size = 0
        super().prepare()

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.ctx.cfg.max_body_bytes:
            self._chunks.append(chunk)  # past the limit (a chunked body) the rest is only counted

    def body(self) -> bytes:
        """The request body as received (up to the limit)."""
        return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)

    def json_body(self) -> Any:
        """The request body parsed as JSON, or a 400 (413) that says why not."""
        return parse_json(self.body(), self.ctx.cfg, self._size)

    async def serve(self, endpoint: Endpoint) -> None:
        """Serve ``endpoint`` (``frontend/endpoints.py``) with this request's body."""
        self.write_reply(await endpoint.run(self.ctx, self.body(), self._size, self.request.headers))
