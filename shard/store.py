"""The in-memory store of one shard.

Layout: ``data`` maps an entity id to one msgpack blob holding ``{name: [value, event_us]}``.
A blob costs a few times less memory than a dict of lists (see ../shared/PERFORMANCE.md), and
a read decodes it in microseconds. Only this class knows the layout.

Writes are last-write-wins by event time per (entity, name): an older event is counted as
stale and ignored; on an equal event time the later arrival wins.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import msgpack
import orjson

from common import timefmt

NOT_FOUND_DETAIL = "No features found for entity"


def _decode(blob: bytes) -> dict:
    return msgpack.unpackb(blob, raw=False)


def _encode(feats: dict) -> bytes:
    return msgpack.packb(feats, use_bin_type=True)


class Store:
    """Entities of one shard, with last-write-wins writes and rendered JSON reads."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.values = 0  # number of stored (entity, name) values
        self.writes = 0
        self.stale = 0

    # ---- reads
    def features(self, eid: str) -> dict | None:
        """``{name: [value, event_us]}`` of an entity, or None."""
        blob = self.data.get(eid)
        return None if blob is None else _decode(blob)

    def render_entity(self, eid: str, names: Sequence[str] | None = None) -> bytes | None:
        """JSON bytes ``{"entity_id","features","last_updated"}``, or None when absent."""
        blob = self.data.get(eid)
        if blob is None:
            return None
        feats = _decode(blob)
        if names is not None:
            feats = {n: feats[n] for n in names if n in feats}
            if not feats:
                return None
        last = max(vt[1] for vt in feats.values())
        return orjson.dumps(
            {
                "entity_id": eid,
                "features": {n: vt[0] for n, vt in feats.items()},
                "last_updated": timefmt.render(last),
            }
        )

    def render_feature(self, eid: str, name: str) -> bytes | None:
        """JSON bytes ``{"entity_id","name","value","event_timestamp"}``, or None."""
        blob = self.data.get(eid)
        if blob is None:
            return None
        vt = _decode(blob).get(name)
        if vt is None:
            return None
        return orjson.dumps(
            {"entity_id": eid, "name": name, "value": vt[0], "event_timestamp": timefmt.render(vt[1])}
        )

    def render_many(self, eids: Iterable[str], names: Sequence[str] | None = None) -> list[bytes]:
        """One JSON object per id, in order; a missing entity is ``{"entity_id","detail"}``."""
        out = []
        for eid in eids:
            body = self.render_entity(eid, names)
            if body is None:
                body = orjson.dumps({"entity_id": eid, "detail": NOT_FOUND_DETAIL})
            out.append(body)
        return out

    # ---- writes
    def apply(self, writes: Iterable[Sequence[Any]]) -> tuple[int, int]:
        """Apply ``[entity_id, name, value, event_us]`` writes; return (written, stale)."""
        by_entity: dict[str, list] = {}
        for w in writes:
            by_entity.setdefault(w[0], []).append(w)
        written = stale = 0
        data = self.data
        for eid, group in by_entity.items():
            blob = data.get(eid)
            feats = {} if blob is None else _decode(blob)
            before = len(feats)
            changed = False
            for _, name, value, ts in group:
                cur = feats.get(name)
                if cur is not None and cur[1] > ts:
                    stale += 1
                    continue
                feats[name] = [value, ts]
                written += 1
                changed = True
            if changed:
                data[eid] = _encode(feats)
                self.values += len(feats) - before
        self.writes += written
        self.stale += stale
        return written, stale

    def delete(self, eid: str, name: str | None = None) -> int:
        """Delete an entity (``name`` None) or one feature; return how many values went."""
        blob = self.data.get(eid)
        if blob is None:
            return 0
        if name is None:
            n = len(_decode(blob))
            del self.data[eid]
            self.values -= n
            return n
        feats = _decode(blob)
        if feats.pop(name, None) is None:
            return 0
        if feats:
            self.data[eid] = _encode(feats)
        else:
            del self.data[eid]
        self.values -= 1
        return 1

    def stats(self) -> dict:
        return {
            "entities": len(self.data),
            "values": self.values,
            "writes": self.writes,
            "stale": self.stale,
        }
