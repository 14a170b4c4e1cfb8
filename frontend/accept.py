"""Accepting connections while the process is out of file descriptors (or socket memory).

``accept()`` then fails with ``EMFILE``/``ENFILE`` (``ENOBUFS``/``ENOMEM``) and the listening
socket stays readable, since the connection is still queued:

- asyncio (the fast engine, ``loop.create_server``) stops watching the socket for
  ``ACCEPT_RETRY_DELAY`` (1 s), but (Python 3.11) goes on with its loop of up to ``backlog``
  accept() calls, each failing again and scheduling one more retry, and hands every failure to
  the loop's exception handler, which logs it with a traceback: ``backlog`` tracebacks a second
  at least, and more each second when the retries spread over several loop passes (measured:
  128, then about 250, then 750 failed calls a second). The engine listens on a
  :class:`ListeningSocket`: its ``accept`` reports to an :class:`Exhaustion` and ends asyncio's
  loop after the first failure (one retry a second), and :func:`quiet_accept_failures` keeps
  asyncio from logging them.
- Tornado's ``add_accept_handler`` lets the error escape its callback; the loop logs it and calls
  the callback again at once: a loop at 100% CPU writing a traceback per turn. Tornado's engine
  accepts with :func:`add_accept_handler` here instead, which pauses as asyncio does.

Either way :class:`Exhaustion` logs one line when accepting starts to fail and one when it works
again (tests/test_limits.py runs a front end with a low ``RLIMIT_NOFILE``).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Any, Callable

from tornado.ioloop import IOLoop

log = logging.getLogger("frontend")

RETRY_S = 1.0  # while accept() fails for want of resources, try again this often (as asyncio)
BACKLOG = 128  # connections accepted per wake-up at most (as Tornado)
EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ASYNCIO_MESSAGE = "socket.accept() out of system resource"  # asyncio.selector_events' context message


class Exhaustion:
    """Whether accept() is failing for want of resources: a line when it starts, one when it ends."""

    __slots__ = ("failures", "since", "open_connections")

    def __init__(self, open_connections: Callable[[], int]) -> None:
        self.failures = 0  # failed tries of the current episode (0: accepting works)
        self.since = 0.0
        self.open_connections = open_connections

    def failed(self, exc: OSError) -> None:
        if not self.failures:
            self.since = time.monotonic()
            log.warning("cannot accept connections (%s) with %d open: accepting is paused and tried "
                        "again every %g s (raise the open-files limit, ulimit -n, or lower "
                        "FS_HTTP_MAX_CONNECTIONS)", exc.strerror or exc, self.open_connections(), RETRY_S)
        self.failures += 1

    def accepted(self) -> None:
        """accept() worked: an episode of failures, if any, is over."""
        if self.failures:
            log.warning("accepting connections again after %.1f s (accept() failed %d times)",
                        time.monotonic() - self.since, self.failures)
            self.failures = 0


class ListeningSocket(socket.socket):
    """A listening socket whose ``accept`` tells :attr:`exhaustion` when it fails for want of
    resources and when it works again (:func:`watched` makes one). After a failure, the calls of
    the same pass of asyncio's accept loop raise ``BlockingIOError``, which ends that loop: asyncio
    has scheduled its one retry already."""

    exhaustion: Exhaustion
    quiet_until = 0.0

    def accept(self):
        if self.exhaustion.failures and time.monotonic() < self.quiet_until:
            raise BlockingIOError("accepting is paused")
        try:
            pair = super().accept()
        except OSError as exc:
            if exc.errno in EXHAUSTED:
                self.exhaustion.failed(exc)
                self.quiet_until = time.monotonic() + RETRY_S / 2
            raise
        if self.exhaustion.failures:
            self.exhaustion.accepted()
        return pair


def watched(sock: socket.socket, exhaustion: Exhaustion) -> ListeningSocket:
    """``sock`` (which it takes over) as a :class:`ListeningSocket` reporting to ``exhaustion``."""
    listening = ListeningSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    listening.exhaustion = exhaustion
    return listening


def quiet_accept_failures(loop: asyncio.AbstractEventLoop) -> None:
    """Keep asyncio from logging each accept() that fails for want of resources (a
    :class:`ListeningSocket` has told its :class:`Exhaustion`); every other error goes to the
    handler the loop had."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ASYNCIO_MESSAGE and isinstance(exc, OSError) and exc.errno in EXHAUSTED:
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def add_accept_handler(sock: socket.socket, callback: Callable[[socket.socket, Any], None],
                       exhaustion: Exhaustion) -> Callable[[], None]:
    """Tornado's ``netutil.add_accept_handler``, pausing for :data:`RETRY_S` when accept() fails
    for want of resources instead of failing again at once. Returns the function that stops it."""
    io_loop = IOLoop.current()
    removed = False

    def resume() -> None:
        if not removed:
            io_loop.add_handler(sock, accept, IOLoop.READ)

    def accept(_fd, _events) -> None:
        for _ in range(BACKLOG):
            if removed:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    raise
                exhaustion.failed(exc)
                io_loop.remove_handler(sock)
                io_loop.call_later(RETRY_S, resume)
                return
            if exhaustion.failures:
                exhaustion.accepted()
            callback(connection, address)

    def remove() -> None:
        nonlocal removed
        removed = True
        io_loop.remove_handler(sock)

    io_loop.add_handler(sock, accept, IOLoop.READ)
    return remove
