"""Entity id -> slot -> shard.

An entity id's UTF-8 bytes are hashed with CRC-32 (stable across processes and hosts, unlike
Python's randomised ``hash()``) into one of :data:`SLOTS` slots; a slot table maps slots to
shards. Adding a shard later means moving some slots to it, not rehashing every entity.
"""
from __future__ import annotations

import json
from functools import lru_cache
from zlib import crc32

SLOTS = 16384  # as Redis Cluster: plenty of slots to move at a fine grain


def slot_of(entity_id: str) -> int:
    """The slot of an entity id. The loops below inline this expression for speed; it is spelled
    in this module only."""
    return crc32(entity_id.encode("utf-8")) % SLOTS


@lru_cache(maxsize=16)
def default_table(n_shards: int) -> tuple[int, ...]:
    """Contiguous slot ranges, one per shard: slot s belongs to shard s * n // SLOTS."""
    if n_shards < 1:
        raise ValueError("n_shards must be at least 1")
    return tuple(s * n_shards // SLOTS for s in range(SLOTS))


class Partitioner:
    """Maps entity ids to shard indexes through a slot table."""

    __slots__ = ("table", "n_shards")

    def __init__(self, n_shards: int, table: tuple[int, ...] | None = None) -> None:
        self.table = table or default_table(n_shards)
        if len(self.table) != SLOTS or not all(0 <= s < n_shards for s in self.table):
            raise ValueError("slot table must map every slot to a shard index")
        self.n_shards = n_shards

    def shard_for(self, entity_id: str) -> int:
        """The index of the shard that owns ``entity_id``."""
        return self.table[crc32(entity_id.encode("utf-8")) % SLOTS]

    def route(self, by_shard: dict[int, list], writes: list) -> int:
        """Append one event's writes (``[(entity_id, name, value, event_us), ...]``, one entity) to
        the list of the shard that owns the entity, and return that shard; ingest's hot path. The
        list is taken over, not copied: a shard's first one becomes its list."""
        shard = self.table[crc32(writes[0][0].encode("utf-8")) % SLOTS]
        bucket = by_shard.get(shard)
        if bucket is None:
            by_shard[shard] = writes
        else:
            bucket.extend(writes)
        return shard

    def group(self, entity_ids) -> dict[int, list[int]]:
        """Positions of ``entity_ids`` grouped by owning shard, request order kept."""
        table = self.table
        out: dict[int, list[int]] = {}
        get = out.get
        for pos, eid in enumerate(entity_ids):
            shard = table[crc32(eid.encode("utf-8")) % SLOTS]
            positions = get(shard)
            if positions is None:
                out[shard] = [pos]
            else:
                positions.append(pos)
        return out


def table_digest(table: tuple[int, ...]) -> int:
    """A CRC-32 of a slot table, to compare tables between processes."""
    return crc32(bytes(table) if max(table) < 256 else json.dumps(table).encode())


def mismatch(described, index: int, n_shards: int) -> str | None:
    """Compare a shard's ``describe()`` with what the caller expects of shard ``index``: None
    when they agree, or the shard does not say (it still refuses what is not its own)."""
    want = [n_shards, index, table_digest(default_table(n_shards))]
    if not described or list(described) == want:
        return None
    return (f"shard {index} serves the slot table of {described[0]} shards as shard {described[1]}; "
            f"this process expects {n_shards} shards")
