"""The shard's socket loop: receive -> decode -> dispatch -> send, plus periodic chores."""
from __future__ import annotations

import logging
import signal

import zmq

from shard.handlers import ShardState, handle_frame

log = logging.getLogger("shard")

POLL_MS = 100  # the longest a chore waits when no message arrives


def bind(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """The shard's ROUTER socket, bound to ``endpoint``."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a vanished client is dropped
    sock.bind(endpoint)
    return sock


class Server:
    """Owns the ROUTER socket and runs the loop until :meth:`stop`."""

    def __init__(self, shard: ShardState, sock: zmq.Socket, chores=()) -> None:
        self.shard = shard
        self.sock = sock
        self.chores = list(chores)  # callables run once per loop pass
        self.running = True

    def stop(self, *_args) -> None:
        self.running = False

    def run(self) -> None:
        sock, shard = self.sock, self.shard
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while self.running:
            if poller.poll(POLL_MS):
                while sock.get(zmq.EVENTS) & zmq.POLLIN:  # drain what is queued before the chores
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                    if len(frames) != 2:
                        log.warning("shard %d: dropped a message of %d frames", shard.index, len(frames))
                        continue
                    sock.send_multipart([frames[0], handle_frame(shard, frames[1])])
            for chore in self.chores:
                chore()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
