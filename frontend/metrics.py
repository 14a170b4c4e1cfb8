"""Request and shard round-trip histograms, shared by every front-end process of one port.

prometheus_client's multiprocess mode costs about 15 us per ``observe`` here (a lock and an
mmap write per bucket and sum, measured 2026-12): more than the whole 5% budget of a
single-entity read. This module is its equivalent at about 1 us: each process owns a file of
float slots (``<dir>/<pid>.slots``, mapped into memory) and appends the label sets it uses, with
their first slot, to ``<dir>/<pid>.keys``; an observation is a bisect and two float additions.
A scrape, in whichever process it lands, sums the slots of every file in the directory, so it
counts every request of every process, those of a process that died included (counters never go
back). The supervisor makes a fresh directory per run (``FS_METRICS_DIR`` to choose it) and
removes it on exit; one process alone keeps its slots in memory.

The exposition (``GET /metrics``) goes through prometheus_client's metric families.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import time
from array import array
from bisect import bisect_left
from itertools import accumulate
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

log = logging.getLogger("frontend")

REQUEST_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SLOTS = 1 << 16  # floats per process: ~3,600 label sets of a request histogram
REQUESTS = "featurestore_http_request_duration_seconds"
ROUNDTRIP = "featurestore_shard_roundtrip_seconds"
HELP = {REQUESTS: "Time to answer an HTTP request, by route template, method and status",
        ROUNDTRIP: "Round trip of a message to a shard (the requests of one loop pass), by shard"}
LABELS = {REQUESTS: ("route", "method", "status"), ROUNDTRIP: ("shard",)}
METHODS = frozenset(("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"))
OTHER = "other"  # the method label of any other method: every label value is from a closed set
REFUSED = "refused"  # the route label of a request refused before routing (414, 431, 503)


def method_label(method: str) -> str:
    """``method`` as a label value: one of :data:`METHODS`, or :data:`OTHER`."""
    return method if method in METHODS else OTHER


class SlotFile:
    """This process's slots: a mapped file in ``directory``, or plain memory without one."""

    def __init__(self, directory: str | None) -> None:
        self.keys_path = None
        if directory is None:
            self.values = memoryview(bytearray(SLOTS * 8)).cast("d")
        else:
            stem = Path(directory) / str(os.getpid())
            with open(stem.with_suffix(".slots"), "w+b") as fh:
                fh.truncate(SLOTS * 8)
                self._map = mmap.mmap(fh.fileno(), SLOTS * 8)
            self.values = memoryview(self._map).cast("d")
            self.keys_path = stem.with_suffix(".keys")
            self.keys_path.touch()
        self.used = 0
        self.keys: list[tuple[list, int]] = []  # (key, first slot), for a process without a directory

    def allocate(self, key: list, width: int) -> int | None:
        """The first of ``width`` fresh slots for ``key``, written down before any is used."""
        if self.used + width > SLOTS:
            return None
        base, self.used = self.used, self.used + width
        if self.keys_path is not None:
            with open(self.keys_path, "a") as fh:
                fh.write(json.dumps([key, base]) + "\n")
        self.keys.append((key, base))
        return base


class Histogram:
    """One histogram metric: ``observe(labels, seconds)``, ``labels`` a tuple of label values."""

    def __init__(self, slots: SlotFile, name: str, bounds: tuple[float, ...]) -> None:
        self.slots, self.name, self.bounds = slots, name, bounds
        self.width = len(bounds) + 2  # one count per bucket, +Inf, then the sum
        self._bases: dict[tuple, int | None] = {}
        self._values = slots.values

    def observe(self, labels: tuple, seconds: float) -> None:
        base = self._bases.get(labels, -1)
        if base is None:
            return  # out of slots: warned once
        if base < 0:
            base = self._add(labels)
            if base is None:
                return
        values = self._values
        values[base + bisect_left(self.bounds, seconds)] += 1.0
        values[base + self.width - 1] += seconds

    def _add(self, labels: tuple) -> int | None:
        base = self.slots.allocate([self.name, *labels], self.width)
        if base is None:
            log.warning("metrics: no slot left for %s%s; it is not counted", self.name, labels)
        self._bases[labels] = base
        return base


class Metrics:
    """The front end's histograms (or none, with FS_METRICS off) and their collection."""

    def __init__(self, directory: str | None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.directory = directory
        self.slots = SlotFile(directory) if enabled else None
        self.requests = Histogram(self.slots, REQUESTS, REQUEST_BUCKETS_S) if enabled else None
        self.roundtrip = Histogram(self.slots, ROUNDTRIP, REQUEST_BUCKETS_S) if enabled else None
        self.widths = {REQUESTS: len(REQUEST_BUCKETS_S) + 2, ROUNDTRIP: len(REQUEST_BUCKETS_S) + 2}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request (route: a template such as ``/features/{entity_id}``)."""
        if self.requests is not None:
            self.requests.observe((route, method, status), seconds)

    def shard_roundtrip(self, shard: int, seconds: float) -> None:
        """Count the round trip of one message to ``shard``."""
        if self.roundtrip is not None:
            self.roundtrip.observe((shard,), seconds)

    def totals(self) -> dict[tuple, list[float]]:
        """``{(metric, *labels): [bucket counts..., +Inf count, sum]}`` over every process."""
        out: dict[tuple, list[float]] = {}
        for keys, values in self._sources():
            for key, base in keys:
                width = self.widths.get(key[0])
                if width is None:
                    continue
                acc = out.setdefault(tuple(key), [0.0] * width)
                for i in range(width):
                    acc[i] += values[base + i]
        return out

    def _sources(self):
        if self.slots is None:
            return
        if self.directory is None:
            yield self.slots.keys, self.slots.values
            return
        for keys_path in sorted(Path(self.directory).glob("*.keys")):
            try:
                lines = keys_path.read_text().splitlines()
                raw = keys_path.with_suffix(".slots").read_bytes()
            except OSError:
                continue  # a process starting this very moment
            keys = []
            for line in lines:
                try:
                    keys.append(json.loads(line))
                except ValueError:
                    pass  # the line of a label set being added right now: nothing counted in it yet
            values = array("d")
            values.frombytes(raw[: len(raw) // 8 * 8])
            yield keys, values

    def families(self):
        """Prometheus metric families of every process's histograms (and request counters)."""
        hists = {name: HistogramMetricFamily(name, HELP[name], labels=LABELS[name]) for name in HELP}
        counts = CounterMetricFamily("featurestore_http_requests", "HTTP requests answered, by route template, "
                                     "method and status", labels=LABELS[REQUESTS])
        for (name, *labels), acc in sorted(self.totals().items(), key=lambda kv: [str(k) for k in kv[0]]):
            labels = [str(x) for x in labels]
            hists[name].add_metric(labels, buckets(REQUEST_BUCKETS_S, acc[:-1]), acc[-1])
            if name == REQUESTS:
                counts.add_metric(labels, sum(acc[:-1]))
        return [counts, *hists.values()]


def counted(metrics: "Metrics", route: str, method: str, started: float, done, reply) -> None:
    """Count a request served without a handler (``reply`` = (status, headers, body)), then pass
    the reply on to ``done``, which writes it: the count is in before the client can see it."""
    metrics.request(route, method, reply[0], time.perf_counter() - started)
    done(reply)


def buckets(bounds, counts) -> list[tuple[str, float]]:
    """``(le, cumulative count)`` of per-bucket ``counts``, the last one being +Inf."""
    return list(zip([*(repr(float(b)) for b in bounds), "+Inf"], accumulate(counts)))
