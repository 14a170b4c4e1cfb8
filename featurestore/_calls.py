"""Sans-IO: each endpoint as a :class:`Call` (method, path, body, how to read the answer).

``Client`` and ``AsyncClient`` only send calls; everything about the API lives here once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote

from featurestore.errors import error_for
from featurestore.models import Entity, Feature, OnlineFeatures, Readiness, WriteResult

Time = datetime | str | float | int | None


@dataclass(frozen=True)
class Call:
    """One request and how to turn its response into a result."""

    method: str
    path: str
    read: Callable[[int, bytes], Any]  # (status, body) -> result, for the statuses in ``ok``
    body: Any = None
    ok: tuple[int, ...] = (200,)  # other statuses raise their FeatureStoreError
    retry: bool = True  # probes answer 503 on purpose: no retry

    def result(self, status: int, raw: bytes, retry_after_s: float | None) -> Any:
        if status in self.ok:
            return self.read(status, raw)
        raise error_for(status, raw, retry_after_s)

    def content(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body).encode()


def segment(text: str) -> str:
    """An entity id or a name as one path segment (``user/1`` -> ``user%2F1``; ``..`` kept)."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def event_timestamp(t: Time) -> str | float | int | None:
    """An event time as the store reads it; a naive datetime is UTC."""
    if isinstance(t, datetime):
        t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
        return t.isoformat().replace("+00:00", "Z")
    return t


def _json(_status: int, raw: bytes) -> Any:
    return json.loads(raw) if raw else None


def _none(_status: int, _raw: bytes) -> None:
    return None


def _write_result(_status: int, raw: bytes) -> WriteResult:
    body = json.loads(raw)
    return WriteResult(body["written"], body["stale"])


def _entity(obj: dict) -> Entity:
    return Entity(obj["entity_id"], obj["features"], obj["last_updated"])


# ---- native endpoints
def write(events: list[dict] | dict) -> Call:
    """``POST /features`` with events in any of the store's forms."""
    return Call("POST", "/features", _write_result, events)


def put(entity_id: str, name: str, value: Any, event_time: Time = None) -> Call:
    event = {"entity_id": entity_id, "name": name, "value": value}
    if event_time is not None:
        event["event_timestamp"] = event_timestamp(event_time)
    return write(event)


def put_features(entity_id: str, features: dict[str, Any], event_time: Time = None) -> Call:
    event = {"entity_id": entity_id, "features": features}
    if event_time is not None:
        event["event_timestamp"] = event_timestamp(event_time)
    return write(event)


def get_entity(entity_id: str) -> Call:
    return Call("GET", f"/features/{segment(entity_id)}", lambda _s, raw: _entity(json.loads(raw)))


def get_feature(entity_id: str, name: str) -> Call:
    def read(_status: int, raw: bytes) -> Feature:
        b = json.loads(raw)
        return Feature(b["entity_id"], b["name"], b["value"], b["event_timestamp"])

    return Call("GET", f"/features/{segment(entity_id)}/{segment(name)}", read)


def get_many(entity_ids: list[str], names: list[str] | None = None) -> Call:
    """``POST /features/batch``: an :class:`Entity` per id, in order; ``None`` for a missing one."""
    def read(_status: int, raw: bytes) -> list[Entity | None]:
        return [_entity(r) if "features" in r else None for r in json.loads(raw)["results"]]

    body: dict = {"entity_ids": list(entity_ids)}
    if names is not None:
        body["features"] = list(names)
    return Call("POST", "/features/batch", read, body)


def delete(entity_id: str, name: str | None = None) -> Call:
    """``DELETE /features/{entity_id}[/{name}]``: the number of values deleted."""
    path = f"/features/{segment(entity_id)}" + (f"/{segment(name)}" if name is not None else "")
    return Call("DELETE", path, lambda _s, raw: json.loads(raw)["deleted"])


# ---- Feast feature-server endpoints
def get_online_features(entities: dict[str, list], features: list[str] | None = None,
                        feature_service: str | None = None, full_feature_names: bool = False) -> Call:
    def read(_status: int, raw: bytes) -> OnlineFeatures:
        b = json.loads(raw)
        meta = b.get("metadata") or {}
        return OnlineFeatures(meta.get("feature_names", []), b["results"], meta)

    body: dict = {"entities": entities, "full_feature_names": full_feature_names}
    if features is not None:
        body["features"] = list(features)
    if feature_service is not None:
        body["feature_service"] = feature_service
    return Call("POST", "/get-online-features", read, body)


def write_to_online_store(feature_view_name: str, df: dict[str, list]) -> Call:
    return Call("POST", "/write-to-online-store", _none, {"feature_view_name": feature_view_name, "df": df})


def push(push_source_name: str, df: dict[str, list], to: str = "online") -> Call:
    return Call("POST", "/push", _none, {"push_source_name": push_source_name, "df": df, "to": to})


# ---- operations
def health() -> Call:
    """Feast's ``GET /health``: True when every shard answers."""
    return Call("GET", "/health", lambda status, _raw: status == 200, ok=(200, 503), retry=False)


def healthz() -> Call:
    return Call("GET", "/healthz", _json, retry=False)


def ready() -> Call:
    def read(status: int, raw: bytes) -> Readiness:
        b = json.loads(raw)
        return Readiness(status == 200, b.get("shards", []), b.get("detail"))

    return Call("GET", "/readyz", read, ok=(200, 503), retry=False)


def stats() -> Call:
    return Call("GET", "/stats", _json)


def status() -> Call:
    return Call("GET", "/status", _json)


def metrics() -> Call:
    return Call("GET", "/metrics", lambda _s, raw: raw.decode())


def openapi() -> Call:
    return Call("GET", "/openapi.json", _json)
