"""The declared feature views and services, and the entity id of a row of join keys."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import orjson

from common.config import Config, FeatureView
from common.events import EventError, Limits, check_entity_ids
from frontend.feast.errors import FeastFailure


@dataclass(frozen=True)
class Catalog:
    """The feature views and feature services declared in the configuration file."""

    views: dict[str, FeatureView] = field(default_factory=dict)
    services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    plans: dict = field(default_factory=dict, compare=False)  # resolved feature lists, see resolve_refs

    @classmethod
    def from_config(cls, cfg: Config) -> "Catalog":
        return cls({v.name: _with_aggregates(v, cfg) for v in cfg.views}, dict(cfg.feature_services))

    def view(self, name: str) -> FeatureView:
        """The declared view ``name``; any name while no view is declared (Feast-less use)."""
        view = self.views.get(name)
        if view is not None:
            return view
        if self.views:
            raise FeastFailure(404, "FeatureViewNotFoundException", f"Feature view {name} does not exist")
        return FeatureView(name)

    def push_views(self, source: str) -> list[FeatureView]:
        """The views a push source writes to: those declaring it, else the view of that name."""
        views = [v for v in self.views.values() if v.push_source == source]
        if not views and (source in self.views or not self.views):
            views = [self.views.get(source) or FeatureView(source)]
        if not views:
            raise FeastFailure(422, "PushSourceNotFoundException", f"Unable to find push source '{source}'.")
        return views


def _with_aggregates(view: FeatureView, cfg: Config) -> FeatureView:
    """``view`` whose declared features include the aggregates of its aggregated features
    (``view:clicks`` aggregated: ``clicks_sum_1h`` is a feature of ``view``)."""
    prefix = view.name + ":"
    extra = tuple(o.name[len(prefix):] for a in cfg.aggregations if a.feature.startswith(prefix) for o in a.outputs)
    return dataclasses.replace(view, features=view.features + extra) if view.features and extra else view


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("&", "%26").replace("=", "%3D")


_KEY_TYPES = frozenset((int, str))
_INTS = frozenset((int,))


def _key_text(key: str, values: list) -> list[str]:
    """The join key's values as strings: integers and strings only, as Feast's entity keys."""
    types = set(map(type, values))
    if types <= _KEY_TYPES:
        if types == _INTS:  # one C-level rendering instead of a str() per value (a Feast read's hot path)
            try:
                return orjson.dumps(values)[1:-1].decode().split(",")
            except orjson.JSONEncodeError:  # an integer beyond 64 bits
                pass
        return list(map(str, values))
    for i, v in enumerate(values):
        t = type(v)
        if t is not str and t is not int:
            raise FeastFailure(400, "FeastError", f"join key {key}: row {i} is {json.dumps(v)}; "
                                                  "entity values must be integers or strings")
    return list(map(str, values))


def entity_ids(keys: list[str], columns: list[list], limits: Limits) -> list[str]:
    """The entity id of each row of join-key ``columns`` (see the module docstring)."""
    if len(keys) == 1:
        eids = _key_text(keys[0], columns[0])
    else:
        parts = [[f"{_escape(k)}={_escape(v)}" for v in _key_text(k, col)] for k, col in zip(keys, columns)]
        eids = ["&".join(row) for row in zip(*parts)]
    try:
        return check_entity_ids(eids, limits, f"entity row ({'+'.join(keys)})")
    except EventError as exc:
        raise FeastFailure(exc.status, "FeastError", exc.detail) from None


def join_keys_of(view: FeatureView, columns, where: str) -> list[str]:
    """A view's join keys: declared, else the columns whose names end in ``_id`` (sorted)."""
    if view.join_keys:
        missing = [k for k in view.join_keys if k not in columns]
        if missing:
            raise FeastFailure(400, "FeastError", f"Missing join key values for keys: {missing} of feature "
                                                  f"view {view.name}; {where} has {sorted(columns)}")
        return list(view.join_keys)
    keys = sorted(c for c in columns if c.endswith("_id"))
    if not keys:
        raise FeastFailure(400, "FeastError", f"feature view {view.name} is not declared, so its join keys "
                                              f"are the {where} columns ending in _id; there are none")
    return keys
