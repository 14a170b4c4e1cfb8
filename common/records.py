"""Records of the cluster topic: what writers produce and what shards read back.

A record is keyed by entity id (its UTF-8 bytes, so Kafka's default partitioner puts it in
``common.murmur2.partition_of(entity_id)``) and its value is the ingest event JSON: one event
object or an array of them. A null value (a tombstone) deletes the entity; the value
``{"entity_id": E, "delete": [name, ...]}`` deletes those features of it. See docs/CLUSTER.md.
"""
from __future__ import annotations

from itertools import repeat
from typing import Iterable

import orjson

from common import timefmt
from common.events import EventError, Limits, check_entity_id, check_name, loads_json, parse_event

DELETE = "delete"  # the field of a record value that names the features to delete


def records(writes: Iterable, event_ids: Iterable | None = None) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` per entity from write tuples: the entity's events grouped by event time
    (and event id: ``event_ids``, parallel to ``writes``, goes into each event as ``event_id``, so
    the owners' aggregations count a resent event once, as an embedded shard does)."""
    by_entity: dict[str, dict[tuple, dict]] = {}
    for (eid, name, value, ts), event_id in zip(writes, repeat(None) if event_ids is None else event_ids):
        by_entity.setdefault(eid, {}).setdefault((ts, event_id), {})[name] = value
    out = []
    for eid, groups in by_entity.items():
        events = []
        for (ts, event_id), feats in groups.items():
            event = {"entity_id": eid, "features": feats, "event_timestamp": timefmt.render(ts)}
            if event_id is not None:
                event["event_id"] = event_id
            events.append(event)
        out.append((eid.encode(), orjson.dumps(events[0] if len(events) == 1 else events)))
    return out


def delete_record(eid: str, names: list[str]) -> tuple[bytes, bytes]:
    """The record that deletes features ``names`` of entity ``eid`` (not a tombstone: the
    entity's other features stay, in the log and after compaction)."""
    return eid.encode(), orjson.dumps({"entity_id": eid, DELETE: names})


def deletes_of(doc: dict, limits: Limits) -> tuple[str, list[str]]:
    """``(entity id, names)`` of a delete record's value. Raises :class:`EventError`."""
    if doc.keys() != {"entity_id", DELETE}:
        raise EventError(f"a delete record holds entity_id and {DELETE} only")
    eid = check_entity_id(doc["entity_id"], limits, "entity_id")
    names = doc[DELETE]
    if type(names) is not list or not names:
        raise EventError(f"{DELETE} must be a non-empty list of feature names")
    for name in names:
        check_name(name, limits, f"{DELETE} name")
    return eid, names


def read_record(value: bytes, limits: Limits, default_us: int) -> tuple[list, tuple[str, list] | None, list | None]:
    """``(writes, None, event ids)`` for a record of events (the ids parallel to the writes, or
    None when no event has one), ``([], (entity id, names), None)`` for a delete record. Raises
    :class:`EventError` or ValueError."""
    doc = loads_json(value)
    if type(doc) is dict and DELETE in doc:
        return [], deletes_of(doc, limits), None
    ids: list = []
    writes = _writes(doc, limits, default_us, ids)
    return writes, None, ids if any(i is not None for i in ids) else None


def _writes(doc, limits: Limits, default_us: int, ids: list) -> list:
    """The write tuples of a record's events (their event ids appended to ``ids``); an event
    without a time gets ``default_us`` (the record's timestamp, the same on every replica)."""
    if type(doc) is not list:
        return parse_event(doc, limits, default_us, ids=ids)
    if not doc:
        raise EventError("an array of events must not be empty")
    out: list = []
    for i, obj in enumerate(doc):
        out.extend(parse_event(obj, limits, default_us, f"[{i}].", ids))
    return out
