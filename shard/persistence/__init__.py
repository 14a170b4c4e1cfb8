"""Durability of one shard: an append-only log of the applied writes, and snapshots.

Files, in ``<FS_DATA_DIR>/shard-<index>/`` (see docs/DURABILITY.md)::

    log-<gen>.aof        writes and deletes appended by the loop, generation <gen>
    snapshot-<gen>.snap  the whole store as it was after every log older than <gen>
    snapshot-<gen>.tmp   a snapshot being written; removed on start

Modules: :mod:`.records` (framing: length, CRC-32, msgpack), :mod:`.files` (names of the
generations), :mod:`.snapshot` (snapshot files and the forked child), :mod:`.recovery`
(snapshot plus log replay) and :mod:`.journal` (appends, fsync policies, the fsync thread).
"""
from shard.persistence.journal import FileOps, Journal, LogError, SyncError
from shard.persistence.records import HEADER, OP_DELETE, OP_WRITE, RecoveryError, Scan, frame, scan
from shard.persistence.snapshot import load_snapshot, write_snapshot

__all__ = ["FileOps", "Journal", "LogError", "SyncError", "HEADER", "OP_DELETE", "OP_WRITE",
           "RecoveryError", "Scan", "frame", "scan", "load_snapshot", "write_snapshot"]
