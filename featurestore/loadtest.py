"""``featurestore bench store``: how fast a running store answers, measured from this machine.

Whole-entity GETs of a set of entities, from ``connections`` concurrent requests over the async
client, against ``GET /healthz`` measured the same way in the same run: the cheapest request the
store answers, so the ratio shows what a read costs beyond the HTTP round trip and the client.
The client is Python too; on a small machine it can be the bottleneck, which the reference shows.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from featurestore.client import AsyncClient
from featurestore.errors import NotFound

BENCH_PREFIX = "fs-bench-"  # the entities a run writes itself, deleted at the end


@dataclass(frozen=True)
class Figures:
    """One measured phase: requests answered, failures, and latency percentiles in ms."""

    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000.0


async def _phase(name: str, call: Callable[[int], Awaitable[object]], connections: int,
                 seconds: float) -> Figures:
    """``connections`` loops calling ``call(i)`` back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def loop(worker: int) -> None:
        nonlocal errors
        i = worker
        while (now := time.perf_counter()) < deadline:
            try:
                await call(i)
                latencies.append(time.perf_counter() - now)
            except Exception:  # noqa: BLE001 - a failed request is a figure, not the end of the run
                errors += 1
            i += connections

    await asyncio.gather(*(loop(w) for w in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return Figures(name, len(latencies), errors, elapsed,
                   _percentile(latencies, 0.50), _percentile(latencies, 0.99))


async def _seed(fs: AsyncClient, entities: int, features: int) -> list[str]:
    """Write ``entities`` entities of ``features`` numbers each; their ids."""
    ids = [f"{BENCH_PREFIX}{i}" for i in range(entities)]
    for start in range(0, entities, 100):
        await fs.write([{"entity_id": e, "features": {f"f{j}": float(j) for j in range(features)}}
                        for e in ids[start:start + 100]])
    return ids


async def run(url: str, token: str | None, entity_ids: list[str], entities: int, features: int,
              connections: int, seconds: float) -> tuple[Figures, Figures]:
    """(the reads, the /healthz reference). Without ``entity_ids``, writes and later deletes its own."""
    async with AsyncClient(url, token, retries=0, connections=connections) as fs:
        ids = entity_ids or await _seed(fs, entities, features)
        try:
            for e in ids[:1]:
                await fs.get_entity(e)  # fails fast (NotFound, Unreachable) before the timed phases
            reference = await _phase("GET /healthz", lambda i: fs.healthz(), connections, seconds)
            reads = await _phase("GET /features/{entity_id}", lambda i: fs.get_entity(ids[i % len(ids)]),
                                 connections, seconds)
        finally:
            if not entity_ids:
                for e in ids:
                    try:
                        await fs.delete(e)
                    except NotFound:
                        pass
    return reads, reference
