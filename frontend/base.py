"""The base handler: JSON errors, auth, body parsing, and shard calls mapped to HTTP."""
from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import tornado.web

from common import protocol as P
from common.config import Config
from common.events import Limits, loads_json
from common.partition import Partitioner
from frontend.shard_client import ShardClient, ShardError, ShardUnavailable

log = logging.getLogger("frontend")

HARD_BODY_FACTOR = 4  # Tornado reads bodies up to this many times FS_MAX_BODY_BYTES, to answer 413


class APIError(tornado.web.HTTPError):
    """An error the client should see: ``status`` with ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str, headers: dict | None = None) -> None:
        super().__init__(status, detail.replace("%", "%%"))
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class Context:
    """What every handler needs, built once per process and passed through ``initialize``."""

    cfg: Config
    client: ShardClient
    partitioner: Partitioner
    limits: Limits
    metrics: Any = None  # frontend.metrics.Metrics: request and shard round-trip histograms


_SHARD_STATUS = {P.NOT_FOUND: 404, P.DISK_FULL: 507, P.UNAVAILABLE: 503}


def shard_failure(exc: ShardUnavailable | ShardError, cfg: Config) -> APIError:
    """The HTTP error for a shard that did not answer, or answered with an error reply."""
    retry = {"Retry-After": str(cfg.retry_after_s)}
    if isinstance(exc, ShardUnavailable):
        return APIError(503, str(exc), retry)
    status = _SHARD_STATUS.get(exc.code)
    if status is None:
        log.error("%s", exc)
        return APIError(500, "Internal server error")
    return APIError(status, exc.reason or "shard error", retry if status == 503 else None)


class BaseHandler(tornado.web.RequestHandler):
    """Shared hooks. Subclasses list in ``read_methods`` the methods that do not mutate."""

    read_methods = frozenset(("GET", "HEAD", "OPTIONS"))
    open_access = False  # probes set this: they carry no token

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def prepare(self) -> None:
        cfg = self.ctx.cfg
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            raise _too_large(cfg)  # a streamed body has not been read yet
        mutates = self.request.method not in self.read_methods
        if mutates and cfg.read_only:
            raise APIError(403, "the store is read-only (FS_READ_ONLY): writes come from ingest")
        if self.open_access or (cfg.read_token is None and cfg.write_token is None):
            return
        accepted = [cfg.write_token] if mutates else [cfg.read_token, cfg.write_token]
        accepted = [t for t in accepted if t is not None]
        if not accepted or (not mutates and cfg.read_token is None):
            return  # this kind of request is open
        auth = self.request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise APIError(401, "a bearer token is required (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": "Bearer"})
        token = auth[7:].strip().encode()
        if not any(hmac.compare_digest(token, t.encode()) for t in accepted):
            raise APIError(403, "this token may not " + ("write" if mutates else "read"))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return  # a client's mistake is answered, not logged
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            detail = exc.detail
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            detail = exc.log_message or self._reason
        else:
            detail = "Internal server error"
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"detail": detail}))

    # ---- helpers for subclasses
    def failure(self, exc: ShardUnavailable | ShardError) -> APIError:
        """The HTTP error for a shard failure (see :func:`shard_failure`)."""
        return shard_failure(exc, self.ctx.cfg)

    def reply_with_body(self, eid: str, request: dict) -> asyncio.Future:
        """Send a read of ``eid`` to its shard and finish with the reply's JSON ``body``.

        The response is written from the socket's reader as soon as the reply arrives, without
        waking a coroutine (the hot path of single-entity reads). Return the future Tornado
        awaits: it fails with the HTTP error when the shard does not answer or says no.
        """
        done = asyncio.get_running_loop().create_future()
        shard = self.ctx.partitioner.shard_for(eid)

        def on_reply(reply) -> None:
            if done.done():  # Tornado stopped waiting: the handler's task was cancelled
                return
            try:
                if type(reply) is dict and P.is_ok(reply):
                    self.finish(reply[P.BODY])
                    done.set_result(None)
                else:
                    failed = reply if isinstance(reply, ShardUnavailable) else ShardError(shard, reply)
                    done.set_exception(self.failure(failed))
            except Exception as exc:  # becomes a 500 through Tornado's one error path
                done.set_exception(exc)

        self.ctx.client.send(shard, request, on_reply)
        return done

    async def call(self, shard: int, request: dict) -> dict:
        """Call a shard; map its failures to HTTP errors."""
        return await self.ok_reply(shard, self.ctx.client.submit(shard, request))

    async def ok_reply(self, shard: int, fut: asyncio.Future) -> dict:
        """Await the reply of a submitted request; a failure raises its HTTP error."""
        try:
            reply = await fut
        except ShardUnavailable as exc:
            raise self.failure(exc) from None
        if not P.is_ok(reply):
            raise self.failure(ShardError(shard, reply))
        return reply


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

    def json_body(self) -> Any:
        """The request body parsed as JSON, or a 400 (413) that says why not."""
        if self._size > self.ctx.cfg.max_body_bytes:
            raise _too_large(self.ctx.cfg)
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        if not body.strip():
            raise APIError(400, "body is empty: send a JSON document")
        try:
            return loads_json(body)
        except ValueError as exc:
            raise APIError(400, f"body is not valid JSON: {exc}") from None


def _too_large(cfg: Config) -> APIError:
    return APIError(413, f"body is larger than {cfg.max_body_bytes} bytes (FS_MAX_BODY_BYTES)")
