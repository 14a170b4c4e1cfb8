"""The Tornado application and one front-end process's serving coroutine."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal

import orjson
import tornado.httpserver
import tornado.web

from common.config import Config
from common.events import Limits
from common.murmur2 import KafkaPartitioner
from common.partition import Partitioner
from frontend import accept, admission, engine, fast, feast, hot, native, ops, status
from frontend.access import too_large
from frontend.base import HARD_BODY_FACTOR, Context, NotFoundHandler
from frontend.metrics import Metrics, method_label
from frontend.shard_client import ShardClient

log = logging.getLogger("frontend")

ENTITY = r"([^/]+)"  # one percent-decoded path segment: '/' inside an id arrives as %2F
UNMATCHED = "unmatched"  # the route label of a path no route serves: never the path itself


def make_app(ctx: Context) -> tornado.web.Application:
    """All routes, each handler getting ``ctx`` through ``initialize``."""
    native_routes = [
        (r"/features", native.FeaturesHandler, "/features"),
        (r"/features/batch", native.BatchHandler, "/features/batch"),
        (rf"/features/{ENTITY}", native.EntityHandler, "/features/{entity_id}"),
        (rf"/features/{ENTITY}/{ENTITY}", native.FeatureHandler, "/features/{entity_id}/{name}"),
        (r"/healthz", native.HealthzHandler, "/healthz"),
        (r"/readyz", native.ReadyzHandler, "/readyz"),
        (r"/stats", native.StatsHandler, "/stats"),
        (r"/metrics", ops.MetricsHandler, "/metrics"),
        (r"/openapi.json", ops.OpenAPIHandler, "/openapi.json"),
    ]
    routes = [(path, handler, {"ctx": ctx}, template) for path, handler, template in native_routes]
    routes += [(path, handler, args, path) for path, handler, args in feast.routes(ctx)]
    routes += status.routes(ctx)
    app = tornado.web.Application(
        [(path, handler, args) for path, handler, args, _ in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        compress_response=False,
        log_function=_request_logger(ctx, {handler: template for _, handler, _, template in routes}),
    )
    app.route_templates = [template for *_, template in routes]  # for tests/test_docs.py
    return app


def _request_logger(ctx: Context, templates: dict):
    """Count every request by route template (it is no longer in flight); log each one only with
    FS_ACCESS_LOG (logging costs CPU per request)."""
    record = ctx.metrics.request

    def log_request(handler: tornado.web.RequestHandler) -> None:
        ctx.active.leave(handler.request)  # answered: no longer in flight
        if not getattr(handler, "counted", False):  # a read of frontend/reads.py counted itself
            route = getattr(handler, "route_template", None) or templates.get(type(handler), UNMATCHED)
            record(route, method_label(handler.request.method), handler.get_status(),
                   handler.request.request_time())
        if ctx.cfg.access_log or handler.get_status() >= 500:
            _log_request(handler)

    return log_request


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    log.info("%d %s %.2fms", status, handler._request_summary(), 1000 * handler.request.request_time())



def make_context(cfg: Config, client) -> Context:
    partitioner = KafkaPartitioner(client.n_shards) if cfg.cluster_kafka else Partitioner(cfg.shards)
    return Context(cfg=cfg, client=client, partitioner=partitioner, limits=Limits.from_config(cfg),
                   metrics=Metrics(cfg.metrics_dir, cfg.metrics))


def make_client(cfg: Config):
    """The shard client: one link per shard, or (cluster mode) partitions over found shards."""
    if not cfg.cluster_kafka:
        return _shard_client(cfg, cfg.endpoints())
    from common import membership
    from frontend.cluster import ClusterClient
    from frontend.cluster_writes import Writer

    partitions = membership.ensure_topic(cfg.cluster_kafka, cfg.cluster_topic, cfg.cluster_partitions)
    membership.ensure_topic(cfg.cluster_kafka, membership.members_topic(cfg.cluster_topic), 1,
                            {"cleanup.policy": "compact"})
    reader = membership.Reader(cfg.cluster_kafka, cfg.cluster_topic)
    writer = Writer(cfg.cluster_kafka, cfg.cluster_topic, cfg.cluster_apply_timeout_s)
    return ClusterClient(cfg, _shard_client(cfg, []), reader, writer, partitions)


def _shard_client(cfg: Config, endpoints) -> ShardClient:
    return ShardClient(endpoints, cfg.shard_timeout_s, curve_dir=cfg.curve_dir,
                       max_frame_requests=cfg.max_frame_requests, max_frame_bytes=cfg.max_frame_bytes)


class _Server(tornado.httpserver.HTTPServer):
    """Tornado's server with a cap on open connections (past it, a new one is closed at once),
    accepting with :func:`frontend.accept.add_accept_handler` (no spinning out of descriptors)."""

    max_connections = 10000

    def add_sockets(self, sockets) -> None:
        exhaustion = accept.Exhaustion(lambda: len(self._connections))
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept.add_accept_handler(sock, self._handle_connection, exhaustion)

    def handle_stream(self, stream, address) -> None:
        if len(self._connections) >= self.max_connections:
            stream.close()
            return
        super().handle_stream(stream, address)


async def start_server(cfg: Config, ctx: Context, sockets):
    """Serve the application on ``sockets`` with the engine that ``FS_HTTP_ENGINE`` names: the fast
    one admits (frontend/admission.py) and serves the hot requests in ``hot.Hot``, Tornado's in
    ``fast.Router``. Tornado has one timer for a request's head and for an idle keep-alive
    connection: the shorter one."""
    app = make_app(ctx)
    if cfg.http_engine == "tornado":
        return _start_tornado(cfg, fast.Router(app, ctx), sockets)
    hot_paths = hot.Hot(ctx)
    server = engine.HTTPServer(app, max_body_size=cfg.max_body_bytes,
                               too_large=orjson.dumps({"detail": too_large(cfg).detail}),
                               idle_timeout_s=cfg.http_idle_timeout_s,
                               header_timeout_s=cfg.http_header_timeout_s, hot=hot_paths,
                               max_head_bytes=admission.hard_head_bytes(cfg),
                               max_connections=cfg.http_max_connections,
                               admit=hot_paths.admit, in_flight=ctx.active)
    await server.add_sockets(sockets)
    return server


def _start_tornado(cfg: Config, delegate, sockets) -> tornado.httpserver.HTTPServer:
    server = _Server(delegate, max_body_size=HARD_BODY_FACTOR * cfg.max_body_bytes,
                     max_header_size=admission.hard_head_bytes(cfg),
                     idle_connection_timeout=min(cfg.http_idle_timeout_s, cfg.http_header_timeout_s),
                     body_timeout=cfg.http_body_timeout_s)
    server.max_connections = cfg.http_max_connections
    server.add_sockets(sockets)
    return server


YOUNG_GC_EVERY = 20_000  # net new container objects between two young collections (CPython's default: 700)


def tune_gc() -> None:
    """What exists once the front end serves lives as long as the process: it is left out of
    every collection. A request's objects (its exchange, parsed body, shard requests and
    replies) die by reference counting; at CPython's threshold the young generation was
    collected every ~90 requests, only because 64 requests were in flight at once, costing
    0.9-1.1 us per GET and 2.6-3.4 us per POST (docs/BENCHMARKS.md, 6i)."""
    gc.freeze()
    gc.set_threshold(YOUNG_GC_EVERY, *gc.get_threshold()[1:])


async def serve(cfg: Config, sockets) -> None:
    """Serve HTTP on already-bound ``sockets`` until SIGTERM or SIGINT.

    Single-entity GETs take the fast path of ``frontend/fast.py``; the rest go to the application.
    """
    client = make_client(cfg)
    ctx = make_context(cfg, client)
    client.on_roundtrip = ctx.metrics.shard_roundtrip
    client.start()
    server = await start_server(cfg, ctx, sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("front end serving http://%s:%d with %s", cfg.http_host, cfg.http_port,
             f"{client.n_shards} partitions of {cfg.cluster_topic}" if cfg.cluster_kafka else f"{cfg.shards} shards")
    tune_gc()
    await stop.wait()
    server.stop()
    client.close()
    log.info("front end stopped")
