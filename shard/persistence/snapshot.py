"""Snapshot files, and the forked child that writes one while the loop goes on serving.

A snapshot is a header map, chunks ``[e, blob, e, blob, ...]`` of the store's msgpack blobs as
they are, chunks ``{"agg": [e, blob, ...]}`` of its aggregation states, and a trailer map with
the counts and the sources' applied positions, each one record (see :mod:`.records`). It is
written by a forked child (copy-on-write, as Redis does): the loop pauses only for the fork.
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import traceback

import msgpack

from shard.persistence import files
from shard.persistence.records import RecoveryError, frame, read, scan
from shard.store import Store

CHUNK_ENTITIES = 2000  # entities per snapshot record
SYNC_EVERY = 4 << 20  # a snapshot is fsynced every this many bytes (Redis: rdb-save-incremental-fsync)


def write_snapshot(directory: str, gen: int, store: Store, shard: int) -> str:
    """Write the store to ``snapshot-<gen>.snap`` atomically: temp file, fsync, rename, fsync dir."""
    final = files.path(directory, "snapshot", gen)
    tmp = final[:-5] + ".tmp"
    pack = msgpack.Packer(use_bin_type=True).pack
    with open(tmp, "wb", buffering=1 << 20) as fh:
        fh.write(frame(pack({"snapshot": 1, "shard": shard, "gen": gen})))
        synced = [0]
        entities = _write_chunks(fh, store.data.items(), lambda chunk: chunk, synced)
        aggregated = _write_chunks(fh, store.aggs.packed(), lambda chunk: {"agg": chunk}, synced)
        fh.write(frame(pack({"entities": entities, "values": store.values, "aggregated": aggregated,
                             "positions": store.aggs.positions.to_obj()})))
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, final)
    files.fsync_dir(directory)
    return final


def _write_chunks(fh, blobs, wrap, synced: list) -> int:
    """Write ``(id, blob)`` pairs as records of ``wrap([e, blob, ...])``; return the count."""
    pack = msgpack.Packer(use_bin_type=True).pack
    chunk: list = []
    count = 0
    for eid, blob in blobs:
        chunk.append(eid)
        chunk.append(blob)
        if len(chunk) >= 2 * CHUNK_ENTITIES:
            fh.write(frame(pack(wrap(chunk))))
            count += len(chunk) // 2
            chunk.clear()
            if fh.tell() - synced[0] >= SYNC_EVERY:  # small bursts: the log's writes never queue long
                fh.flush()
                os.fdatasync(fh.fileno())
                synced[0] = fh.tell()
    if chunk:
        fh.write(frame(pack(wrap(chunk))))
        count += len(chunk) // 2
    return count


def load_snapshot(path: str, store: Store) -> int:
    """Fill an empty ``store`` from a snapshot file; return its entity count."""
    found = scan(read(path), path, last=False, skip=False)
    try:
        records = [msgpack.unpackb(p, raw=False) for p in found.payloads]
    except Exception as exc:
        raise RecoveryError(f"{path}: a record does not decode: {exc}") from None
    if len(records) < 2 or type(records[0]) is not dict or type(records[-1]) is not dict:
        raise RecoveryError(f"{path}: not a complete snapshot (header or trailer missing)")
    data, states = store.data, {}
    for chunk in records[1:-1]:
        if type(chunk) is dict:
            chunk, into = chunk.get("agg", ()), states
        else:
            into = data
        it = iter(chunk)
        into.update(zip(it, it))
    trailer = records[-1]
    if len(data) != trailer.get("entities") or len(states) != trailer.get("aggregated", 0):
        raise RecoveryError(f"{path}: holds {len(data)} entities and {len(states)} aggregation states, "
                            f"its trailer says {trailer}")
    store.values = trailer["values"]
    store.aggs.load({"states": states, "positions": trailer.get("positions", {})})
    return len(data)


def fork_writer(directory: str, gen: int, store: Store, shard: int) -> int:
    """Fork a child that writes snapshot ``gen`` of ``store`` and removes what it replaces;
    return its pid (OSError if the fork fails)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(parent, directory, gen, store, shard)
    return pid


def _child(parent: int, directory: str, gen: int, store: Store, shard: int) -> None:
    """In the forked child: write the snapshot and leave without touching ZeroMQ."""
    code = 1
    try:
        gc.disable()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent(parent)
        os.nice(10)  # the loop, not the snapshot, gets the CPU when they compete
        write_snapshot(directory, gen, store, shard)
        files.remove_older(directory, gen)  # here, not in the loop: unlinking big files takes ms
        code = 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this child if the shard dies (a SIGKILLed shard leaves no writer)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
