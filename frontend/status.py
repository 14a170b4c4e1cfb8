"""For operators: the status page (``GET /``), its data (``GET /status``) and the API docs (``GET /docs``).

The page is plain HTML, CSS and JavaScript in ``frontend/static/`` (no build step, nothing from
the internet); Swagger UI 5 (which renders OpenAPI 3.1) comes from the swagger-ui-py package's static files.
"""
from __future__ import annotations

import time
import importlib.util
from itertools import accumulate
from pathlib import Path

import orjson
import tornado.web

from common import protocol as P
from frontend import metrics as M
from frontend import fanout
from frontend.base import BaseHandler
from frontend.ingest_stats import ingest_stats

STATIC_DIR = Path(__file__).resolve().parent / "static"
# swagger-ui-py ships Swagger UI 5 under swagger_ui/static; found without importing the package,
# whose __init__ loads its framework adapters.
SWAGGER_DIR = Path(importlib.util.find_spec("swagger_ui").submodule_search_locations[0]) / "static"
SHARD_FIELDS = ("entities", "values", "memory_bytes", "log_bytes", "writes", "stale")

def shard_rows(replies: dict) -> list[dict]:
    """Each shard's state and sizes from its ``stats`` reply (or the exception in its place)."""
    rows = []
    for s in sorted(replies):
        reply = replies[s]
        if isinstance(reply, Exception) or not P.is_ok(reply):
            rows.append({"shard": s, "state": f"unreachable: {reply}"})
            continue
        rows.append({"shard": s, "state": "ready", **{k: reply.get(k) for k in SHARD_FIELDS}})
    return rows


def route_rows(metrics: M.Metrics) -> list[dict]:
    """Per ``METHOD route``, over every status and process: the count and cumulative buckets."""
    by_route: dict[str, list[float]] = {}
    for key, acc in metrics.totals().items():
        if key[0] != M.REQUESTS:
            continue
        _, route, method, _status = key
        sums = by_route.setdefault(f"{method} {route}", [0.0] * (len(acc) - 1))
        for i, n in enumerate(acc[:-1]):
            sums[i] += n
    return [{"route": route, "count": sum(counts), "buckets": list(accumulate(counts))}
            for route, counts in sorted(by_route.items())]


class StatusHandler(BaseHandler):
    """``GET /status``: ``{time, shards, routes, bounds, ingest}``, what the status page shows."""

    async def get(self) -> None:
        replies, _ = await fanout.replies_of_all(self.ctx, P.stats)
        body = {"time": time.time(), "shards": shard_rows(replies), "routes": route_rows(self.ctx.metrics),
                "bounds": list(M.REQUEST_BUCKETS_S), "ingest": await ingest_stats(self.ctx)}
        self.finish(orjson.dumps(body))


class PageHandler(BaseHandler):
    """``GET /`` and ``GET /docs``: one HTML file of ``frontend/static``."""

    open_access = True  # the page holds no data; what it fetches asks for the token

    def initialize(self, ctx, page: str, route: str) -> None:
        super().initialize(ctx)
        self.page = page
        self.route_template = route  # the metrics' route label (two routes share this class)

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish((STATIC_DIR / self.page).read_bytes())


class _Assets(tornado.web.StaticFileHandler):
    """Static files; a missing one is a JSON 404 like every other error."""

    def initialize(self, path: str, ctx=None) -> None:
        super().initialize(path)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json")
        if status_code == 405:
            self.set_header("Allow", "GET, HEAD")
        self.finish(orjson.dumps({"detail": f"no such file: {self.request.path}" if status_code == 404
                                  else self._reason}))


class StaticHandler(_Assets):
    """``GET /static/{path}``: the status page's CSS and JavaScript."""


class SwaggerAssetsHandler(_Assets):
    """``GET /docs/assets/{path}``: Swagger UI, from the swagger-ui-py package."""


def routes(ctx) -> list[tuple[str, type, dict, str]]:
    """(path pattern, handler, its arguments, route template) of the operator pages."""
    return [
        (r"/", PageHandler, {"ctx": ctx, "page": "index.html", "route": "/"}, "/"),
        (r"/docs", PageHandler, {"ctx": ctx, "page": "docs.html", "route": "/docs"}, "/docs"),
        (r"/status", StatusHandler, {"ctx": ctx}, "/status"),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}, "/static/{path}"),
        (r"/docs/assets/(.*)", SwaggerAssetsHandler, {"path": str(SWAGGER_DIR)}, "/docs/assets/{path}"),
    ]
