"""Requests refused before they are routed: an over-long request line (414), an over-large header
block (431), and more requests in progress than ``FS_HTTP_MAX_CONCURRENT_REQUESTS`` (503).

Both engines ask a :class:`Gate`: Tornado's in ``frontend/fast.py``'s router
(:meth:`Gate.admit_request`), the fast one from its ``admit`` hook (``frontend/hot.py``) with the
sizes its parser counted. The requests in progress are one :class:`InFlight` count per process
(``Context.active``).

Tornado closes a connection whose head exceeds its ``max_header_size`` without an answer, so the
server is given a hard limit above these (:data:`HARD_HEAD_FACTOR`) and they are answered here.
"""
from __future__ import annotations

import logging
import time

from tornado import httputil

from frontend.errors import APIError, Reply, error_reply

log = logging.getLogger("frontend")

HARD_HEAD_FACTOR = 2  # a request's head is read up to this many times the limits, to answer
BUSY_LOG_EVERY_S = 10.0  # refusals for FS_HTTP_MAX_CONCURRENT_REQUESTS: one log line this often


class InFlight:
    """The requests admitted (:meth:`Gate.admit`) and not answered yet: a count, and a mark on each
    admitted request (``holder.in_flight``) so that it leaves once, however many ways its end is
    reported."""

    __slots__ = ("n", "refused", "_logged")

    def __init__(self) -> None:
        self.n = 0
        self.refused = 0  # refusals not logged yet
        self._logged = 0.0

    def leave(self, holder) -> None:
        if getattr(holder, "in_flight", False):
            holder.in_flight = False
            self.n -= 1

    def busy(self, limit: int) -> None:
        """Count a refusal; log how many there were at most every :data:`BUSY_LOG_EVERY_S` (an
        overloaded process must not also write a line per request it refuses)."""
        self.refused += 1
        now = time.monotonic()
        if now - self._logged >= BUSY_LOG_EVERY_S:
            log.warning("%d requests refused (503): %d in progress, the limit "
                        "(FS_HTTP_MAX_CONCURRENT_REQUESTS)", self.refused, limit)
            self.refused, self._logged = 0, now


def hard_head_bytes(cfg) -> int:
    """The head size past which the request is refused while it arrives (Tornado: dropped)."""
    return HARD_HEAD_FACTOR * (cfg.http_max_header_bytes + cfg.http_max_request_line_bytes)


def line_bytes(method: str, target, version: str) -> int:
    """The size of a request line as the limit counts it: method, target, version, two spaces."""
    return len(method) + len(target) + len(version) + 2


def header_bytes(pairs) -> int:
    """The size of a header block as the limit counts it: ``name: value`` and CRLF per header."""
    return sum(len(k) + len(v) + 4 for k, v in pairs)


class Gate:
    """Admission for one process: :meth:`admit` refuses a request, or enters it in
    ``ctx.active``. What passes costs three comparisons and a count (the hot paths' share)."""

    __slots__ = ("cfg", "active", "max_line", "max_headers", "max_active")

    def __init__(self, ctx) -> None:
        cfg = self.cfg = ctx.cfg
        self.active: InFlight = ctx.active
        self.max_line = cfg.http_max_request_line_bytes
        self.max_headers = cfg.http_max_header_bytes
        self.max_active = cfg.http_max_concurrent_requests

    def admit(self, holder, line: int, headers: int) -> Reply | None:
        """None, with ``holder`` (the request) entered in ``ctx.active``; or the reply that refuses
        a request of a ``line``-byte request line and ``headers`` bytes of headers."""
        active = self.active
        if line <= self.max_line and headers <= self.max_headers and active.n < self.max_active:
            holder.in_flight = True  # InFlight.leave takes it out once
            active.n += 1
            return None
        return self._refusal(line, headers)

    def admit_request(self, request: httputil.HTTPServerRequest) -> Reply | None:
        """:meth:`admit` for a request of Tornado's engine."""
        return self.admit(request, line_bytes(request.method, request.uri, request.version),
                          header_bytes(request.headers.get_all()))

    def _refusal(self, line: int, headers: int) -> Reply:
        cfg = self.cfg
        if line > self.max_line:
            return _closing(APIError(414, f"the request line is {line} bytes; the limit is "
                                          f"{self.max_line} (FS_HTTP_MAX_REQUEST_LINE_BYTES)"))
        if headers > self.max_headers:
            return _closing(APIError(431, f"the headers are {headers} bytes; the limit is "
                                          f"{self.max_headers} (FS_HTTP_MAX_HEADER_BYTES)"))
        self.active.busy(self.max_active)
        return error_reply(APIError(503, "too many requests in progress in this process "
                                         "(FS_HTTP_MAX_CONCURRENT_REQUESTS)",
                                    {"Retry-After": str(cfg.retry_after_s)}))


def _closing(exc: APIError) -> Reply:
    status, headers, body = error_reply(exc)
    return status, {**headers, "Connection": "close"}, body
