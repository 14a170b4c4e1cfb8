"""``Client`` and ``AsyncClient``: every endpoint of the store as a typed method, over httpx.

    from featurestore import Client, NotFound
    with Client("http://127.0.0.1:8000", token=None) as fs:
        fs.put("user:1", "ctr", 0.12)
        fs.get_entity("user:1").features      # {"ctr": 0.12}
        try:
            fs.get_feature("user:1", "nope")
        except NotFound as exc:
            print(exc.status, exc.detail)     # 404 Feature not found

One connection pool per client (keep-alive), a timeout on every request, and a 503 retried
after its ``Retry-After`` (at most ``retries`` times, each wait at most ``max_retry_wait_s``).
Writes are last-write-wins by event time, so resending one is safe.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from featurestore import _calls as C
from featurestore.errors import Unreachable
from featurestore.models import Entity, Feature, OnlineFeatures, Readiness, WriteResult

DEFAULT_URL = "http://127.0.0.1:8000"


class _Retry:
    """When to resend after a 503, and how long to wait first."""

    def __init__(self, retries: int, max_wait_s: float) -> None:
        self.retries, self.max_wait_s = retries, max_wait_s

    def wait_s(self, call: C.Call, status: int, attempt: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait before resending, or None to answer now."""
        if status != 503 or not call.retry or attempt >= self.retries:
            return None
        if retry_after_s is None:
            retry_after_s = 0.05 * 2 ** attempt
        return min(max(retry_after_s, 0.0), self.max_wait_s)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the store never sends one


def _options(url: str, token: str | None, timeout_s: float, connections: int = 20) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return {"base_url": url.rstrip("/"), "headers": headers, "timeout": timeout_s,
            "limits": httpx.Limits(max_connections=max(connections, 100), max_keepalive_connections=connections)}


def _unreachable(url: str, exc: httpx.TransportError) -> Unreachable:
    return Unreachable(f"cannot reach the store at {url}: {type(exc).__name__}: {exc}".rstrip(": "))


class Client:
    """A blocking client; thread-safe as httpx.Client is. Use it as a context manager or close()."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout_s: float = 10.0,
                 retries: int = 3, max_retry_wait_s: float = 5.0, transport: httpx.BaseTransport | None = None):
        self.url, self.token, self.timeout_s = url, token, timeout_s
        self._http = httpx.Client(**_options(url, token, timeout_s), transport=transport)
        self._retry = _Retry(retries, max_retry_wait_s)

    def _run(self, call: C.Call) -> Any:
        attempt = 0
        while True:
            try:
                resp = self._http.request(call.method, call.path, content=call.content())
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc) from None
            retry_after = _retry_after(resp)
            wait = self._retry.wait_s(call, resp.status_code, attempt, retry_after)
            if wait is None:
                return call.result(resp.status_code, resp.content, retry_after)
            time.sleep(wait)
            attempt += 1

    # ---- native endpoints
    def write(self, events: list[dict] | dict) -> WriteResult:
        """Write events in any form ``POST /features`` takes (one, or a list)."""
        return self._run(C.write(events))

    def put(self, entity_id: str, name: str, value: Any, event_time: C.Time = None) -> WriteResult:
        """Write one feature; ``event_time``: datetime (naive = UTC), RFC 3339 text or epoch seconds."""
        return self._run(C.put(entity_id, name, value, event_time))

    def put_features(self, entity_id: str, features: dict[str, Any], event_time: C.Time = None) -> WriteResult:
        """Write several features of one entity with one event time."""
        return self._run(C.put_features(entity_id, features, event_time))

    def get_entity(self, entity_id: str) -> Entity:
        """Every live feature of an entity; :class:`NotFound` when it has none."""
        return self._run(C.get_entity(entity_id))

    def get_feature(self, entity_id: str, name: str) -> Feature:
        """One feature with its event time; :class:`NotFound` when absent."""
        return self._run(C.get_feature(entity_id, name))

    def get_many(self, entity_ids: list[str], names: list[str] | None = None) -> list[Entity | None]:
        """Many entities in one call, in order (``None`` for a missing one), optionally some names only."""
        return self._run(C.get_many(entity_ids, names))

    def delete(self, entity_id: str, name: str | None = None) -> int:
        """Delete one feature or the whole entity; the number of values deleted."""
        return self._run(C.delete(entity_id, name))

    # ---- Feast feature-server endpoints
    def get_online_features(self, entities: dict[str, list], features: list[str] | None = None,
                            feature_service: str | None = None, full_feature_names: bool = False) -> OnlineFeatures:
        """Feast's read: ``features`` as ``view:feature`` (or a ``feature_service``) for rows of join keys."""
        return self._run(C.get_online_features(entities, features, feature_service, full_feature_names))

    def write_to_online_store(self, feature_view_name: str, df: dict[str, list]) -> None:
        """Feast's write of a columnar ``df`` (join keys, features, ``event_timestamp``)."""
        return self._run(C.write_to_online_store(feature_view_name, df))

    def push(self, push_source_name: str, df: dict[str, list], to: str = "online") -> None:
        """Feast's push to the views of a push source."""
        return self._run(C.push(push_source_name, df, to))

    # ---- operations
    def health(self) -> bool:
        """Feast's probe: True when every shard answers."""
        return self._run(C.health())

    def healthz(self) -> dict:
        """This front-end process is up: ``{"status": "ok", "pid": ...}``."""
        return self._run(C.healthz())

    def ready(self) -> Readiness:
        """Whether every shard answers, and each shard's state."""
        return self._run(C.ready())

    def stats(self) -> dict:
        """Every shard's counters, the totals, and ingest's counters."""
        return self._run(C.stats())

    def status(self) -> dict:
        """What the status page shows: shards, request counts and buckets per route, ingest."""
        return self._run(C.status())

    def metrics(self) -> str:
        """The Prometheus text of ``GET /metrics``."""
        return self._run(C.metrics())

    def openapi(self) -> dict:
        """The OpenAPI description of every endpoint."""
        return self._run(C.openapi())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same methods as :class:`Client`, each a coroutine (``await fs.get_entity(...)``)."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout_s: float = 10.0,
                 retries: int = 3, max_retry_wait_s: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None, connections: int = 20):
        self.url, self.token, self.timeout_s = url, token, timeout_s
        self._http = httpx.AsyncClient(**_options(url, token, timeout_s, connections), transport=transport)
        self._retry = _Retry(retries, max_retry_wait_s)

    async def _run(self, call: C.Call) -> Any:
        attempt = 0
        while True:
            try:
                resp = await self._http.request(call.method, call.path, content=call.content())
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc) from None
            retry_after = _retry_after(resp)
            wait = self._retry.wait_s(call, resp.status_code, attempt, retry_after)
            if wait is None:
                return call.result(resp.status_code, resp.content, retry_after)
            await asyncio.sleep(wait)
            attempt += 1

    async def write(self, events: list[dict] | dict) -> WriteResult:
        return await self._run(C.write(events))

    async def put(self, entity_id: str, name: str, value: Any, event_time: C.Time = None) -> WriteResult:
        return await self._run(C.put(entity_id, name, value, event_time))

    async def put_features(self, entity_id: str, features: dict[str, Any], event_time: C.Time = None) -> WriteResult:
        return await self._run(C.put_features(entity_id, features, event_time))

    async def get_entity(self, entity_id: str) -> Entity:
        return await self._run(C.get_entity(entity_id))

    async def get_feature(self, entity_id: str, name: str) -> Feature:
        return await self._run(C.get_feature(entity_id, name))

    async def get_many(self, entity_ids: list[str], names: list[str] | None = None) -> list[Entity | None]:
        return await self._run(C.get_many(entity_ids, names))

    async def delete(self, entity_id: str, name: str | None = None) -> int:
        return await self._run(C.delete(entity_id, name))

    async def get_online_features(self, entities: dict[str, list], features: list[str] | None = None,
                                  feature_service: str | None = None,
                                  full_feature_names: bool = False) -> OnlineFeatures:
        return await self._run(C.get_online_features(entities, features, feature_service, full_feature_names))

    async def write_to_online_store(self, feature_view_name: str, df: dict[str, list]) -> None:
        return await self._run(C.write_to_online_store(feature_view_name, df))

    async def push(self, push_source_name: str, df: dict[str, list], to: str = "online") -> None:
        return await self._run(C.push(push_source_name, df, to))

    async def health(self) -> bool:
        return await self._run(C.health())

    async def healthz(self) -> dict:
        return await self._run(C.healthz())

    async def ready(self) -> Readiness:
        return await self._run(C.ready())

    async def stats(self) -> dict:
        return await self._run(C.stats())

    async def status(self) -> dict:
        return await self._run(C.status())

    async def metrics(self) -> str:
        return await self._run(C.metrics())

    async def openapi(self) -> dict:
        return await self._run(C.openapi())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
