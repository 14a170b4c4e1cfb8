"""Raw events -> write tuples grouped by shard, and the dead-letter file for the ones that fail.

Validation is :func:`common.events.parse_event`, the same code as ``POST /features``, so an
event is rejected by ingest exactly when the HTTP path would answer 400, with the same words.
"""
from __future__ import annotations

import base64
import logging
from typing import Any, Iterable

import orjson

from common import timefmt
from common.events import EventError, Limits, has_long_number, loads_json, parse_event
from common.partition import Partitioner

log = logging.getLogger("ingest")

MAX_DEAD_EVENT_CHARS = 65536  # a dead letter keeps at most this much of the raw event
MAX_ERRORS_PER_UNIT = 10  # reasons returned to a ZeroMQ producer per request


class Unit:
    """One source item (a chunk of lines, of Kafka messages, one producer request): its writes per
    shard, what the shards answered, and the tag its source needs to acknowledge it.

    With aggregations configured, ``origin`` names the source its positions are in (None: no
    positions) and ``meta[shard]`` holds ``(event ids, positions)`` parallel to its writes."""

    __slots__ = ("tag", "by_shard", "events", "written", "stale", "rejected", "errors", "origin", "meta")

    def __init__(self, tag: Any = None, origin: str | None = None) -> None:
        self.tag = tag
        self.origin = origin
        self.meta: dict[int, tuple[list, list]] = {}
        self.by_shard: dict[int, list] = {}
        self.events = 0
        self.written = 0
        self.stale = 0
        self.rejected = 0
        self.errors: list[str] = []


class DeadLetters:
    """Appends rejected events, with the reason, to a JSON-lines file (opened on first use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self.failures = 0  # dead letters that could not be written
        self._fh = None

    def add(self, source: str, reason: str, raw: Any) -> None:
        """Record one rejected event; ``raw`` is its bytes or its decoded object."""
        self.count += 1
        doc: dict[str, Any] = {"time": timefmt.render(timefmt.now_us()), "source": source, "reason": reason}
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = bytes(raw)
            try:
                text = raw.decode("utf-8")
                doc["event"] = text[:MAX_DEAD_EVENT_CHARS]
                if len(text) > MAX_DEAD_EVENT_CHARS:
                    doc["truncated"] = True
            except UnicodeDecodeError:
                doc["event_base64"] = base64.b64encode(raw[:MAX_DEAD_EVENT_CHARS]).decode()
                if len(raw) > MAX_DEAD_EVENT_CHARS:
                    doc["truncated"] = True
        else:
            doc["event"] = raw
        try:
            line = orjson.dumps(doc, default=repr, option=orjson.OPT_NON_STR_KEYS)
        except Exception:  # an integer beyond 64 bits inside a msgpack event, a deep structure
            doc["event"] = _printed(raw)
            line = orjson.dumps(doc)
        try:
            if self._fh is None:
                self._fh = open(self.path, "ab")
            self._fh.write(line + b"\n")
        except OSError as exc:  # a full disk must not stop the stream: the event is still counted
            self.failures += 1
            if self.failures <= 10 or self.failures % 1000 == 0:
                log.error("dead letter not written to %s (%s): %s", self.path, exc, line[:2000])
        if self.count <= 10 or self.count % 1000 == 0:
            log.warning("dead letter #%d from %s: %s", self.count, source, reason)

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self.failures += 1
                log.error("dead letters not flushed to %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None


def _printed(obj: Any) -> str:
    """``repr(obj)``, shortened; a structure too deep to print says so instead of raising."""
    try:
        return repr(obj)[:MAX_DEAD_EVENT_CHARS]
    except RecursionError:
        return "<event nested too deeply to print>"


class Decoder:
    """Turns JSON lines or decoded event objects into a :class:`Unit`; bad ones go to dead letters."""

    def __init__(self, limits: Limits, partitioner: Partitioner, dead: DeadLetters,
                 max_event_bytes: int) -> None:
        self.limits = limits
        self.partitioner = partitioner
        self.dead = dead
        self.max_event_bytes = max_event_bytes
        self.track = bool(limits.aggregations)  # keep event ids and positions for the shards

    def reject(self, unit: Unit, source: str, reason: str, raw: Any) -> None:
        unit.rejected += 1
        if len(unit.errors) < MAX_ERRORS_PER_UNIT:
            unit.errors.append(f"{source}: {reason}")
        self.dead.add(source, reason, raw)

    def add_lines(self, unit: Unit, lines: Iterable[bytes], where, positions=None) -> None:
        """Parse JSON lines into ``unit``; ``where(i)`` names line ``i`` for a dead letter, and
        ``positions[i]`` is its position in ``unit.origin``."""
        loads, JSONDecodeError = loads_json, ValueError  # integers past 64 bits stay integers
        if type(lines) is not list:
            lines = list(lines)
        try:  # one look at the whole chunk: without a 19-digit run anywhere, orjson alone is exact
            if not has_long_number(b"\n".join(lines)):
                loads = orjson.loads
        except TypeError:  # not a list of bytes: each line is looked at on its own
            pass
        limit, now, limits = self.max_event_bytes, timefmt.now_us(), self.limits
        route, by_shard = self.partitioner.route, unit.by_shard
        track, ids = self.track, None
        events = 0
        for i, raw in enumerate(lines):
            if len(raw) > limit:
                self.reject(unit, where(i), f"event is larger than {limit} bytes", raw[:1024])
                continue
            try:
                obj = loads(raw)
            except JSONDecodeError as exc:
                if not raw.strip():
                    continue  # a blank line is not an event
                self.reject(unit, where(i), f"not JSON: {exc}", raw)
                continue
            if type(obj) is not dict:
                self.add_object(unit, obj, where, i, raw, now, positions)
                continue
            if track:
                ids = []
            try:  # the hot path, inlined: one event object
                writes = parse_event(obj, limits, now, "", ids)
            except Exception:
                self._add_one(unit, obj, where, i, "", raw, now, positions)  # rejects it, with the reason
                continue
            shard = route(by_shard, writes)
            if track:
                _keep_meta(unit, shard, ids, positions, i)
            events += 1
        unit.events += events

    def add_object(self, unit: Unit, obj: Any, where, i: int, raw: Any = None,
                   now: int | None = None, positions=None) -> None:
        """Validate one decoded event (or an array of events) into ``unit``."""
        if now is None:
            now = timefmt.now_us()
        if type(obj) is dict:
            self._add_one(unit, obj, where, i, "", obj if raw is None else raw, now, positions)
        elif type(obj) is list:
            if not obj:
                self.reject(unit, where(i), "an array of events must not be empty", raw if raw is not None else obj)
            for j, item in enumerate(obj):
                self._add_one(unit, item, where, i, f"[{j}].", item, now, positions)
        else:
            self._add_one(unit, obj, where, i, "", obj if raw is None else raw, now, positions)

    def _add_one(self, unit: Unit, obj: Any, where, i: int, prefix: str, raw: Any, now: int,
                 positions=None) -> None:
        ids = [] if self.track else None
        try:
            writes = parse_event(obj, self.limits, now, prefix, ids)
        except EventError as exc:
            self.reject(unit, where(i), exc.detail, raw)
            return
        except RecursionError:
            self.reject(unit, where(i), "event is nested too deeply", "<nested too deeply>")
            return
        except Exception as exc:  # e.g. a msgpack map with non-string keys: never stop the stream
            self.reject(unit, where(i), f"not a valid event ({exc.__class__.__name__}: {exc})", raw)
            return
        shard = self.partitioner.route(unit.by_shard, writes)
        if ids is not None:
            _keep_meta(unit, shard, ids, positions, i)
        unit.events += 1


def _keep_meta(unit: Unit, shard: int, ids: list, positions, i: int) -> None:
    """Record the event ids and the position of an event's writes, parallel to them."""
    meta = unit.meta.get(shard)
    if meta is None:
        meta = unit.meta[shard] = ([], [])
    meta[0].extend(ids)
    meta[1].extend([positions[i] if positions is not None else 0] * len(ids))
