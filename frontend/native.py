"""The store's own endpoints: ``/features...``, ``/healthz``, ``/readyz``, ``/stats``."""
from __future__ import annotations

import asyncio
import os

import orjson

from common import protocol as P
from common.events import EventError, check_entity_id, check_name
from common.partition import mismatch
from frontend import endpoints, fanout, reads
from frontend.base import APIError, BaseHandler, BodyHandler
from frontend.cluster_writes import READ_AFTER, render_positions
from frontend.ingest_stats import ingest_stats


class EntityReads(BaseHandler):
    """GET and DELETE of a whole entity or one feature, shared by the path and query forms."""

    async def delete_values(self, eid: str, name: str | None = None) -> None:
        self._check(eid, name)
        reply = await fanout.call(self.ctx, self.ctx.partitioner.shard_for(eid), P.delete(eid, name))
        body = {"message": "feature deleted" if name else "entity deleted", "entity_id": eid,
                "deleted": reply[P.DELETED]}
        if name is not None:
            body["name"] = name
        if P.applied_of(reply):
            self.set_header(READ_AFTER, render_positions(P.applied_of(reply)))
        self.finish(orjson.dumps(body))

    def _check(self, eid: str, name: str | None = None) -> None:
        try:
            check_entity_id(eid, self.ctx.limits)
            if name is not None:
                check_name(name, self.ctx.limits)
        except EventError as exc:
            raise APIError(exc.status, exc.detail) from None


class EntityHandler(EntityReads):
    """``GET|DELETE /features/{entity_id}``.

    Most GETs never reach this class: ``frontend/fast.py`` serves them with the same
    :data:`frontend.reads.ENTITY` and less CPU (tests/test_http_fastpath.py compares the two).
    """

    def get(self, eid: str) -> asyncio.Future:
        return self.answer(reads.ENTITY, eid)

    async def delete(self, eid: str) -> None:
        await self.delete_values(eid)


class FeatureHandler(EntityReads):
    """``GET|DELETE /features/{entity_id}/{name}`` (GETs: see :class:`EntityHandler`)."""

    def get(self, eid: str, name: str) -> asyncio.Future:
        return self.answer(reads.FEATURE, eid, name)

    async def delete(self, eid: str, name: str) -> None:
        await self.delete_values(eid, name)


class FeaturesHandler(BodyHandler, EntityReads):
    """``POST /features`` (write) and ``GET /features?entity_id=&name=``."""

    def get(self) -> asyncio.Future:
        eid, name = self._query("entity_id"), self._query("name")
        if not eid:
            raise APIError(400, "query parameter entity_id is required")
        if not name:
            raise APIError(400, "query parameter name is required")
        return self.answer(reads.FEATURE, eid, name)

    def _query(self, name: str) -> str | None:
        """A query parameter exactly as sent (Tornado's own accessor turns control characters,
        which an entity id may hold, into spaces and strips them)."""
        values = self.request.query_arguments.get(name)
        try:
            return values[-1].decode("utf-8") if values else None
        except UnicodeDecodeError:
            raise APIError(400, f"query parameter {name} is not UTF-8") from None

    async def post(self) -> None:
        await self.serve(endpoints.WRITE)


class BatchHandler(BodyHandler, EntityReads):
    """``POST /features/batch``: many entities in one call, results in request order.

    (``GET|DELETE /features/batch`` still read and delete the entity named ``batch``.)
    """

    read_methods = frozenset(("GET", "HEAD", "OPTIONS", "POST"))

    def get(self) -> asyncio.Future:
        return self.answer(reads.ENTITY, "batch")

    async def delete(self) -> None:
        await self.delete_values("batch")

    async def post(self) -> None:
        await self.serve(endpoints.BATCH)


class HealthzHandler(BaseHandler):
    """``GET /healthz``: this process is up (``pid`` tells the front-end processes apart)."""

    open_access = True

    def get(self) -> None:
        self.finish(orjson.dumps({"status": "ok", "pid": os.getpid()}))


class ReadyzHandler(BaseHandler):
    """``GET /readyz``: every shard answers a ping in time and has finished recovery."""

    open_access = True

    async def get(self) -> None:
        if self.ctx.cfg.cluster_kafka:
            return self._answer(self.ctx.client.readiness())
        replies, down = await fanout.replies_of_all(self.ctx, P.ping)
        wrong = {s: mismatch(r.get(P.SLOT_TABLE), s, self.ctx.cfg.shards) for s, r in replies.items()
                 if s not in down}
        wrong = {s: why for s, why in wrong.items() if why}  # another slot table: names it
        shards = []
        for s in sorted(replies):
            shards.append({"shard": s, "ready": s not in down and s not in wrong})
            if s in wrong:
                shards[-1]["detail"] = wrong[s]
        problems = (["shards not ready: " + ", ".join(map(str, down))] if down else []) + list(wrong.values())
        self._answer((not problems, "; ".join(problems), {"shards": shards}))

    def _answer(self, readiness: tuple[bool, str, dict]) -> None:
        ready, detail, extra = readiness
        if ready:
            self.finish(orjson.dumps({"status": "ready", **extra}))
            return
        self.set_status(503)
        self.set_header("Retry-After", str(self.ctx.cfg.retry_after_s))
        self.finish(orjson.dumps({"detail": detail, **extra}))


class StatsHandler(BaseHandler):
    """``GET /stats``: each shard's counters and the totals (and ingest's, when configured)."""

    async def get(self) -> None:
        replies, _ = await fanout.replies_of_all(self.ctx, P.stats)
        shards, totals = [], {"entities": 0, "values": 0, "writes": 0, "stale": 0}
        for s in sorted(replies):
            r = replies[s]
            if isinstance(r, Exception):
                shards.append({"shard": s, "detail": str(r)})
                continue
            stats = P.counters_of(r)
            shards.append(stats)
            for k in totals:
                totals[k] += stats.get(k, 0)
        body = {"totals": totals, "shards": shards}
        ingest = await ingest_stats(self.ctx)
        if ingest is not None:
            body["ingest"] = ingest
        self.finish(orjson.dumps(body))
