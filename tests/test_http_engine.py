"""The two HTTP engines answer the same raw bytes the same way (a differential suite).

One cluster, two front ends on its shards: ``FS_HTTP_ENGINE=fast`` (frontend/engine.py) and
``tornado`` (Tornado's ``HTTPServer``). Each test writes the same bytes to a socket of each and
compares what comes back: status, the headers that matter (not ``Date``), body and framing, and
whether the connection stays open. Where Tornado is wrong or silent, the test says so and
asserts the correct behaviour of ``fast`` (each such place is marked "Tornado:").
"""
from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import pytest

from common import config
from tests.support import Cluster, cpu_s, free_port, poll_for, request

LIMIT = 2000  # FS_MAX_BODY_BYTES of these front ends
IDLE_S = 1.0  # FS_HTTP_IDLE_TIMEOUT_S and FS_HTTP_HEADER_TIMEOUT_S of these front ends
COMPARED = ("content-type", "content-length", "transfer-encoding", "connection", "etag",
            "retry-after", "www-authenticate")
ENGINES = ("fast", "tornado")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """{engine: (port, process)}: two front ends, one per engine, on the same two shards."""
    tmp = tmp_path_factory.mktemp("engines")
    (tmp / "store.toml").write_text('[views.stats]\njoin_keys = ["driver_id"]\n')
    settings = dict(max_body_bytes=LIMIT, http_idle_timeout_s=IDLE_S, http_header_timeout_s=IDLE_S,
                    config_file=tmp / "store.toml", max_batch_entities=20)
    with Cluster(tmp, http_engine="fast", **settings) as c:
        port = free_port()
        proc = c.start_process(["-m", "frontend"], "frontend_tornado", http_port=port,
                               http_engine="tornado")
        poll_for(lambda: proc.alive() and request("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200,
                 15, what="the tornado front end")
        events = [{"entity_id": "d1", "features": {"a": 1, "b": "x"}, "event_timestamp": "2026-01-01T00:00:00Z"},
                  {"entity_id": "1001", "features": {"stats:rate": 0.5}, "event_timestamp": "2026-01-01T00:00:00Z"}]
        assert request("POST", c.url + "/features", events)[0] == 200
        yield {"fast": (c.http_port, c.frontend), "tornado": (port, proc)}


# ---------------------------------------------------------------- a raw HTTP client
class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, framing: str) -> None:
        self.status, self.headers, self.body, self.framing = status, headers, body, framing

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    def key(self) -> tuple:
        """What must be the same on both engines."""
        return (self.status, {n.lower(): v for n, v in self.headers if n.lower() in COMPARED},
                self.body, self.framing)

    def __repr__(self) -> str:
        return f"Response{self.key()!r}"


class Raw:
    """A socket that writes bytes as given and parses the responses that come back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes) -> "Raw":
        self.sock.sendall(data)
        return self

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return bool(data)

    def _until(self, marker: bytes) -> int:
        while marker not in self.buf:
            if not self._more():
                raise EOFError(f"closed before {marker!r}; got {self.buf[:200]!r}")
        return self.buf.index(marker)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise EOFError("closed inside a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head: bool = False) -> Response:
        """The next response (``head``: it answers a HEAD, so it has no body)."""
        end = self._until(b"\r\n\r\n")
        lines = self.buf[:end].decode("latin1").split("\r\n")
        self.buf = self.buf[end + 4:]
        status = int(lines[0].split(" ", 2)[1])
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        resp = Response(status, headers, b"", "none")
        if head or status < 200 or status in (204, 304):
            return resp
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            resp.framing, body = "chunked", b""
            while True:
                end = self._until(b"\r\n")
                size = int(self.buf[:end].split(b";")[0], 16)
                self.buf = self.buf[end + 2:]
                body += self._take(size + 2)[:size]
                if size == 0:
                    break
            resp.body = body
        elif resp.header("content-length") is not None:
            resp.framing, resp.body = "length", self._take(int(resp.header("content-length")))
        else:
            while self._more():
                pass
            resp.framing, resp.body, self.buf = "close", self.buf, b""
        return resp

    def closed(self, timeout: float = 3.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (nothing else arrives)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            if select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                before = len(self.buf)
                self._more()
                assert self.eof or len(self.buf) == before, f"unexpected bytes: {self.buf[before:][:200]!r}"
        return self.eof

    def rest(self, timeout: float = 3.0) -> bytes:
        """Whatever arrives until the server closes the connection."""
        self.sock.settimeout(timeout)
        while self._more():
            pass
        rest, self.buf = self.buf, b""
        return rest

    def close(self) -> None:
        self.sock.close()


def req(method: str, path: str, body: bytes | None = None, version: str = "1.1", **headers) -> bytes:
    """A request's bytes; ``Host`` and a ``Content-Length`` for a body are added."""
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def both(engines, scenario):
    """``scenario(Raw)`` on a fresh connection to each engine: {engine: what it returned}."""
    out = {}
    for name in ENGINES:
        raw = Raw(engines[name][0])
        try:
            out[name] = scenario(raw)
        finally:
            raw.close()
    return out


def early(key: tuple) -> tuple:
    """A response that came before its request's body, less its ``Connection`` header.

    Tornado: does not say ``Connection: close`` although it closes after such a response;
    fast does (checked by the callers)."""
    status, headers, body, framing = key
    return status, {n: v for n, v in headers.items() if n != "connection"}, body, framing


WRITE = json.dumps({"entity_id": "w1", "name": "n", "value": 5}).encode()


# ---------------------------------------------------------------- keep-alive, pipelining, framing
def test_keep_alive_serves_several_requests_on_one_connection(engines):
    def scenario(raw):
        out = []
        for data in (req("GET", "/features/d1"), req("GET", "/features/d1/b"), req("GET", "/nope"),
                     req("GET", "/features/d1?via=app"), req("POST", "/features", WRITE),
                     req("DELETE", "/features/nobody/x"), req("GET", "/openapi.json")):
            out.append(raw.send(data).response().key())
        return out, raw.closed(0.2)

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    statuses = [k[0] for k in got["fast"][0]]
    assert statuses == [200, 200, 404, 200, 200, 404, 200] and got["fast"][1] is False


def test_pipelined_requests_in_one_write_are_answered_in_order(engines):
    batch = json.dumps({"entity_ids": ["d1", "zz"], "features": ["a"]}).encode()
    data = b"".join([req("GET", "/features/d1"), req("POST", "/features/batch", batch),
                     req("GET", "/nope"), req("GET", "/features/d1/a?x=1"), req("POST", "/features", WRITE),
                     req("GET", "/features/missing"), req("GET", "/features/d1/b")])

    def scenario(raw):
        raw.send(data)
        return [raw.response().key() for _ in range(7)], raw.closed(0.2)

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    assert [k[0] for k in got["fast"][0]] == [200, 200, 404, 200, 200, 404, 200]


def test_many_pipelined_requests_ending_with_connection_close(engines):
    data = req("GET", "/features/d1/a") * 200 + req("GET", "/features/d1", Connection="close")

    def scenario(raw):
        raw.send(data)
        return [raw.response().key() for _ in range(201)], raw.closed()

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    assert got["fast"][1] is True and got["fast"][0][-1][1]["connection"] == "close"


def test_chunked_request_body(engines):
    head = b"POST /features HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = [WRITE[:10], WRITE[10:11], WRITE[11:]]

    def scenario(raw):
        raw.send(head)
        for piece in pieces:
            raw.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        raw.send(b"0\r\n\r\n")
        first = raw.response().key()
        return first, json.loads(raw.send(req("GET", "/features/w1/n")).response().body)["value"]

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    assert got["fast"] == ((200, got["fast"][0][1], b'{"message":"feature saved","written":1,"stale":0}',
                            "length"), 5)


def test_chunked_body_over_the_limit_is_413(engines):
    big = b'"' + b"x" * (2 * LIMIT) + b'"'
    data = (b"POST /features HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
    got = both(engines, lambda raw: raw.send(data).response().key())
    assert got["fast"] == got["tornado"] and got["fast"][0] == 413


def test_chunked_body_far_over_the_limit_is_refused_while_it_arrives(engines):
    """Past 4x the limit Tornado stops reading: a bare 400 (Tornado:); fast answers 413."""
    chunk = b"%x\r\n%s\r\n" % (LIMIT, b"x" * LIMIT)
    head = b"POST /features HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"

    def scenario(raw):
        raw.send(head + chunk * 5)
        return raw.response(), raw.closed()

    got = both(engines, scenario)
    assert got["tornado"][0].status == 400 and got["tornado"][1]
    fast, closed = got["fast"]
    assert fast.status == 413 and closed and "FS_MAX_BODY_BYTES" in json.loads(fast.body)["detail"]


def test_expect_100_continue(engines):
    def scenario(raw):
        raw.send(req("POST", "/features", Expect="100-continue", Content_Length=len(WRITE)))
        interim = raw.response()
        final = raw.send(WRITE).response()
        return interim.status, final.key()

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"] and got["fast"][0] == 100 and got["fast"][1][0] == 200


def test_expect_100_continue_with_a_body_over_the_limit_gets_413_without_continue(engines):
    def scenario(raw):
        raw.send(req("POST", "/features", Expect="100-continue", Content_Length=LIMIT + 1))
        return raw.response().key(), raw.closed()

    got = both(engines, scenario)
    assert early(got["fast"][0]) == early(got["tornado"][0]) and got["tornado"][1] is True
    assert got["fast"][0][0] == 413 and got["fast"][0][1]["connection"] == "close" and got["fast"][1]


def test_http10_without_keep_alive_closes(engines):
    def scenario(raw):
        return raw.send(req("GET", "/features/d1", version="1.0")).response().key(), raw.closed()

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    assert got["fast"][0][0] == 200 and "connection" not in got["fast"][0][1] and got["fast"][1]


def test_http10_keep_alive(engines):
    def scenario(raw):
        first = raw.send(req("GET", "/features/d1", version="1.0", Connection="keep-alive")).response()
        second = raw.send(req("GET", "/features/d1?a", version="1.0", Connection="keep-alive")).response()
        return first.key(), second.key(), raw.closed(0.2)

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    assert got["fast"][0][1]["connection"] == "Keep-Alive" and got["fast"][2] is False


def test_connection_close(engines):
    def scenario(raw):
        return raw.send(req("GET", "/features/d1", Connection="close")).response().key(), raw.closed()

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"]
    assert got["fast"][0][1]["connection"] == "close" and got["fast"][1] is True


@pytest.mark.parametrize("path", ["/features/d1", "/openapi.json", "/nope"])  # not /healthz: its body (pid) differs
def test_head_has_no_body_and_keeps_the_connection(engines, path):
    def scenario(raw):
        head = raw.send(req("HEAD", path)).response(head=True).key()
        return head, raw.send(req("GET", "/features/d1/a")).response().key()

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"] and got["fast"][1][0] == 200


# ---------------------------------------------------------------- the endpoints, good and bad
def j(value) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/features", j({"entity_id": "p1", "name": "n", "value": [1, 2]})),
    ("POST", "/features", j([{"entity_id": "p2", "name": "n", "value": 1}, {"entity_id": "p3", "features": {"a": "b"}}])),
    ("POST", "/features", b"{not json"),
    ("POST", "/features", b""),
    ("POST", "/features", b"   "),
    ("POST", "/features", j({"entity_id": "p1", "name": "n"})),
    ("POST", "/features", j({"entity_id": 5, "name": "n", "value": 1})),
    ("POST", "/features", j("a string")),
    ("POST", "/features/batch", j({"entity_ids": ["d1", "nobody", "1001"]})),
    ("POST", "/features/batch", j({"entity_ids": ["d1"], "features": ["b", "zz"]})),
    ("POST", "/features/batch", j({"entity_ids": [f"e{i}" for i in range(21)]})),
    ("POST", "/features/batch", j({"entity_ids": []})),
    ("POST", "/features/batch", j({"entity_ids": ["d1"], "extra": 1})),
    ("POST", "/features/batch", j({"entity_ids": ["d1"], "features": "b"})),
    ("POST", "/features/batch", j([1, 2])),
    ("POST", "/features/batch", b"[1,"),
    ("POST", "/get-online-features", j({"features": ["stats:rate"], "entities": {"driver_id": [1001, 1002]}})),
    ("POST", "/get-online-features", j({"features": ["nope:rate"], "entities": {"driver_id": [1001]}})),
    ("POST", "/get-online-features", j({"features": ["stats:rate"]})),
    ("POST", "/get-online-features", j({"feature_service": "none", "entities": {"driver_id": [1]}})),
    ("POST", "/get-online-features", b"{"),
    ("POST", "/get-online-features", j([])),
    ("GET", "/features?entity_id=d1&name=a", None),
    ("GET", "/features?entity_id=d1", None),
    ("GET", "/features/%FF", None),
    ("GET", "/features/d1/", None),
    ("DELETE", "/features/gone/x", None),
    ("PUT", "/features", b"{}"),
    ("GET", "/features/batch", None),
])
def test_endpoints_answer_alike(engines, method, path, body):
    got = both(engines, lambda raw: raw.send(req(method, path, body)).response().key())
    assert got["fast"] == got["tornado"]
    assert got["fast"][0] != 500


# ---------------------------------------------------------------- bad requests and limits
@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /features/d1 HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n",
    b"GET /features/d1 HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"POST /features HTTP/1.1\r\nHost: test\r\nContent-Length: 12x\r\n\r\n",
    b"POST /features HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
])
def test_malformed_request_is_400_and_closed(engines, data):
    """Tornado: a bare ``400 Bad Request`` with no body; fast adds a JSON detail."""
    def scenario(raw):
        good = raw.send(req("GET", "/features/d1/a")).response().key()
        bad = raw.send(data).response()
        return good, bad, raw.closed()

    got = both(engines, scenario)
    assert got["fast"][0] == got["tornado"][0]
    for name in ENGINES:
        assert got[name][1].status == 400 and got[name][2] is True, name
    assert json.loads(got["fast"][1].body)["detail"].startswith("malformed HTTP request")


def test_malformed_request_after_pipelined_good_ones_is_answered_after_them(engines):
    def scenario(raw):
        raw.send(req("GET", "/features/d1") + req("GET", "/nope") + b"GARBAGE\r\n\r\n")
        return [raw.response().status for _ in range(3)], raw.closed()

    got = both(engines, scenario)
    assert got["fast"] == got["tornado"] == ([200, 404, 400], True)


def test_headers_over_the_limit_are_431(engines):
    """Both engines answer 431 and close (Tornado through frontend/admission.py)."""
    data = req("GET", "/features/d1", X_Big="y" * 70_000)

    def scenario(raw):
        raw.send(data)
        try:
            return raw.response(), raw.closed()
        except EOFError:
            return None, raw.eof

    got = both(engines, scenario)
    for engine in ("fast", "tornado"):
        response, closed = got[engine]
        assert response.status == 431 and closed and "headers" in json.loads(response.body)["detail"], engine


@pytest.mark.parametrize("path", ["/features/" + "a" * 9000, "/healthz?x=" + "a" * 9000,
                                  "/features/" + "a" * 9000 + "/n"])
def test_an_over_long_request_line_is_414_and_closed(engines, path):
    """Past FS_HTTP_MAX_REQUEST_LINE_BYTES (8 KiB by default): 414 on the hot paths too."""
    got = both(engines, lambda raw: (raw.send(req("GET", path)).response().key(), raw.closed()))
    assert got["fast"] == got["tornado"]
    (status, headers, body, _), closed = got["fast"]
    assert (status, headers["connection"], closed) == (414, "close", True)
    assert "FS_HTTP_MAX_REQUEST_LINE_BYTES" in json.loads(body)["detail"]


def test_a_request_line_far_over_the_limit_is_414_while_it_arrives(engines):
    """Past twice the head limits (request line and headers) nothing more is read.

    Tornado: closes the connection without a word; fast answers 414."""
    def scenario(raw):
        raw.send(b"GET /features/" + b"a" * 200_000)
        try:
            return raw.response().status, raw.closed()
        except EOFError:
            return None, raw.eof

    got = both(engines, scenario)
    assert got["fast"] == (414, True) and got["tornado"] == (None, True)


def test_many_headers_within_the_limit_are_fine(engines):
    headers = {f"X_H{i}": "v" * 100 for i in range(200)}  # about 22 KB
    got = both(engines, lambda raw: raw.send(req("GET", "/features/d1", **headers)).response().key())
    assert got["fast"] == got["tornado"] and got["fast"][0] == 200


def test_body_over_the_limit_is_413_before_it_is_read(engines):
    """Only the headers are sent: the 413 comes without the body, and the connection closes."""
    def scenario(raw):
        raw.send(req("POST", "/features", Content_Length=10**9))
        return raw.response().key(), raw.rest()

    got = both(engines, scenario)
    assert early(got["fast"][0]) == early(got["tornado"][0])
    assert got["fast"][0][0] == 413 and "FS_MAX_BODY_BYTES" in json.loads(got["fast"][0][2])["detail"]
    assert got["fast"][0][1]["connection"] == "close" and got["fast"][1] == got["tornado"][1] == b""


def test_body_a_little_over_the_limit_is_413_and_closed(engines):
    def scenario(raw):
        raw.send(req("POST", "/features", b"x" * (LIMIT + 10)))
        return raw.response().key(), raw.closed()

    got = both(engines, scenario)
    assert early(got["fast"][0]) == early(got["tornado"][0]) and got["tornado"][1]
    assert got["fast"][0][0] == 413 and got["fast"][0][1]["connection"] == "close" and got["fast"][1]


# ---------------------------------------------------------------- clients that go away or read slowly
def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that crashed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_clients_that_disconnect_mid_request_or_mid_response_leak_nothing(engines, engine):
    port, proc = engines[engine]
    assert Raw(port).send(req("GET", "/features/d1")).response().status == 200
    baseline = open_fds(proc.pid)
    log_before = len(proc.output())
    partial = [req("GET", "/features/d1")[:20], req("POST", "/features", WRITE)[:-5],
               b"POST /features HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"]
    for i in range(60):
        sock = socket.create_connection(("127.0.0.1", port))
        if i % 3 == 2:  # a whole request for a large response, gone before reading it
            sock.sendall(req("GET", "/openapi.json") * 20 + req("GET", "/features/d1"))
        else:
            sock.sendall(partial[i % len(partial)])
        (reset if i % 2 else socket.socket.close)(sock)
    poll_for(lambda: open_fds(proc.pid) <= baseline, 10, what=f"{engine}: its descriptors back to {baseline}")
    assert Raw(port).send(req("GET", "/features/d1")).response().status == 200
    new_log = proc.output()[log_before:]
    assert "Traceback" not in new_log and "ERROR" not in new_log, new_log[-2000:]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_client_that_does_not_read_is_not_buffered_for(engines, engine):
    """4,000 pipelined GET /openapi.json (66 MB of responses) from a client that reads nothing
    for a while: the server stops answering instead of buffering responses (answering the
    requests of one read at once buffered 16 MB or more); then every response arrives, in order."""
    port, proc = engines[engine]
    n, status_line = 4000, b"HTTP/1.1 200 OK\r\n"
    one = Raw(port).send(req("GET", "/openapi.json")).response()
    size = len(status_line) + sum(len(f"{k}: {v}\r\n") for k, v in one.headers) + 2 + len(one.body)
    before = rss_kb(proc.pid)
    sock = socket.create_connection(("127.0.0.1", port))
    data = memoryview(req("GET", "/openapi.json") * n)
    sock.setblocking(False)
    sent = 0
    while sent < len(data):  # until the server has stopped reading for a while
        try:
            sent += sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            if not select.select([], [sock], [], 0.5)[1]:
                break
    poll_for(lambda: cpu_idle(proc.pid, 0.5), 60, what=f"{engine} to stop working")  # done all it will do
    grown_mb = (rss_kb(proc.pid) - before) / 1024
    assert grown_mb < 10, f"{engine} grew by {grown_mb:.1f} MB for a client that reads nothing"
    sock.setblocking(True)
    sender = threading.Thread(target=sock.sendall, args=(data[sent:],))
    sender.start()
    received, count, tail = 0, 0, b""
    sock.settimeout(10)
    while received < n * size:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {received} of {n * size} bytes"
        received += len(chunk)
        count += (tail + chunk).count(status_line) - tail.count(status_line)
        tail = chunk[-len(status_line):]
    sender.join(10)
    sock.close()
    assert (received, count) == (n * size, n)


# ---------------------------------------------------------------- timeouts and idle CPU
@pytest.mark.parametrize("engine", ENGINES)
def test_idle_connection_is_closed_after_the_idle_timeout(engine, engines):
    raw = Raw(engines[engine][0])
    assert raw.send(req("GET", "/features/d1")).response().status == 200
    t0 = time.monotonic()
    assert raw.closed(IDLE_S * 4)
    assert time.monotonic() - t0 >= IDLE_S * 0.9


@pytest.mark.parametrize("engine", ENGINES)
def test_headers_that_never_end_are_cut_off(engine, engines):
    raw = Raw(engines[engine][0])
    t0 = time.monotonic()
    raw.send(b"GET /features/d1 HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    assert raw.closed(IDLE_S * 4)
    assert time.monotonic() - t0 >= IDLE_S * 0.9


def cpu_idle(pid: int, window_s: float) -> bool:
    """Whether process ``pid`` used no CPU during a ``window_s`` measurement window."""
    before = cpu_s(pid)
    select.select([], [], [], window_s)
    return cpu_s(pid) == before


@pytest.mark.parametrize("engine", ENGINES)
def test_an_idle_front_end_uses_no_cpu(engine, engines):
    port, proc = engines[engine]
    raws = [Raw(port) for _ in range(5)]
    for raw in raws:
        assert raw.send(req("GET", "/features/d1")).response().status == 200
    before, t0 = cpu_s(proc.pid), time.monotonic()
    raws[0].closed(0.8)  # a measurement window: five open keep-alive connections, no requests
    used = cpu_s(proc.pid) - before
    assert used <= 0.05 * (time.monotonic() - t0) + 0.02, f"{engine}: {used:.3f} s of CPU while idle"
    for raw in raws:
        raw.close()


def wake_ups(pid: int) -> int:
    """Context switches of process ``pid``'s main thread so far (each wake-up from its loop's wait is one)."""
    with open(f"/proc/{pid}/task/{pid}/status") as fh:
        return sum(int(line.split()[1]) for line in fh if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))


@pytest.mark.parametrize("engine", ENGINES)
def test_an_idle_front_end_does_not_wake_up(engine, engines):
    port, proc = engines[engine]
    raw = Raw(port)
    assert raw.send(req("GET", "/features/d1")).response().status == 200  # the shards were called
    raw.close()
    before = wake_ups(proc.pid)
    select.select([], [], [], 1.0)  # a measurement window: no connection, no request in flight
    woken = wake_ups(proc.pid) - before
    assert woken <= 3, f"{engine}: the main thread woke {woken} times in 1 s while idle"  # (20 with a 20/s timer)


def test_the_engine_setting_is_checked():
    assert config.load([], {"FS_HTTP_ENGINE": "fast"}).http_engine == "fast"
    with pytest.raises(config.ConfigError, match="FS_HTTP_ENGINE"):
        config.load([], {"FS_HTTP_ENGINE": "nginx"})
