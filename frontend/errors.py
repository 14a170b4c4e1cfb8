"""HTTP errors and replies: what a client sees when a request or a shard says no."""
from __future__ import annotations

import logging
import orjson
import tornado.web

from common import protocol as P
from common.config import Config
from frontend.shard_client import ShardError, ShardUnavailable

log = logging.getLogger("frontend")


class APIError(tornado.web.HTTPError):
    """An error the client should see: ``status`` with ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str, headers: dict | None = None) -> None:
        super().__init__(status, detail.replace("%", "%%"))
        self.detail = detail
        self.headers = headers or {}


Reply = tuple[int, dict, bytes]  # (status, headers, body): a response as the endpoint logic renders
# it, for any connection layer to write. A plain tuple: a NamedTuple costs a microsecond per read.

INTERNAL: Reply = (500, {}, b'{"detail":"Internal server error"}')

_SHARD_STATUS = {P.NOT_FOUND: 404, P.DISK_FULL: 507, P.UNAVAILABLE: 503, P.TOO_LARGE: 413,
                 P.NOT_OWNER: 503,  # another slot table, or a partition moving: names the mismatch
                 P.NOT_APPLIED: 202}  # cluster mode: durable in Kafka, not applied in time


def error_reply(exc: APIError) -> Reply:
    """The response of an :class:`APIError` (as ``BaseHandler.write_error`` writes it)."""
    return exc.status_code, exc.headers, orjson.dumps({"detail": exc.detail})


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


def reply_failure(shard: int, reply, cfg: Config) -> APIError | None:
    """None for an ok reply; else the HTTP error of ``reply`` (an error map or an exception)."""
    if type(reply) is dict and P.is_ok(reply):
        return None
    return shard_failure(reply if isinstance(reply, ShardUnavailable) else ShardError(shard, reply), cfg)
