"""Socket plumbing shared by every process that talks to a shard or to ingest over a DEALER."""
from __future__ import annotations

import logging
from typing import Callable

import zmq
from zmq import zmq_poll

from common import curve
from common import protocol as P

log = logging.getLogger("link")


def connect_dealer(ctx: zmq.Context, endpoint: str, immediate: bool = True, hwm: int | None = None,
                   curve_dir: str | None = None) -> zmq.Socket:
    """A DEALER connected to ``endpoint``: no linger, quick reconnects; with ``immediate``, a send
    to a peer that is not connected fails at once (``zmq.Again``) instead of queueing. With
    ``curve_dir`` (``FS_CURVE_DIR``) it encrypts, with the client's keys (:mod:`common.curve`)."""
    sock = ctx.socket(zmq.DEALER)
    if curve_dir:
        curve.connect_as_client(sock, curve_dir)
    sock.setsockopt(zmq.LINGER, 0)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError:  # not an endpoint ZeroMQ can connect to: no socket left behind
        sock.close(0)
        raise
    return sock


def drain(sock: zmq.Socket, on_frame: Callable[[list], None], peer: str,
          logger: logging.Logger = log) -> None:
    """Read every frame queued on ``sock`` without blocking and pass each decoded frame (a list
    of messages, not yet checked to be maps) to ``on_frame``; a frame that is not a msgpack
    array is logged as ``peer`` sending a malformed frame, and skipped.

    Reads until nothing is readable (asked with ``zmq_poll``, which reads ``zmq.EVENTS`` at about
    half the cost of pyzmq's ``getsockopt``, whose result it wraps in an enum): the socket's fd
    is edge-triggered, so a read event that is not drained to the end is never signalled again."""
    ready = [(sock, zmq.POLLIN)]
    while zmq_poll(ready, 0):
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            messages = P.decode(frame)
        except P.ProtocolError as exc:
            logger.warning("%s sent a malformed frame: %s", peer, exc)
            continue
        on_frame(messages)
