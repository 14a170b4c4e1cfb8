"""``python -m frontend [--processes N]``: the HTTP front end, N processes on one port."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import tornado.netutil

from common import config, logs
from frontend.app import serve

log = logging.getLogger("frontend")

MAX_RESTARTS = 100  # a child that keeps dying is a bug, not bad luck


def supervise(n: int, run_child) -> int:
    """Fork ``n`` children that each call ``run_child()``; restart one that dies; forward
    SIGTERM/SIGINT to all of them and return when they have exited."""
    children: dict[int, int] = {}
    stopping = False

    def spawn(task_id: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os._exit(run_child(task_id))
        children[pid] = task_id

    def forward(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(n):
        spawn(i)
    restarts = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        task_id = children.pop(pid, None)
        if task_id is None or stopping:
            continue
        log.warning("front-end process %d (pid %d) exited with status %d; restarting",
                    task_id, pid, os.waitstatus_to_exitcode(status))
        restarts += 1
        if restarts > MAX_RESTARTS:
            forward(signal.SIGTERM, None)
            continue
        spawn(task_id)
    return 0


def fresh_metrics_dir(cfg: config.Config) -> tuple[config.Config, str | None]:
    """The config with the directory where the processes share their metrics (made now, empty),
    and that directory when it is to be removed on exit."""
    if not cfg.metrics:
        return cfg, None
    if cfg.metrics_dir is None:
        made = tempfile.mkdtemp(prefix="featurestore-metrics-")
        return dataclasses.replace(cfg, metrics_dir=made), made
    os.makedirs(cfg.metrics_dir, exist_ok=True)
    for stale in (*Path(cfg.metrics_dir).glob("*.keys"), *Path(cfg.metrics_dir).glob("*.slots")):
        stale.unlink()  # a previous run's counts: a run starts from zero
    return cfg, None


def run_loop(cfg: config.Config, main) -> None:
    """``asyncio.run(main)`` on the loop ``FS_EVENT_LOOP`` names; uvloop only if it is installed."""
    if cfg.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("FS_EVENT_LOOP=uvloop but uvloop is not installed: running on asyncio's loop")
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    cfg = config.load_or_exit(argv, "frontend")
    several = cfg.frontend_processes > 1
    logs.setup(cfg, "frontend", None if several else 0)
    sockets = tornado.netutil.bind_sockets(cfg.http_port, cfg.http_host, reuse_port=several)
    if not several:
        run_loop(cfg, serve(dataclasses.replace(cfg, metrics_dir=None), sockets))  # counts stay in memory
        return 0
    # Each process listens on a socket of its own, bound with SO_REUSEPORT, so that the kernel
    # spreads new connections evenly. On one shared socket, whichever process wakes first
    # accepts a whole burst: all of wrk's 64 connections went to one process in 2 runs of 5.
    port = sockets[0].getsockname()[1]  # the parent's bind only checked that the port is free
    for sock in sockets:
        sock.close()

    cfg, made = fresh_metrics_dir(cfg)

    def run_child(task_id: int) -> int:
        logs.setup(cfg, "frontend", task_id)
        log.info("front-end process %d (pid %d)", task_id, os.getpid())
        run_loop(cfg, serve(cfg, tornado.netutil.bind_sockets(port, cfg.http_host, reuse_port=True)))
        return 0

    try:
        return supervise(cfg.frontend_processes, run_child)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
