"""The ``fast`` HTTP engine: an HTTP/1.1 connection layer on the ``httptools`` C parser.

Tornado's own connection layer (``IOStream``, a coroutine per message, header parsing in Python)
is most of what a request costs the front end (../shared/PERFORMANCE.md). This module replaces
it and nothing above it: :class:`HTTPServer` accepts connections with an ``asyncio.Protocol``
(:class:`Connection`) that feeds an ``httptools.HttpRequestParser`` and hands every request to
a Tornado ``HTTPServerConnectionDelegate`` (the ``Application``, or a ``Router`` in front of
it) through an :class:`Exchange`, an implementation of ``httputil.HTTPConnection``. So routing,
every ``RequestHandler``, ``HTTPError`` and ``write_error`` work unchanged, on the same loop.

A ``hot`` router may claim a request instead (``hot(exchange) -> run | None`` once the headers
are in); ``run(exchange)`` is called when its body is in and it is its turn, and answers with
:meth:`Exchange.respond`, without a ``RequestHandler``.

HTTP/1.1 as Tornado speaks it (tests/test_http_engine.py sends both engines the same bytes):
keep-alive; pipelined requests answered in order (a request waits in :attr:`Connection.queue`
while the one before it is answered, with reading paused); chunked bodies; ``Expect:
100-continue``; HTTP/1.0 with and without keep-alive; ``HEAD``. Where Tornado closes the
connection without a word this layer answers first: a malformed request gets 400, a head (request
line and headers) over ``max_head_bytes`` 414 or 431 while it arrives, a body over the limit 413
(before it is read), each with a JSON ``detail`` and ``Connection: close``. A client that goes
away is forgotten quietly; a client that does not read its responses stops being read
(backpressure, never unbounded buffers); a connection idle or sending its headers for too long
is closed; past ``max_connections`` open connections a new one is closed at once. Running out
of file descriptors pauses accepting for a second at a time, logged once (frontend/accept.py).

When a request's turn comes (the one before it answered), ``admit(exchange)`` may refuse it
(returning what answers instead, as a hot router does) or enter it in ``in_flight``, which it
leaves once answered or when its connection goes: a count of the requests in progress, where
pipelined requests waiting for their turn do not count.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import Callable

import httptools
import orjson
import tornado
from tornado import httputil, iostream
from tornado.log import app_log

from frontend import accept

log = logging.getLogger("frontend.http")

MAX_HEAD_BYTES = 65536  # request line and headers of one request, by default (Tornado's limit)
WRITE_HIGH_WATER = 64 * 1024  # bytes queued to a socket: past it, stop reading that connection
BODY_HIGH_WATER = 256 * 1024  # body bytes the application has not taken yet: past it, stop reading
TICKS = 4  # watchdog ticks per (shortest) timeout: a timeout fires up to 1/TICKS late
LINGER_S = 2.0  # after refusing a body, how long its remainder is read and dropped before closing
BACKLOG = 128  # listen backlog, as tornado.netutil.bind_sockets

SERVER = "TornadoServer/%s" % tornado.version  # the Server header, as Tornado's handlers send it
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason.encode("latin1"))
                 for code, reason in httputil.responses.items()}

# Reasons to stop reading a connection (bits of Connection.paused).
_QUEUED = 1  # a request is waiting for the one before it
_WRITES = 2  # the socket's write buffer is above its high-water mark
_BODY = 4  # the application has not taken the body read so far


_date = [0, b""]


def http_date() -> bytes:
    """The Date header's value, rendered once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, httputil.format_timestamp(now).encode()
    return _date[1]


def _closed_future() -> asyncio.Future:
    """What a write to a closed connection returns, as Tornado's does: a StreamClosedError,
    already retrieved so that nothing logs it."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(iostream.StreamClosedError())
    fut.exception()
    return fut


class _Context:
    """``request.connection.context``: where ``HTTPServerRequest`` finds the client's address."""

    __slots__ = ("address", "remote_ip", "protocol")

    def __init__(self, address) -> None:
        self.address = address
        self.remote_ip = address[0] if isinstance(address, tuple) and address else "0.0.0.0"
        self.protocol = "http"

    def __str__(self) -> str:
        return self.remote_ip


class HTTPServer:
    """Serve ``delegate`` (a Tornado ``HTTPServerConnectionDelegate``) on listening sockets.

    :arg max_body_size: a request body longer than this is refused with 413 before it is read
        (a handler may raise its own request's limit with ``set_max_body_size``).
    :arg too_large: the 413 response's JSON body; the default names the limit.
    :arg idle_timeout_s: a connection with no request in progress is closed after this long.
    :arg header_timeout_s: a request's line and headers must arrive within this.
    :arg hot: claims requests to answer without the application (see the module docstring).
    :arg max_head_bytes: a request line and headers longer than this are refused while they arrive.
    :arg max_connections: past this many open connections, a new one is closed at once.
    :arg admit: ``admit(exchange) -> run | None`` when a request's turn comes: None lets it in
        (entered in ``in_flight``), ``run`` answers it instead (see the module docstring).
    :arg in_flight: has ``leave(exchange)``, called once an admitted request is answered or its
        connection is gone: ``frontend.admission.InFlight``.
    """

    def __init__(self, delegate: httputil.HTTPServerConnectionDelegate, *, max_body_size: int,
                 too_large: bytes | None = None, idle_timeout_s: float = 75.0,
                 header_timeout_s: float = 10.0,
                 hot: Callable[["Exchange"], Callable | None] | None = None,
                 max_head_bytes: int = MAX_HEAD_BYTES, max_connections: int = 10000,
                 admit: Callable[["Exchange"], Callable | None] | None = None, in_flight=None) -> None:
        self.delegate = delegate
        self.max_body_size = max_body_size
        self.too_large = too_large or orjson.dumps({"detail": f"body is larger than {max_body_size} bytes"})
        self.idle_timeout_s = idle_timeout_s
        self.header_timeout_s = header_timeout_s
        self.tick_s = min(idle_timeout_s, header_timeout_s) / TICKS
        self.idle_ticks = round(idle_timeout_s / self.tick_s)
        self.header_ticks = round(header_timeout_s / self.tick_s)
        self.hot = hot
        self.max_head_bytes = max_head_bytes
        self.max_connections = max_connections
        self.admit = admit
        self.in_flight = in_flight
        self.connections: set[Connection] = set()
        self.exhaustion = accept.Exhaustion(lambda: len(self.connections))
        self._servers: list[asyncio.AbstractServer] = []
        self.ready: asyncio.Future | None = None

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Accept connections on already-bound listening sockets (``SO_REUSEPORT`` ones too)."""
        loop = asyncio.get_running_loop()
        accept.quiet_accept_failures(loop)
        self.ready = loop.create_future()
        self.ready.set_result(None)  # what a write returns while the socket takes more
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: Connection(self),
                                                          sock=accept.watched(sock, self.exhaustion),
                                                          backlog=BACKLOG))

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close()


class Connection(asyncio.Protocol):
    """One client connection: the parser's callbacks, the queue of its requests, flow control."""

    def __init__(self, server: HTTPServer) -> None:
        # --- the server's
        self.server = server
        self.loop = asyncio.get_running_loop()
        # --- this connection's
        self.transport: asyncio.Transport | None = None
        self.context: _Context | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()  # requests with their headers in; the first is answered
        self.paused = 0  # the _QUEUED | _WRITES | _BODY reasons reading is paused for
        self.write_waiters: list[asyncio.Future] = []  # writes waiting for the socket to drain
        self.closed = False
        self.refused = False  # a refusal is queued: nothing more is read
        # Timeouts count ticks of a watchdog (a timer per connection, not per request):
        self._ticks = 0
        self._idle_since: int | None = 0  # no request in progress since this tick
        self._headers_since: int | None = None  # the current request's first byte came in this tick
        self._watchdog: asyncio.TimerHandle | None = None
        # --- the request being parsed
        self.current: Exchange | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._in_headers = False
        self._count_callbacks = True
        self._headers_too_large = False

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.max_connections:
            self.closed = self.refused = True
            transport.close()
            return
        transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self.context = _Context(transport.get_extra_info("peername"))
        self.server.connections.add(self)
        self._watchdog = self.loop.call_later(self.server.tick_s, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._watchdog is not None:
            self._watchdog.cancel()
        for ex in (*self.queue, *([self.current] if self.current is not None else [])):
            ex.on_connection_lost()
        self.queue.clear()
        self.current = None
        for fut in self.write_waiters:
            if not fut.done():
                fut.set_result(None)  # the next write finds the connection closed
        self.write_waiters.clear()
        on_close = getattr(self.server.delegate, "on_close", None)
        if on_close is not None:
            on_close(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # a closing connection's input is dropped
        if self._in_headers:  # the previous read ended inside a request's headers
            self._header_bytes += len(data)
            self._count_callbacks = False
        else:
            self._count_callbacks = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request is answered, then the connection closed
        except httptools.HttpParserError as exc:
            if self._headers_too_large or self._header_bytes > self.server.max_head_bytes:
                self._refuse_headers()
            elif not self.closed and not self.refused:
                log.info("malformed HTTP request from %s: %s", self.context, exc)
                self.refuse(400, orjson.dumps({"detail": f"malformed HTTP request: {exc}"}))
            return
        if self._in_headers and self._header_bytes > self.server.max_head_bytes:
            self._refuse_headers()

    def pause_writing(self) -> None:
        self._pause(_WRITES)

    def resume_writing(self) -> None:
        self._resume(_WRITES)
        waiters, self.write_waiters = self.write_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self.queue and not self.queue[0].started:
            self._start_next()

    # ---- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_headers = True
        self._count_callbacks = True
        self._headers_since = self._ticks
        self._idle_since = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if self._count_callbacks:
            self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if self._count_callbacks:
            self._header_bytes += len(name) + len(value) + 4
            if self._header_bytes > self.server.max_head_bytes:
                self._count_header(0)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._headers_since = None
        if self.refused:
            return
        parser = self.parser
        ex = Exchange(self, parser.get_method().decode("latin1"), self._url,
                      "HTTP/1.1" if parser.get_http_version() == "1.1" else "HTTP/1.0",
                      self._headers, parser.should_keep_alive())
        # the headers' size as admission counts them, or None if the head came in several reads
        ex.fields_bytes = self._header_bytes - len(self._url) if self._count_callbacks else None
        self.current = ex
        queue = self.queue
        queue.append(ex)
        if ex.content_length is not None and ex.content_length > ex.max_body_size:
            self.refuse(413, self.server.too_large)
            return
        hot = self.server.hot
        if hot is not None:
            ex.run_hot = hot(ex)
        if len(queue) > 1:
            self._pause(_QUEUED)
        else:
            ex.start()

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is not None and not self.refused:
            ex.body_received(body)

    def on_message_complete(self) -> None:
        ex, self.current = self.current, None
        if ex is not None and not self.refused:
            ex.message_complete()

    # ---- flow control
    def _pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def write(self, data: bytes) -> asyncio.Future:
        """Send ``data``; the future is done once the socket takes more (backpressure)."""
        if self.closed or self.transport.is_closing():
            return _closed_future()
        self.transport.write(data)
        if not self.paused & _WRITES:
            return self.server.ready
        fut = self.loop.create_future()
        self.write_waiters.append(fut)
        return fut

    # ---- the request queue
    def response_done(self, ex: Exchange) -> None:
        """``ex`` (the first in the queue) has written its whole response: close, or go on."""
        if self.closed:
            return
        if not ex.keep_alive or not ex.complete:
            # Tornado's rule too: a response that came before its request's whole body means
            # closing, the only way not to read the rest of that body.
            self.close(linger=not ex.complete or self.refused)
            return
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if not queue:
            self._resume(_QUEUED)
            if self.current is None:
                self._idle_since = self._ticks
        elif not self.paused & _WRITES:
            self.loop.call_soon(self._start_next)  # outside the handler that just finished
        # else resume_writing starts the next: a client that does not read gets no more responses

    def _start_next(self) -> None:
        if self.queue and not self.closed and not self.queue[0].started:
            if len(self.queue) == 1 and not self.refused:
                self._resume(_QUEUED)
            self.queue[0].start()

    def refuse(self, status: int, body: bytes, ex: Exchange | None = None) -> None:
        """Answer ``status`` with the JSON ``body`` in the place of ``ex`` (by default the
        request being read), after the responses still owed; then close, reading nothing more."""
        ex = ex or self.current
        if ex is None:
            ex = Exchange(self, "GET", b"", "HTTP/1.1", [], False)
            self.queue.append(ex)
        elif ex.response_started:
            self.close()
            return
        elif ex.started:
            ex.on_connection_lost()  # the application gives up on it: this layer answers
        self.current = None
        self.refused = True
        self._pause(_QUEUED)
        ex.canned = (status, body)
        ex.keep_alive = False
        ex.complete = True  # nothing more of it is wanted
        if self.queue[0] is ex:
            ex.start()

    def _refuse_headers(self) -> None:
        if not self.closed and not self.refused:
            limit = self.server.max_head_bytes
            if not self._headers:  # still in the request line
                self.refuse(414, orjson.dumps({"detail": f"the request line is longer than {limit} bytes"}))
            else:
                self.refuse(431, orjson.dumps({"detail": f"request headers are larger than {limit} bytes"}))

    # ---- timeouts
    def _count_header(self, n: int) -> None:
        if self._count_callbacks:
            self._header_bytes += n
            if self._header_bytes > self.server.max_head_bytes:
                self._headers_too_large = True
                raise ValueError("headers too large")  # stops the parser: HttpParserCallbackError

    def _watch(self) -> None:
        """Every ``tick_s``: close a connection past its header or idle timeout (so it closes
        between the timeout and one tick later)."""
        self._ticks += 1
        server = self.server
        if self._headers_since is not None and self.paused:
            self._headers_since = self._ticks  # time paused by us is not the client's
        if self._headers_since is not None and self._ticks - self._headers_since > server.header_ticks:
            log.debug("closing %s: its request headers took longer than %g s", self.context,
                      server.header_timeout_s)
            self.close()
        elif self._idle_since is not None and self._ticks - self._idle_since > server.idle_ticks:
            self.close()
        else:
            self._watchdog = self.loop.call_later(server.tick_s, self._watch)

    def close(self, linger: bool = False) -> None:
        """Close after what is written so far has been sent.

        ``linger``: the client may still be sending (a body that was refused): send our end's
        FIN and drop what arrives for :data:`LINGER_S` before closing. Closing at once with
        unread input would reset the connection, and the client could lose the response.
        """
        self.refused = True  # nothing more is read
        if self.closed or self.transport is None:
            self.closed = True
            return
        self.closed = True
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            if self.paused:
                self.transport.resume_reading()  # to drop, not to keep
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


class Exchange(httputil.HTTPConnection):
    """One request and its response: Tornado's ``request.connection``.

    Tornado's ``HTTP1Connection`` decides the response's framing and ``Connection`` header,
    and so does this, in the same way (``write_headers``).
    """

    # The state of a new exchange; an instance overrides what changes (fewer stores per request).
    run_hot: Callable | None = None  # set when a hot router claimed this request
    canned: tuple[int, bytes] | None = None  # a refusal this layer answers itself
    in_flight = False  # entered in the server's in_flight count (by its admit hook)
    fields_bytes: int | None = None  # the size of the headers (names, values, 4 per header), if known
    content_length: int | None = None
    expect_continue = False
    # --- the request's progress
    started = False
    complete = False  # the whole request has been read
    chunks: deque[bytes] | tuple = ()  # body not handed on yet (a deque once there is some)
    buffered = 0  # bytes in chunks
    body_size = 0
    blocked = False  # waiting for a future of the delegate before giving it more
    delegate: httputil.HTTPMessageDelegate | None = None
    _finish_delegate = False  # the delegate's finish() has been called (or is not owed)
    # --- the response's progress
    response_started = False
    response_done = False
    _chunking = False
    _remaining: int | None = None
    _close_callback: Callable[[], None] | None = None

    def __init__(self, conn: Connection, method: str, url: bytes, version: str,
                 raw_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.conn = conn
        self.context = conn.context
        self.method = method
        self.url = url
        self.version = version
        self.raw_headers = raw_headers
        self.keep_alive = keep_alive
        self.max_body_size = conn.server.max_body_size
        fields = self.fields = {}  # lower-case name -> the first value of that header
        for name, value in raw_headers:
            fields.setdefault(name.lower(), value)
        length = fields.get(b"content-length")
        if length is not None:
            self.content_length = int(length)  # httptools has checked it is a number (and not repeated)
        expect = fields.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            self.expect_continue = True

    # ---- the request, from the Connection
    def headers(self) -> httputil.HTTPHeaders:
        """The request headers as Tornado's ``HTTPHeaders``."""
        headers = httputil.HTTPHeaders()
        for name, value in self.raw_headers:
            headers.add(name.decode("latin1"), value.decode("latin1"))
        return headers

    def start(self) -> None:
        """Its turn: hand the request on (or answer it), with what of its body is in."""
        self.started = True
        if self.canned is not None:
            status, body = self.canned
            self.respond(status, b"", body)
            return
        admit = self.conn.server.admit
        if admit is not None:
            refusal = admit(self)
            if refusal is not None:
                self.run_hot = refusal
        if self.run_hot is not None:  # it runs once its body is in
            if self.complete:
                self._run_hot()
            return
        start_line = httputil.RequestStartLine(self.method, self.url.decode("latin1"), self.version)
        try:
            self.delegate = self.conn.server.delegate.start_request(self.conn, self)
        except Exception as exc:
            self._delegate_failed(exc)
            return
        if self._call(self.delegate.headers_received, start_line, self.headers()):
            self._unblocked(None)

    def _call(self, method: Callable, *args) -> bool:
        """Call a method of the delegate; False if it failed, or returned a future to wait for
        (:meth:`_unblocked` goes on once that is done)."""
        try:
            waiting = method(*args)
        except Exception as exc:
            self._delegate_failed(exc)
            return False
        if waiting is not None and not waiting.done():
            self.blocked = True
            waiting.add_done_callback(self._unblocked)
            return False
        return True

    def _unblocked(self, _fut) -> None:
        self.blocked = False
        if self.expect_continue and not self.complete and not self.response_started and self.body_size == 0:
            self.conn.write(CONTINUE)
        self._feed()

    def body_received(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.max_body_size and (self.run_hot is not None or self.started and not self.blocked):
            # (while the application's prepare() runs, it may still raise the limit)
            self.conn.refuse(413, self.conn.server.too_large)
            return
        if self.response_done:
            return  # answered already: the rest is dropped and the connection will close
        if not self.chunks:
            self.chunks = deque()
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.started and self.run_hot is None and not self.blocked:
            self._feed()
        if self.buffered > BODY_HIGH_WATER:
            self.conn._pause(_BODY)

    def message_complete(self) -> None:
        self.complete = True
        if not self.started or self.canned is not None:
            return
        if self.run_hot is not None:
            self._run_hot()
        elif not self.blocked:
            self._feed()

    def _run_hot(self) -> None:
        try:
            self.run_hot(self)
        except Exception:
            app_log.error("the fast path failed on %s %s", self.method, self.url, exc_info=True)
            if not self.response_started:
                self.respond(500, b"", b'{"detail":"Internal server error"}')

    def body(self) -> bytes:
        """The whole request body (for a hot router, once the request is complete)."""
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def header(self, name: bytes) -> bytes | None:
        """The (first) value of the request header ``name`` (lower case), or None."""
        return self.fields.get(name)

    def _feed(self) -> None:
        """Give the delegate the body read so far, as fast as it takes it, then ``finish``."""
        delegate = self.delegate
        if self.body_size > self.max_body_size and delegate is not None:
            self.conn.refuse(413, self.conn.server.too_large, self)
            return
        while self.chunks and delegate is not None:
            chunk = self.chunks.popleft()
            self.buffered -= len(chunk)
            if not self._call(delegate.data_received, chunk):
                return
        if self.buffered <= BODY_HIGH_WATER:
            self.conn._resume(_BODY)
        if self.complete and delegate is not None and not self._finish_delegate:
            self._finish_delegate = True
            if not self.response_done:  # as Tornado: a request answered early is not finished
                try:
                    delegate.finish()
                except Exception as exc:
                    self._delegate_failed(exc)

    def _delegate_failed(self, exc: Exception) -> None:
        """As Tornado's ``HTTP1Connection``: an ``HTTPInputError`` (no ``Host``, say) is the
        client's 400; anything else is logged, and the connection closed."""
        self.delegate = None
        if isinstance(exc, httputil.HTTPInputError):
            log.info("malformed HTTP request from %s: %s", self.context, exc)
            self.conn.refuse(400, orjson.dumps({"detail": f"malformed HTTP request: {exc}"}), self)
        else:
            app_log.error("Uncaught exception", exc_info=True)
            self.conn.close()

    def on_connection_lost(self) -> None:
        """The client went away: tell whoever waits on this request, once."""
        delegate, self.delegate = self.delegate, None
        callback, self._close_callback = self._close_callback, None
        self.chunks = ()
        if self.in_flight:
            self.conn.server.in_flight.leave(self)
        try:
            if delegate is not None and not self._finish_delegate:
                delegate.on_connection_close()
            if callback is not None:
                callback()
        except Exception:
            app_log.error("Uncaught exception in a close callback", exc_info=True)

    # ---- httputil.HTTPConnection
    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self._close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        pass  # bodies are bounded by size and by the backpressure on reading them

    def write_headers(self, start_line: httputil.ResponseStartLine, headers: httputil.HTTPHeaders,
                      chunk: bytes | None = None) -> asyncio.Future:
        code = start_line.code
        self.response_started = True
        version11 = self.version == "HTTP/1.1"
        self._chunking = (version11 and self.method != "HEAD" and code not in (204, 304)
                          and not 100 <= code < 200 and "Content-Length" not in headers)
        if version11 and not (self.keep_alive and self.complete):
            headers["Connection"] = "close"  # answered before its whole body: closing after it
        elif not version11 and self.keep_alive:
            headers["Connection"] = "Keep-Alive"
        if self._chunking:
            headers["Transfer-Encoding"] = "chunked"
        if self.method == "HEAD" or code == 304:
            self._remaining = 0
        elif "Content-Length" in headers:
            self._remaining = int(headers["Content-Length"])
        else:
            self._remaining = None
        status = _STATUS_LINES.get(code) if start_line.reason == httputil.responses.get(code) else None
        if status is None:
            status = b"HTTP/1.1 %d %s\r\n" % (code, start_line.reason.encode("latin1"))
        lines = []
        for name, value in headers.get_all():
            value = str(value)
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError("Illegal characters (CR or LF) in header: %r" % value)
            lines.append(f"{name}: {value}\r\n")
        data = status + "".join(lines).encode("latin1") + b"\r\n"
        if chunk:
            data += self._frame(chunk)
        return self.conn.write(data) if not self.conn.closed else _closed_future()

    def write(self, chunk: bytes) -> asyncio.Future:
        if self.conn.closed:
            return _closed_future()
        return self.conn.write(self._frame(chunk))

    def finish(self) -> None:
        if self._remaining and not self.conn.closed:
            self.conn.close()
            raise httputil.HTTPOutputError("Tried to write %d bytes less than Content-Length" % self._remaining)
        if self._chunking and not self.conn.closed:
            self.conn.write(b"0\r\n\r\n")
        self._response_finished()

    def _frame(self, chunk: bytes) -> bytes:
        if self._remaining is not None:
            self._remaining -= len(chunk)
            if self._remaining < 0:
                self.conn.close()
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if self._chunking and chunk:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    def _response_finished(self) -> None:
        self.response_done = True
        if self.in_flight:
            self.conn.server.in_flight.leave(self)
        self.delegate = None
        self._close_callback = None
        self.chunks = ()
        self.conn.response_done(self)

    # ---- a whole response at once (hot routers and this layer's own refusals)
    def respond(self, status: int, headers: dict | bytes, body: bytes,
                content_type: bytes = b"application/json") -> None:
        """Write a complete response with ``body``: the status line, ``Server``, ``Date``,
        ``Content-Type``, ``headers`` (a dict, or lines already rendered), ``Connection`` as
        ``write_headers`` decides, and ``Content-Length``."""
        conn = self.conn
        if conn.closed or self.response_started:
            return
        self.response_started = True
        if type(headers) is not bytes:
            lines = b""
            for name, value in headers.items():
                lines += b"%s: %s\r\n" % (_names.get(name) or _header_name(name), str(value).encode("latin1"))
            headers = lines
        if self.version == "HTTP/1.1":
            if not (self.keep_alive and self.complete):
                headers += b"Connection: close\r\n"
        elif self.keep_alive:
            headers += b"Connection: Keep-Alive\r\n"
        length = len(body)
        if self.method == "HEAD":
            body = b""
        conn.write(b"%s%sContent-Length: %d\r\n\r\n%s" % (_head(status, content_type), headers, length, body))
        self._response_finished()


_names: dict[str, bytes] = {}


def _header_name(name: str) -> bytes:
    """``name`` as Tornado's ``HTTPHeaders`` writes it (``WWW-Authenticate`` -> ``Www-Authenticate``)."""
    rendered = _names.get(name)
    if rendered is None:
        rendered = _names[name] = "-".join(w.capitalize() for w in name.split("-")).encode("latin1")
    return rendered


_heads: dict[tuple[int, bytes], bytes] = {}
_heads_date = [b""]


def _head(status: int, content_type: bytes) -> bytes:
    """The status line, ``Server``, ``Content-Type`` and ``Date`` lines, cached for the second."""
    date = http_date()
    if date is not _heads_date[0]:
        _heads.clear()
        _heads_date[0] = date
    head = _heads.get((status, content_type))
    if head is None:
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
        head = _heads[(status, content_type)] = b"%sServer: %s\r\nContent-Type: %s\r\nDate: %s\r\n" % (
            line, SERVER.encode(), content_type, date)
    return head
