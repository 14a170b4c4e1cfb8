"""Operator endpoints: ``GET /metrics`` (Prometheus text) and ``GET /openapi.json``."""
from __future__ import annotations

import logging
import os
from collections import defaultdict

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from common import protocol as P
from frontend.base import BaseHandler
from frontend.openapi import SPEC

log = logging.getLogger("frontend")


class RequestStats:
    """Per-process request counters: a dict increment per request, nothing more on the hot path."""

    def __init__(self) -> None:
        self.count: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str, int], float] = defaultdict(float)

    def record(self, handler) -> None:
        self.add(type(handler).__name__, handler.request.method, handler.get_status(),
                 handler.request.request_time())

    def add(self, handler_name: str, method: str, status: int, seconds: float) -> None:
        key = (handler_name, method, status)
        self.count[key] += 1
        self.seconds[key] += seconds


def record_request(ctx, handler_name: str, method: str, uri: str, remote_ip: str, status: int,
                   seconds: float) -> None:
    """Count a request served without a ``RequestHandler`` (a fast path), and log it as the
    application's access log does: only 5xx, or every one with FS_ACCESS_LOG."""
    ctx.stats.add(handler_name, method, status, seconds)
    if status >= 500 or ctx.cfg.access_log:
        log.info("%d %s %s (%s) %.2fms", status, method, uri, remote_ip, 1000 * seconds)


class _Snapshot:
    """A prometheus_client collector over one scrape's figures."""

    def __init__(self, stats: RequestStats, shards: dict) -> None:
        self.stats, self.shards = stats, shards

    def collect(self):
        pid = str(os.getpid())
        requests = CounterMetricFamily("featurestore_http_requests", "HTTP requests served by this "
                                       "front-end process", labels=["handler", "method", "status", "pid"])
        seconds = CounterMetricFamily("featurestore_http_request_seconds", "Time spent serving them",
                                      labels=["handler", "method", "status", "pid"])
        for (name, method, status), n in list(self.stats.count.items()):
            labels = [name, method, str(status), pid]
            requests.add_metric(labels, n)
            seconds.add_metric(labels, self.stats.seconds[(name, method, status)])
        yield requests
        yield seconds
        up = GaugeMetricFamily("featurestore_shard_up", "1 when the shard answered this scrape", labels=["shard"])
        gauges = {k: GaugeMetricFamily(f"featurestore_shard_{k}", f"{k} held by the shard", labels=["shard"])
                  for k in ("entities", "values")}
        counters = {k: CounterMetricFamily(f"featurestore_shard_{k}", f"{k} applied by the shard",
                                           labels=["shard"]) for k in ("writes", "stale")}
        for shard, reply in sorted(self.shards.items()):
            label = [str(shard)]
            ok = not isinstance(reply, Exception)
            up.add_metric(label, 1 if ok else 0)
            if ok:
                for k, fam in {**gauges, **counters}.items():
                    if isinstance(reply.get(k), (int, float)):
                        fam.add_metric(label, reply[k])
        yield up
        yield from gauges.values()
        yield from counters.values()


class MetricsHandler(BaseHandler):
    """``GET /metrics``: this process's request counters and every shard's counters."""

    async def get(self) -> None:
        shards = await self.ctx.client.call_all(P.stats)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(self.ctx.stats, shards))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(registry))


class OpenAPIHandler(BaseHandler):
    """``GET /openapi.json``: the OpenAPI 3 description of every endpoint."""

    _body = orjson.dumps(SPEC)

    def get(self) -> None:
        self.finish(self._body)
