"""Event timestamps: parsed into integer microseconds since the epoch (UTC), rendered as
``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_US = 253402300799_999999  # 9999-12-31T23:59:59.999999Z, the last time the store keeps


class TimestampError(ValueError):
    """A timestamp the store cannot read."""


def now_us() -> int:
    """The current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def parse(value, naive_is_utc: bool = False) -> int:
    """Parse an RFC 3339 string with a zone, or seconds since the epoch, to microseconds.

    :arg naive_is_utc: accept strings without a zone as UTC (Feast's columnar ``df``).
    """
    if isinstance(value, bool):
        raise TimestampError("must be an RFC 3339 string or a number of seconds")
    if isinstance(value, int):
        us = value * 1_000_000
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TimestampError("must be finite")
        us = round(value * 1_000_000)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise TimestampError(f"{value!r} is not an RFC 3339 timestamp") from None
        if dt.tzinfo is None:
            if not naive_is_utc:
                raise TimestampError(f"{value!r} has no time zone (add Z or +00:00)")
            dt = dt.replace(tzinfo=timezone.utc)
        delta = dt - _EPOCH
        us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    else:
        raise TimestampError("must be an RFC 3339 string or a number of seconds")
    if not 0 <= us <= MAX_US:
        raise TimestampError("is out of range (1970-01-01 to 9999-12-31)")
    return us


@lru_cache(maxsize=65536)
def render(us: int) -> str:
    """Render microseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    dt = _EPOCH + timedelta(microseconds=us)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
