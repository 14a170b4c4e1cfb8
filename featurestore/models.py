"""What the client's methods return: small frozen dataclasses over the store's JSON."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def parse_time(text: str) -> datetime:
    """A timestamp the store rendered (``...Z``) as an aware datetime."""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def age_s(text: str, now: datetime | None = None) -> float:
    """Seconds since the event time ``text``."""
    return ((now or datetime.now(timezone.utc)) - parse_time(text)).total_seconds()


@dataclass(frozen=True)
class Feature:
    """``GET /features/{entity_id}/{name}``."""

    entity_id: str
    name: str
    value: Any
    event_timestamp: str

    @property
    def event_time(self) -> datetime:
        return parse_time(self.event_timestamp)


@dataclass(frozen=True)
class Entity:
    """``GET /features/{entity_id}``: every live feature, and the newest event time."""

    entity_id: str
    features: dict[str, Any]
    last_updated: str

    @property
    def last_updated_time(self) -> datetime:
        return parse_time(self.last_updated)


@dataclass(frozen=True)
class WriteResult:
    """``POST /features``: values written, and those older than the stored ones (``stale``)."""

    written: int
    stale: int


@dataclass(frozen=True)
class Readiness:
    """``GET /readyz``: whether every shard answers, and each shard's state."""

    ready: bool
    shards: list[dict]
    detail: str | None = None


@dataclass(frozen=True)
class OnlineFeatures:
    """``POST /get-online-features``: Feast's column-major answer."""

    feature_names: list[str]
    results: list[dict]
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, list]:
        """``{feature name: [value per entity row]}``, as Feast's ``OnlineResponse.to_dict()``."""
        return {name: col["values"] for name, col in zip(self.feature_names, self.results)}

    def statuses(self) -> dict[str, list[str]]:
        """``{feature name: [PRESENT | NOT_FOUND | NULL_VALUE | OUTSIDE_MAX_AGE per row]}``."""
        return {name: col["statuses"] for name, col in zip(self.feature_names, self.results)}
