"""Cluster mode for the tests: a real Tansu broker, shards of several replica sets, a front end,
each a real process on free loopback ports."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

from common import protocol as P
from tests.ingest_support import Broker
from tests.support import (Cluster, Proc, base_env, free_port, owns_listener, poll_for, request,
                           wait_answering, zmq_call)

FAST = {"kafka_session_timeout_ms": 2000, "kafka_fetch_wait_ms": 50, "cluster_heartbeat_s": 0.3}


class KafkaCluster(Cluster):
    """Shards keyed by name (``a0``, ``b1``: replica set and number) and one front end."""

    def __init__(self, broker: Broker, tmp: Path, partitions: int = 8, **fs) -> None:  # no shard list
        self.broker = broker
        self.tmp = tmp
        self.topic = f"features-{uuid.uuid4().hex[:8]}"
        self.partitions = partitions
        self.http_port = free_port()
        self.fs = dict(cluster_kafka=broker.bootstrap, cluster_topic=self.topic,
                       cluster_partitions=partitions, http_port=self.http_port, shard_timeout_s=1.0,
                       ingest_stats_endpoint="", **FAST)
        self.fs.update(fs)
        self.shards: dict[str, Proc] = {}
        self.endpoints: dict[str, str] = {}
        self.frontend: Proc | None = None
        self.others: list[Proc] = []

    def env(self, **extra) -> dict:
        return base_env(**{**self.fs, **extra})

    def start_shard(self, name: str, wait: bool = True, **extra) -> Proc:
        """Shard ``name``: replica set ``name[0]``; its port stays the same across restarts."""
        port = int(self.endpoints[name].rsplit(":", 1)[1]) if name in self.endpoints else free_port()
        self.endpoints[name] = f"tcp://127.0.0.1:{port}"
        env = self.env(replica=name[0], shard_base_port=port, **extra)
        proc = Proc([sys.executable, "-m", "shard", "--index", "0"], env, self.tmp / f"shard-{name}.log")
        self.shards[name] = proc
        if wait:
            self.wait_bound(name)
        return proc

    def wait_bound(self, name: str, timeout: float = 20.0) -> None:
        wait_answering(self.shards[name], self.endpoints[name], timeout, f"shard {name}")

    def held(self, name: str) -> dict[int, tuple[int, bool]]:
        """``{partition: (next offset, serving)}`` of shard ``name``."""
        reply = zmq_call(self.endpoints[name], [P.offsets(1)], 1000)[0]
        return {p: (o, up) for p, o, up in reply[P.PARTITIONS]}

    def stats(self, name: str) -> dict:
        return zmq_call(self.endpoints[name], [P.stats(1)], 1000)[0]

    def start_frontend(self, **extra) -> Proc:
        self.frontend = Proc([sys.executable, "-m", "frontend"], self.env(**extra), self.tmp / "frontend.log")
        self.wait_ready()
        return self.frontend

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready():
            if not self.frontend.alive():
                raise AssertionError(f"front end exited:\n{self.frontend.output()}")
            if owns_listener(self.frontend.pid, self.http_port) is False:  # ours could not bind
                raise AssertionError(f"another process listens on {self.http_port}:\n{self.frontend.output()}")
            return request("GET", self.url + "/readyz")[0] == 200 and owns_listener(self.frontend.pid, self.http_port)

        poll_for(ready, timeout, interval=0.1, what="every partition to have a caught-up replica")

    def stop(self) -> None:
        for proc in [*self.others, self.frontend, *self.shards.values()]:
            if proc is not None:
                proc.stop()
