"""Kafka's default partitioner: which partition of the cluster topic an entity id's records go to.

Kafka's Java producer (and librdkafka with ``partitioner=murmur2_random``) puts a keyed record in
partition ``(murmur2(key) & 0x7fffffff) % partitions``, murmur2 being MurmurHash2 with the seed
``0x9747b28c``. Using the same function here means any producer that keys its events by entity id
writes each entity to the partition the store reads it from.
"""
from __future__ import annotations

from functools import lru_cache

SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka's ``Utils.murmur2`` computes it (unsigned 32 bits)."""
    length = len(data)
    h = (SEED ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key`` in a topic of ``partitions`` partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=1 << 17)
def partition_of(entity_id: str, partitions: int) -> int:
    """The partition of an entity id (its UTF-8 bytes are the record key); memoised for reads."""
    return (murmur2(entity_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


class KafkaPartitioner:
    """The ``Partitioner`` interface of cluster mode: the "shard" of an entity is its partition."""

    __slots__ = ("n_shards",)

    def __init__(self, partitions: int) -> None:
        self.n_shards = partitions

    def shard_for(self, entity_id: str) -> int:
        return partition_of(entity_id, self.n_shards)

    def group(self, entity_ids) -> dict[int, list[int]]:
        """Positions of ``entity_ids`` grouped by partition, request order kept."""
        n = self.n_shards
        out: dict[int, list[int]] = {}
        for pos, eid in enumerate(entity_ids):
            out.setdefault(partition_of(eid, n), []).append(pos)
        return out
