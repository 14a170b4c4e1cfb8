"""``python -m shard --index I``: run shard I (embedded mode), or a shard of replica set
``FS_REPLICA`` whose partitions Kafka assigns (cluster mode, ``FS_CLUSTER_KAFKA``)."""
from __future__ import annotations

import gc
import logging
import signal
import sys

import zmq

from common import config, curve, logs
from shard.handlers import ShardState
from shard.persistence import Journal, RecoveryError, SyncError
from shard.server import POLL_MS, Server, bind
from shard.store import Store
from shard.topology import SlotOwner, TopologyMismatch, check_data_dir

log = logging.getLogger("shard")


class StartError(Exception):
    """The shard cannot start; one line says why."""


def embedded(cfg, state: ShardState, _ctx, _endpoint):
    """Slot table, journal and recovery: (chores, commit, close, poll_ms, description)."""
    state.owner = SlotOwner(cfg.shard_index, cfg.shards)
    store = state.store
    if not cfg.data_dir:
        return [store.sweep], None, None, POLL_MS, f"shard {cfg.shard_index} of {cfg.shards}, memory only"
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit fails the write instead
    journal = state.journal = Journal.from_config(cfg, store)
    try:
        check_data_dir(journal.dir, cfg.shard_index, cfg.shards)
        journal.recover()
    except (TopologyMismatch, RecoveryError, OSError) as exc:
        raise StartError(f"cannot recover: {exc}") from None
    return ([store.sweep, journal.tick], journal.sync_pending, journal.close, POLL_MS,
            f"shard {cfg.shard_index} of {cfg.shards}, data in {journal.dir}, fsync {cfg.fsync}")


def cluster(cfg, state: ShardState, ctx, endpoint):
    """Partitions from Kafka, membership, snapshots: (chores, commit, close, poll_ms, description)."""
    from confluent_kafka import KafkaException

    from shard.cluster_run import ClusterShard, SnapshotMismatch

    try:
        state.cluster = ClusterShard(cfg, state.store, ctx, endpoint)
    except (SnapshotMismatch, KafkaException, OSError) as exc:
        raise StartError(str(exc)) from None
    state.owner = state.cluster.parts
    return ([state.store.sweep, state.cluster.tick], None, state.cluster.close, state.cluster.poll_ms,
            f"replica set {cfg.replica} of topic {cfg.cluster_topic} ({state.cluster.parts.n} partitions), "
            f"advertised as {state.cluster.advertise}")


FULL_GC_EVERY = 100  # young collections between two that walk the whole heap (CPython's default: 10)


def tune_gc() -> None:
    """A shard's heap is mostly long-lived and acyclic (blobs, window states): the collections
    that walk all of it are the costly part of garbage collection, so they run a tenth as often,
    and what exists once the shard has recovered (modules, settings) is left out of them."""
    gc.freeze()
    gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], FULL_GC_EVERY)


def main(argv: list[str] | None = None) -> int:
    cfg = config.load_or_exit(argv, "shard")
    logs.setup(cfg, "shard", cfg.shard_index)
    state = ShardState.from_config(cfg, Store.from_config(cfg))
    endpoint = cfg.shard_endpoint()
    ctx = zmq.Context()
    try:
        guard = curve.start_authenticator(ctx, cfg.curve_dir)  # before any socket binds
    except curve.CurveError as exc:
        print(f"shard {cfg.shard_index}: cannot start: {exc}", file=sys.stderr, flush=True)
        ctx.destroy(0)
        return 2
    try:
        chores, commit, close, poll_ms, what = (cluster if cfg.cluster_kafka else embedded)(cfg, state, ctx, endpoint)
    except StartError as exc:
        print(f"shard {cfg.shard_index}: {exc}", file=sys.stderr, flush=True)
        if guard is not None:
            guard.stop()
        ctx.destroy(0)
        return 2
    tune_gc()
    # bound only once recovered: a shard that answers a ping is ready
    sock = bind(ctx, endpoint, cfg.curve_dir, cfg.max_frame_bytes)
    server = Server(state, sock, chores=chores, make_durable=commit, poll_ms=poll_ms)
    server.install_signal_handlers()
    if state.cluster is not None:  # hand the partitions over first, then stop
        leave = lambda *_: state.cluster.leave(server.stop)  # noqa: E731
        signal.signal(signal.SIGTERM, leave)
        signal.signal(signal.SIGINT, leave)
    log.info("shard %d listening on %s: %s", cfg.shard_index, endpoint, what)
    print(f"READY shard {cfg.shard_index} {endpoint}", flush=True)
    try:
        server.run()
    except SyncError as exc:  # nothing of the failed pass was acknowledged
        log.critical("shard %d stops: %s", cfg.shard_index, exc)
        return 3
    finally:
        sock.setsockopt(zmq.LINGER, 1000)  # the replies of the last pass still go out
        sock.close()
    if close is not None:
        close()
    if guard is not None:
        guard.stop()
    ctx.term()
    log.info("shard %d stopped", cfg.shard_index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
