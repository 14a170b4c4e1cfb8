"""Helpers for the integration tests: free ports, real processes, polling with a deadline."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import zmq

from common import config
from common import protocol as P
from common.link import connect_dealer

ROOT = Path(__file__).resolve().parent.parent
# The whole suite runs on either HTTP engine: FS_HTTP_ENGINE=tornado python3 -m pytest
HTTP_ENGINE = os.environ.get("FS_HTTP_ENGINE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owns_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the socket listening on loopback ``port`` (None: nothing in
    this network namespace listens there). A port that ``free_port`` gave may be taken by another
    process before ours binds it: then something else answers our tests."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = [line.split() for line in fh.read().splitlines()[1:]]
        except OSError:
            continue
        inode = next((r[9] for r in rows if r[3] == "0A" and int(r[1].rsplit(":", 1)[1], 16) == port), None)
        if inode is not None:
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (SIGSTOP has taken effect, not just been sent)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        states = []
        for t in tasks:
            with open(f"/proc/{pid}/task/{t}/stat") as fh:
                states.append(fh.read().rsplit(")", 1)[1].split()[0])
    except OSError:
        return False
    return bool(states) and all(st in ("T", "t") for st in states)


def poll_for(condition, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Call ``condition`` until it returns a true value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing polled may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def cpu_s(pid: int) -> float:
    """The CPU time (user and system, seconds) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    """A child process whose output goes to a log file, stopped by its own PID (``preexec_fn``
    runs in the child before it starts: to set a resource limit, say)."""

    def __init__(self, args: list[str], env: dict, log_path: Path, stdin=None, preexec_fn=None) -> None:
        self.args = args
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log,
                                      stderr=subprocess.STDOUT, stdin=stdin, preexec_fn=preexec_fn)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        self.log.close()
        return self.popen.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(5)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


def base_env(**fs: object) -> dict:
    """The environment for a child: this one's, plus the ``FS_*`` variables of the Config fields
    given as keywords (``config_file=`` sets ``FS_CONFIG``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FS_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    if HTTP_ENGINE:
        env["FS_HTTP_ENGINE"] = HTTP_ENGINE
    for key, value in fs.items():
        if value is not None:
            env[config.env_name(key)] = str(value)
    return env


def zmq_call(endpoint: str, requests: list[dict], timeout_ms: int = 1000, curve_dir=None) -> list[dict]:
    """Send one frame of requests to a shard's ROUTER and return its replies."""
    ctx = zmq.Context.instance()
    sock = connect_dealer(ctx, endpoint, immediate=False, curve_dir=curve_dir and str(curve_dir))
    try:
        sock.send(P.encode(requests))
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no reply from {endpoint}")
        return P.decode(sock.recv())
    finally:
        sock.close()


def wait_answering(proc: Proc, endpoint: str, timeout: float, what: str, curve_dir=None) -> None:
    """Wait until the shard ``proc`` answers a ping at ``endpoint``; fail at once if it exits."""

    port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp://127.0.0.1:") else None

    def ready():
        if not proc.alive():
            raise AssertionError(f"{what} exited:\n{proc.output()}")
        if port is not None and owns_listener(proc.pid, port) is False:
            raise AssertionError(f"{what}: another process listens on port {port}:\n{proc.output()}")
        return P.is_ok(zmq_call(endpoint, [P.ping(1)], 200, curve_dir)[0]) and (
            port is None or owns_listener(proc.pid, port))

    poll_for(ready, timeout, what=what)


class Honcho:
    """``honcho [args] start`` from the repository root, in its own process group."""

    def __init__(self, args: list[str], env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "honcho", *args, "start"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def interrupt(self) -> str:
        """Ctrl-C, as a terminal sends it; return everything honcho printed."""
        os.kill(self.proc.pid, signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        return out.decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole group if it is still running (a failed test)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


class Cluster:
    """Shards and a front end started as real processes on free loopback ports."""

    def __init__(self, tmp_path: Path, shards: int = 2, frontend_processes: int = 1, **fs) -> None:
        self.tmp = tmp_path
        self.fs = fs
        self.endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(shards)]
        self.http_port = free_port()
        # never the defaults: a store running on this machine must not show up in a test
        self.ingest_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.ingest_stats_endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.frontend_processes = frontend_processes
        self.shards: list[Proc | None] = [None] * shards
        self.frontend: Proc | None = None
        self.others: list[Proc] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self, **extra) -> dict:
        settings = dict(shard_endpoints=",".join(self.endpoints), http_port=self.http_port,
                        shard_timeout_s=1.0, frontend_processes=self.frontend_processes,
                        ingest_endpoint=self.ingest_endpoint, ingest_stats_endpoint=self.ingest_stats_endpoint)
        settings.update(self.fs)
        settings.update(extra)
        return base_env(**settings)

    def start_shard(self, index: int, **extra) -> Proc:
        proc = Proc([sys.executable, "-m", "shard", "--index", str(index)], self.env(**extra),
                    self.tmp / f"shard{index}.log")
        self.shards[index] = proc
        self.wait_shard(index)
        return proc

    def wait_shard(self, index: int, timeout: float = 15.0) -> None:
        wait_answering(self.shards[index], self.endpoints[index], timeout, f"shard {index}",
                       self.fs.get("curve_dir"))

    def start_frontend(self, **extra) -> Proc:
        self.frontend = Proc([sys.executable, "-m", "frontend"], self.env(**extra), self.tmp / "frontend.log")
        poll_for(lambda: self._alive(self.frontend) and request("GET", self.url + "/readyz")[0] == 200,
                 15, what="front end /readyz")
        return self.frontend

    def start_process(self, args: list[str], name: str, stdin=None, **extra) -> Proc:
        """Start another process of the project (ingest, a producer) with this cluster's settings."""
        proc = Proc([sys.executable, *args], self.env(**extra), self.tmp / f"{name}.log", stdin=stdin)
        self.others.append(proc)
        return proc

    @staticmethod
    def _alive(proc: Proc) -> bool:
        if not proc.alive():
            raise AssertionError(f"process exited:\n{proc.output()}")
        return True

    def start(self) -> "Cluster":
        for i in range(len(self.shards)):
            self.start_shard(i)
        self.start_frontend()
        return self

    def stop(self) -> None:
        for proc in [*self.others, self.frontend, *self.shards]:
            if proc is not None:
                proc.stop()

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def request(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 10.0):
    """One HTTP request; returns (status, headers, parsed JSON body or raw bytes)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw
        return resp.status, resp.headers, data  # headers: a case-insensitive mapping
    finally:
        conn.close()


def quote(segment: str) -> str:
    """Percent-encode an entity id or a name for one URL path segment."""
    return urllib.parse.quote(segment, safe="")
