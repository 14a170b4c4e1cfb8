"""Recovery: load the newest valid snapshot, replay the logs of its generation and later.

The replay goes through :meth:`Store.apply` and :meth:`Store.delete`, so it behaves exactly as
the original writes did; then what had outlived its TTL is reclaimed
(:meth:`Store.reclaim_all`) before the shard serves.
"""
from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass

import msgpack

from shard.persistence import files
from shard.persistence.records import OP_WRITE, RecoveryError, read, scan
from shard.persistence.snapshot import load_snapshot
from shard.store import Store

log = logging.getLogger("shard.persistence")

REPLAY_RUN = 100_000  # writes merged into one Store.apply during a replay


@dataclass
class Recovered:
    """What :func:`recover` did: the next log generation, and figures for ``stats``."""

    next_gen: int
    log_bytes: int  # bytes of log replayed: written since the snapshot began
    damaged: int  # damaged records, snapshots and missing generations skipped
    info: dict


def recover(directory: str, store: Store, shard: int, skip: bool) -> Recovered:
    """Fill the empty ``store`` from ``directory``; :class:`RecoveryError` on damage unless ``skip``."""
    was_enabled = gc.isenabled()
    gc.disable()  # replay allocates millions of short-lived lists: the cyclic GC costs 30%
    try:
        return _recover(directory, store, shard, skip)
    finally:
        if was_enabled:
            gc.enable()


def _recover(directory: str, store: Store, shard: int, skip: bool) -> Recovered:
    t0, cpu0 = time.perf_counter(), time.process_time()
    os.makedirs(directory, exist_ok=True)
    snaps, logs = files.generations(directory)
    base, entities, damaged = 0, 0, 0
    for gen in reversed(snaps):
        try:
            entities = load_snapshot(files.path(directory, "snapshot", gen), store)
            base = gen
            break
        except RecoveryError as exc:
            if not skip:
                raise
            log.error("%s; trying an older snapshot (FS_SKIP_DAMAGED)", exc)
            store.data.clear()
            damaged += 1
    todo = [g for g in logs if g >= base]
    damaged += _check_sequence(directory, base, todo, skip)
    records = values = 0
    log_bytes = sum(os.path.getsize(files.path(directory, "log", g)) for g in todo)
    for gen in todo:
        r, v, d = _replay(files.path(directory, "log", gen), store, gen == todo[-1], skip)
        records, values, damaged = records + r, values + v, damaged + d
    reclaimed = store.reclaim_all()  # what the TTL sweep had taken stays gone
    seconds = time.perf_counter() - t0
    info = dict(recovered_entities=len(store.data), snapshot_entities=entities,
                replayed_records=records, replayed_values=values, recovery_s=seconds,
                reclaimed_on_recovery=reclaimed, recovery_cpu_s=time.process_time() - cpu0)
    log.info("shard %d recovered in %.3f s: snapshot %s (%d entities), replayed %d records "
             "(%d values) from %d log file(s)", shard, seconds, base or "none", entities,
             records, values, len(todo))
    return Recovered(max([base, *(g + 1 for g in logs)]) or 1, log_bytes, damaged, info)


def _check_sequence(directory: str, base: int, gens: list[int], skip: bool) -> int:
    """Check the log generations follow the snapshot without a gap; return the gaps skipped."""
    expected, gaps = base or 1, 0
    for gen in gens:
        if gen != expected:
            msg = (f"{files.path(directory, 'log', expected)} is missing (found "
                   f"{files.path(directory, 'log', gen)}); the writes it held would be lost")
            if not skip:
                raise RecoveryError(msg + "; start with FS_SKIP_DAMAGED=1 to go on without them")
            log.error("%s (FS_SKIP_DAMAGED)", msg)
            gaps += 1
        expected = gen + 1
    return gaps


def _replay(path: str, store: Store, last: bool, skip: bool) -> tuple[int, int, int]:
    """Replay one log into ``store``; return (records, values, damaged records skipped)."""
    buf = read(path)
    found = scan(buf, path, last, skip)
    if found.torn:
        log.warning("%s: cut off a torn final record at offset %d (%d bytes): it was never "
                    "acknowledged", path, found.end, len(buf) - found.end)
        with open(path, "r+b") as fh:
            fh.truncate(found.end)
            os.fsync(fh.fileno())
    run, values = [], 0
    for payload in found.payloads:
        try:
            rec = msgpack.unpackb(payload, raw=False, use_list=False)  # tuples: cheaper, packed alike
        except Exception as exc:
            raise RecoveryError(f"{path}: a record with a valid checksum does not decode: {exc}")
        if rec[0] == OP_WRITE and len(rec) > 2:  # with its aggregation meta: applied on its own
            if run:
                store.apply(run)
                values, run = values + len(run), []
            store.apply(list(rec[1]), rec[2])
            values += len(rec[1])
        elif rec[0] == OP_WRITE:
            run.extend(rec[1])
            if len(run) >= REPLAY_RUN:
                store.apply(run)
                values, run = values + len(run), []
        else:
            if run:
                store.apply(run)
                values, run = values + len(run), []
            store.delete(rec[1], rec[2])
    if run:
        store.apply(run)
        values += len(run)
    return len(found.payloads), values, len(found.damaged)
