"""Validation of feature writes: the bodies of ``POST /features`` and the ingest events.

Both the front end and the ingest process turn the same JSON objects into write tuples
``(entity_id, name, value, event_time_us)`` here, so both reject the same things with the same
words. Every error names the field, as a client would write it (``[2].features.ctr``).

An event may carry an ``event_id`` (a string or an integer): the shard counts a repeated id
once in its aggregations. A write of an aggregated feature with a numeric function must be a
number, and an aggregate's own name cannot be written (common/aggregations.py).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack
import orjson

from common import timefmt
from common.aggregations import computed_refusal, refusal

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]+\Z")
_SEED_FIELDS = frozenset(("entity_id", "name", "value", "event_timestamp", "event_id"))
_GROUPED_FIELDS = frozenset(("entity_id", "features", "event_timestamp", "event_id"))
MAX_EVENT_ID_CHARS = 256
EXACT_FLOAT_INT = 2**53  # past it a float is not one integer: 2**53 + 1 reads as 2**53

Write = tuple[str, str, Any, int]
_LONG_NUMBER = re.compile(rb"\d{19}")
_ZEROS = bytes.maketrans(b"123456789", b"000000000")  # every digit becomes 0: a run of 19 is
_LONG_RUN = b"0" * 19  # a substring search, 5x faster than the regex on a 150-byte event


def loads_json(raw: bytes) -> Any:
    """Parse JSON with orjson, keeping integers beyond 64 bits integers.

    orjson reads an integer outside the 64-bit range as a float, which would store
    ``184467440737095516150`` as ``1.8e20``; a document with a run of 19 digits is parsed again
    exactly, so that :func:`check_value` refuses such an integer. Raises ``ValueError`` and
    nothing else, whatever ``raw`` holds: the stdlib parser raises ``RecursionError`` on a deep
    document, and a caller must never be killed by a client's bytes.
    """
    try:
        obj = orjson.loads(raw)
        if has_long_number(raw):
            obj = json.loads(raw)
    except ValueError:
        raise
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except Exception as exc:  # e.g. a TypeError for something that is not bytes or str
        raise ValueError(f"cannot be parsed ({exc.__class__.__name__})") from None
    return obj


def has_long_number(raw) -> bool:
    """Whether the bytes ``raw`` hold a run of 19 digits (a number orjson may not read exactly).
    Lines joined by newlines answer for all of them at once."""
    try:
        return _LONG_RUN in raw.translate(_ZEROS)
    except AttributeError:  # a memoryview
        return _LONG_NUMBER.search(raw) is not None


_GOOD_NAMES: dict[int, set[str]] = {}  # max_name_bytes -> names already seen to pass check_name
_GOOD_NAMES_MAX = 65536
_MAX_TS_S = 253402300799  # 9999-12-31T23:59:59Z, the last whole second timefmt.parse accepts


class EventError(ValueError):
    """A write that cannot be applied; ``detail`` names the field. ``status`` is its HTTP answer:
    400, or 413 for a size over its limit (:class:`TooLarge`)."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TooLarge(EventError):
    """A value, id or name over its size limit (HTTP 413)."""

    status = 413


@dataclass(frozen=True)
class Limits:
    max_entity_id_bytes: int = 512
    max_name_bytes: int = 256
    max_value_bytes: int = 65536
    aggregations: tuple = ()  # Config.aggregations: what their features' writes must be

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        return cls(cfg.max_entity_id_bytes, cfg.max_name_bytes, cfg.max_value_bytes, cfg.aggregations)

    @cached_property
    def checked_names(self) -> dict:
        """Names whose writes are checked further: an aggregated feature with a numeric
        function -> its Aggregation; an aggregate's own name -> its feature's name."""
        out: dict = {a.feature: a for a in self.aggregations if a.needs_number}
        out.update((o.name, a.feature) for a in self.aggregations for o in a.outputs)
        return out


def _check_aggregated(name: str, value: Any, checked: dict, field: str) -> None:
    """Refuse a write the aggregations cannot take (``checked``: :attr:`Limits.checked_names`)."""
    spec = checked[name]
    if type(spec) is str:
        raise EventError(f"{field}: {computed_refusal(name, spec)}")
    if type(value) is not int and type(value) is not float:
        raise EventError(f"{field}: {refusal(spec, value)}")


def check_event_id(event_id: Any, field: str = "event_id") -> Any:
    """Return ``event_id`` if it can identify an event (a string or a 64-bit integer)."""
    t = type(event_id)
    if t is str and 0 < len(event_id) <= MAX_EVENT_ID_CHARS:
        return event_id
    if t is int and INT64_MIN <= event_id <= INT64_MAX:
        return event_id
    if t is float and event_id.is_integer() and -EXACT_FLOAT_INT <= event_id <= EXACT_FLOAT_INT:
        return int(event_id)  # 1.0 is an integer to JSON Schema (and to the OpenAPI description)
    if t is float and event_id.is_integer() and INT64_MIN <= event_id <= INT64_MAX:
        # 9007199254740993.0 parses as ...992.0: taking it would merge two events' ids
        raise EventError(f"{field}: an integer past 2**53 must be written without a fraction or "
                         "exponent (as a float it cannot tell neighbouring ids apart)")
    raise EventError(f"{field} must be a string of 1 to {MAX_EVENT_ID_CHARS} characters or an integer")


def check_entity_id(eid: Any, limits: Limits, field: str = "entity_id") -> str:
    """Return ``eid`` if it is a valid entity id, else raise :class:`EventError`."""
    if not isinstance(eid, str):
        raise EventError(f"{field} must be a string")
    if not eid:
        raise EventError(f"{field} must not be empty")
    if len(eid) * 4 > limits.max_entity_id_bytes and len(eid.encode("utf-8", "surrogatepass")) > limits.max_entity_id_bytes:
        raise EventError(f"{field} is longer than {limits.max_entity_id_bytes} bytes")
    if not eid.isascii() and "\ud800" <= max(eid) and any("\ud800" <= c <= "\udfff" for c in eid):
        raise EventError(f"{field} is not valid Unicode")
    return eid


def check_name(name: Any, limits: Limits, field: str = "name") -> str:
    """Return ``name`` if it is a valid feature name, else raise :class:`EventError`."""
    if not isinstance(name, str):
        raise EventError(f"{field} must be a string")
    if not name:
        raise EventError(f"{field} must not be empty")
    if len(name) > limits.max_name_bytes:
        raise EventError(f"{field} is longer than {limits.max_name_bytes} bytes")
    if not _NAME_RE.match(name):
        raise EventError(f"{field} may hold only letters, digits and _ . : -")
    return name


def _good_name(name: Any, limits: Limits, field: str) -> None:
    """:func:`check_name`, remembering a name that passes (the fast paths look it up first)."""
    check_name(name, limits, field)
    good = _GOOD_NAMES.setdefault(limits.max_name_bytes, set())
    if len(good) < _GOOD_NAMES_MAX:
        good.add(name)


def _check_nested(value: Any, field: str, depth: int) -> None:
    if depth > 64:
        raise EventError(f"{field} is nested too deeply")
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise EventError(f"{field} must be a finite number")
    elif t is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise EventError(f"{field} is outside the 64-bit integer range")
    elif t is list or t is tuple:
        for i, item in enumerate(value):
            _check_nested(item, f"{field}[{i}]", depth + 1)
    elif t is dict:
        for k, item in value.items():
            if type(k) is not str:
                raise EventError(f"{field} has a key that is not a string")
            _check_nested(item, f"{field}.{k}", depth + 1)
    elif value is None or t is bool or t is str:
        pass
    else:
        raise EventError(f"{field} has an unsupported type")


def check_value(value: Any, limits: Limits, field: str = "value") -> Any:
    """Return ``value`` if it is a storable value, else raise :class:`EventError`."""
    t = type(value)
    if t is str:
        if len(value) * 4 > limits.max_value_bytes and len(value.encode("utf-8", "surrogatepass")) > limits.max_value_bytes:
            raise TooLarge(f"{field} is larger than {limits.max_value_bytes} bytes (FS_MAX_VALUE_BYTES)")
        return value
    if t is float or t is int or t is bool or value is None:
        _check_nested(value, field, 0)
        return value
    _check_nested(value, field, 0)
    if len(msgpack.packb(value)) > limits.max_value_bytes:
        raise TooLarge(f"{field} is larger than {limits.max_value_bytes} bytes (FS_MAX_VALUE_BYTES)")
    return value


def event_time(obj: dict, field: str, now_us: int, naive_is_utc: bool = False) -> int:
    """The event time of a write: its ``event_timestamp`` or, when absent, ``now_us``."""
    ts = obj.get("event_timestamp")
    if ts is None:
        return now_us
    if type(ts) is int and 0 <= ts <= _MAX_TS_S:  # the usual case, as timefmt.parse does it
        return ts * 1_000_000
    try:
        return timefmt.parse(ts, naive_is_utc)
    except timefmt.TimestampError as exc:
        raise EventError(f"{field}event_timestamp {exc}") from None


def parse_event(obj: Any, limits: Limits, now_us: int, prefix: str = "", ids: list | None = None) -> list[Write]:
    """Turn one write object (seed form or grouped form) into write tuples; with ``ids``, the
    event's ``event_id`` (or None) is appended to it once per write."""
    if type(obj) is not dict:
        if prefix:
            raise EventError(f"{prefix.rstrip('.')} must be a JSON object")
        raise EventError("body must be a JSON object or an array of objects")
    if "entity_id" not in obj:
        raise EventError(f"{prefix}entity_id is required")
    eid = check_entity_id(obj["entity_id"], limits, prefix + "entity_id")
    if "features" in obj:
        if not obj.keys() <= _GROUPED_FIELDS:  # no set is built unless there is an extra key
            extra = obj.keys() - _GROUPED_FIELDS
            raise EventError(f"{prefix}{sorted(extra)[0]} is not a field of a write with features")
        feats = obj["features"]
        if type(feats) is not dict:
            raise EventError(f"{prefix}features must be an object of name: value")
        if not feats:
            raise EventError(f"{prefix}features must not be empty")
        ts = event_time(obj, prefix, now_us)
        event_id = None if "event_id" not in obj else check_event_id(obj["event_id"], prefix + "event_id")
        max_name, max_str = limits.max_name_bytes, limits.max_value_bytes // 4
        checked = limits.checked_names if limits.aggregations else None
        good = _GOOD_NAMES.setdefault(max_name, set())
        out = []
        for name, value in feats.items():
            # fast paths first (ingest parses ~10^5 of these a second); the checks they skip would
            # pass, and the field names of an error are only built when there is one
            if name not in good:  # only names that passed check_name under these limits are in it
                _good_name(name, limits, f"{prefix}features name {name!r}"[:300])
            t = type(value)
            if not ((t is float and value - value == 0.0) or (t is int and INT64_MIN <= value <= INT64_MAX)
                    or (t is str and len(value) <= max_str) or t is bool or value is None):
                value = check_value(value, limits, f"{prefix}features.{name}")
            if checked and name in checked and (t is not int and t is not float or type(checked[name]) is str):
                _check_aggregated(name, value, checked, f"{prefix}features.{name}")
            out.append((eid, name, value, ts))
        if ids is not None:
            ids.extend([event_id] * len(out))
        return out
    if not obj.keys() <= _SEED_FIELDS:
        extra = obj.keys() - _SEED_FIELDS
        raise EventError(f"{prefix}{sorted(extra)[0]} is not a field of a feature write")
    if "name" not in obj:
        raise EventError(f"{prefix}name is required (or features)")
    if "value" not in obj:
        raise EventError(f"{prefix}value is required")
    name, value = obj["name"], obj["value"]
    if type(name) is not str or name not in _GOOD_NAMES.get(limits.max_name_bytes, ()):
        _good_name(name, limits, prefix + "name")
    t = type(value)
    if not ((t is float and value - value == 0.0) or (t is int and INT64_MIN <= value <= INT64_MAX)
            or (t is str and len(value) <= limits.max_value_bytes // 4) or t is bool or value is None):
        value = check_value(value, limits, prefix + "value")
    if limits.aggregations and name in limits.checked_names:
        _check_aggregated(name, value, limits.checked_names, prefix + "value")
    event_id = None if "event_id" not in obj else check_event_id(obj["event_id"], prefix + "event_id")
    ts = event_time(obj, prefix, now_us)
    if ids is not None:
        ids.append(event_id)
    return [(eid, name, value, ts)]


def parse_body(body: Any, limits: Limits, now_us: int, ids: list | None = None) -> list[Write]:
    """Turn a ``POST /features`` body (an object or an array of objects) into write tuples
    (``ids``: see :func:`parse_event`)."""
    if type(body) is list:
        if not body:
            raise EventError("body must not be an empty array")
        out: list[Write] = []
        for i, obj in enumerate(body):
            out.extend(parse_event(obj, limits, now_us, f"[{i}].", ids))
        return out
    return parse_event(body, limits, now_us, "", ids)


def check_writes(writes: list, limits: Limits, field: str = "w") -> None:
    """Raise :class:`EventError` (:class:`TooLarge` for a size) for the first item of a WRITE
    message that is not ``[entity_id, name, value, event_us]`` as :func:`parse_event` makes them:
    the shard checks what it stores itself, whoever sent it. Fast for items that pass."""
    max_id, max_str = limits.max_entity_id_bytes, limits.max_value_bytes // 4
    good = _GOOD_NAMES.setdefault(limits.max_name_bytes, set())
    for i, item in enumerate(writes):
        if (type(item) is not list and type(item) is not tuple) or len(item) != 4:
            raise EventError(f"{field}[{i}] must be [entity_id, name, value, event_us]")
        eid, name, value, ts = item
        if type(eid) is not str or not eid or len(eid) * 4 > max_id or not eid.isascii():
            check_entity_id(eid, limits, f"{field}[{i}] entity id")
        if type(name) is not str or name not in good:
            _good_name(name, limits, f"{field}[{i}] name")
        t = type(value)
        if not ((t is float and value - value == 0.0) or (t is int and INT64_MIN <= value <= INT64_MAX)
                or (t is str and len(value) <= max_str) or t is bool or value is None):
            check_value(value, limits, f"{field}[{i}] value")
        if type(ts) is not int or not 0 <= ts <= timefmt.MAX_US:
            raise EventError(f"{field}[{i}] event time must be microseconds from 1970 to 9999")


def check_entity_ids(eids: list, limits: Limits, field: str = "entity_ids") -> list:
    """Return ``eids`` if every item is a valid entity id, else raise for the first bad one.

    Checks the whole list in a few C-level passes (a batch read's hot path); only a list that
    fails them is walked item by item, to name the bad item.
    """
    if not eids:
        return eids
    try:
        text = "".join(eids)
    except TypeError:
        text = None
    if (text is not None and all(eids) and max(map(len, eids)) * 4 <= limits.max_entity_id_bytes
            and (text.isascii() or max(text) < "\ud800")):
        return eids
    for i, eid in enumerate(eids):
        check_entity_id(eid, limits, f"{field}[{i}]")
    return eids
