"""``python -m shard --index I``: run shard I of the cluster."""
from __future__ import annotations

import logging
import signal
import sys

import zmq

from common import config, logs
from shard.freshness import Freshness
from shard.handlers import ShardState
from shard.persistence import Journal, RecoveryError, SyncError
from shard.server import Server, bind
from shard.store import Store

log = logging.getLogger("shard")


def main(argv: list[str] | None = None) -> int:
    cfg = config.load_or_exit(argv, "shard")
    logs.setup(cfg, "shard", cfg.shard_index)
    store = Store.from_config(cfg)
    state = ShardState(cfg.shard_index, store, freshness=Freshness(cfg.freshness_sample_every if cfg.metrics else 0))
    if cfg.data_dir:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit fails the write instead
        state.journal = Journal.from_config(cfg, store)
        try:
            state.journal.recover()
        except (RecoveryError, OSError) as exc:
            log.critical("shard %d cannot recover: %s", cfg.shard_index, exc)
            return 2
    # bound only once recovered: a shard that answers a ping is ready
    endpoint = cfg.endpoints()[cfg.shard_index]
    ctx = zmq.Context()
    sock = bind(ctx, endpoint)
    journal = state.journal
    server = Server(state, sock, chores=[store.sweep, journal.tick] if journal else [store.sweep],
                    make_durable=journal.sync_pending if journal else None)
    server.install_signal_handlers()
    log.info("shard %d of %d listening on %s (%s)", cfg.shard_index, cfg.shards, endpoint,
             f"data in {journal.dir}, fsync {cfg.fsync}" if journal else "memory only")
    print(f"READY shard {cfg.shard_index} {endpoint}", flush=True)
    try:
        server.run()
    except SyncError as exc:  # nothing of the failed pass was acknowledged
        log.critical("shard %d stops: %s", cfg.shard_index, exc)
        return 3
    finally:
        sock.setsockopt(zmq.LINGER, 1000)  # the replies of the last pass still go out
        sock.close()
        ctx.term()
    if journal:
        journal.close()
    log.info("shard %d stopped", cfg.shard_index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
