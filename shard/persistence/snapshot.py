"""Snapshot files, and the forked child that writes one while the loop goes on serving.

A snapshot is a header map, chunks ``[e, blob, e, blob, ...]`` of the store's msgpack blobs as
they are, chunks ``{"agg": [e, blob, ...]}`` of its aggregation states, and a trailer map with
the counts and the sources' applied positions, each one record (see :mod:`.records`). It is
written by a forked child (copy-on-write, as Redis does): the loop pauses only for the fork.

A cluster-mode shard writes the same file with its entities in groups (one per partition): the
header carries its ``meta`` (topic, offsets) and the trailer each group's entity count, so
:func:`read_snapshot` gives the entities of each group back.
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterable

import msgpack

from shard.persistence import files
from shard.persistence.records import RecoveryError, frame, read, scan
from shard.store import Store, values_in

Groups = Callable[[], Iterable[tuple[int, Iterable[str]]]]  # () -> [(key, entity ids)], called by the writer

CHUNK_ENTITIES = 2000  # entities per snapshot record
SYNC_EVERY = 4 << 20  # a snapshot is fsynced every this many bytes (Redis: rdb-save-incremental-fsync)


def write_snapshot(directory: str, gen: int, store: Store, shard: int, groups: Groups | None = None,
                   meta: dict | None = None) -> str:
    """Write the store to ``snapshot-<gen>.snap`` atomically: temp file, fsync, rename, fsync dir.
    With ``groups``, only the entities it lists, group by group (a cluster shard's partitions)."""
    final = files.path(directory, "snapshot", gen)
    tmp = final[:-5] + ".tmp"
    pack = msgpack.Packer(use_bin_type=True).pack
    with open(tmp, "wb", buffering=1 << 20) as fh:
        fh.write(frame(pack({"snapshot": 1, "shard": shard, "gen": gen, **(meta or {})})))
        synced = [0]
        counts: list = []  # [[key, entities], ...] of the groups, as written
        pairs = store.data.items() if groups is None else _grouped(store.data, groups(), counts)
        entities = _write_chunks(fh, pairs, lambda chunk: chunk, synced)
        aggregated = _write_chunks(fh, store.aggs.packed(), lambda chunk: {"agg": chunk}, synced)
        values = store.values if groups is None else sum(c[2] for c in counts)
        fh.write(frame(pack({"entities": entities, "values": values, "aggregated": aggregated,
                             "positions": store.aggs.positions.to_obj(),
                             **({} if groups is None else {"groups": [c[:2] for c in counts]})})))
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, final)
    files.fsync_dir(directory)
    return final


def _grouped(data: dict, groups, counts: list):
    """The ``(id, blob)`` pairs of each group's entities that ``data`` holds; appends
    ``[key, entities, values]`` to ``counts`` as each group ends."""
    for key, eids in groups:
        row = [key, 0, 0]
        for eid in eids:
            blob = data.get(eid)
            if blob is not None:
                row[1] += 1
                row[2] += values_in(blob)
                yield eid, blob
        counts.append(row)


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


@dataclass
class Loaded:
    """What :func:`read_snapshot` put in the store: entity count, header, and (grouped
    snapshots) each group's entity ids."""

    entities: int
    header: dict
    groups: dict = field(default_factory=dict)


def load_snapshot(path: str, store: Store) -> int:
    """Fill an empty ``store`` from a snapshot file; return its entity count."""
    return read_snapshot(path, store).entities


def read_snapshot(path: str, store: Store) -> Loaded:
    """Fill an empty ``store`` from a snapshot file (RecoveryError if it is damaged)."""
    found = scan(read(path), path, last=False, skip=False)
    try:
        records = [msgpack.unpackb(p, raw=False, strict_map_key=False) for p in found.payloads]
    except Exception as exc:
        raise RecoveryError(f"{path}: a record does not decode: {exc}") from None
    if len(records) < 2 or type(records[0]) is not dict or type(records[-1]) is not dict:
        raise RecoveryError(f"{path}: not a complete snapshot (header or trailer missing)")
    data, states, order = store.data, {}, []
    trailer = records[-1]
    grouped = "groups" in trailer
    for chunk in records[1:-1]:
        if type(chunk) is dict:
            chunk, into = chunk.get("agg", ()), states
        else:
            into = data
            if grouped:
                order.extend(chunk[::2])
        it = iter(chunk)
        into.update(zip(it, it))
    if len(data) != trailer.get("entities") or len(states) != trailer.get("aggregated", 0):
        raise RecoveryError(f"{path}: holds {len(data)} entities and {len(states)} aggregation states, "
                            f"its trailer says {trailer}")
    store.values = trailer["values"]
    store.aggs.load({"states": states, "positions": trailer.get("positions", {})})
    groups, at = {}, 0
    for key, count in trailer.get("groups", ()):
        groups[key], at = order[at:at + count], at + count
    return Loaded(len(data), records[0], groups)


def fork_writer(directory: str, gen: int, store: Store, shard: int, groups: Groups | None = None,
                meta: dict | None = None) -> int:
    """Fork a child that writes snapshot ``gen`` of ``store`` (see :func:`write_snapshot`) and
    removes what it replaces; return its pid (OSError if the fork fails)."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(parent, directory, gen, store, shard, groups, meta)
    return pid


def _child(parent: int, directory: str, gen: int, store: Store, shard: int, groups, meta) -> None:
    """In the forked child: write the snapshot and leave without touching ZeroMQ."""
    code = 1
    try:
        gc.disable()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent(parent)
        os.nice(10)  # the loop, not the snapshot, gets the CPU when they compete
        write_snapshot(directory, gen, store, shard, groups, meta)
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
