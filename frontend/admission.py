"""Requests refused before they are routed: an over-long request line (414), an over-large header
block (431), and more requests in progress than ``FS_HTTP_MAX_CONCURRENT_REQUESTS`` (503).

Tornado closes a connection whose head exceeds its ``max_header_size`` without an answer, so the
server is given a hard limit above these (:data:`HARD_HEAD_FACTOR`) and they are answered here.
"""
from __future__ import annotations

from tornado import httputil

from frontend.errors import APIError, Reply, error_reply

HARD_HEAD_FACTOR = 2  # Tornado reads a request's head up to this many times the limits, to answer


def hard_head_bytes(cfg) -> int:
    """The head size past which Tornado drops the connection instead of answering."""
    return HARD_HEAD_FACTOR * (cfg.http_max_header_bytes + cfg.http_max_request_line_bytes)


def refusal(ctx, request: httputil.HTTPServerRequest) -> Reply | None:
    """The reply that refuses ``request`` before any endpoint sees it, or None."""
    cfg = ctx.cfg
    line = len(request.method) + len(request.uri) + len(request.version) + 2
    if line > cfg.http_max_request_line_bytes:
        return _closing(APIError(414, f"the request line is {line} bytes; the limit is "
                                      f"{cfg.http_max_request_line_bytes} (FS_HTTP_MAX_REQUEST_LINE_BYTES)"))
    head = sum(len(k) + len(v) + 4 for k, v in request.headers.get_all())
    if head > cfg.http_max_header_bytes:
        return _closing(APIError(431, f"the headers are {head} bytes; the limit is "
                                      f"{cfg.http_max_header_bytes} (FS_HTTP_MAX_HEADER_BYTES)"))
    if len(ctx.active) >= cfg.http_max_concurrent_requests:
        return error_reply(APIError(503, "too many requests in progress in this process "
                                         "(FS_HTTP_MAX_CONCURRENT_REQUESTS)",
                                    {"Retry-After": str(cfg.retry_after_s)}))
    return None


def _closing(exc: APIError) -> Reply:
    status, headers, body = error_reply(exc)
    return status, {**headers, "Connection": "close"}, body
