"""The shard's socket loop: receive -> decode -> dispatch -> send, plus periodic chores."""
from __future__ import annotations

import logging
import signal
from typing import Callable

import zmq
from zmq import NOBLOCK, RCVMORE, SNDMORE, zmq_poll

from common import curve
from shard.handlers import ShardState, handle_frame

log = logging.getLogger("shard")

POLL_MS = 100  # the longest a chore waits when no message arrives
MAX_PASS = 1000  # messages answered per pass before the chores run again


def bind(ctx: zmq.Context, endpoint: str, curve_dir: str | None = None, max_frame_bytes: int = -1) -> zmq.Socket:
    """The shard's ROUTER socket, bound to ``endpoint``; with ``curve_dir``, encrypted and open
    only to the client key (the process runs :func:`common.curve.start_authenticator`). A peer
    sending a message over ``max_frame_bytes`` is disconnected before it is buffered whole."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a reply to a vanished client is dropped
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    if curve_dir:
        curve.serve(sock, curve_dir)
    sock.bind(endpoint)
    return sock


class Server:
    """Owns the ROUTER socket and runs the loop until :meth:`stop`.

    :arg chores: callables run once per loop pass (fsync, snapshots, TTL sweeps).
    :arg make_durable: called after a pass's messages are handled and before any of their
        replies is sent (group commit: one fsync for every write of the pass).
    :arg poll_ms: the longest the loop waits for a message before the chores run again, or a
        callable that says it each pass (shorter while a chore has work arriving elsewhere).
    """

    def __init__(self, shard: ShardState, sock: zmq.Socket, chores=(), make_durable=None,
                 poll_ms: int | Callable[[], int] = POLL_MS) -> None:
        self.shard = shard
        self.poll_ms = poll_ms
        self.sock = sock
        self.chores = list(chores)
        self.make_durable = make_durable or (lambda: None)
        self.running = True

    def stop(self, *_args) -> None:
        self.running = False

    def run(self) -> None:
        ready = [(self.sock, zmq.POLLIN)]
        wait = self.poll_ms if callable(self.poll_ms) else (lambda: self.poll_ms)
        while self.running:
            if zmq_poll(ready, wait()):
                self.serve_queued()
            for chore in self.chores:
                try:
                    chore()
                except Exception:  # a failed chore is retried next pass; it never stops the loop
                    log.exception("shard %d: chore %s failed", self.shard.index, getattr(chore, "__name__", chore))

    def serve_queued(self) -> None:
        """Handle what is queued, make its writes durable, then send every reply.

        pyzmq's conveniences cost more than a request's work here: ``recv_multipart`` and
        ``send_multipart`` 6-9 us a message against 1.4-3 us for their frames one by one, and
        ``get(zmq.EVENTS)`` (an enum per call) twice what ``zmq_poll`` takes to say the same."""
        sock, shard = self.sock, self.shard
        recv, more = sock.recv, sock.getsockopt
        ready = [(sock, zmq.POLLIN)]
        replies = []
        while True:
            try:
                peer = recv(NOBLOCK)
            except zmq.Again:  # (the caller's poll said a message is there)
                break
            frame = recv(NOBLOCK)  # a ROUTER's message has its peer's id and at least one frame
            if more(RCVMORE):
                n = 2
                while more(RCVMORE):
                    recv(NOBLOCK)
                    n += 1
                log.warning("shard %d: dropped a message of %d frames", shard.index, n)
            else:
                replies.append((peer, handle_frame(shard, frame)))
            if len(replies) >= MAX_PASS or not zmq_poll(ready, 0):
                break
        self.make_durable()
        send = sock.send
        for peer, reply in replies:
            send(peer, SNDMORE)
            send(reply)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
