"""Request planning: a Feast body checked field by field, its feature references resolved to
views and stored names, its rows to entity ids and write tuples."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import timefmt
from common.config import Config, FeatureView
from common.events import EventError, Limits, check_name, check_value
from frontend.feast.catalog import Catalog, entity_ids, join_keys_of
from frontend.feast.errors import FeastFailure, ShapeError

TIMESTAMP_COLUMNS = frozenset(("event_timestamp", "created"))  # never features


def body_field(body: dict, name: str, typ: type, kind: str, what: str, default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise ShapeError((name,), "missing", "Field required")
        return default
    value = body[name]
    if value is None and default is not ...:
        return default  # null is "not given" for an optional field
    if type(value) is not typ:
        raise ShapeError((name,), kind, f"Input should be a valid {what}", value)
    return value


def columns(body: dict, name: str) -> tuple[dict, int]:
    """A columnar mapping ``{column: [values]}`` and its number of rows."""
    cols = body_field(body, name, dict, "dict_type", "dictionary")
    n = None
    for key, col in cols.items():
        if type(col) is not list:
            raise ShapeError((name, key), "list_type", "Input should be a valid list", col)
        if n is None:
            n = len(col)
        elif len(col) != n:
            raise FeastFailure(400, "FeastError", f"{name}: all columns must have the same length; "
                                                  f"{next(iter(cols))} has {n} rows, {key} has {len(col)}")
    return cols, n or 0


def flag(body: dict, name: str) -> bool:
    return body_field(body, name, bool, "bool_type", "boolean", False)


@dataclass
class ReadPlan:
    """A parsed ``/get-online-features`` request: per view, its entity ids and stored names."""

    n: int
    entity_columns: dict
    views: list  # [(view name, entity ids, [stored names])], in first-reference order
    names: list  # response names of the features, in reference order
    refs: list  # (view index, position in that view's names) per reference


def plan_read(body: dict, catalog: Catalog, cfg: Config, limits: Limits) -> ReadPlan:
    """Validate a ``/get-online-features`` body and resolve its references and entity ids."""
    entities, n = columns(body, "entities")
    features = body_field(body, "features", list, "list_type", "list", [])
    service = body_field(body, "feature_service", str, "string_type", "string", None)
    full = flag(body, "full_feature_names")
    if service is not None:
        if service not in catalog.services:
            raise FeastFailure(404, "FeatureServiceNotFoundException", f"Feature service {service} does not exist")
        features = list(catalog.services[service])
    for i, ref in enumerate(features or ()):
        if type(ref) is not str:
            raise ShapeError(("features", i), "string_type", "Input should be a valid string", ref)
    if not features:
        raise FeastFailure(400, "FeastError", "no features requested: give features or feature_service")
    if not entities:
        raise FeastFailure(400, "FeastError", "entities must name at least one join key")
    if n > cfg.max_batch_entities:
        raise FeastFailure(413, "FeastError", f"entities have {n} rows; the limit is {cfg.max_batch_entities} "
                                              "(FS_MAX_BATCH_ENTITIES)")
    views, names, refs = resolve_refs(catalog, features, full, limits)
    ids_by_keys: dict[tuple, list] = {}
    plan_views = []
    for view, stored in views:
        keys = tuple(join_keys_of(view, entities, "entities"))
        if keys not in ids_by_keys:
            ids_by_keys[keys] = entity_ids(list(keys), [entities[k] for k in keys], limits)
        plan_views.append((view.name, ids_by_keys[keys], stored))
    return ReadPlan(n, entities, plan_views, names, refs)


def resolve_refs(catalog: Catalog, features: list, full: bool, limits: Limits) -> tuple[list, list, list]:
    """The views of ``features`` with the names stored for each, the response names, and for each
    reference its (view index, position). Memoised per feature list: clients repeat theirs."""
    key = (tuple(features), full)
    hit = catalog.plans.get(key)
    if hit is not None:
        return hit
    by_view: dict[str, int] = {}
    views: list = []
    refs, names = [], []
    for ref in features:
        view_name, sep, feat = ref.partition(":")
        if not sep or not view_name or not feat:
            raise FeastFailure(400, "FeastError", f"feature reference {ref!r} must be view:feature")
        try:
            check_name(ref, limits, f"feature reference {ref!r}")
        except EventError as exc:
            raise FeastFailure(exc.status, "FeastError", exc.detail) from None
        if view_name not in by_view:
            by_view[view_name] = len(views)
            views.append((catalog.view(view_name), []))
        view, stored = views[by_view[view_name]]
        if view.features and feat not in view.features:
            raise FeastFailure(404, "FeastObjectNotFoundException", f"Feature {feat} not found in projection "
                                                                    f"{view_name}")
        refs.append((by_view[view_name], len(stored)))
        stored.append(ref)
        names.append(f"{view_name}__{feat}" if full else feat)
    if len(set(names)) != len(names):
        dup = sorted({x for x in names if names.count(x) > 1})
        raise FeastFailure(400, "FeatureNameCollisionError", f"Duplicate features named {dup}: use "
                                                             "full_feature_names=true or distinct references")
    if len(catalog.plans) >= 1024:
        catalog.plans.clear()
    catalog.plans[key] = (views, names, refs)
    return views, names, refs


def df_writes(view: FeatureView, df: dict, n: int, limits: Limits, now_us: int) -> list:
    """Write tuples ``(entity_id, "view:feature", value, event_us)`` of a columnar ``df``."""
    keys = join_keys_of(view, df, "df")
    eids = entity_ids(keys, [df[k] for k in keys], limits)
    skip = set(keys) | TIMESTAMP_COLUMNS
    feats = [c for c in (view.features or df) if c in df and c not in skip]
    if not feats:
        raise FeastFailure(400, "FeastError", f"df has no feature columns for feature view {view.name}")
    stamps = df.get("event_timestamp")
    times = [now_us] * n
    if stamps is not None:
        try:
            times = [now_us if t is None else timefmt.parse(t, naive_is_utc=True) for t in stamps]
        except timefmt.TimestampError as exc:
            raise FeastFailure(400, "FeastError", f"df.event_timestamp {exc}") from None
    out = []
    try:
        for feat in feats:
            name = check_name(f"{view.name}:{feat}", limits, f"df column {feat!r}")
            col = df[feat]
            for i in range(n):
                out.append((eids[i], name, check_value(col[i], limits, f"df.{feat}[{i}]"), times[i]))
    except EventError as exc:
        raise FeastFailure(exc.status, "FeastError", exc.detail) from None
    return out


# ---- response rendering
