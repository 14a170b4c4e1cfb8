"""The journal of one shard: appends to the log, the fsync policies and the fsync thread, and
when to rotate the log and start a snapshot."""
from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable

import msgpack

from common import protocol as P
from shard.handlers import Refused
from shard.persistence import files, recovery, snapshot
from shard.persistence.records import OP_DELETE, OP_WRITE, frame
from shard.store import Store

log = logging.getLogger("shard.persistence")

RETRY_S = 5.0  # a failed snapshot is retried after this long
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class LogError(Refused):
    """The log cannot be written: the write is refused with ``code`` and ``reason``."""


class SyncError(Exception):
    """fsync failed under the ``always`` policy: nothing of this pass may be acknowledged."""


@dataclass(frozen=True)
class FileOps:
    """The calls the journal makes on its log's descriptor (tests inject failing ones)."""

    write: Callable[[int, bytes], int] = os.write
    ftruncate: Callable[[int, int], None] = os.ftruncate
    fdatasync: Callable[[int], None] = os.fdatasync


class Journal:
    """The log and snapshots of one shard.

    The loop calls :meth:`log_write` / :meth:`log_delete` before applying a request (a failure
    refuses the request), :meth:`sync_pending` before sending the replies of a pass (fsync under
    ``always``), :meth:`tick` once per pass (fsync under ``everysec``, snapshots) and
    :meth:`close` on shutdown (a final snapshot).

    Two states refuse writes, each with its reason: ``sync_failed`` (an ``everysec`` fsync
    failed; the next fsync that succeeds clears it) and ``cut_failed`` (a failed write left part
    of a record past ``size`` and cutting it off failed; only a cut-back that succeeds clears it,
    tried again before each write and each rotation).
    """

    def __init__(self, directory: str, store: Store, shard: int, fsync: str = "everysec",
                 snapshot_log_bytes: int = 64 << 20, snapshot_interval_s: float = 300.0,
                 skip_damaged: bool = False, ops: FileOps = FileOps()) -> None:
        self.dir = directory
        self.store = store
        self.shard = shard
        self.policy = fsync
        self.snapshot_log_bytes = snapshot_log_bytes
        self.snapshot_interval_s = snapshot_interval_s
        self.skip = skip_damaged
        self.ops = ops
        self.gen = 0
        self.fd = -1
        self.size = 0  # bytes of whole records in the current log: where the next one begins
        self.since_snapshot = 0  # log bytes written since the last snapshot began
        self.dirty = False  # written but not fsynced
        self.sync_failed: str | None = None
        self.cut_failed: str | None = None
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

    @property
    def log_path(self) -> str:
        return files.path(self.dir, "log", self.gen)

    def recover(self) -> dict:
        """Recover the store from the directory (see :mod:`.recovery`), open a new log generation."""
        done = recovery.recover(self.dir, self.store, self.shard, self.skip)
        self.gen, self.since_snapshot = done.next_gen, done.log_bytes
        self._open_log()
        self.info.update(done.info)
        if done.damaged:  # write the skipped state down so the damage is not met again
            self.snapshot_now()
        return self.info

    # ---- the log
    def _open_log(self) -> None:
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        files.fsync_dir(self.dir)

    def _append(self, record: bytes) -> None:
        refused = self._refusal()
        if refused:
            raise LogError(P.UNAVAILABLE, f"shard {self.shard} refuses writes: {refused}")
        try:
            n = self.ops.write(self.fd, record)
            if n != len(record):
                raise OSError(errno.ENOSPC, "short write (no space left?)")
        except OSError as exc:
            self._cut_back()  # never leave half a record before the next one
            code = P.DISK_FULL if exc.errno in _FULL else P.UNAVAILABLE
            raise LogError(code, f"shard {self.shard} cannot write its log {self.log_path}: "
                                 f"{exc.strerror or exc}; writes are refused, reads still work") from None
        self.size += n
        self.since_snapshot += n
        self.dirty = True

    def _refusal(self) -> str | None:
        """Why writes are refused now, or None; a log that could not be cut back is tried again."""
        if self.cut_failed and not self._cut_back():
            return self.cut_failed
        return self.sync_failed

    def _cut_back(self) -> bool:
        """Truncate the log to ``size``, the end of its last whole record; False if that failed
        (``cut_failed`` then refuses writes: the next record would follow a torn one)."""
        try:
            self.ops.ftruncate(self.fd, self.size)
        except OSError as exc:
            if self.cut_failed is None:
                log.error("shard %d: cannot cut %s back to %d bytes after a failed write (%s); "
                          "writes refused until it can", self.shard, self.log_path, self.size, exc)
            self.cut_failed = (f"its log {self.log_path} holds part of a refused write after byte "
                               f"{self.size} and cannot be cut back: {exc.strerror or exc}")
            return False
        self.cut_failed = None
        return True

    def log_write(self, writes: list, meta: list | None = None) -> None:
        """Append a write batch (with its aggregation ``meta``, see :meth:`Store.prepare`);
        :class:`LogError` if it cannot be written."""
        self._append(frame(self._pack([OP_WRITE, writes] if meta is None else [OP_WRITE, writes, meta])))

    def log_delete(self, eid: str, name: str | None) -> None:
        """Append a delete; :class:`LogError` if it cannot be written."""
        self._append(frame(self._pack([OP_DELETE, eid, name])))

    # ---- fsync
    def sync_pending(self) -> None:
        """Under ``always``, fsync what this pass appended before its replies leave (one fsync
        for the whole pass: group commit); :class:`SyncError` if it fails."""
        if self.dirty and self.policy == "always":
            try:
                self.ops.fdatasync(self.fd)
            except OSError as exc:
                raise SyncError(f"fsync of {self.log_path} failed: {exc}") from None
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
        self._sync_queue.put((os.dup(self.fd), self.log_path))  # the dup survives a rotation

    def _sync_forever(self) -> None:
        """The fsync thread: fdatasync each descriptor handed over, then close it. It clears
        ``sync_failed`` only: a log that could not be cut back stays refused."""
        while True:
            fd, path = self._sync_queue.get()
            if fd < 0:
                return
            try:
                self.ops.fdatasync(fd)
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
        """Close the current log (fsynced) and open the next generation. Not while the log ends
        in a torn record: recovery accepts one only at the end of the newest log."""
        if self.cut_failed and not self._cut_back():
            raise OSError(errno.EIO, self.cut_failed)
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
        try:
            pid = snapshot.fork_writer(self.dir, self.gen, self.store, self.shard)
        except OSError as exc:  # out of memory or processes: the log keeps everything meanwhile
            log.error("shard %d: cannot fork a snapshot child: %s; retrying in %d s", self.shard, exc, RETRY_S)
            self.retry_at = time.monotonic() + RETRY_S
            return
        ms = 1000 * (time.perf_counter() - t0)
        self.info["fork_ms_last"] = ms
        self.info["fork_ms_max"] = max(ms, self.info["fork_ms_max"])
        self.child = (pid, self.gen, time.monotonic())
        self.since_snapshot = 0
        self.last_snapshot = time.monotonic()
        log.info("shard %d: snapshot %d started in child %d (loop paused %.1f ms)",
                 self.shard, self.gen, pid, ms)

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

    def snapshot_now(self) -> None:
        """Write a snapshot from this process (at start after skipped damage, and on shutdown)."""
        self._rotate()
        snapshot.write_snapshot(self.dir, self.gen, self.store, self.shard)
        files.remove_older(self.dir, self.gen)
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
