"""Feast feature-server compatible endpoints, for Feast's SDK (``online_store: {type: remote}``)
and for clients written against ``feast serve``.

| method, path                  | request                                               | reply     |
|-------------------------------|-------------------------------------------------------|-----------|
| ``POST /get-online-features`` | ``{entities: {join_key: [..]}, features: [view:feature] | feature_service, full_feature_names?}`` | column-major ``{results, metadata}`` |
| ``POST /write-to-online-store`` | ``{feature_view_name, df: {column: [..]}}``         | ``null``  |
| ``POST /push``                | ``{push_source_name, df, to?: "online"}``             | empty     |
| ``GET /health``               | -                                                     | empty 200, or 503 |

Values are stored under ``view:feature``. A row of join keys maps to one entity id: a single
join key's value as a string (``1001`` -> ``"1001"``); a compound key's ``name=value`` pairs
joined by ``&`` in join-key order, with ``%``, ``&`` and ``=`` percent-encoded inside names and
values, so two different rows never share an id. See docs/FEAST.md.

Errors: those Feast's server raises as ``FeastError`` carry Feast's body, a JSON *string*
holding ``{"module", "class", "message"}`` that the SDK turns back into that exception; a body
of the wrong shape is a 422 in FastAPI's form ``{"detail": [{"type","loc","msg","input"}]}``.
"""
from __future__ import annotations

import dataclasses
import json
import operator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
import tornado.web

from common import protocol as P
from common import timefmt
from common.config import Config, FeatureView
from common.events import EventError, Limits, check_entity_ids, check_name, check_value
from frontend.base import APIError, BaseHandler, BodyHandler
from frontend.native import write_all

TIMESTAMP_COLUMNS = frozenset(("event_timestamp", "created"))  # never features
_TOKENS = [None] * 256
for _code, _name in P.FEAST_STATUS.items():
    _TOKENS[_code] = b'"' + _name.encode() + b'"'


class FeastFailure(APIError):
    """An error in Feast's form: the SDK rebuilds ``feast.errors.<cls>`` from it."""

    def __init__(self, status: int, cls: str, message: str) -> None:
        super().__init__(status, message)
        self.body = orjson.dumps(json.dumps({"module": "feast.errors", "class": cls, "message": message}))


class ShapeError(APIError):
    """A body of the wrong shape: 422 in FastAPI's validation form, as ``feast serve`` answers."""

    def __init__(self, loc: tuple, kind: str, msg: str, value: Any = None) -> None:
        super().__init__(422, f"{'.'.join(map(str, loc))}: {msg}")
        item = {"type": kind, "loc": ["body", *loc], "msg": msg}
        if kind != "missing":
            item["input"] = value
        try:
            self.body = orjson.dumps({"detail": [item]}, default=str)
        except TypeError:  # the input echoed back holds an integer orjson cannot write
            self.body = json.dumps({"detail": [item]}, default=str).encode()


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


# ---- entity ids
def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("&", "%26").replace("=", "%3D")


def _key_text(key: str, values: list) -> list[str]:
    """The join key's values as strings: integers and strings only, as Feast's entity keys."""
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
        raise FeastFailure(400, "FeastError", exc.detail) from None


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


# ---- request parsing
def _get(body: dict, name: str, typ: type, kind: str, what: str, default: Any = ...) -> Any:
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


def _columns(body: dict, name: str) -> tuple[dict, int]:
    """A columnar mapping ``{column: [values]}`` and its number of rows."""
    cols = _get(body, name, dict, "dict_type", "dictionary")
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


def _check_body(handler: BodyHandler) -> dict:
    try:
        body = handler.json_body()
    except APIError as exc:
        raise ShapeError((), "json_invalid", exc.detail) from None
    if type(body) is not dict:
        raise ShapeError((), "model_attributes_type",
                         "Input should be a valid dictionary or object to extract fields from", body)
    return body


def _flag(body: dict, name: str) -> bool:
    return _get(body, name, bool, "bool_type", "boolean", False)


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
    entities, n = _columns(body, "entities")
    features = _get(body, "features", list, "list_type", "list", [])
    service = _get(body, "feature_service", str, "string_type", "string", None)
    full = _flag(body, "full_feature_names")
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
            raise FeastFailure(400, "FeastError", exc.detail) from None
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
        raise FeastFailure(400, "FeastError", exc.detail) from None
    return out


# ---- response rendering
@lru_cache(maxsize=64)
def _same(token: bytes, n: int) -> bytes:
    return b",".join([token] * n)


def _column(values: bytes, statuses: bytes, stamps: bytes) -> bytes:
    return b'{"values":[' + values + b'],"statuses":[' + statuses + b'],"event_timestamps":[' + stamps + b"]}"


def view_columns(rows: tuple[list, list, list], m: int) -> list[bytes]:
    """The ``m`` result columns of one view from its Feast rows, already in request order."""
    v_rows, s_rows, t_rows = rows
    n = len(v_rows)
    if m == 1:
        vcols = [v_rows]
    else:  # one split of all rows, then every m-th fragment: fewer objects than row by row
        flat = P.SEP.join(v_rows).split(P.SEP)
        vcols = [flat[j::m] for j in range(m)]
    statuses = b"".join(s_rows)
    if statuses.count(P.PRESENT) == n * m:
        scols = [_same(_TOKENS[P.PRESENT[0]], n)] * m
    else:
        scols = [b",".join(map(_TOKENS.__getitem__, statuses[j::m])) for j in range(m)]
    if P.SEP not in b"".join(t_rows):
        tcols = [b",".join(t_rows)] * m
    else:
        tcols = [b",".join(c) for c in zip(*[t.split(P.SEP) if P.SEP in t else [t] * m for t in t_rows])]
    return [_column(b",".join(vcols[j]), scols[j], tcols[j]) for j in range(m)]


def key_column(values: list) -> bytes:
    """A join-key column, echoed as Feast does: the request's values, PRESENT, epoch times."""
    n = len(values)
    return _column(orjson.dumps(values)[1:-1], _same(_TOKENS[P.PRESENT[0]], n), _same(P.EPOCH_TS, n))


# ---- handlers
class FeastHandler(BodyHandler):
    """Renders :class:`FeastFailure` and :class:`ShapeError` in Feast's forms."""

    def initialize(self, ctx, catalog: Catalog) -> None:
        super().initialize(ctx)
        self.catalog = catalog

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, (FeastFailure, ShapeError)):
            self.set_header("Content-Type", "application/json")
            self.finish(exc.body)
        else:
            super().write_error(status_code, **kwargs)


class GetOnlineFeaturesHandler(FeastHandler):
    """``POST /get-online-features``: ``{entities, features | feature_service, full_feature_names?,
    include_feature_view_version_metadata?}`` -> ``{results: [{values, statuses, event_timestamps}],
    metadata: {feature_names}}``, join keys first, then the features in reference order."""

    read_methods = frozenset(("GET", "HEAD", "OPTIONS", "POST"))

    async def post(self) -> None:
        body = _check_body(self)
        cfg = self.ctx.cfg
        plan = plan_read(body, self.catalog, cfg, self.ctx.limits)
        pending = [self._submit(eids, stored) for _, eids, stored in plan.views] if plan.n else []
        per_view = []
        for (_, eids, stored), calls in zip(plan.views, pending):
            per_view.append(view_columns(await self._gather(len(eids), calls), len(stored)))
        if not plan.n:
            per_view = [[_column(b"", b"", b"")] * len(stored) for _, _, stored in plan.views]
        cols = [key_column(col) for col in plan.entity_columns.values()]
        cols += [per_view[v][j] for v, j in plan.refs]
        meta = {"feature_names": [*plan.entity_columns, *plan.names]}
        if _flag(body, "include_feature_view_version_metadata"):
            meta["feature_view_metadata"] = [{"name": name, "version": 0} for name, _, _ in plan.views]
        size = sum(map(len, cols)) + len(cols) + 64
        if size > cfg.max_response_bytes:
            raise FeastFailure(413, "FeastError", f"the response would be {size} bytes; the limit is "
                                                  f"{cfg.max_response_bytes} (FS_MAX_RESPONSE_BYTES)")
        self.finish(b'{"results":[' + b",".join(cols) + b'],"metadata":' + orjson.dumps(meta) + b"}")

    def _submit(self, eids: list, names: list) -> list:
        client, groups = self.ctx.client, self.ctx.partitioner.group(eids)
        return [(shard, pos, client.submit(shard, P.fget([eids[p] for p in pos], names)))
                for shard, pos in groups.items()]

    async def _gather(self, n: int, calls: list) -> tuple:
        """The shards' rows put back in request order."""
        v, s, ts = [], [], []
        order = [0] * n
        for shard, pos, fut in calls:
            reply = await self.ok_reply(shard, fut)
            base = len(v)
            v += reply[P.VALUES]
            s += reply[P.STATUSES]
            ts += reply[P.TIMES]
            for i, p in enumerate(pos, base):
                order[p] = i
        if len(calls) == 1:
            return v, s, ts
        get = operator.itemgetter(*order)
        return (get(v), get(s), get(ts)) if n > 1 else (v, s, ts)


class WriteToOnlineStoreHandler(FeastHandler):
    """``POST /write-to-online-store``: ``{feature_view_name, df: {column: [values]},
    allow_registry_cache?, transform_on_write?}`` -> ``null``. Naive timestamps are UTC."""

    async def post(self) -> None:
        body = _check_body(self)
        name = _get(body, "feature_view_name", str, "string_type", "string")
        df, n = _columns(body, "df")
        _flag(body, "allow_registry_cache")
        _flag(body, "transform_on_write")
        view = self.catalog.view(name)
        writes = df_writes(view, df, n, self.ctx.limits, timefmt.now_us())
        if writes:
            await write_all(self, writes)
        self.finish(b"null")


class PushHandler(FeastHandler):
    """``POST /push``: ``{push_source_name, df, to?: "online"}`` -> 200, empty body. The views
    written are those declaring ``push_source``, else the view named like the source."""

    async def post(self) -> None:
        body = _check_body(self)
        source = _get(body, "push_source_name", str, "string_type", "string")
        df, n = _columns(body, "df")
        to = _get(body, "to", str, "string_type", "string", "online")
        _flag(body, "allow_registry_cache")
        _flag(body, "transform_on_write")
        if to != "online":
            raise FeastFailure(400, "FeastError", f"to={to!r}: this store serves the online store only; "
                                                  "push with to='online'")
        now = timefmt.now_us()
        writes = []
        for view in self.catalog.push_views(source):
            writes += df_writes(view, df, n, self.ctx.limits, now)
        if writes:
            await write_all(self, writes)
        self.clear_header("Content-Type")
        self.finish()


class HealthHandler(BaseHandler):
    """``GET /health``: Feast's probe; 200 with an empty body when every shard answers, else 503."""

    open_access = True  # a probe carries no token

    async def get(self) -> None:
        replies = await self.ctx.client.call_all(P.ping)
        down = [s for s, r in sorted(replies.items()) if isinstance(r, Exception) or not r.get("ready")]
        if down:
            raise APIError(503, "shards not ready: " + ", ".join(map(str, down)),
                           {"Retry-After": str(self.ctx.cfg.retry_after_s)})
        self.clear_header("Content-Type")
        self.finish()


def routes(ctx) -> list[tuple[str, type[tornado.web.RequestHandler], dict]]:
    """The Feast routes with their handler arguments."""
    catalog = Catalog.from_config(ctx.cfg)
    return [
        (r"/get-online-features", GetOnlineFeaturesHandler, {"ctx": ctx, "catalog": catalog}),
        (r"/write-to-online-store", WriteToOnlineStoreHandler, {"ctx": ctx, "catalog": catalog}),
        (r"/push", PushHandler, {"ctx": ctx, "catalog": catalog}),
        (r"/health", HealthHandler, {"ctx": ctx}),
    ]
