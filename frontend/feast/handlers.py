"""The Feast endpoints' handlers and routes."""
from __future__ import annotations

from functools import partial
from typing import Any

import orjson
import tornado.web

from common import protocol as P
from common import timefmt
from frontend import fanout
from frontend.base import APIError, BaseHandler, BodyHandler
from frontend.cluster_writes import read_positions
from frontend.endpoints import Endpoint, Plan, parse_json
from frontend.errors import Reply
from frontend.feast.catalog import Catalog
from frontend.feast.errors import FeastFailure, ShapeError, failure_reply
from frontend.feast.plan import body_field, columns, df_writes, flag, plan_read
from frontend.feast.render import column_size, empty_column, key_column, response, view_columns


def check_body(handler: BodyHandler) -> dict:
    return parse_body(handler.body(), handler.ctx.cfg, handler._size)


def parse_body(raw: bytes, cfg, size: int | None = None) -> dict:
    """The body as a JSON object, or a 422 in FastAPI's form."""
    try:
        body = parse_json(raw, cfg, size)
    except APIError as exc:
        raise ShapeError((), "json_invalid", exc.detail) from None
    if type(body) is not dict:
        raise ShapeError((), "model_attributes_type",
                         "Input should be a valid dictionary or object to extract fields from", body)
    return body


class FeastHandler(BodyHandler):
    """Renders :class:`FeastFailure` and :class:`ShapeError` in Feast's forms."""

    def initialize(self, ctx, catalog: Catalog) -> None:
        super().initialize(ctx)
        self.catalog = catalog

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, (FeastFailure, ShapeError)):
            self.set_header("Content-Type", "application/json")
            self.finish(failure_reply(exc)[2])
        else:
            super().write_error(status_code, **kwargs)


class GetOnlineFeaturesHandler(FeastHandler):
    """``POST /get-online-features``: ``{entities, features | feature_service, full_feature_names?,
    include_feature_view_version_metadata?}`` -> ``{results: [{values, statuses, event_timestamps}],
    metadata: {feature_names}}``, join keys first, then the features in reference order."""

    read_methods = frozenset(("GET", "HEAD", "OPTIONS", "POST"))

    def initialize(self, ctx, catalog: Catalog, endpoint: Endpoint) -> None:
        super().initialize(ctx, catalog)
        self.endpoint = endpoint

    async def post(self) -> None:
        await self.serve(self.endpoint)


def plan_online_features(catalog: Catalog, ctx, raw: bytes, size: int | None = None, headers=None) -> Plan:
    """The logic of ``POST /get-online-features`` (its handler's docstring has the shapes): the
    ``fget`` of each view's entities, and what renders their rows; in cluster mode, with
    ``X-Read-After``, from replicas that applied those positions."""
    after = read_positions(ctx.cfg, headers)
    body = parse_body(raw, ctx.cfg, size)
    plan = plan_read(body, catalog, ctx.cfg, ctx.limits)
    calls, views = [], []
    if plan.n:
        for _, eids, stored in plan.views:
            view_calls, groups = fanout.rows_calls(ctx, eids, stored, after)
            views.append((len(eids), len(stored), len(calls), view_calls, groups))
            calls += view_calls
    return calls, partial(_online_features, ctx, body, plan, views)


def _online_features(ctx, body: dict, plan, views: list, replies: list) -> Reply:
    cfg = ctx.cfg
    if plan.n:
        per_view = [view_columns(fanout.rows_of(ctx, n, view_calls, groups, replies[first:first + len(view_calls)]), m)
                    for n, m, first, view_calls, groups in views]
    else:
        per_view = [[empty_column()] * len(stored) for _, _, stored in plan.views]
    cols = [key_column(col) for col in plan.entity_columns.values()]
    cols += [per_view[v][j] for v, j in plan.refs]
    meta = {"feature_names": [*plan.entity_columns, *plan.names]}
    if flag(body, "include_feature_view_version_metadata"):
        meta["feature_view_metadata"] = [{"name": name, "version": 0} for name, _, _ in plan.views]
    size = sum(map(column_size, cols)) + len(cols) + 64
    if size > cfg.max_response_bytes:
        raise FeastFailure(413, "FeastError", f"the response would be {size} bytes; the limit is "
                                              f"{cfg.max_response_bytes} (FS_MAX_RESPONSE_BYTES)")
    return 200, {}, response(cols, b',"metadata":' + orjson.dumps(meta) + b"}")


def online_features_endpoint(catalog: Catalog) -> Endpoint:
    """``POST /get-online-features`` with ``catalog``, for its handler and the fast engine's hot path."""
    return Endpoint("GetOnlineFeaturesHandler", "/get-online-features", False,
                    partial(plan_online_features, catalog), failure_reply)


class WriteToOnlineStoreHandler(FeastHandler):
    """``POST /write-to-online-store``: ``{feature_view_name, df: {column: [values]},
    allow_registry_cache?, transform_on_write?}`` -> ``null``. Naive timestamps are UTC."""

    async def post(self) -> None:
        body = check_body(self)
        name = body_field(body, "feature_view_name", str, "string_type", "string")
        df, n = columns(body, "df")
        flag(body, "allow_registry_cache")
        flag(body, "transform_on_write")
        view = self.catalog.view(name)
        writes = df_writes(view, df, n, self.ctx.limits, timefmt.now_us())
        if writes:
            await fanout.write_all(self.ctx, writes)
        self.finish(b"null")


class PushHandler(FeastHandler):
    """``POST /push``: ``{push_source_name, df, to?: "online"}`` -> 200, empty body. The views
    written are those declaring ``push_source``, else the view named like the source."""

    async def post(self) -> None:
        body = check_body(self)
        source = body_field(body, "push_source_name", str, "string_type", "string")
        df, n = columns(body, "df")
        to = body_field(body, "to", str, "string_type", "string", "online")
        flag(body, "allow_registry_cache")
        flag(body, "transform_on_write")
        if to != "online":
            raise FeastFailure(400, "FeastError", f"to={to!r}: this store serves the online store only; "
                                                  "push with to='online'")
        now = timefmt.now_us()
        writes = []
        for view in self.catalog.push_views(source):
            writes += df_writes(view, df, n, self.ctx.limits, now)
        if writes:
            await fanout.write_all(self.ctx, writes)
        self.clear_header("Content-Type")
        self.finish()


class HealthHandler(BaseHandler):
    """``GET /health``: Feast's probe; 200 with an empty body when every shard answers, else 503."""

    open_access = True  # a probe carries no token

    async def get(self) -> None:
        _, down = await fanout.replies_of_all(self.ctx, P.ping)
        if down:
            raise APIError(503, "shards not ready: " + ", ".join(map(str, down)),
                           {"Retry-After": str(self.ctx.cfg.retry_after_s)})
        self.clear_header("Content-Type")
        self.finish()


def routes(ctx) -> list[tuple[str, type[tornado.web.RequestHandler], dict]]:
    """The Feast routes with their handler arguments."""
    catalog = Catalog.from_config(ctx.cfg)
    return [
        (r"/get-online-features", GetOnlineFeaturesHandler,
         {"ctx": ctx, "catalog": catalog, "endpoint": online_features_endpoint(catalog)}),
        (r"/write-to-online-store", WriteToOnlineStoreHandler, {"ctx": ctx, "catalog": catalog}),
        (r"/push", PushHandler, {"ctx": ctx, "catalog": catalog}),
        (r"/health", HealthHandler, {"ctx": ctx}),
    ]
