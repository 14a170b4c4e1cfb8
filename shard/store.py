"""The in-memory store of one shard.

Layout: ``data`` maps an entity id to one msgpack blob holding ``{name: [value, event_us]}``.
A blob costs a few times less memory than a dict of lists, and
a read decodes it in microseconds. Only this class knows the layout.

Writes are last-write-wins by event time per (entity, name): an older event is counted as
stale and ignored; on an equal event time the later arrival wins.

TTL: a value whose age (now - event time) exceeds the TTL of its name is *expired*. Native reads
omit it (an entity with only expired values is absent); Feast reads (:meth:`Store.render_rows`)
report it ``OUTSIDE_MAX_AGE`` with its value. A write is stored whatever its age, so a late
backfill is still reported to Feast clients; :meth:`Store.sweep` reclaims a value once it is
older than its TTL plus a grace (one more TTL unless configured), a bounded step at a time.

Render caches: reads are served from rendered bytes kept per entity (the native JSON of the
whole entity, with its ETag once a single-entity read asked for it, and the Feast row of the last
requested feature list), each valid until the first moment a TTL or a window could change it,
and dropped when the entity changes; so are the event times the freshness metrics sampled
(:meth:`Store.sampled`). They are bounded by ``cache_entities``; the blob stays the single
source of truth.

Aggregations (``[[aggregations]]``, shard/aggregate.py): a write of an aggregated feature also
enters its windows, whether or not it wins last-write-wins; its aggregates read as features
``{feature}_{function}_{window}`` beside the entity's others, with the newest event counted as
their event time.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import repeat
from operator import itemgetter
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import msgpack
import msgspec
import orjson

from common import timefmt
from common.protocol import EPOCH_TS, NOT_FOUND_S, NULL_VALUE, OUTSIDE_MAX_AGE, PRESENT, SEP, etag_for
from shard.aggregate import Aggregator
from shard.walk import Walk

NOT_FOUND_DETAIL = "No features found for entity"
NEVER = 1 << 62  # "valid until" of a rendering that no TTL will change
_UNSET = object()


_decode = msgspec.msgpack.Decoder().decode  # a blob -> its dict: as msgpack.unpackb(raw=False), 2x faster


def values_in(blob: bytes) -> int:
    """The number of values in a stored blob (a msgpack map), from its header alone."""
    first = blob[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE:
        return int.from_bytes(blob[1:3], "big")
    return int.from_bytes(blob[1:5], "big")


_packer = msgpack.Packer(use_bin_type=True)


def _encode(feats: dict) -> bytes:
    return _packer.pack(feats)


@lru_cache(maxsize=65536)
def _ts_json(us: int) -> bytes:
    return b'"' + timefmt.render(us).encode() + b'"'


def _missing_json(eid: str) -> bytes:
    return orjson.dumps({"entity_id": eid, "detail": NOT_FOUND_DETAIL})


class Prepared(NamedTuple):
    """What :meth:`Store.prepare` worked out, for :meth:`Store.install`."""

    blobs: dict  # entity id -> its new blob
    written: int
    stale: int
    added: int  # values that did not exist
    aggregate: tuple | None  # (writes, meta, picked) with aggregations configured; meta is logged


def _to_us(seconds: float | None) -> int | None:
    """A TTL in microseconds; None or <= 0 means no TTL (as Feast's ttl=0)."""
    return None if seconds is None or seconds <= 0 else int(seconds * 1_000_000)


class TooWide(ValueError):
    """A write would give an entity more features than its limit."""


class Store:
    """Entities of one shard, with last-write-wins writes, TTLs and rendered reads.

    :arg ttl_s: default TTL of every value (None: none).
    :arg view_ttls: TTL by name prefix (``{"driver_stats:": 86400}``), as ``Config.view_ttls()``;
        a TTL of 0 means none, overriding the default.
    :arg grace_s: how long past its TTL an expired value is kept (None: one more TTL).
    :arg cache_entities: entities whose renderings are kept (0: no cache).
    :arg clock: current time in microseconds (tests inject one).
    :arg aggregations: the configured ``[[aggregations]]`` (``Config.aggregations``).
    """

    SWEEP_BATCH = 500  # entities examined per sweep step: about 1 ms of work
    SWEEP_INTERVAL_US = 10_000  # between two sweep steps
    SWEEP_PAUSE_US = 1_000_000  # between two passes over the whole shard

    def __init__(self, ttl_s: float | None = None, view_ttls: dict[str, float] | None = None,
                 grace_s: float | None = None, cache_entities: int = 100_000,
                 clock: Callable[[], int] = timefmt.now_us, aggregations: tuple = ()) -> None:
        self.data: dict[str, bytes] = {}
        self.aggs = Aggregator(aggregations)
        self.values = 0  # number of stored (entity, name) values
        self.writes = 0
        self.stale = 0
        self.reclaimed = 0  # values removed by the sweep
        self.clock = clock
        self._default_ttl = _to_us(ttl_s)
        self._view_ttls = {prefix: _to_us(t) for prefix, t in (view_ttls or {}).items()}
        self._grace = None if grace_s is None else int(grace_s * 1_000_000)
        self._ttl_any = self._default_ttl is not None or any(self._view_ttls.values())
        self._ttls: dict[str, int | None] = {}  # name -> TTL in us, memoised
        self._cap = cache_entities
        self._json: dict[str, tuple] = {}  # eid -> (entity JSON, valid until[, its ETag])
        self._rows: dict[str, tuple] = {}  # eid -> (names, v, s, ts, valid until)
        self._stamps: dict[str, tuple] = {}  # eid -> (names key, live, valid until, names, event times)
        self._keys: dict[tuple, tuple] = {}  # interned name lists, so a cache hit is an `is`
        self._name_sets: dict[tuple, tuple] = {}  # interned names of entities, shared by their _stamps
        self._ttl_walk = Walk(self.SWEEP_BATCH, self.SWEEP_INTERVAL_US, self.SWEEP_PAUSE_US)
        self._agg_walk = Walk(Aggregator.SWEEP_BATCH, self.SWEEP_INTERVAL_US, Aggregator.SWEEP_PAUSE_US)
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: packb builds one per call

    @classmethod
    def from_config(cls, cfg) -> "Store":
        return cls(cfg.ttl_s, cfg.view_ttls(), cfg.ttl_grace_s, cfg.render_cache_entities,
                   aggregations=cfg.aggregations)

    # ---- TTL
    def ttl_of(self, name: str) -> int | None:
        """The TTL of ``name`` in microseconds (its view's, else the default), or None."""
        ttl = self._ttls.get(name, _UNSET)
        if ttl is _UNSET:
            cut = name.find(":")
            ttl = self._default_ttl
            if cut > 0:
                ttl = self._view_ttls.get(name[: cut + 1], ttl)
            if len(self._ttls) > 10_000:
                self._ttls.clear()
            self._ttls[name] = ttl
        return ttl

    def _live(self, feats: dict, now: int) -> tuple[dict, int]:
        """The values of ``feats`` that have not expired, and until when that holds."""
        if not self._ttl_any:
            return feats, NEVER
        live, until, ttl_of = {}, NEVER, self.ttl_of
        for name, vt in feats.items():
            ttl = ttl_of(name)
            if ttl is None:
                live[name] = vt
                continue
            end = vt[1] + ttl
            if now > end:
                continue
            live[name] = vt
            if end < until:
                until = end + 1
        return live, until

    # ---- reads
    def features(self, eid: str) -> dict | None:
        """``{name: [value, event_us]}`` of an entity, expired values included, or None."""
        blob = self.data.get(eid)
        return None if blob is None else _decode(blob)

    def stamps(self, eids: Iterable[str], names: Sequence[str] | None, live: bool = True) -> list[tuple[str, int]]:
        """``(name, event_us)`` of the values of ``eids`` (those ``names`` only, when given);
        ``live``: not the expired ones. Kept per entity until it changes (the metrics sample
        the same entities again: a random entity's blob is cold, and decoding it costs a
        batch read as much as the rest of it)."""
        out = []
        for names_of, times in self.sampled(eids, names, live):
            out += zip(names_of, repeat(times) if type(times) is int else times)
        return out

    def sampled(self, eids: Iterable[str], names: Sequence[str] | None, live: bool = True) -> list[tuple]:
        """:meth:`stamps` per entity: ``(names, event times)``, the times an int when the
        values share one (``Freshness.observe_entities`` takes them)."""
        out, now, memo = [], self.clock(), self._stamps
        key = None if names is None else self._key(names)
        for eid in eids:
            hit = memo.get(eid)
            if hit is None or hit[0] is not key or hit[1] is not live or now >= hit[2]:
                hit = self._stamped(eid, key, live, now)
                if hit is None:
                    continue
            if hit[3]:
                out.append((hit[3], hit[4]))
        return out

    def _stamped(self, eid: str, key: tuple | None, live: bool, now: int) -> tuple | None:
        blob = self.data.get(eid)
        if blob is None:
            return None
        feats = _decode(blob)
        if key is not None:
            feats = {n: feats[n] for n in key if n in feats}
        until = NEVER
        if live and self._ttl_any:
            feats, until = self._live(feats, now)
        times = tuple(map(_event_us, feats.values()))
        if times and times.count(times[0]) == len(times):
            times = times[0]  # one event time for all: an int, not a tuple of them
        entry = (key, live, until, self._key(feats, self._name_sets), times)
        self._remember(self._stamps, eid, entry)
        return entry

    def _key(self, names, interned: dict | None = None) -> tuple:
        """``names`` as an interned tuple: equal lists share one (a cache hit is an ``is``).
        ``interned``: the table (default: the requested name lists')."""
        interned = self._keys if interned is None else interned
        key = tuple(names)
        key = interned.setdefault(key, key)
        if len(interned) > 1000:
            interned.clear()
        return key

    def render_entity(self, eid: str, names: Sequence[str] | None = None) -> bytes | None:
        """JSON bytes ``{"entity_id","features","last_updated"}`` of the live values, or None."""
        now = self.clock()
        if names is None:
            return self._entity_json(eid, now)
        blob = self.data.get(eid)
        if blob is None and not self.aggs.has(eid):
            return None
        every = {} if blob is None else _decode(blob)
        feats, _ = self._live({n: every[n] for n in names if n in every}, now)
        if self.aggs:
            feats, _ = self._with_aggregates(eid, feats, now, names, every)
        return _render(eid, feats) if feats else None

    def tagged_entity(self, eid: str) -> tuple[bytes, str] | None:
        """:meth:`render_entity` of every feature, and its ETag (:func:`~common.protocol.etag_for`),
        kept beside the rendering in the cache once a single-entity read asked for it."""
        now = self.clock()
        hit = self._json.get(eid)
        if hit is not None and now < hit[1] and len(hit) == 3:
            return hit[0], hit[2]
        body = self._entity_json(eid, now)
        if body is None:
            return None
        tag = etag_for(body)
        hit = self._json.get(eid)
        if hit is not None and hit[0] is body:
            self._json[eid] = (body, hit[1], tag)
        return body, tag

    def _with_aggregates(self, eid: str, feats: dict, now: int, names=None, plain=None) -> tuple[dict, int]:
        """``feats`` and the entity's aggregates at ``now`` (those in ``names`` if given), as
        ``(value, event_us)``; and until when they hold. ``plain``: the entity's values, for
        an aggregated feature whose windows were reclaimed (they read empty)."""
        got = self.aggs.read(eid, now, names, plain)
        if got is None:
            return feats, NEVER
        feats.update(got[0])
        return feats, got[1]

    def _entity_json(self, eid: str, now: int) -> bytes | None:
        hit = self._json.get(eid)
        if hit is not None and now < hit[1]:
            return hit[0]
        blob = self.data.get(eid)
        if blob is None and not self.aggs.has(eid):
            return None
        every = {} if blob is None else _decode(blob)
        feats, until = self._live(every, now)
        if self.aggs:  # (``every``, as the named and Feast reads: an expired value still marks reclaimed windows)
            feats, agg_until = self._with_aggregates(eid, feats, now, None, every)
            until = min(until, agg_until)
        body = _render(eid, feats) if feats else None
        if body is not None and self._cap > 0:
            body = memoryview(body).tobytes()  # orjson's buffer holds 4 KiB; keep an exact copy
        self._remember(self._json, eid, (body, until))
        return body

    def render_feature(self, eid: str, name: str) -> bytes | None:
        """JSON bytes ``{"entity_id","name","value","event_timestamp"}``, or None."""
        if name in self.aggs.outputs:
            blob = None if self.aggs.has(eid) else self.data.get(eid)  # none: the windows may be reclaimed
            plain = None if blob is None else _decode(blob)
            vt = self._with_aggregates(eid, {}, self.clock(), (name,), plain)[0].get(name)
            return None if vt is None else _render_one(eid, name, vt)
        blob = self.data.get(eid)
        if blob is None:
            return None
        vt = _decode(blob).get(name)
        if vt is None:
            return None
        ttl = self.ttl_of(name) if self._ttl_any else None
        if ttl is not None and self.clock() > vt[1] + ttl:
            return None
        return _render_one(eid, name, vt)

    def cached_many(self, eids: Sequence[str]) -> list[bytes] | None:
        """:meth:`render_many` of every feature of ``eids`` when each one's rendering is cached
        and still valid (so each is held here), in C-level passes; else None."""
        hits = list(map(self._json.get, eids))
        if None in hits:
            return None
        if (self._ttl_any or self.aggs) and min(map(_until, hits), default=NEVER) <= self.clock():
            return None  # (with neither, every rendering holds for ever)
        bodies = list(map(_first, hits))
        return None if None in bodies else bodies

    def render_many(self, eids: Iterable[str], names: Sequence[str] | None = None) -> list[bytes]:
        """One JSON object per id, in order; a missing entity is ``{"entity_id","detail"}``."""
        now = self.clock()
        out = []
        if names is None:
            cache = self._json
            for eid in eids:
                hit = cache.get(eid)
                body = hit[0] if hit is not None and now < hit[1] else self._entity_json(eid, now)
                out.append(body if body is not None else _missing_json(eid))
            return out
        for eid in eids:
            body = self.render_entity(eid, names)
            out.append(body if body is not None else _missing_json(eid))
        return out

    def cached_rows(self, eids: Sequence[str], names: Sequence[str]) -> tuple[list, list, list] | None:
        """:meth:`render_rows` when every row is cached for ``names`` and still valid (so each
        entity is held here), in C-level passes; else None."""
        rows = list(map(self._rows.get, eids))
        if not eids or None in rows:
            return None
        keys, vs, ss, tss, until = zip(*rows)
        if keys.count(self._key(names)) != len(keys) or min(until) <= self.clock():
            return None
        return list(vs), list(ss), list(tss)

    def render_rows(self, eids: Iterable[str], names: Sequence[str]) -> tuple[list, list, list]:
        """Feast rows of ``eids`` for ``names``: the ``v``, ``s``, ``ts`` lists of an ``fget``
        reply (see common/protocol.py). Expired values are ``OUTSIDE_MAX_AGE`` with their value."""
        key = self._key(names)
        now = self.clock()
        cache = self._rows
        vs, ss, tss = [], [], []
        for eid in eids:
            row = cache.get(eid)
            if row is None or row[0] is not key or now >= row[4]:
                row = self._render_row(eid, key, now)
            vs.append(row[1])
            ss.append(row[2])
            tss.append(row[3])
        return vs, ss, tss

    def _render_row(self, eid: str, key: tuple, now: int) -> tuple:
        blob = self.data.get(eid)
        if blob is None and not (self.aggs and self.aggs.has(eid)):
            n = len(key)
            return (key, SEP.join([b"null"] * n), NOT_FOUND_S * n, EPOCH_TS, NEVER)
        feats = {} if blob is None else _decode(blob)
        until = NEVER
        if self.aggs:  # aggregates have no TTL: their windows age them
            outputs = self.aggs.outputs
            wanted = [n for n in key if n in outputs]
            if wanted:
                got, until = self._with_aggregates(eid, {}, now, wanted, feats)
                feats.update(got)
        vals, stats, stamps = [], bytearray(), []
        ttl_any, ttl_of = self._ttl_any, self.ttl_of
        for name in key:
            vt = feats.get(name)
            if vt is None:
                vals.append(b"null")
                stats += NOT_FOUND_S
                stamps.append(EPOCH_TS)
                continue
            value, ts = vt
            vals.append(orjson.dumps(value))
            stamps.append(_ts_json(ts))
            ttl = ttl_of(name) if ttl_any and name not in self.aggs.outputs else None
            if ttl is not None and now > ts + ttl:
                stats += OUTSIDE_MAX_AGE
                continue
            stats += NULL_VALUE if value is None else PRESENT
            if ttl is not None and ts + ttl < until:
                until = ts + ttl + 1
        first = stamps[0] if stamps else EPOCH_TS
        same = all(t is first for t in stamps)
        row = (key, SEP.join(vals), bytes(stats), first if same else SEP.join(stamps), until)
        self._remember(self._rows, eid, row)
        return row

    def _remember(self, cache: dict, eid: str, entry: tuple) -> None:
        if self._cap <= 0:
            return
        if len(cache) >= self._cap:
            del cache[next(iter(cache))]  # the oldest rendering goes first
        cache[eid] = entry

    def _forget(self, eid: str) -> None:
        self._json.pop(eid, None)
        self._rows.pop(eid, None)
        self._stamps.pop(eid, None)

    # ---- writes
    def apply(self, writes: Iterable[Sequence[Any]], meta: Sequence | None = None,
              aggregate: bool = True) -> tuple[int, int]:
        """Apply ``[entity_id, name, value, event_us]`` writes; return (written, stale).

        Raises ValueError or TypeError, with the store unchanged, if an item is not a
        ``(str, str, value, int)`` sequence or a value cannot be stored (``meta``: see
        :meth:`prepare`). Not ``aggregate``: the writes leave the windows as they are (a
        replay of records a peer's window states already count)."""
        return self.install(self.prepare(writes, meta, windows=aggregate))

    def prepare(self, writes: Iterable[Sequence[Any]], meta: Sequence | None = None,
                max_features: int | None = None, windows: bool = True) -> Prepared:
        """Work out what ``writes`` do, without changing the store: checked, merged, encoded.

        One pass: each entity's blob is decoded once per call, the writes are merged into it
        (last write wins by event time, an equal time goes to the later write), and every entity
        that changed is encoded once. :meth:`install` then puts the result in place, so the journal
        can log the writes between the two. Raises ValueError or TypeError on a malformed item
        (see :meth:`apply`), :class:`~shard.aggregate.AggregateRefused` on a write the
        aggregations cannot take, and :class:`TooWide` when an entity would hold more than
        ``max_features`` features; nothing is changed then.

        ``meta`` ``[clock_us, event_ids, source, positions]`` (each may be None) goes with the
        writes to the aggregations, and comes back in :attr:`Prepared.aggregate` with the clock
        reading filled in, for the log: a replay then counts the events exactly as they were.
        """
        if self.aggs and type(writes) is not list:
            writes = list(writes)
        data_get = self.data.get
        merged: dict[str, dict] = {}  # eid -> its features, decoded and updated
        changed: dict[str, dict] = {}  # the entities with at least one write that was not stale
        written = stale = added = mark = 0
        last, feats = _UNSET, None
        for eid, name, value, ts in writes:
            if eid != last:  # a run of writes to one entity starts (ingest sends them in runs)
                if written != mark:
                    changed[last] = feats
                    mark = written
                if type(eid) is not str:
                    raise TypeError("entity id is not a string")
                feats = merged.get(eid)
                if feats is None:
                    blob = data_get(eid)
                    feats = merged[eid] = {} if blob is None else _decode(blob)
                last = eid
            if type(name) is not str or type(ts) is not int:
                raise TypeError("name is not a string or event time not an integer")
            cur = feats.get(name)
            if cur is None:
                added += 1
            elif cur[1] > ts:
                stale += 1
                continue
            feats[name] = value, ts  # packed as the same array a list would be
            written += 1
        if written != mark:
            changed[last] = feats
        if max_features is not None and added:
            for eid, f in changed.items():
                if len(f) > max_features:
                    raise TooWide(f"entity {eid[:100]!r} would hold {len(f)} features; the limit is "
                                  f"{max_features} (FS_MAX_FEATURES_PER_ENTITY)")
        pack = self._pack
        aggregate = None
        if self.aggs and windows:
            clock, ids, source, positions = meta if meta is not None else (None, None, None, None)
            picked = self.aggs.pick(writes)
            self.aggs.check(writes, ids, picked)
            aggregate = writes, [self.clock() if clock is None else clock, ids, source, positions], picked
        return Prepared({eid: pack(f) for eid, f in changed.items()}, written, stale, added, aggregate)

    def install(self, prepared: Prepared) -> tuple[int, int]:
        """Install what :meth:`prepare` worked out; return (written, stale)."""
        blobs, written, stale, added, aggregate = prepared
        self.data.update(blobs)
        self.values += added
        touched = self.aggs.apply(aggregate[0], *aggregate[1], aggregate[2]) if aggregate is not None else ()
        if self._json or self._rows or self._stamps:
            forget = self._forget
            for eid in blobs:
                forget(eid)
            for eid in touched:
                forget(eid)
        self.writes += written
        self.stale += stale
        return written, stale

    def delete(self, eid: str, name: str | None = None) -> int:
        """Delete an entity (``name`` None) or one feature; return how many values went."""
        aggregated = self.aggs.delete(eid, name)  # the feature's windows go with it
        blob = self.data.get(eid)
        if blob is None:
            if aggregated:
                self._forget(eid)
            return int(aggregated)
        self._forget(eid)
        if name is None:
            n = len(_decode(blob))
            del self.data[eid]
            self.values -= n
            return n
        feats = _decode(blob)
        if feats.pop(name, None) is None:
            return int(aggregated)
        if feats:
            self.data[eid] = _encode(feats)
        else:
            del self.data[eid]
        self.values -= 1
        return 1

    # ---- background reclamation
    def sweep(self) -> int:
        """Reclaim values older than TTL + grace, and window states whose events all became
        late (:meth:`Aggregator.reclaim`); one bounded step of each, run as a loop chore.

        Each walks a snapshot of the entity ids, :data:`SWEEP_BATCH` ids per step and a step
        every :data:`SWEEP_INTERVAL_US`, so a read never waits behind more than one step.
        Returns the number of values reclaimed by this step.
        """
        if not self._ttl_any and not self.aggs:
            return 0
        now = self.clock()
        if self.aggs:
            for eid in self.aggs.reclaim(self._agg_walk.step(now, self.aggs.entities), now):
                self._forget(eid)
        if not self._ttl_any:
            return 0
        return self._reclaim(self._ttl_walk.step(now, self.data.keys), now)

    def reclaim_all(self) -> int:
        """Reclaim every value older than TTL + grace in one pass (after a recovery's replay,
        before the shard serves: a replay must not bring back what the sweep had reclaimed)."""
        return self._reclaim(list(self.data), self.clock()) if self._ttl_any else 0

    def _reclaim(self, eids: Iterable[str], now: int) -> int:
        data, ttl_of, grace = self.data, self.ttl_of, self._grace
        reclaimed = 0
        for eid in eids:
            blob = data.get(eid)
            if blob is None:
                continue
            feats = _decode(blob)
            dead = []
            for name, vt in feats.items():
                ttl = ttl_of(name)
                if ttl is not None and now - vt[1] > ttl + (ttl if grace is None else grace):
                    dead.append(name)
            if not dead:
                continue
            for name in dead:
                del feats[name]
            if feats:
                data[eid] = _encode(feats)
            else:
                del data[eid]
            self._forget(eid)
            reclaimed += len(dead)
        self.values -= reclaimed
        self.reclaimed += reclaimed
        return reclaimed

    def stats(self) -> dict:
        return {
            "entities": len(self.data),
            "values": self.values,
            "writes": self.writes,
            "stale": self.stale,
            "reclaimed": self.reclaimed,
            **(self.aggs.stats() if self.aggs else {}),
        }


def _render_one(eid: str, name: str, vt) -> bytes:
    return orjson.dumps({"entity_id": eid, "name": name, "value": vt[0], "event_timestamp": timefmt.render(vt[1])})


def _render(eid: str, feats: dict) -> bytes:
    """The native JSON of an entity with live values ``feats`` (not empty)."""
    last = max(map(_event_us, feats.values()))
    return orjson.dumps(
        {
            "entity_id": eid,
            "features": {n: vt[0] for n, vt in feats.items()},
            "last_updated": timefmt.render(last),
        }
    )


_event_us = itemgetter(1)  # of a [value, event_us] pair
_first, _until = itemgetter(0), itemgetter(1)  # of a cached (rendering, valid until, ...) entry
