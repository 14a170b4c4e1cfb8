"""``python -m shard`` in cluster mode: the usual loop, fed by Kafka instead of write requests.

Wires :class:`~shard.cluster.Partitions` and its :class:`~shard.cluster.Tail` to the shard's
ROUTER loop as chores, and publishes this shard in the membership topic. See docs/CLUSTER.md.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from common import membership
from common.events import Limits
from shard.cluster import Partitions, SnapshotMismatch, Tail
from shard.persistence import files, snapshot as snapshots

log = logging.getLogger("shard")

CLUSTER_POLL_MS = 5  # the tail is read this often while it fetches: a record is applied within this of its arrival
TRANSFER_POLL_MS = 1  # the same while a partition arrives from a peer (its chunks do not wake the loop)
CHORES_S = 0.02  # heartbeats, freeing and snapshots run at most this often
PARKED_POLL_S = 0.05  # the tail while its partitions are parked (for the rebalance callbacks and its idle rounds)
MEMBERS_POLL_S = 0.1  # the membership topic is read this often (and whenever a peer is wanted)
LEAVE_S = 30.0  # the longest a stopping shard waits for its partitions to be taken over


class ClusterShard:
    """The Kafka side of one cluster-mode shard: tail, membership, snapshots."""

    def __init__(self, cfg, store, ctx, endpoint: str) -> None:
        self.cfg = cfg
        self.advertise = cfg.cluster_advertise or endpoint
        n = membership.ensure_topic(cfg.cluster_kafka, cfg.cluster_topic, cfg.cluster_partitions)
        membership.ensure_topic(cfg.cluster_kafka, membership.members_topic(cfg.cluster_topic), 1,
                                {"cleanup.policy": "compact"})
        self.parts = Partitions(store, n, Limits.from_config(cfg), cfg.cluster_topic, cfg.max_features_per_entity)
        where = endpoint.split("://")[-1].replace(":", "-").replace("/", "_").replace("*", "any")
        self.dir = os.path.join(cfg.data_dir, f"cluster-{cfg.replica}-{where}") if cfg.data_dir else None
        if self.dir:
            loaded = self.parts.load_snapshot(self.dir)  # SnapshotMismatch goes to main()
            if loaded:
                log.info("snapshot of %d partitions loaded: %s", len(loaded), loaded)
        self.me = membership.Member(cfg.replica, self.advertise, {}, cfg.cluster_heartbeat_s)
        self.reader = membership.Reader(cfg.cluster_kafka, cfg.cluster_topic)
        self.reader.catch_up(5.0)  # know the peers before the first assignment needs one
        self.publisher = membership.Writer(cfg.cluster_kafka, cfg.cluster_topic)
        self._published = 0.0
        self._chores_at = 0.0
        self._members_at = 0.0
        self.leaving: float | None = None  # monotonic time of the SIGTERM
        self._stopped: Callable[[], None] = lambda: None
        self._snapshot_at = time.monotonic()
        self._snapshot_changes = self.parts.changes
        self.gen = 1 + max(files.generations(self.dir)[0], default=0) if self.dir and os.path.isdir(self.dir) else 1
        self.child: tuple[int, int, float, int] | None = None  # the snapshot writer: pid, gen, started, changes
        self.tail = Tail(cfg, self.parts, self._peers, ctx, self.publish, cfg.cluster_tail_records)
        self.parts.behind = self.wake
        self._tail_at = 0.0

    def _peers(self, p: int) -> list[tuple[str, int]]:
        self.reader.poll(0)
        return [(m.endpoint, m.partitions[p][0]) for m in self.reader.view.owners(p)
                if m.endpoint != self.advertise]

    def poll_ms(self) -> int:
        """How long the loop may wait for a request before :meth:`tick` runs again."""
        if self.tail.transfers:
            return TRANSFER_POLL_MS
        return CLUSTER_POLL_MS if self.tail.awake else int(CHORES_S * 1000)

    def offsets(self) -> dict[int, tuple[int, bool]]:
        """What ``offsets`` answers; a writer waits for it, so the tail fetches at full speed."""
        self.wake()
        return self.parts.states()

    def wake(self) -> None:
        """Fetch at full speed from this loop pass on (a writer waits, or a read wants an offset
        not applied yet), not after the parked tail's next poll."""
        self.tail.wake()
        self._tail_at = 0.0

    def publish(self) -> None:
        """Tell the membership topic what this shard holds now."""
        self.me.partitions = self.parts.states()
        self.publisher.publish(self.me)
        self._published = time.monotonic()

    def _taken(self, p: int) -> bool:
        """Whether another shard of this replica set serves ``p`` (this one may free it)."""
        return any(m.replica == self.cfg.replica and m.endpoint != self.advertise
                   for m in self.reader.view.owners(p))

    def tick(self) -> None:
        """One loop pass: apply new records (every pass while they flow); every CHORES_S,
        heartbeat, free, snapshot; every MEMBERS_POLL_S, read membership."""
        now = time.monotonic()
        if self.leaving is None and (now >= self._tail_at or self.tail.transfers):  # not every pass under reads
            self.tail.poll(0)
            self._tail_at = now + (0.8 * CLUSTER_POLL_MS / 1000 if self.tail.awake else PARKED_POLL_S)
        if now < self._chores_at:
            return
        self._chores_at = now + CHORES_S
        if now >= self._members_at:
            self.reader.poll(0)
            self._members_at = now + MEMBERS_POLL_S
        if self.child is not None:
            self._reap(os.WNOHANG)
        if self.leaving is not None:
            self._hand_over(now)
            return
        if now - self._published >= self.cfg.cluster_heartbeat_s:
            self.publish()
        if self.parts.free_released(self._taken):
            self.publish()
        if (self.child is None and self.dir and now - self._snapshot_at >= self.cfg.snapshot_interval_s
                and self.parts.changes != self._snapshot_changes):
            self.snapshot()

    def leave(self, stopped: Callable[[], None]) -> None:
        """On SIGTERM: leave the group, so Kafka gives this shard's partitions to the others, and
        keep serving each one (reads, and ``pdump`` for the new owner) until another shard of this
        replica set serves it, at most ``LEAVE_S``; then ``stopped()``."""
        if self.leaving is not None:
            return
        log.info("leaving: handing partitions %s over", sorted(p for p, h in self.parts.held.items() if h.serving))
        self.leaving, self._stopped = time.monotonic(), stopped
        self.me.leaving = True
        if self.dir:
            self.snapshot()
        self.tail.close()  # leaves the group: a rebalance gives the partitions to the others
        self.publish()

    def _hand_over(self, now: float) -> None:
        changed = False
        for p, h in self.parts.held.items():
            if h.serving and self._taken(p):
                h.serving, changed = False, True
        if changed:
            self.publish()
        left = [p for p, h in self.parts.held.items() if h.serving]
        view = self.reader.view
        heirs = [m for m in view.live() if m.replica == self.cfg.replica
                 and m.endpoint != self.advertise and not m.leaving]
        deaf = now - max(view.latest, self.leaving) > 3 * self.cfg.cluster_heartbeat_s  # Kafka gone?
        if not left or not heirs or deaf or now - self.leaving > LEAVE_S:
            if left:
                why = ("no other shard of the replica set" if not heirs else "Kafka does not answer" if deaf
                       else f"not taken over in {LEAVE_S:.0f} s")
                log.warning("leaving with partitions %s still here: %s", left, why)
            self._stopped()
        elif now - self._published >= self.cfg.cluster_heartbeat_s:
            self.publish()

    def snapshot(self) -> None:
        """Fork a child that writes every complete partition with its offset (the embedded
        mode's snapshot writer, :mod:`shard.persistence.snapshot`): the loop pauses for the fork only."""
        if self.child is not None:
            return
        os.makedirs(self.dir, exist_ok=True)
        groups, meta = self.parts.snapshot_args()
        t0 = time.perf_counter()
        try:
            pid = snapshots.fork_writer(self.dir, self.gen, self.parts.store, self.cfg.shard_index, groups, meta)
        except OSError as exc:  # out of memory or processes: Kafka and the peers hold everything
            log.error("cannot fork a snapshot child: %s", exc)
            return
        self.child = (pid, self.gen, time.monotonic(), self.parts.changes)
        self.gen += 1
        self._snapshot_at = time.monotonic()
        log.info("snapshot %d of %d partitions started in child %d (loop paused %.1f ms)", self.child[1],
                 len(meta["offsets"]), pid, 1000 * (time.perf_counter() - t0))

    def _reap(self, flags: int) -> None:
        pid, gen, started, changes = self.child
        done, status = os.waitpid(pid, flags)
        if done == 0:
            return
        self.child = None
        if os.waitstatus_to_exitcode(status) == 0:
            self._snapshot_changes = changes
            log.info("snapshot %d written in %.2f s", gen, time.monotonic() - started)
        else:
            log.error("snapshot %d failed (child status %d); retried in %g s", gen, status,
                      self.cfg.snapshot_interval_s)

    def stats(self) -> dict:
        return {"cluster_partitions": {str(p): [o, up] for p, (o, up) in self.parts.states().items()},
                "cluster_records": self.parts.applied, "misrouted": self.parts.misrouted,
                "rejected_records": self.parts.rejected, "snapshotting": self.child is not None,
                "cluster_parked": sorted(self.tail.parked),
                "cluster_arriving": {str(p): [t.endpoint, t.entities] for p, t in self.tail.transfers.items()},
                "bootstrapped_from": dict(map(
                    lambda kv: (str(kv[0]), kv[1]), self.tail.sources.items()))}

    def close(self) -> None:
        """After the loop: wait for a snapshot being written, write a last one (in this process,
        the same writer) if anything changed since, and say this shard left."""
        if self.child is not None:
            self._reap(0)
        if self.dir and self.parts.changes != self._snapshot_changes:
            try:
                groups, meta = self.parts.snapshot_args()
                snapshots.write_snapshot(self.dir, self.gen, self.parts.store, self.cfg.shard_index, groups, meta)
                files.remove_older(self.dir, self.gen)
            except OSError as exc:
                log.error("final snapshot failed: %s", exc)
        if self.leaving is None:
            self.tail.close()
        self.publisher.leave(self.me)
        self.reader.close()


__all__ = ["ClusterShard", "SnapshotMismatch", "CLUSTER_POLL_MS"]
