"""Socket-free stand-ins for the DEALER sockets of common.link, for unit tests."""
import os
import struct
from collections import deque

import zmq

from common import protocol as P


class FakeDealer:
    """Records what is sent (decoded frames), hands out queued frames; no ZeroMQ behind it.

    ``connected = False`` makes a send fail as a DEALER with ``ZMQ_IMMEDIATE`` does when its peer
    is not connected. ``fd`` is the read end of a pipe: a test wakes an event loop's reader by
    writing to ``wake_fd``. ``zmq_poll`` sees it readable while frames are queued (``fileno``:
    a pipe holding a byte per queued frame)."""

    def __init__(self, endpoint: str = "") -> None:
        self.endpoint = endpoint
        self.sent: list[list] = []
        self.inbox: deque[bytes] = deque()
        self.connected = True
        self.fd, self.wake_fd = os.pipe()
        self._queued_r, self._queued_w = os.pipe()  # a byte per frame in the inbox
        self.monitor: FakeMonitor | None = None
        self.options: dict[int, object] = {}

    def setsockopt(self, opt: int, value) -> None:
        self.options[opt] = value

    def connect(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def getsockopt(self, opt: int) -> int:
        if opt == zmq.EVENTS:
            return zmq.POLLIN if self.inbox else 0
        if opt == zmq.FD:
            return self.fd
        raise AssertionError(f"unexpected option {opt}")

    def send(self, data: bytes, flags: int = 0) -> None:
        if not self.connected:
            raise zmq.Again()
        self.sent.append(P.decode(data))

    def fileno(self) -> int:
        return self._queued_r

    def recv(self, flags: int = 0) -> bytes:
        if not self.inbox:
            raise zmq.Again()
        os.read(self._queued_r, 1)
        return self.inbox.popleft()

    def queue(self, *replies: dict) -> None:
        """A frame of replies, as the shard would send it."""
        self.push(P.encode(list(replies)))

    def push(self, frame: bytes) -> None:
        """Queue ``frame`` for :meth:`recv`, whatever it holds."""
        self.inbox.append(frame)
        os.write(self._queued_w, b"x")

    def get_monitor_socket(self, events: int) -> "FakeMonitor":
        self.monitor = FakeMonitor()
        return self.monitor

    def disable_monitor(self) -> None:
        pass

    def close(self, linger: int | None = None) -> None:
        for fd in (self.fd, self.wake_fd, self._queued_r, self._queued_w):
            try:
                os.close(fd)
            except OSError:
                pass


class FakeMonitor:
    """A monitor socket whose connection events a test queues with :meth:`event`."""

    def __init__(self) -> None:
        self.events: deque[list] = deque()

    def event(self, event: int) -> None:
        self.events.append([struct.pack("=hi", event, 0), b"tcp://fake"])

    def poll(self, timeout: int = 0) -> int:
        return zmq.POLLIN if self.events else 0

    def recv_multipart(self, flags: int = 0) -> list:
        return self.events.popleft()

    def close(self, linger: int | None = None) -> None:
        pass


class FakeContext:
    """``ctx.socket(zmq.DEALER)`` for :func:`common.link.connect_dealer`; keeps what it made."""

    def __init__(self) -> None:
        self.sockets: list[FakeDealer] = []

    def socket(self, kind: int) -> FakeDealer:
        assert kind == zmq.DEALER
        sock = FakeDealer()
        self.sockets.append(sock)
        return sock
