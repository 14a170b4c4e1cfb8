"""The client's exceptions: one per kind of answer, each carrying ``status`` and ``detail``."""
from __future__ import annotations

import json
from typing import Any


class FeatureStoreError(Exception):
    """The store answered with an error (``status``, ``detail``) or could not be reached."""

    status: int | None = None

    def __init__(self, detail: str, status: int | None = None, body: Any = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {detail}" if status else detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.body = body  # the parsed JSON body, as the store sent it
        self.retry_after_s = retry_after_s


class BadRequest(FeatureStoreError):
    """400 (and 422 from the Feast endpoints): the detail names the field."""


class Unauthorized(FeatureStoreError):
    """401: a bearer token is required."""


class Forbidden(FeatureStoreError):
    """403: the token may not do this, or the store is read-only."""


class NotFound(FeatureStoreError):
    """404: no such entity, feature, endpoint, feature view or feature service."""


class PayloadTooLarge(FeatureStoreError):
    """413: a body, batch or response over its limit."""


class Unavailable(FeatureStoreError):
    """503: a shard did not answer in time (the client retried up to its bound)."""


class DiskFull(FeatureStoreError):
    """507: a shard cannot write its log."""


class ServerError(FeatureStoreError):
    """500 or any other status the store should not answer."""


class Unreachable(FeatureStoreError):
    """No HTTP answer at all: connection refused, reset or timed out."""


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: PayloadTooLarge,
              422: BadRequest, 503: Unavailable, 507: DiskFull}


def error_for(status: int, raw: bytes, retry_after_s: float | None = None) -> FeatureStoreError:
    """The exception for an error response: its ``detail`` in plain words, whatever the form."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    cls = _BY_STATUS.get(status, ServerError)
    return cls(_detail(body) or f"HTTP {status}", status, body, retry_after_s)


def _detail(body: Any) -> str:
    """``{"detail": str}``; FastAPI's ``{"detail": [{"loc", "msg"}]}``; Feast's JSON string."""
    if isinstance(body, str):
        try:
            feast = json.loads(body)
        except ValueError:
            return body.strip()
        if isinstance(feast, dict) and "message" in feast:
            return f"{feast.get('class', 'FeastError')}: {feast['message']}"
        return body
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):
            return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                             if isinstance(d, dict) else str(d) for d in detail)
        if detail is not None:
            return str(detail)
    return ""
