"""Durability of one shard: an append-only log of the applied writes, and snapshots.

Files, in ``<FS_DATA_DIR>/shard-<index>/`` (see docs/DURABILITY.md)::

    log-<gen>.aof        writes and deletes appended by the loop, generation <gen>
    snapshot-<gen>.snap  the whole store as it was after every log older than <gen>
    snapshot-<gen>.tmp   a snapshot being written; removed on start

Both kinds of file are a sequence of records, each framed as an 8-byte header ``<II``
(payload length, CRC-32 of the payload) followed by the msgpack payload. A log record is
``[1, [[e, n, value, ts_us], ...]]`` (a write batch) or ``[2, e, n-or-nil]`` (a delete). A snapshot
is a header map, chunks ``[e, blob, e, blob, ...]`` of the store's msgpack blobs as they are, and a
trailer map with the counts.

Recovery loads the newest valid snapshot and replays the logs of its generation and later,
through :meth:`Store.apply`, so a replay behaves exactly as the original writes did, then
reclaims what had outlived its TTL (:meth:`Store.reclaim_all`) before the shard serves.
A snapshot is written by a forked child (copy-on-write, as Redis does): the loop pauses only
for the log rotation and the ``fork()``.
"""
from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import queue
import re
import signal
import struct
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field

import msgpack

from common import protocol as P
from shard.handlers import Refused
from shard.store import Store

log = logging.getLogger("shard.persistence")

HEADER = struct.Struct("<II")  # payload length, crc32(payload)
OP_WRITE, OP_DELETE = 1, 2
CHUNK_ENTITIES = 2000  # entities per snapshot record
REPLAY_RUN = 100_000  # writes merged into one Store.apply during a replay
RETRY_S = 5.0  # a failed snapshot is retried after this long
SYNC_EVERY = 4 << 20  # a snapshot is fsynced every this many bytes (Redis: rdb-save-incremental-fsync)
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_NAME = re.compile(r"(log|snapshot)-(\d+)\.(aof|snap)\Z")


class LogError(Refused):
    """The log cannot be written: the write is refused with ``code`` and ``reason``."""


class RecoveryError(Exception):
    """The shard's files cannot be recovered without losing data; names the file and offset."""


class SyncError(Exception):
    """fsync failed under the ``always`` policy: nothing of this pass may be acknowledged."""


# ---- framing
def frame(payload: bytes) -> bytes:
    """One record: header plus payload."""
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _valid_at(buf, off: int) -> int:
    """The end of a valid record starting at ``off``, or -1."""
    if len(buf) - off < HEADER.size:
        return -1
    length, crc = HEADER.unpack_from(buf, off)
    end = off + HEADER.size + length
    if length == 0 or end > len(buf) or zlib.crc32(buf[off + HEADER.size:end]) != crc:
        return -1
    return end


@dataclass
class Scan:
    """What :func:`scan` found in one file."""

    payloads: list = field(default_factory=list)
    end: int = 0  # where the valid records end (the file is cut here when torn)
    torn: bool = False
    damaged: list = field(default_factory=list)  # offsets of skipped damaged records


def scan(buf, path: str, last: bool, skip: bool) -> Scan:
    """Split ``buf`` (a file's bytes) into record payloads, checking every checksum.

    An incomplete record at the end of the ``last`` file, or a final record that fails its
    checksum there, or zero bytes to the end, with no valid record after it, is a torn write:
    the scan stops before it.
    Anything else that fails raises :class:`RecoveryError` naming ``path`` and the offset, unless
    ``skip``: then the scan looks for the next valid record and reports the damaged offset.
    """
    view = memoryview(buf)
    out = Scan()
    off, n = 0, len(buf)
    while off < n:
        end = _valid_at(view, off)
        if end > 0:
            out.payloads.append(view[off + HEADER.size:end])
            off = end
            continue
        resume = _next_valid(view, off)
        if last and resume == n and _torn_tail(view, off):
            out.torn = True
            break
        why = _why(view, off)
        if not skip:
            raise RecoveryError(
                f"{path}: damaged record at offset {off} ({why}); the shard stops rather than "
                f"lose data. Restore the file, or start with FS_SKIP_DAMAGED=1 to skip damaged "
                f"records (their writes are lost)")
        out.damaged.append(off)
        log.error("%s: skipped a damaged record at offset %d (%s)", path, off, why)
        off = resume
    out.end = off
    return out


def _next_valid(view, off: int) -> int:
    """The offset of the first valid record after ``off``, or the end of the buffer."""
    return next((p for p in range(off + 1, len(view)) if _valid_at(view, p) > 0), len(view))


def _torn_tail(view, off: int) -> bool:
    n = len(view)
    if n - off < HEADER.size:
        return True
    length, _ = HEADER.unpack_from(view, off)
    end = off + HEADER.size + length
    return end >= n or not any(view[off:])  # runs past the end, ends at it, or is all zeros


def _why(view, off: int) -> str:
    length, _ = HEADER.unpack_from(view, off)
    if length == 0:
        return "zero length"
    if off + HEADER.size + length > len(view):
        return f"length {length} runs past the end of the file"
    return "checksum mismatch"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- snapshots
def write_snapshot(directory: str, gen: int, store: Store, shard: int) -> str:
    """Write the store to ``snapshot-<gen>.snap`` atomically: temp file, fsync, rename, fsync dir."""
    final = os.path.join(directory, f"snapshot-{gen:08d}.snap")
    tmp = final[:-5] + ".tmp"
    pack = msgpack.Packer(use_bin_type=True).pack
    with open(tmp, "wb", buffering=1 << 20) as fh:
        fh.write(frame(pack({"snapshot": 1, "shard": shard, "gen": gen})))
        chunk: list = []
        entities = synced = 0
        for eid, blob in store.data.items():
            chunk.append(eid)
            chunk.append(blob)
            if len(chunk) >= 2 * CHUNK_ENTITIES:
                fh.write(frame(pack(chunk)))
                entities += len(chunk) // 2
                chunk.clear()
                if fh.tell() - synced >= SYNC_EVERY:  # small bursts: the log's writes never queue long
                    fh.flush()
                    os.fdatasync(fh.fileno())
                    synced = fh.tell()
        if chunk:
            fh.write(frame(pack(chunk)))
            entities += len(chunk) // 2
        fh.write(frame(pack({"entities": entities, "values": store.values})))
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, final)
    _fsync_dir(directory)
    return final


def load_snapshot(path: str, store: Store) -> int:
    """Fill an empty ``store`` from a snapshot file; return its entity count."""
    with open(path, "rb") as fh:
        buf = fh.read()
    found = scan(buf, path, last=False, skip=False)
    try:
        records = [msgpack.unpackb(p, raw=False) for p in found.payloads]
    except Exception as exc:
        raise RecoveryError(f"{path}: a record does not decode: {exc}") from None
    if len(records) < 2 or type(records[0]) is not dict or type(records[-1]) is not dict:
        raise RecoveryError(f"{path}: not a complete snapshot (header or trailer missing)")
    data = store.data
    for chunk in records[1:-1]:
        it = iter(chunk)
        data.update(zip(it, it))
    trailer = records[-1]
    if len(data) != trailer.get("entities"):
        raise RecoveryError(f"{path}: holds {len(data)} entities, its trailer says {trailer}")
    store.values = trailer["values"]
    return len(data)


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this child if the shard dies (a SIGKILLed shard leaves no writer)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


# ---- the journal of one shard
class Journal:
    """The log and snapshots of one shard.

    The loop calls :meth:`log_write` / :meth:`log_delete` before applying a request (a failure
    refuses the request), :meth:`commit` before sending the replies of a pass (fsync under
    ``always``), :meth:`tick` once per pass (fsync under ``everysec``, snapshots) and
    :meth:`close` on shutdown (a final snapshot).
    """

    def __init__(self, directory: str, store: Store, shard: int, fsync: str = "everysec",
                 snapshot_log_bytes: int = 64 << 20, snapshot_interval_s: float = 300.0,
                 skip_damaged: bool = False) -> None:
        self.dir = directory
        self.store = store
        self.shard = shard
        self.policy = fsync
        self.snapshot_log_bytes = snapshot_log_bytes
        self.snapshot_interval_s = snapshot_interval_s
        self.skip = skip_damaged
        self.gen = 0
        self.fd = -1
        self.size = 0  # bytes in the current log
        self.since_snapshot = 0  # log bytes written since the last snapshot began
        self.dirty = False  # written but not fsynced
        self.sync_failed: str | None = None
        self.last_sync = time.monotonic()
        self.last_snapshot = time.monotonic()
        self._syncer: threading.Thread | None = None  # the everysec fsync thread
        self._sync_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._syncing = threading.Event()  # a sync was handed over and has not finished
        self.child: tuple[int, int, float] | None = None  # pid, gen, start time
        self.retry_at = 0.0
        self.info: dict = {"snapshots": 0, "fork_ms_max": 0.0, "fork_ms_last": 0.0}
        self._pack = msgpack.Packer(use_bin_type=True).pack

    @classmethod
    def from_config(cls, cfg, store: Store) -> "Journal":
        directory = os.path.join(cfg.data_dir, f"shard-{cfg.shard_index}")
        return cls(directory, store, cfg.shard_index, cfg.fsync, cfg.snapshot_log_bytes,
                   cfg.snapshot_interval_s, cfg.skip_damaged)

    # ---- recovery
    def _files(self) -> tuple[list[int], list[int]]:
        snaps, logs = [], []
        for name in os.listdir(self.dir):
            m = _NAME.match(name)
            if m:
                (snaps if m.group(1) == "snapshot" else logs).append(int(m.group(2)))
            elif name.endswith(".tmp"):
                os.unlink(os.path.join(self.dir, name))  # a snapshot that never finished
        return sorted(snaps), sorted(logs)

    def path(self, kind: str, gen: int) -> str:
        ext = "aof" if kind == "log" else "snap"
        return os.path.join(self.dir, f"{kind}-{gen:08d}.{ext}")

    def recover(self) -> dict:
        """Load the newest valid snapshot, replay the logs after it, open a new log generation."""
        was_enabled = gc.isenabled()
        gc.disable()  # replay allocates millions of short-lived lists: the cyclic GC costs 30%
        try:
            return self._recover()
        finally:
            if was_enabled:
                gc.enable()

    def _recover(self) -> dict:
        t0, cpu0 = time.perf_counter(), time.process_time()
        os.makedirs(self.dir, exist_ok=True)
        snaps, logs = self._files()
        base, entities, damaged = 0, 0, 0
        for gen in reversed(snaps):
            try:
                entities = load_snapshot(self.path("snapshot", gen), self.store)
                base = gen
                break
            except RecoveryError as exc:
                if not self.skip:
                    raise
                log.error("%s; trying an older snapshot (FS_SKIP_DAMAGED)", exc)
                self.store.data.clear()
                damaged += 1
        todo = [g for g in logs if g >= base]
        damaged += self._check_sequence(base, todo)
        records = values = 0
        self.since_snapshot = sum(os.path.getsize(self.path("log", g)) for g in todo)
        for gen in todo:
            r, v, d = self._replay(self.path("log", gen), last=gen == todo[-1])
            records, values, damaged = records + r, values + v, damaged + d
        reclaimed = self.store.reclaim_all()  # what the TTL sweep had taken stays gone
        self.gen = max([base, *(g + 1 for g in logs)]) or 1
        self._open_log()
        seconds = time.perf_counter() - t0
        self.info.update(recovered_entities=len(self.store.data), snapshot_entities=entities,
                         replayed_records=records, replayed_values=values, recovery_s=seconds,
                         reclaimed_on_recovery=reclaimed,
                         recovery_cpu_s=time.process_time() - cpu0)
        log.info("shard %d recovered in %.3f s: snapshot %s (%d entities), replayed %d records "
                 "(%d values) from %d log file(s)", self.shard, seconds, base or "none", entities,
                 records, values, len(todo))
        if damaged:  # write the skipped state down so the damage is not met again
            self.snapshot_now()
        return self.info

    def _check_sequence(self, base: int, gens: list[int]) -> int:
        """Check the log generations follow the snapshot without a gap; return the gaps skipped."""
        expected, gaps = base or 1, 0
        for gen in gens:
            if gen != expected:
                msg = (f"{self.path('log', expected)} is missing (found {self.path('log', gen)}); "
                       f"the writes it held would be lost")
                if not self.skip:
                    raise RecoveryError(msg + "; start with FS_SKIP_DAMAGED=1 to go on without them")
                log.error("%s (FS_SKIP_DAMAGED)", msg)
                gaps += 1
            expected = gen + 1
        return gaps

    def _replay(self, path: str, last: bool) -> tuple[int, int, int]:
        with open(path, "rb") as fh:
            buf = fh.read()
        found = scan(buf, path, last, self.skip)
        if found.torn:
            log.warning("%s: cut off a torn final record at offset %d (%d bytes): it was never "
                        "acknowledged", path, found.end, len(buf) - found.end)
            with open(path, "r+b") as fh:
                fh.truncate(found.end)
                os.fsync(fh.fileno())
        store, run, values = self.store, [], 0
        for payload in found.payloads:
            try:
                rec = msgpack.unpackb(payload, raw=False, use_list=False)  # tuples: cheaper, packed alike
            except Exception as exc:
                raise RecoveryError(f"{path}: a record with a valid checksum does not decode: {exc}")
            if rec[0] == OP_WRITE:
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

    # ---- the log
    def _open_log(self) -> None:
        path = self.path("log", self.gen)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        _fsync_dir(self.dir)

    def _append(self, record: bytes) -> None:
        if self.sync_failed:
            raise LogError(P.UNAVAILABLE, f"shard {self.shard} refuses writes: {self.sync_failed}")
        try:
            n = os.write(self.fd, record)
            if n != len(record):
                raise OSError(errno.ENOSPC, "short write (no space left?)")
        except OSError as exc:
            try:
                os.ftruncate(self.fd, self.size)  # never leave half a record before the next one
            except OSError as again:
                self.sync_failed = f"the log could not be cut back after a failed write: {again}"
            code = P.DISK_FULL if exc.errno in _FULL else P.UNAVAILABLE
            raise LogError(code, f"shard {self.shard} cannot write its log "
                                 f"{self.path('log', self.gen)}: {exc.strerror or exc}; "
                                 f"writes are refused, reads still work") from None
        self.size += n
        self.since_snapshot += n
        self.dirty = True

    def log_write(self, writes: list) -> None:
        """Append a write batch; :class:`LogError` if it cannot be written."""
        self._append(frame(self._pack([OP_WRITE, writes])))

    def log_delete(self, eid: str, name: str | None) -> None:
        """Append a delete; :class:`LogError` if it cannot be written."""
        self._append(frame(self._pack([OP_DELETE, eid, name])))

    def commit(self) -> None:
        """Under ``always``, fsync what this pass appended before its replies leave."""
        if self.dirty and self.policy == "always":
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise SyncError(f"fsync of {self.path('log', self.gen)} failed: {exc}") from None
            self.dirty = False

    def _sync_in_background(self) -> None:
        """``everysec``: hand a duplicate of the log's descriptor to the fsync thread, as Redis
        does, so the loop never waits for the disk. A sync still running is not doubled."""
        if self._syncing.is_set():
            return
        if self._syncer is None:  # one long-lived thread: starting one costs the loop a wait
            self._syncer = threading.Thread(target=self._sync_forever, name="fsync", daemon=True)
            self._syncer.start()
        self._syncing.set()
        self.dirty = False
        self.last_sync = time.monotonic()
        self._sync_queue.put((os.dup(self.fd), self.path("log", self.gen)))  # the dup survives a rotation

    def _sync_forever(self) -> None:
        """The fsync thread: fdatasync each descriptor handed over, then close it."""
        while True:
            fd, path = self._sync_queue.get()
            if fd < 0:
                return
            try:
                os.fdatasync(fd)
                self.sync_failed = None
            except OSError as exc:
                self.sync_failed = f"fsync of {path} failed: {exc.strerror}"
                self.dirty = True  # tried again a second later
                log.error("shard %d: %s; writes refused until an fsync succeeds", self.shard,
                          self.sync_failed)
            finally:
                os.close(fd)
                self._syncing.clear()

    def _stop_syncer(self) -> None:
        if self._syncer is not None:
            self._sync_queue.put((-1, ""))
            self._syncer.join()
            self._syncer = None

    # ---- chores
    def tick(self) -> None:
        """Once per loop pass: fsync under ``everysec``, reap or start a snapshot."""
        now = time.monotonic()
        if (self.dirty or self.sync_failed) and self.policy == "everysec" and now - self.last_sync >= 1.0:
            self._sync_in_background()
        if self.child is not None:
            self._reap(os.WNOHANG)
        elif now >= self.retry_at and (
            self.since_snapshot >= self.snapshot_log_bytes
            or (self.since_snapshot and now - self.last_snapshot >= self.snapshot_interval_s)
        ):
            self.start_snapshot()

    def _rotate(self) -> None:
        """Close the current log (fsynced) and open the next generation."""
        os.fsync(self.fd)
        old = self.fd
        self.gen += 1
        try:
            self._open_log()
        except OSError:
            self.gen -= 1
            raise
        os.close(old)
        self.dirty = False

    def start_snapshot(self) -> None:
        """Rotate the log and fork a child that writes the store as of now."""
        t0 = time.perf_counter()
        try:
            self._rotate()
        except OSError as exc:
            log.error("shard %d: cannot start a snapshot: %s", self.shard, exc)
            self.retry_at = time.monotonic() + RETRY_S
            return
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: the log keeps everything meanwhile
            log.error("shard %d: cannot fork a snapshot child: %s; retrying in %d s", self.shard, exc, RETRY_S)
            self.retry_at = time.monotonic() + RETRY_S
            return
        if pid == 0:
            self._child(parent)
        ms = 1000 * (time.perf_counter() - t0)
        self.info["fork_ms_last"] = ms
        self.info["fork_ms_max"] = max(ms, self.info["fork_ms_max"])
        self.child = (pid, self.gen, time.monotonic())
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        log.info("shard %d: snapshot %d started in child %d (loop paused %.1f ms)",
                 self.shard, self.gen, pid, ms)

    def _child(self, parent: int) -> None:
        """In the forked child: write the snapshot and leave without touching ZeroMQ."""
        code = 1
        try:
            gc.disable()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _die_with_parent(parent)
            os.nice(10)  # the loop, not the snapshot, gets the CPU when they compete
            write_snapshot(self.dir, self.gen, self.store, self.shard)
            self._remove_older(self.gen)  # here, not in the loop: unlinking big files takes ms
            code = 0
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)

    def _reap(self, flags: int) -> None:
        pid, gen, started = self.child
        done, status = os.waitpid(pid, flags)
        if done == 0:
            return
        self.child = None
        if os.waitstatus_to_exitcode(status) == 0:
            self.info["snapshots"] += 1
            log.info("shard %d: snapshot %d written in %.2f s", self.shard, gen,
                     time.monotonic() - started)
        else:
            log.error("shard %d: snapshot %d failed (child status %d); the logs are kept, "
                      "retrying in %.0f s", self.shard, gen, status, RETRY_S)
            self.since_snapshot = max(self.since_snapshot, self.snapshot_log_bytes)
            self.retry_at = time.monotonic() + RETRY_S

    def _remove_older(self, gen: int) -> None:
        """Snapshot ``gen`` is in place: older snapshots and logs are no longer needed."""
        snaps, logs = self._files()
        for g in snaps:
            if g < gen:
                os.unlink(self.path("snapshot", g))
        for g in logs:
            if g < gen:
                os.unlink(self.path("log", g))

    def snapshot_now(self) -> None:
        """Write a snapshot from this process (at start after skipped damage, and on shutdown)."""
        self._rotate()
        write_snapshot(self.dir, self.gen, self.store, self.shard)
        self._remove_older(self.gen)
        self.info["snapshots"] += 1
        self.since_snapshot = 0

    def close(self) -> None:
        """On shutdown: stop a running snapshot child, write a final snapshot, close the log."""
        self._stop_syncer()
        if self.child is not None:
            os.kill(self.child[0], signal.SIGKILL)
            self._reap(0)
        t0 = time.perf_counter()
        try:
            self.snapshot_now()
            log.info("shard %d: final snapshot %d written in %.2f s", self.shard, self.gen,
                     time.perf_counter() - t0)
        except OSError as exc:
            log.error("shard %d: final snapshot failed (%s); the log is kept and will be replayed",
                      self.shard, exc)
        os.close(self.fd)

    def stats(self) -> dict:
        return {"log_gen": self.gen, "log_bytes": self.size, "snapshotting": self.child is not None,
                **self.info}
