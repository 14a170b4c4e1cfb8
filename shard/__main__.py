"""``python -m shard --index I``: run shard I of the cluster."""
from __future__ import annotations

import logging
import sys

import zmq

from common import config
from shard.handlers import ShardState
from shard.store import Store
from shard.server import Server, bind

log = logging.getLogger("shard")


def main(argv: list[str] | None = None) -> int:
    cfg = config.load(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    endpoint = cfg.endpoints()[cfg.shard_index]
    ctx = zmq.Context()
    sock = bind(ctx, endpoint)
    store = Store.from_config(cfg)
    server = Server(ShardState(cfg.shard_index, store), sock, chores=[store.sweep])
    server.install_signal_handlers()
    log.info("shard %d of %d listening on %s", cfg.shard_index, cfg.shards, endpoint)
    print(f"READY shard {cfg.shard_index} {endpoint}", flush=True)
    server.run()
    sock.close()
    ctx.term()
    log.info("shard %d stopped", cfg.shard_index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
