"""Shared helpers for the benchmarks: a cluster of real processes, wrk, the reference servers.

Import from a benchmark (``from bench._util import ...``) with the repository root on
``sys.path`` (``python3 -m bench.bench_http`` does that). Run as a script, this module is a
reference server itself: ``bare`` is a bare Tornado handler, ``canned`` the ceiling of any
Python front end, a plain ``asyncio.Protocol`` with the ``httptools`` parser answering every
request with the same 60-byte JSON body::

    python3 -m bench._util bare --port 8100 --processes 2
    python3 -m bench._util canned --port 8101

``wrk`` comes from Debian's packages: ``apt-get install -y wrk``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import protocol as P  # noqa: E402
from common.link import connect_dealer  # noqa: E402
from common.partition import Partitioner  # noqa: E402
from tests.support import Cluster, Proc, base_env, free_port, poll_for, request  # noqa: E402

__all__ = ["Cluster", "Proc", "WrkResult", "BareServer", "wrk", "lua_script", "load_entities",
           "zmq_round_trip", "free_port", "poll_for", "request", "ratio", "cpu_count"]


# ---------------------------------------------------------------- wrk
@dataclass
class WrkResult:
    """What one wrk run measured; latencies in milliseconds."""

    requests: int
    duration_s: float
    errors: int  # connect, read, write and timeout errors
    non2xx: int  # responses with a status >= 400 (wrk's "status" errors)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


# The ``done`` hook prints the summary as one JSON line that :func:`wrk` parses.
_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


def lua_script(request_body: str) -> str:
    """A wrk script whose ``request`` function is ``request_body`` (Lua), plus the done hook.

    ``request_body`` may use ``rnd(n)`` (a random integer in 0..n-1, seeded per thread).
    """
    return (
        "local seeded = false\n"
        "local function rnd(n) return math.random(0, n - 1) end\n"
        "request = function()\n"
        "  if not seeded then math.randomseed(os.time() + os.clock() * 1e6); seeded = true end\n"
        f"{request_body}\n"
        "end\n" + _DONE
    )


def wrk(url: str, connections: int, duration_s: float, script: str | None = None,
        threads: int = 1, timeout_s: int = 5) -> WrkResult:
    """Run wrk against ``url`` and return its figures; raise if wrk fails or is missing."""
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script or lua_script("  return wrk.format(nil)"))
        path = fh.name
    try:
        out = subprocess.run(
            [exe, "-t", str(min(threads, connections)), "-c", str(connections),
             "-d", f"{max(1, round(duration_s))}s", "--timeout", f"{timeout_s}s", "-s", path, url],
            capture_output=True, text=True, timeout=duration_s + 60, check=False)
    finally:
        os.unlink(path)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    d = json.loads(line[len("WRK_RESULT "):])
    return WrkResult(d["requests"], d["duration_us"] / 1e6, d["errors"], d["non2xx"],
                     d["p50_us"] / 1000, d["p90_us"] / 1000, d["p99_us"] / 1000, d["mean_us"] / 1000)


def ratio(x: float, ref: float) -> float:
    return x / ref if ref else float("nan")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- the bare Tornado reference
class BareServer:
    """A reference server (``mode``: ``bare`` Tornado or ``canned`` httptools) as real
    processes on a free port."""

    def __init__(self, tmp: Path, processes: int = 1, mode: str = "bare") -> None:
        self.port = free_port()
        self.proc = Proc([sys.executable, "-m", "bench._util", mode, "--port", str(self.port),
                          "--processes", str(processes)], base_env(), tmp / f"{mode}{processes}.log")
        poll_for(lambda: self.proc.alive() and request("GET", self.url)[0] == 200, 15,
                 what=f"{mode} reference server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.stop()

    def __enter__(self) -> "BareServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve_bare(port: int, processes: int) -> None:
    """Serve ``{"status": "ok", "service": "bare"}`` from ``processes`` processes on ``port``."""
    import asyncio
    import signal

    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    class Hello(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write({"status": "ok", "service": "bare"})

    async def main(sockets) -> None:
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/", Hello)]))
        server.add_sockets(sockets)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    def child(_task_id: int) -> int:
        asyncio.run(main(sockets or tornado.netutil.bind_sockets(port, "127.0.0.1", reuse_port=True)))
        return 0

    if processes == 1:
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
        child(0)
    else:  # as the front end does: a SO_REUSEPORT socket per process, the same supervisor
        from frontend.__main__ import supervise

        sockets = None
        supervise(processes, child)


def _serve_canned(port: int) -> None:
    """Answer every request on ``port`` with one canned JSON body: asyncio + httptools, no more."""
    import asyncio
    import signal

    import httptools

    body = b'{"entity_id":"e1","name":"f1","value":0.01,"event_timestamp":1}'
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))

    class Canned(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_complete(self) -> None:
            self.transport.write(response)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Canned, "127.0.0.1", port)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


# ---------------------------------------------------------------- loading data and ZeroMQ
def load_entities(endpoints: list[str], n_entities: int, n_features: int, batch: int = 2000,
                  event_us: int = 1_700_000_000_000_000) -> float:
    """Write ``e0..e{n-1}`` x ``f0..f{k-1}`` straight to the shards with WRITE messages;
    return the seconds it took. Values are floats ``i + j / 100``."""
    import zmq

    part = Partitioner(len(endpoints))
    ctx = zmq.Context.instance()
    socks = []
    for ep in endpoints:
        s = connect_dealer(ctx, ep, immediate=False)
        socks.append(s)
    t0 = time.perf_counter()
    outstanding = 0
    try:
        for start in range(0, n_entities, batch):
            by_shard: dict[int, list] = {}
            for i in range(start, min(start + batch, n_entities)):
                eid = f"e{i}"
                rows = by_shard.setdefault(part.shard_for(eid), [])
                rows.extend([eid, f"f{j}", i + j / 100, event_us] for j in range(n_features))
            for shard, rows in by_shard.items():
                socks[shard].send(P.encode([P.write(rows, start)]))
                outstanding += 1
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        while outstanding:
            events = dict(poller.poll(30_000))
            if not events:
                raise TimeoutError("shards did not acknowledge the load")
            for s in events:
                for reply in P.decode(s.recv()):
                    if not reply.get(P.OK):
                        raise RuntimeError(f"load failed: {reply}")
                outstanding -= 1
    finally:
        for s in socks:
            s.close()
    return time.perf_counter() - t0


def zmq_round_trip(endpoint: str, n: int = 2000) -> float:
    """p50 in milliseconds of a blocking DEALER -> ROUTER ping, one in flight."""
    import zmq

    s = connect_dealer(zmq.Context.instance(), endpoint, immediate=False)
    frame = P.encode([P.ping(1)])
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            s.send(frame)
            s.recv()
            times.append(time.perf_counter() - t0)
    finally:
        s.close()
    return statistics.median(times) * 1000


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="a reference server: bare Tornado, or canned httptools")
    ap.add_argument("mode", choices=["bare", "canned"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    if args.mode == "canned":
        _serve_canned(args.port)
    else:
        _serve_bare(args.port, args.processes)
