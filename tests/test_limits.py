"""Every resource a client can grow is bounded, with a clear answer: on the shard (socket-free)
and over real HTTP, on both engines (``FS_HTTP_ENGINE`` fast and tornado), which must agree."""
from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import sys
import threading
import time

import msgpack
import pytest

from common import protocol as P
from common.events import Limits
from shard.handlers import ShardState, handle_frame
from tests.support import Cluster, Proc, cpu_s, free_port, poll_for, request

US = 1_767_225_600 * 10**6


def frame(shard: ShardState, *requests) -> list:
    return P.decode(handle_frame(shard, msgpack.packb(list(requests))))


# ---- the shard, without sockets
@pytest.fixture
def shard():
    return ShardState(0, limits=Limits(max_value_bytes=64), max_features=3, max_frame_requests=5)


@pytest.mark.parametrize("item, code, words", [
    (["e", "n", 1, US], None, None),
    (["e", "n", "x" * 65, US], P.TOO_LARGE, "FS_MAX_VALUE_BYTES"),
    (["e", "n", [1] * 70, US], P.TOO_LARGE, "FS_MAX_VALUE_BYTES"),
    (["e", "n", 2**64 - 1, US], P.BAD_REQUEST, "64-bit"),
    (["e", "n", float("nan"), US], P.BAD_REQUEST, "finite"),
    (["e", "a b", 1, US], P.BAD_REQUEST, "letters, digits"),
    (["", "n", 1, US], P.BAD_REQUEST, "must not be empty"),
    (["e", "n", 1, -1], P.BAD_REQUEST, "event time"),
    (["e", "n", 1, 253402300799_999999 + 1], P.BAD_REQUEST, "event time"),
    (["e", "n", 1, 1.5], P.BAD_REQUEST, "event time"),
    (["e", "n", {"k": b"bytes"}, US], P.BAD_REQUEST, "unsupported type"),
    (["e", ["n"], 1, US], P.BAD_REQUEST, "name must be a string"),
    (["e", "n", 1], P.BAD_REQUEST, "must be [entity_id, name, value, event_us]"),
])
def test_the_shard_validates_what_it_stores(shard, item, code, words):
    reply = frame(shard, P.write([item], 1))[0]
    if code is None:
        assert P.is_ok(reply)
        return
    assert (P.code_of(reply), P.is_ok(reply)) == (code, False) and words in P.reason_of(reply), reply
    assert shard.store.render_entity("e", None) is None  # nothing stored


def test_a_write_past_the_features_per_entity_limit_is_refused_and_others_go_on(shard):
    assert P.is_ok(frame(shard, P.write([["wide", f"f{i}", i, US] for i in range(3)], 1))[0])
    refused, other, update = frame(shard, P.write([["wide", "f3", 3, US]], 2), P.write([["narrow", "f", 1, US]], 3),
                                   P.write([["wide", "f0", 9, US + 1]], 4))
    assert P.code_of(refused) == P.TOO_LARGE and "FS_MAX_FEATURES_PER_ENTITY" in P.reason_of(refused)
    assert P.is_ok(other) and P.is_ok(update)  # the other entity, and an update of a held feature


def test_a_frame_past_the_request_limit_is_answered_request_by_request(shard):
    replies = frame(shard, *[P.ping(i) for i in range(6)])
    assert [P.id_of(r) for r in replies] == list(range(6))
    assert {P.code_of(r) for r in replies} == {P.TOO_LARGE}
    assert all(P.is_ok(r) for r in frame(shard, *[P.ping(i) for i in range(5)]))


@pytest.mark.parametrize("bad", [{"t": [1], "id": 1}, {"t": {"a": 1}, "id": 1}, {"t": None, "id": 1}])
def test_a_map_or_list_where_the_type_belongs_is_an_error_reply_and_the_pass_goes_on(shard, bad):
    replies = frame(shard, P.write([["e", "n", 1, US]], 7), bad, P.get("e", None, 8))
    assert [P.id_of(r) for r in replies] == [7, 1, 8]
    assert P.is_ok(replies[0]) and P.code_of(replies[1]) == P.UNKNOWN_TYPE and P.is_ok(replies[2])


# ---- admission, without sockets
def test_admission_counts_each_request_in_progress_once_and_refuses_past_the_cap(caplog):
    from types import SimpleNamespace

    from common.config import Config
    from frontend.admission import Gate, InFlight

    ctx = SimpleNamespace(cfg=Config(http_max_concurrent_requests=2, http_max_request_line_bytes=100,
                                     http_max_header_bytes=300), active=InFlight())
    gate, a, b, c = Gate(ctx), SimpleNamespace(), SimpleNamespace(), SimpleNamespace()
    assert gate.admit(a, 100, 300) is None and gate.admit(b, 10, 10) is None and ctx.active.n == 2
    status, headers, body = gate.admit(c, 10, 10)
    assert (status, headers) == (503, {"Retry-After": "1"}) and b"FS_HTTP_MAX_CONCURRENT_REQUESTS" in body
    for _ in range(50):
        gate.admit(c, 10, 10)
    assert len([r for r in caplog.records if "refused (503)" in r.getMessage()]) == 1  # not one per refusal
    ctx.active.leave(a)
    ctx.active.leave(a)  # its end reported twice (answered, connection closed): counted once
    ctx.active.leave(c)  # never admitted
    assert ctx.active.n == 1 and gate.admit(c, 10, 10) is None
    assert gate.admit(SimpleNamespace(), 101, 10)[:2] == (414, {"Connection": "close"})
    assert gate.admit(SimpleNamespace(), 10, 301)[:2] == (431, {"Connection": "close"})
    assert ctx.active.n == 2


# ---- HTTP, over a real front end
ENGINES = ("fast", "tornado")


@pytest.fixture(scope="module", params=ENGINES)
def small(request, tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("limits"), max_value_bytes=100, http_max_request_line_bytes=200,
                 http_max_header_bytes=1000, http_max_concurrent_requests=4, http_max_connections=20,
                 http_header_timeout_s=1.0, http_engine=request.param) as c:
        c.engine = request.param
        yield c


def test_a_value_over_its_limit_is_413_and_a_bad_value_400(small):
    status, _, body = request("POST", small.url + "/features", {"entity_id": "e", "name": "n", "value": "x" * 101})
    assert status == 413 and "FS_MAX_VALUE_BYTES" in body["detail"]
    status, _, body = request("POST", small.url + "/features",
                              {"entity_id": "e", "features": {"a": 1, "b": ["y" * 60, "z" * 60]}})
    assert status == 413 and "features.b" in body["detail"]
    assert request("POST", small.url + "/features", {"entity_id": "e", "name": "n", "value": 2**64})[0] == 400
    feast = {"feature_view_name": "v", "df": {"driver_id": [1], "f": ["x" * 101]}}
    assert request("POST", small.url + "/write-to-online-store", feast)[0] == 413


def test_an_over_long_request_line_is_414_and_over_large_headers_431(small):
    status, headers, body = request("GET", small.url + "/features/" + "a" * 300)
    assert status == 414 and "FS_HTTP_MAX_REQUEST_LINE_BYTES" in body["detail"]
    status, _, body = request("GET", small.url + "/healthz", headers={f"X-{i}": "v" * 50 for i in range(30)})
    assert status == 431 and "FS_HTTP_MAX_HEADER_BYTES" in body["detail"]
    assert request("GET", small.url + "/healthz")[0] == 200


def test_405_carries_allow(small):
    for method, path, allowed in [("PUT", "/features", {"GET", "POST"}), ("TRACE", "/healthz", {"GET"}),
                                  ("POST", "/features/e/n", {"GET", "DELETE"})]:
        status, headers, body = request(method, small.url + path)
        assert status == 405, (method, path, status)
        assert allowed <= {m.strip() for m in headers["Allow"].split(",")}, headers["Allow"]
        assert method not in headers["Allow"]


def test_head_works_wherever_get_does(small):
    assert request("POST", small.url + "/features", {"entity_id": "h", "name": "n", "value": 1})[0] == 200
    for path in ("/features/h", "/features/h/n", "/features?entity_id=h&name=n", "/healthz", "/readyz",
                 "/openapi.json", "/stats", "/metrics", "/health"):
        get_status, get_headers, _ = request("GET", small.url + path)
        status, headers, body = request("HEAD", small.url + path)
        assert (status, body) == (get_status, None), path
        assert headers.get("Content-Type") == get_headers.get("Content-Type"), path
    assert request("HEAD", small.url + "/features/nobody")[0] == 404


def _concurrent_gets(url: str, n: int) -> list:
    out: list = [None] * n

    def one(i: int) -> None:
        out[i] = request("GET", url, timeout=10)[:3:2]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_past_the_concurrent_request_cap_a_request_is_503_not_queued(small):
    small.shards[0].signal(signal.SIGSTOP)  # its reads now wait for the shard timeout (1 s)
    try:
        eid = next(f"c{i}" for i in range(100) if small_partition(small, f"c{i}") == 0)
        results = _concurrent_gets(small.url + f"/features/{eid}", 10)
    finally:
        small.shards[0].signal(signal.SIGCONT)
    busy = [body for status, body in results if status == 503 and "FS_HTTP_MAX_CONCURRENT_REQUESTS" in body["detail"]]
    timed_out = [body for status, body in results if status == 503 and "did not answer" in body["detail"]]
    assert busy and len(timed_out) <= 4, results
    poll_for(lambda: request("GET", small.url + "/healthz")[0] == 200, 5, what="the front end to serve again")


def small_partition(cluster, eid: str) -> int:
    from common.partition import Partitioner
    return Partitioner(len(cluster.shards)).shard_for(eid)


def test_past_the_connection_cap_a_new_connection_is_closed(small):
    held = [socket.create_connection(("127.0.0.1", small.http_port)) for _ in range(20)]
    try:
        def refused():
            extra = socket.create_connection(("127.0.0.1", small.http_port), timeout=2)
            try:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                return extra.recv(100) == b""
            except ConnectionError:
                return True
            finally:
                extra.close()

        assert poll_for(refused, 5, what="a connection past the cap to be closed")
    finally:
        for s in held:
            s.close()
    poll_for(lambda: request("GET", small.url + "/healthz")[0] == 200, 5, what="the cap to free up")


def test_a_client_that_never_finishes_its_headers_is_disconnected(small):
    import time
    sock = socket.create_connection(("127.0.0.1", small.http_port), timeout=8)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        try:
            data = sock.recv(100)  # a socket.timeout here fails the test: nobody closed it
        except ConnectionResetError:
            data = b""
        assert data == b"" and time.monotonic() - t0 < 6  # FS_HTTP_HEADER_TIMEOUT_S is 1 s here
    finally:
        sock.close()


# ---- out of file descriptors
NOFILE = 100  # the front end's RLIMIT_NOFILE: it starts with about 30 open
SATURATED_S = 2.0  # how long CPU and log are watched while accept() fails


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_out_of_file_descriptors_the_front_end_pauses_accepting_quietly_and_recovers(small, event_loop):
    """accept() failing with EMFILE must neither spin (Tornado's own accept handler retries at
    once, forever) nor log each failure (asyncio logs a traceback each time): CPU stays low, the
    log gets a line when it starts and one when it ends, connections already open are served, and
    once connections close, new ones are accepted again. (The fast engine on uvloop: libuv accepts
    and closes the queued connections itself, with a descriptor it keeps in reserve, and says
    nothing.)"""
    pytest.importorskip(event_loop)
    silent = (small.engine, event_loop) == ("fast", "uvloop")
    port = free_port()
    env = small.env(http_port=port, http_engine=small.engine, http_idle_timeout_s=60, http_header_timeout_s=60,
                    http_max_connections=1000, event_loop=event_loop)
    proc = Proc([sys.executable, "-m", "frontend"], env, small.tmp / f"frontend-nofile-{small.engine}-{event_loop}.log",
                preexec_fn=_limit_open_files)
    held: list[socket.socket] = []
    try:
        poll_for(lambda: proc.alive() and request("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200, 15,
                 what="the front end with few file descriptors")
        served = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # open before the descriptors run out
        served.request("GET", "/healthz")
        response = served.getresponse()
        assert (response.status, bool(response.read())) == (200, True)
        before = len(proc.output().splitlines())
        for _ in range(NOFILE):  # more than it can accept; the rest wait in the listen backlog
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        poll_for(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) >= NOFILE - 1, 10,
                 what="the front end to run out of descriptors")

        cpu_before, start = cpu_s(proc.pid), time.monotonic()
        served.request("GET", "/features/nobody")  # a connection it holds is still served
        response = served.getresponse()
        assert (response.status, json.loads(response.read())["detail"]) == (404, "No features found for entity")
        poll_for(lambda: time.monotonic() - start >= SATURATED_S, SATURATED_S + 5, interval=0.1,
                 what="the watch over a saturated front end")
        used = cpu_s(proc.pid) - cpu_before
        assert used < 0.25 * SATURATED_S, f"{used:.2f} s of CPU in {SATURATED_S} s out of descriptors"
        saturated_log = proc.output().splitlines()[before:]
        assert len(saturated_log) <= 2 and "Traceback" not in proc.output(), "\n".join(saturated_log[:20])
        assert silent or "cannot accept connections (Too many open files)" in saturated_log[0]

        for sock in held:
            sock.close()
        held.clear()
        served.close()
        poll_for(lambda: request("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200, 10,
                 what="new connections to be accepted again")
        if not silent:
            poll_for(lambda: "accepting connections again" in proc.output(), 5, what="the recovery line")
        new_log = proc.output().splitlines()[before:]
        assert len(new_log) <= 4, "\n".join(new_log[:20])
        assert proc.alive()
    finally:
        for sock in held:
            sock.close()
        proc.stop()
