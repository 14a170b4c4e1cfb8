"""Who may do what: the checks every request passes before any endpoint logic runs."""
from __future__ import annotations

import hmac

from common.config import Config
from frontend.errors import APIError


def admit(cfg: Config, mutates: bool, headers, open_access: bool = False) -> None:
    """Raise the :class:`APIError` that refuses a request, or return: a body said to be too large,
    a write to a read-only store, a missing or wrong bearer token (unless ``open_access``: probes).
    ``headers`` maps names to values (Tornado's ``HTTPHeaders``)."""
    if "Content-Length" in headers:  # (a lookup that misses raises inside HTTPHeaders.get: slow)
        length = headers["Content-Length"]
        if length.isdigit() and int(length) > cfg.max_body_bytes:
            raise too_large(cfg)  # a streamed body has not been read yet
    if mutates and cfg.read_only:
        raise APIError(403, "the store is read-only (FS_READ_ONLY): writes come from ingest")
    if open_access or (cfg.read_token is None and cfg.write_token is None):
        return
    accepted = [cfg.write_token] if mutates else [cfg.read_token, cfg.write_token]
    accepted = [t for t in accepted if t is not None]
    if not accepted or (not mutates and cfg.read_token is None):
        return  # this kind of request is open
    auth = headers["Authorization"] if "Authorization" in headers else ""
    if not auth.startswith("Bearer "):
        raise APIError(401, "a bearer token is required (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    token = auth[7:].strip().encode()
    if not any(hmac.compare_digest(token, t.encode()) for t in accepted):
        raise APIError(403, "this token may not " + ("write" if mutates else "read"))


def too_large(cfg: Config) -> APIError:
    return APIError(413, f"body is larger than {cfg.max_body_bytes} bytes (FS_MAX_BODY_BYTES)")
