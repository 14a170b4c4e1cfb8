"""Embedded mode's safety: the slot table a shard serves, checked on every request and on start.

A shard knows its index and the shard count, hence the slot table (``common/partition.py``).
:class:`SlotOwner` refuses an entity of another shard (error ``not_owner``, naming where it
belongs), so a front end or ingest started with another ``FS_SHARDS`` cannot store anything on
the wrong shard. :func:`check_data_dir` makes a data directory remember the table it was written
under, and refuses to start a shard under another one.
"""
from __future__ import annotations

import json
import os
import zlib

from common.partition import SLOTS, default_table, table_digest

TOPOLOGY_FILE = "TOPOLOGY.json"


class TopologyMismatch(Exception):
    """The data directory was written under another slot table."""


class SlotOwner:
    """Shard ``index`` of ``n_shards`` under the default slot table."""

    __slots__ = ("index", "n_shards", "table", "digest")

    def __init__(self, index: int, n_shards: int) -> None:
        self.index = index
        self.n_shards = n_shards
        self.table = default_table(n_shards)
        self.digest = table_digest(self.table)

    def refusal(self, eid: str) -> str | None:
        """Why this shard may not store or answer for ``eid``; None when it owns it."""
        slot = zlib.crc32(eid.encode("utf-8")) % SLOTS
        owner = self.table[slot]
        if owner == self.index:
            return None
        return (f"entity {eid!r} (slot {slot}) belongs to shard {owner} under the slot table of "
                f"{self.n_shards} shards that shard {self.index} serves: the caller's FS_SHARDS "
                f"or endpoint list differs")

    def first_refusal(self, eids, after: None = None, held: bool = False) -> str | None:
        """:meth:`refusal` of the first of ``eids`` this shard does not own, or None: the
        check of a batch read, without a call per entity while they are all its own.
        ``held``: each of ``eids`` is stored here, and this shard stores only what it owns (each
        write was checked, a data directory of another table refuses to start): nothing to hash.
        (``after``, an offset to have applied, exists in cluster mode only.)"""
        if held:
            return None
        table, index, crc32 = self.table, self.index, zlib.crc32
        for eid in eids:
            if table[crc32(eid.encode("utf-8")) % SLOTS] != index:
                return self.refusal(eid)
        return None

    def describe(self) -> list:
        """``[shards, index, digest]``, sent in ping replies."""
        return [self.n_shards, self.index, self.digest]


def check_data_dir(directory: str, index: int, n_shards: int) -> None:
    """Record the slot table in ``directory`` on first use; raise :class:`TopologyMismatch` when
    it was written under another one."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TOPOLOGY_FILE)
    want = _doc(index, n_shards)
    try:
        with open(path) as fh:
            found = json.load(fh)
    except FileNotFoundError:
        write_topology(directory, index, n_shards)
        return
    except ValueError as exc:
        raise TopologyMismatch(f"{path} is not readable JSON: {exc}") from None
    if found != want:
        raise TopologyMismatch(
            f"{directory} was written as shard {found.get('index')} of {found.get('shards')}, not shard "
            f"{index} of {n_shards}; run python -m shard.reshard to redistribute it")


def _doc(index: int, n_shards: int) -> dict:
    return {"shards": n_shards, "index": index, "table_crc32": table_digest(default_table(n_shards))}


def write_topology(directory: str, index: int, n_shards: int) -> None:
    """Record in ``directory`` that it holds shard ``index`` of ``n_shards``."""
    path = os.path.join(directory, TOPOLOGY_FILE)
    with open(path + ".tmp", "w") as fh:
        json.dump(_doc(index, n_shards), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(path + ".tmp", path)
