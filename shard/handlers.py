"""One handler per message type: ``handler(shard, request) -> reply``.

Handlers are plain functions of a :class:`ShardState` and a decoded request map, so tests call
them without sockets. Each docstring gives the request and reply fields.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from common import protocol as P
from common.events import EventError, Limits, TooLarge, check_writes
from shard.aggregate import AggregateRefused
from shard.cluster import answer_pdump
from shard.freshness import Freshness
from shard.store import NOT_FOUND_DETAIL, Store, TooWide

log = logging.getLogger("shard")


class BadRequest(Exception):
    """A request whose fields are missing or mistyped; ``code`` says which kind of refusal."""

    code = P.BAD_REQUEST


class TooLargeRequest(BadRequest):
    """A value, an entity or a message over its limit."""

    code = P.TOO_LARGE


class Refused(Exception):
    """The shard cannot take this request now (its log cannot be written): ``code``, ``reason``."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ShardState:
    """What the handlers work on: the store, this shard's identity, and the journal.

    ``journal`` (None when memory only) has ``log_write(writes)`` and ``log_delete(eid, name)``;
    they append before the store changes and raise :class:`Refused` when the log cannot be written.

    ``owner`` (None: every entity is this shard's) has ``refusal(eid)``: why this shard may not
    answer for ``eid``, or None (``shard.topology.SlotOwner``, ``shard.cluster.Partitions``).
    ``cluster`` is the ``shard.cluster_run.ClusterShard`` of a cluster-mode shard.
    """

    def __init__(self, index: int, store: Store | None = None, journal=None, owner=None,
                 freshness: Freshness | None = None, limits: Limits | None = None,
                 max_features: int | None = None, max_frame_requests: int = 4096) -> None:
        self.index = index
        self.store = store if store is not None else Store()
        self.journal = journal
        self.owner = owner
        self.cluster = None
        self.freshness = freshness if freshness is not None else Freshness()
        self.limits = limits or Limits()  # what a stored value may be (the front end's limits)
        self.max_features = max_features  # FS_MAX_FEATURES_PER_ENTITY
        self.max_frame_requests = max_frame_requests  # FS_MAX_FRAME_REQUESTS

    @classmethod
    def from_config(cls, cfg, store: Store) -> "ShardState":
        return cls(cfg.shard_index, store, freshness=Freshness(cfg.freshness_sample_every if cfg.metrics else 0),
                   limits=Limits.from_config(cfg), max_features=cfg.max_features_per_entity,
                   max_frame_requests=cfg.max_frame_requests)

    def served(self, eids: list[str], names: list[str] | None, live: bool = True) -> None:
        """Count the ages of the values a read served, for one entity in ``freshness.sample_every``."""
        picked = self.freshness.pick(eids)
        if picked:
            self.freshness.observe_entities(self.store.sampled(picked, names, live), self.store.clock())


def _memory_bytes() -> int | None:
    """This process's resident memory (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _after(shard: ShardState, req: dict) -> int | None:
    """The offset a cluster-mode read must have applied here (``after``), or None; 400 when it
    is not an offset. Embedded mode ignores it."""
    after = P.after_of(req) if shard.cluster is not None else None
    if after is not None and type(after) is not int:
        raise BadRequest(f"field {P.AFTER!r} must be an offset")
    return after


def _foreign(shard: ShardState, req: dict, eids, held: bool = False) -> dict | None:
    """The ``not_owner`` reply when one of ``eids`` is not this shard's, else None; in cluster
    mode also until this copy has applied the request's ``after`` offset (another replica may
    have). ``held``: each of ``eids`` is held here (a read found every rendering cached), which
    the owner may take as proof enough (``first_refusal``)."""
    owner = shard.owner
    if owner is None:
        return None
    why = owner.first_refusal(eids, _after(shard, req), held)
    return None if why is None else P.error(P.id_of(req), P.NOT_OWNER, why)


def _unread(shard: ShardState, req: dict, eid: str) -> dict | None:
    """:func:`_foreign` of a single-entity read, without its passes over many ids."""
    owner = shard.owner
    if owner is None:
        return None
    after = _after(shard, req)
    why = owner.refusal(eid) if after is None else owner.refusal(eid, after)
    return None if why is None else P.error(P.id_of(req), P.NOT_OWNER, why)


def _field(req: dict, name: str, typ: type | tuple, optional: bool = False) -> Any:
    value = req.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, typ):
        raise BadRequest(f"field {name!r} is missing or not {getattr(typ, '__name__', typ)}")
    return value


_STR = frozenset((str,))


def _names(req: dict) -> list | None:
    names = _field(req, P.NAMES, list, optional=True)
    if names is not None and not set(map(type, names)) <= _STR:
        raise BadRequest(f"field {P.NAMES!r} must be a list of strings")
    return names


def _eids(req: dict) -> list:
    eids = _field(req, P.ENTITIES, list)
    if not set(map(type, eids)) <= _STR:  # (one C-level pass: a batch read's hot path)
        raise BadRequest(f"field {P.ENTITIES!r} must be a list of strings")
    return eids


def handle_ping(shard: ShardState, req: dict) -> dict:
    """``{}`` -> ``{shard, table}``; a shard that answers is ready: it binds its socket once
    recovered. ``table`` is the slot table it serves (``SlotOwner.describe()``), when it has one."""
    table = shard.owner.describe() if hasattr(shard.owner, "describe") else None
    return P.ping_reply(P.id_of(req), shard=shard.index, table=table)


def handle_get(shard: ShardState, req: dict) -> dict:
    """``{e, f?, after?}`` -> ``{body, tag}``: the entity's JSON and its ETag, or error ``not_found``."""
    eid = req.get(P.ENTITY)  # (the checks of _field and _names, without their calls when they pass)
    if type(eid) is not str:
        eid = _field(req, P.ENTITY, str)
    names = None if req.get(P.NAMES) is None else _names(req)
    refused = _unread(shard, req, eid)
    if refused is not None:
        return refused
    if names is None:
        tagged = shard.store.tagged_entity(eid)
        body, tag = (None, None) if tagged is None else tagged
    else:
        body = shard.store.render_entity(eid, names)
        tag = None if body is None else P.etag_for(body)
    if body is None:
        return P.error(P.id_of(req), P.NOT_FOUND, NOT_FOUND_DETAIL)
    shard.served([eid], names)
    return P.body_reply(P.id_of(req), body, tag)


def handle_get1(shard: ShardState, req: dict) -> dict:
    """``{e, n, after?}`` -> ``{body, tag}``: one feature's JSON and its ETag, or error ``not_found``."""
    eid, name = req.get(P.ENTITY), req.get(P.NAME)
    if type(eid) is not str or type(name) is not str:
        eid, name = _field(req, P.ENTITY, str), _field(req, P.NAME, str)
    refused = _unread(shard, req, eid)
    if refused is not None:
        return refused
    body = shard.store.render_feature(eid, name)
    if body is None:
        return P.error(P.id_of(req), P.NOT_FOUND, "Feature not found")
    shard.served([eid], [name])
    return P.body_reply(P.id_of(req), body, P.etag_for(body))


def handle_mget(shard: ShardState, req: dict) -> dict:
    """``{es, f?}`` -> ``{parts}``: one JSON object per entity id, in request order."""
    eids, names = _eids(req), _names(req)
    parts = shard.store.cached_many(eids) if names is None else None
    refused = _foreign(shard, req, eids, held=parts is not None)
    if refused is not None:
        return refused
    if parts is None:
        parts = shard.store.render_many(eids, names)
    shard.served(eids, names)
    return P.parts_reply(P.id_of(req), parts)


def handle_fget(shard: ShardState, req: dict) -> dict:
    """``{es, f}`` -> ``{v, s, ts}``: one Feast row per entity id, in request order."""
    eids, names = _eids(req), _names(req)
    if not names:
        raise BadRequest(f"field {P.NAMES!r} must be a non-empty list of names")
    rows = shard.store.cached_rows(eids, names)
    refused = _foreign(shard, req, eids, held=rows is not None)
    if refused is not None:
        return refused
    v, s, ts = rows if rows is not None else shard.store.render_rows(eids, names)
    shard.served(eids, names, live=False)  # Feast reads serve expired values too (OUTSIDE_MAX_AGE)
    return P.rows_reply(P.id_of(req), v, s, ts)


def handle_write(shard: ShardState, req: dict) -> dict:
    """``{w: [[e, n, value, ts_us], ...]}`` -> ``{written, stale}``.

    The items are checked while the store works out the writes (:meth:`Store.prepare`, which
    changes nothing), then logged, then installed: a bad item anywhere refuses the whole request
    with nothing logged or applied. Every item is validated as the front end validates a write
    (type, size, event time): whatever the shard stores, it can serve."""
    writes = _field(req, P.WRITES, list)
    if shard.cluster is not None:
        return P.error(P.id_of(req), P.NOT_OWNER, "cluster mode: writes go to the Kafka topic, not to a shard")
    meta = _write_meta(req, len(writes))
    try:
        check_writes(writes, shard.limits, P.WRITES)
        prepared = shard.store.prepare(writes, meta, shard.max_features)
    except TooLarge as exc:
        raise TooLargeRequest(exc.detail) from None
    except EventError as exc:
        raise BadRequest(exc.detail) from None
    except TooWide as exc:
        raise TooLargeRequest(str(exc)) from None
    except AggregateRefused as exc:
        raise BadRequest(str(exc)) from None
    except (TypeError, ValueError):
        raise BadRequest(f"field {P.WRITES!r} must hold [entity_id, name, value, event_us] items") from None
    refused = _foreign(shard, req, (w[0] for w in writes))  # checked by prepare: strings
    if refused is not None:
        return refused
    if shard.journal is not None:  # durable (per FS_FSYNC) before it is acknowledged
        shard.journal.log_write(writes, prepared.aggregate and prepared.aggregate[1])
    written, stale = shard.store.install(prepared)
    return P.write_reply(P.id_of(req), written, stale)


def _write_meta(req: dict, n: int) -> list | None:
    """``[None, event ids, origin, positions]`` of a write request (the clock reading is the
    store's to fill in), or None when it has none of them."""
    ids, origin, positions = P.write_origin(req)
    if ids is None and origin is None:
        return None
    if ids is not None and (type(ids) is not list or len(ids) != n):
        raise BadRequest(f"field {P.EVENT_IDS!r} must be a list with one event id (or nil) per write")
    if origin is not None and (type(origin) is not str or type(positions) is not list or len(positions) != n
                               or not all(type(p) is int for p in positions)):
        raise BadRequest(f"fields {P.ORIGIN!r} and {P.POSITIONS!r} must be a source name and one "
                         "integer position per write")
    return [None, ids, origin, positions]


def handle_delete(shard: ShardState, req: dict) -> dict:
    """``{e, n?}`` -> ``{deleted}``, or error ``not_found`` when nothing was there."""
    eid = _field(req, P.ENTITY, str)
    name = _field(req, P.NAME, str, optional=True)
    refused = _foreign(shard, req, (eid,))
    if refused is not None:
        return refused
    if shard.cluster is not None:
        return P.error(P.id_of(req), P.NOT_OWNER, "cluster mode: deletes go to the Kafka topic, not to a shard")
    if shard.journal is not None:
        shard.journal.log_delete(eid, name)
    deleted = shard.store.delete(eid, name)
    if not deleted:
        detail = "Feature not found" if name is not None else NOT_FOUND_DETAIL
        return P.error(P.id_of(req), P.NOT_FOUND, detail)
    return P.delete_reply(P.id_of(req), deleted)


def handle_stats(shard: ShardState, req: dict) -> dict:
    """``{}`` -> the shard's counters, resident memory, the journal's figures and the ages of
    the values served (:meth:`Freshness.snapshot`)."""
    extra = shard.journal.stats() if shard.journal is not None else {}
    if shard.cluster is not None:
        extra = shard.cluster.stats()
    return P.stats_reply(P.id_of(req), {P.SHARD: shard.index, **shard.store.stats(), **extra,
                                        "memory_bytes": _memory_bytes(), "freshness": shard.freshness.snapshot()})


def handle_pdump(shard: ShardState, req: dict) -> dict:
    """Cluster mode. ``{p, dump?, at}`` -> ``{dump, o, es, blobs, next}``: a chunk of this shard's frozen
    copy of partition ``p`` (frozen by the first request, which has no ``dump``)."""
    if shard.cluster is None:
        return P.error(P.id_of(req), P.NOT_OWNER, "not a cluster-mode shard")
    return answer_pdump(shard.cluster.parts, req)


def handle_offsets(shard: ShardState, req: dict) -> dict:
    """Cluster mode. ``{}`` -> ``{held: [[p, next_offset, serving], ...]}``."""
    if shard.cluster is None:
        return P.error(P.id_of(req), P.NOT_OWNER, "not a cluster-mode shard")
    return P.offsets_reply(P.id_of(req), shard.cluster.offsets())


HANDLERS: dict[str, Callable[[ShardState, dict], dict]] = {
    P.PING: handle_ping,
    P.GET: handle_get,
    P.GET1: handle_get1,
    P.MGET: handle_mget,
    P.FGET: handle_fget,
    P.WRITE: handle_write,
    P.DELETE: handle_delete,
    P.STATS: handle_stats,
    P.PDUMP: handle_pdump,
    P.OFFSETS: handle_offsets,
}


def dispatch(shard: ShardState, req: Any) -> dict:
    """Run one request through its handler; every failure, whatever the request holds (a map
    where the type belongs, an id nested 1,000 deep), becomes an error reply."""
    if type(req) is not dict:
        return P.error(None, P.MALFORMED, "a request must be a map")
    req_id = req.get(P.ID)  # (P.id_of and P.kind_of, without a call each)
    try:
        kind = req.get(P.TYPE)
        handler = HANDLERS.get(kind) if type(kind) is str else None
        if handler is None:
            return P.error(req_id, P.UNKNOWN_TYPE, f"unknown message type {P.shown(kind)}")
        return handler(shard, req)
    except BadRequest as exc:
        return P.error(req_id, exc.code, str(exc))
    except Refused as exc:
        return P.error(req_id, exc.code, exc.reason)
    except Exception:
        log.exception("shard %d: handler %s failed", shard.index, P.shown(req.get(P.TYPE)))
        return P.error(req_id, P.INTERNAL, "internal error in shard")


def handle_frame(shard: ShardState, frame: bytes) -> bytes:
    """Decode a frame of requests, dispatch each, and encode the frame of replies: one per
    request, in order, whatever the frame holds."""
    try:
        requests = P.decode(frame)
    except P.ProtocolError as exc:
        log.warning("shard %d: answered %r to a malformed frame: %s", shard.index, P.MALFORMED, exc)
        return P.encode([P.error(None, P.MALFORMED, str(exc))])
    if len(requests) > shard.max_frame_requests:
        reason = (f"a message holds {len(requests)} requests; the limit is {shard.max_frame_requests} "
                  "(FS_MAX_FRAME_REQUESTS)")
        replies = [P.error(P.id_of(r) if type(r) is dict else None, P.TOO_LARGE, reason) for r in requests]
    else:
        replies = [dispatch(shard, req) for req in requests]
    try:
        return P.encode(replies)
    except Exception:  # an id the encoder cannot write back (nested too deeply): answered without it
        return P.encode([_encodable(r) for r in replies])


def _encodable(reply: dict) -> dict:
    try:
        P.encode([reply])
        return reply
    except Exception:
        return P.error(None, P.BAD_REQUEST, "the request id cannot be echoed")
