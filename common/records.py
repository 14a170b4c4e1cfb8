"""Records of the cluster topic: what writers produce and what shards read back.

A record is keyed by entity id (its UTF-8 bytes, so Kafka's default partitioner puts it in
``common.murmur2.partition_of(entity_id)``) and its value is the ingest event JSON: one event
object or an array of them. A null value (a tombstone) deletes the entity. See docs/CLUSTER.md.
"""
from __future__ import annotations

from typing import Iterable

import orjson

from common import timefmt
from common.events import EventError, Limits, loads_json, parse_event


def records(writes: Iterable) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` per entity from write tuples: the entity's events grouped by event time."""
    by_entity: dict[str, dict[int, dict]] = {}
    for eid, name, value, ts in writes:
        by_entity.setdefault(eid, {}).setdefault(ts, {})[name] = value
    out = []
    for eid, by_ts in by_entity.items():
        events = [{"entity_id": eid, "features": feats, "event_timestamp": timefmt.render(ts)}
                  for ts, feats in by_ts.items()]
        out.append((eid.encode(), orjson.dumps(events[0] if len(events) == 1 else events)))
    return out


def writes_of(value: bytes, limits: Limits, default_us: int) -> list:
    """The write tuples of a record's value; an event without a time gets ``default_us`` (the
    record's timestamp, the same on every replica). Raises :class:`EventError` or ValueError."""
    doc = loads_json(value)
    if type(doc) is not list:
        return parse_event(doc, limits, default_us)
    if not doc:
        raise EventError("an array of events must not be empty")
    out: list = []
    for i, obj in enumerate(doc):
        out.extend(parse_event(obj, limits, default_us, f"[{i}]."))
    return out
