"""Accepting connections while the process is out of file descriptors (or socket memory).

``accept()`` then fails with ``EMFILE``/``ENFILE`` (``ENOBUFS``/``ENOMEM``) and the listening
socket stays readable, since the connection is still queued:

- asyncio (the fast engine, ``loop.create_server``) stops watching the socket for
  ``ACCEPT_RETRY_DELAY`` (1 s) and tries again, but hands every failure to the loop's exception
  handler, which logs it with a traceback: one burst of lines a second for as long as it lasts.
  :func:`quiet_accept_failures` routes those to an :class:`Exhaustion` instead.
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
        """A connection was accepted: an episode of failures, if any, is over."""
        if self.failures:
            log.warning("accepting connections again after %.1f s (%d failed tries)",
                        time.monotonic() - self.since, self.failures)
            self.failures = 0


def quiet_accept_failures(loop: asyncio.AbstractEventLoop, exhaustion: Exhaustion) -> None:
    """Have asyncio's accept failures for want of resources reported to ``exhaustion``, not logged
    each time; every other error goes to the handler the loop had."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ASYNCIO_MESSAGE and isinstance(exc, OSError) and exc.errno in EXHAUSTED:
            exhaustion.failed(exc)
        elif previous is not None:
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
