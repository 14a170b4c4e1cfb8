"""Operator endpoints: ``GET /metrics`` (Prometheus text) and ``GET /openapi.json``."""
from __future__ import annotations

import logging

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from common import protocol as P
from frontend import fanout
from frontend.base import BaseHandler
from frontend.metrics import buckets
from frontend.openapi import SPEC
from frontend.ingest_stats import ingest_stats

SHARD_GAUGES = {"entities": "entities held", "values": "feature values held", "memory_bytes": "resident memory",
                "log_bytes": "size of the append-only log (0 without FS_DATA_DIR)"}
SHARD_COUNTERS = {"writes": "values written", "stale": "writes older than the stored value, ignored"}
INGEST_COUNTERS = {"events": "valid events acknowledged by every shard", "applied": "values applied by the shards",
                   "stale": "values older than the stored ones", "rejected": "events rejected (dead letters)"}
MAX_VIEWS = 50  # freshness labels across shards: beyond, "other"

log = logging.getLogger("frontend")


def logged(cfg, status: int) -> bool:
    """Whether the access log has a line for a response of ``status``: 5xx, or all with FS_ACCESS_LOG."""
    return status >= 500 or cfg.access_log


def log_request(ctx, method: str, uri: str, remote_ip: str, status: int, seconds: float) -> None:
    """Log a request served without a ``RequestHandler`` (a fast path) as the application's access
    log does (:func:`logged`). (It counted itself: reads.py, endpoints.py.)"""
    if logged(ctx.cfg, status):
        log.info("%d %s %s (%s) %.2fms", status, method, uri, remote_ip, 1000 * seconds)


def shard_families(replies: dict) -> list:
    """Per shard: up, sizes and counters; and the age of values served per view, all shards summed."""
    up = GaugeMetricFamily("featurestore_shard_up", "1 when the shard answered this scrape", labels=["shard"])
    gauges = {k: GaugeMetricFamily(f"featurestore_shard_{k}", f"Shard: {h}", labels=["shard"])
              for k, h in SHARD_GAUGES.items()}
    counters = {k: CounterMetricFamily(f"featurestore_shard_{k}", f"Shard: {h}", labels=["shard"])
                for k, h in SHARD_COUNTERS.items()}
    ages: dict[str, list[float]] = {}
    bounds: list = []
    for shard, reply in sorted(replies.items()):
        label = [str(shard)]
        ok = not isinstance(reply, Exception) and P.is_ok(reply)
        up.add_metric(label, 1 if ok else 0)
        if not ok:
            continue
        for k, fam in {**gauges, **counters}.items():
            if isinstance(reply.get(k), (int, float)):
                fam.add_metric(label, reply[k])
        fresh = reply.get("freshness") or {}
        bounds = fresh.get("bounds", bounds)
        for view, counts in fresh.get("views", {}).items():
            if view not in ages and len(ages) >= MAX_VIEWS:
                view = "other"
            acc = ages.setdefault(view, [0.0] * len(counts))
            for i, n in enumerate(counts):
                acc[i] += n
    freshness = HistogramMetricFamily("featurestore_feature_age_seconds", "Age (now - event time) of the values "
                                      "served, by view (the name before ':'); shards sample reads, see "
                                      "FS_FRESHNESS_SAMPLE_EVERY", labels=["view"])
    for view, acc in sorted(ages.items()):
        freshness.add_metric([view], buckets(bounds, acc[:-1]), acc[-1])
    return [up, *gauges.values(), *counters.values(), freshness]


def ingest_families(stats: dict | None) -> list:
    """Ingest's counters, lag and rate; nothing when ingest is not configured or not answering."""
    if not stats or "detail" in stats:
        return []
    fams = [CounterMetricFamily(f"featurestore_ingest_{k}", f"Ingest: {h}", value=stats[k])
            for k, h in INGEST_COUNTERS.items() if isinstance(stats.get(k), (int, float))]
    if isinstance(stats.get("lag"), (int, float)):
        fams.append(GaugeMetricFamily("featurestore_ingest_lag", "Ingest: messages behind the end of its "
                                      "Kafka partitions", value=stats["lag"]))
    fams.append(GaugeMetricFamily("featurestore_ingest_events_per_second", "Ingest: events per second lately",
                                  value=stats.get("events_per_s", 0)))
    return fams


class _Families:
    """A prometheus_client collector over one scrape's metric families."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return self.families


class MetricsHandler(BaseHandler):
    """``GET /metrics``: every front-end process's request histograms, every shard's figures, ingest's;
    a read (the read token), unless ``FS_METRICS_OPEN`` opens it to a scraper without one."""

    @property
    def open_access(self) -> bool:
        return self.ctx.cfg.metrics_open

    async def get(self) -> None:
        shards, _ = await fanout.replies_of_all(self.ctx, P.stats)
        families = self.ctx.metrics.families() + shard_families(shards) + ingest_families(await ingest_stats(self.ctx))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(registry))


class OpenAPIHandler(BaseHandler):
    """``GET /openapi.json``: the OpenAPI 3 description of every endpoint."""

    _body = orjson.dumps(SPEC)

    def get(self) -> None:
        self.finish(self._body)
