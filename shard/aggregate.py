"""Window state of one entity's aggregated feature: tiles of several sizes, finer for the recent
part (as Tecton's "sawtooth" windows), so a read combines a few tiles.

Layout (the levels come from the spec, common/aggregations.py): level ``k`` holds tiles of
``S_k`` (a multiple of ``S_(k-1)``) for event times in ``[B_k, B_(k-1))``, where the boundary
``B_k = floor((now - span_k) / S_k) * S_k`` moves with the shard's clock ``now`` (``B_(-1)`` is
+inf). Tiles are aligned to multiples of their size since the epoch and keyed by their start in
seconds, so the level of a tile is implied by its start. As ``now`` advances, fine tiles older
than their level's boundary fold into the coarse tile that contains them (exactly: sizes divide);
tiles older than the last boundary are dropped, and an event older than it is *late*.

A read of window ``w`` at ``now``: its old edge ``e = now - w`` lies in some level ``k``; the
read combines every tile that starts in ``[floor(e / S_k) * S_k, now)``. So it covers the events
in ``[now - w, now)`` plus at most one tile (< ``S_k``) before the old edge, and none other when
no event is later than ``now``; when ``now`` and ``w`` are multiples of ``S_k`` it is exact.
``last_N`` keeps the N latest events with their exact times and is exact at both edges.

The state is plain lists and maps (``pack``/``unpack`` give msgpack bytes for the store, the
snapshot and the log); an update needs no other state, so events may arrive in any order.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Any

import msgpack

from common.aggregations import US, Aggregation, computed_refusal, refusal
from common.events import INT64_MAX, INT64_MIN

APPLIED, LATE, EARLY, DUPLICATE = "applied", "late", "early", "duplicate"  # apply() outcomes


class AggregateRefused(ValueError):
    """A write an aggregation cannot take (a non-number for a sum, say); the message says why."""
_COUNT, _SUM, _MIN, _MAX = range(4)  # a tile: [count, sum, min, max]; an unkept column is None


def is_number(value: Any) -> bool:
    """Whether ``value`` can enter a sum, a mean, a min or a max (a bool cannot)."""
    t = type(value)
    return t is int or t is float


def _merge(into: list, tile: list) -> None:
    into[_COUNT] += tile[_COUNT]
    if into[_SUM] is not None:
        into[_SUM] = _bounded(into[_SUM] + tile[_SUM])
    if into[_MIN] is not None and tile[_MIN] < into[_MIN]:
        into[_MIN] = tile[_MIN]
    if into[_MAX] is not None and tile[_MAX] > into[_MAX]:
        into[_MAX] = tile[_MAX]


def _bounded(total):
    """A sum msgpack can hold: an integer past 64 bits becomes a float."""
    if type(total) is int and not INT64_MIN <= total <= INT64_MAX:
        return float(total)
    return total


class WindowState:
    """Tiles, the N latest events and the seen event ids of one (entity, aggregated feature).

    :arg spec: the feature's :class:`~common.aggregations.Aggregation`.
    """

    __slots__ = ("spec", "horizon", "tiles", "last", "seen", "newest", "_bounds")

    def __init__(self, spec: Aggregation, horizon: int = 0, tiles: dict | None = None,
                 last: list | None = None, seen: dict | None = None, newest: int = 0) -> None:
        self.spec = spec
        self.horizon = horizon  # the latest clock reading the tiles are laid out for
        self.tiles: dict[int, list] = {} if tiles is None else tiles  # start in s -> tile
        self.last: list[list] = [] if last is None else last  # [[event_us, value]], oldest first
        self.seen: dict[Any, int] = {} if seen is None else seen  # event id -> event_us
        self.newest = newest  # the latest event time counted: the aggregates' event time
        self._bounds: list | None = None  # bounds(horizon), worked out when a write needs them

    # ---- layout
    def bounds(self, now: int) -> list[int]:
        """``B_k`` of each level at ``now``: level k holds event times in ``[B_k, B_(k-1))``."""
        return [(now - span) // tile * tile for tile, span in self.spec.layout_us]

    def _tile_us(self, t: int, bounds: list[int]) -> int:
        """The tile size of event time ``t`` (0: older than every level, late)."""
        for (tile, _), b in zip(self.spec.layout_us, bounds):
            if t >= b:
                return tile
        return 0

    def window_start(self, now: int, window_us: int) -> int:
        """Where a read of a ``window_us`` window at ``now`` starts: the start of the tile holding
        its old edge, in ``(now - window_us - S_k, now - window_us]``."""
        return self._edge(now, window_us, self.bounds(max(now, self.horizon)))[0]

    def _edge(self, now: int, window_us: int, bounds: list[int]) -> tuple[int, int, int]:
        """``(start, window_us, tile)``: the tile holding a window's old edge, and its size."""
        edge = now - window_us
        tile = self._tile_us(edge, bounds) or self.spec.layout_us[-1][0]
        return edge // tile * tile, window_us, tile

    def _advance(self, now: int) -> None:
        """Lay the tiles out for ``now``: fold fine tiles past their level, drop the late ones."""
        old = self._bounds if self._bounds is not None else self.bounds(self.horizon)
        self.horizon = now
        bounds = self._bounds = self.bounds(now)
        if bounds == old:
            return
        tiles: dict[int, list] = {}
        for key, tile in sorted(self.tiles.items()):
            start = key * US
            size = self._tile_us(start, bounds)
            if not size:
                continue
            key = start // size * size // US
            have = tiles.get(key)
            if have is None:
                tiles[key] = tile
            else:
                _merge(have, tile)
        self.tiles = tiles
        oldest = bounds[-1]
        if self.seen:
            self.seen = {eid: ts for eid, ts in self.seen.items() if ts >= oldest}
        if self.last and self.last[0][0] < oldest:
            self.last = [item for item in self.last if item[0] >= oldest]

    # ---- writes
    def apply(self, value: Any, ts: int, now: int, event_id: Any = None) -> str:
        """Count one event (``value`` at event time ``ts``, seen at the clock reading ``now``):
        returns :data:`APPLIED`, or :data:`LATE` (older than the longest window), :data:`EARLY`
        (further ahead of ``now`` than clock skew explains) or :data:`DUPLICATE` (an event id
        already counted), which change nothing. Numeric functions need :func:`is_number` values;
        the caller checks that first."""
        if now > self.horizon:
            self._advance(now)
        elif self._bounds is None:
            self._bounds = self.bounds(self.horizon)
        bounds, spec = self._bounds, self.spec
        if ts < bounds[-1]:
            return LATE
        if ts >= self.horizon + spec.ahead_us:
            return EARLY
        if event_id is not None:
            if event_id in self.seen:
                return DUPLICATE
            self.seen[event_id] = ts
        for (size, _), b in zip(spec.layout_us, bounds):  # the tile size of its level
            if ts >= b:
                break
        key = ts // size * size // US
        tile = self.tiles.get(key)
        keep_sum, keep_min, keep_max = spec.columns
        if tile is None:
            self.tiles[key] = [1, value if keep_sum else None, value if keep_min else None,
                               value if keep_max else None]
        else:
            tile[_COUNT] += 1
            if keep_sum:
                tile[_SUM] = _bounded(tile[_SUM] + value)
            if keep_min and value < tile[_MIN]:
                tile[_MIN] = value
            if keep_max and value > tile[_MAX]:
                tile[_MAX] = value
        if spec.last_n:
            self._keep_latest(value, ts)
        if ts > self.newest:
            self.newest = ts
        return APPLIED

    def _keep_latest(self, value: Any, ts: int) -> None:
        last = self.last
        if not last or ts >= last[-1][0]:  # the usual case: the latest so far
            last.append([ts, value])
        elif len(last) >= self.spec.last_n and ts < last[0][0]:
            return
        else:
            last.insert(bisect_right(last, ts, key=_event_time), [ts, value])
        if len(last) > self.spec.last_n:
            del last[0]

    # ---- reads
    def read(self, now: int) -> dict[str, Any]:
        """``{output name: value}`` of every function and window at ``now`` (see the module
        docstring for what each window covers). An empty window: count and sum 0, mean, min and
        max None, last_N []."""
        return self.read_until(now)[0]

    def read_until(self, now: int) -> tuple[dict[str, Any], int]:
        """:meth:`read`, and the first clock reading after ``now`` at which it may differ."""
        spec = self.spec
        bounds = self.bounds(max(now, self.horizon))
        starts = [self._edge(now, w.us, bounds) for w in spec.windows]
        totals = self._window_totals(now, starts)
        out: dict[str, Any] = {}
        for o in spec.outputs:
            count, total, low, high = totals[o.window.us]
            fn = o.function
            if fn == "count":
                out[o.name] = count
            elif fn == "sum":
                out[o.name] = total if count else 0
            elif fn == "mean":
                out[o.name] = total / count if count else None
            elif fn == "min":
                out[o.name] = low if count else None
            elif fn == "max":
                out[o.name] = high if count else None
            else:
                edge = now - o.window.us
                values = [v for ts, v in self.last if edge <= ts < now]
                out[o.name] = values[-o.n:]
        return out, self._until(now, starts)

    def _until(self, now: int, starts: list) -> int:
        """When a read changes next: a window's old edge reaches its next tile, a tile ahead of
        ``now`` starts, an event of last_N enters (ts + 1) or leaves (ts + w + 1) a window."""
        until = [start + tile + w for start, w, tile in starts]
        if self.tiles and max(self.tiles) * US >= now:
            until.extend(k * US + 1 for k in self.tiles if k * US >= now)
        for ts, _ in self.last:
            until.append(ts + 1)
            until.extend(ts + w + 1 for _, w, _ in starts)
        return min(u for u in until if u > now)

    def _window_totals(self, now: int, starts: list) -> dict[int, list]:
        """``{window_us: [count, sum, min, max]}``: one pass over the tiles, newest first."""
        starts = [(start // US, w) for start, w, _ in starts]
        totals: dict[int, list] = {}
        acc = [0, 0, None, None]
        i = 0
        for key in sorted((k for k in self.tiles if k * US < now), reverse=True):
            while i < len(starts) and key < starts[i][0]:
                totals[starts[i][1]] = list(acc)
                i += 1
            if i == len(starts):
                break
            tile = self.tiles[key]
            if acc[_COUNT] == 0:
                acc = list(tile)
            else:
                _merge_loose(acc, tile)
        for _, w in starts[i:]:
            totals[w] = list(acc)
        return totals

    def valid_until(self, now: int) -> int:
        """The first clock reading after ``now`` at which :meth:`read` may answer differently."""
        return self.read_until(now)[1]

    # ---- encoding
    def to_obj(self) -> list:
        """The state as msgpack-friendly lists and maps (maps with integer keys)."""
        return [self.horizon, self.tiles, self.last, self.seen, self.newest]

    @classmethod
    def from_obj(cls, spec: Aggregation, obj: list) -> "WindowState":
        return cls(spec, *obj)

    def pack(self) -> bytes:
        return _pack(self.to_obj())

    @classmethod
    def unpack(cls, spec: Aggregation, blob: bytes) -> "WindowState":
        return cls.from_obj(spec, _unpack(blob))


_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _pack_states(states: dict) -> bytes:
    return _pack({feature: state.to_obj() for feature, state in states.items()})


def _event_time(item: list) -> int:
    return item[0]


def _merge_loose(acc: list, tile: list) -> None:
    """:func:`_merge` for a read's running total (sums may pass 64 bits there)."""
    acc[_COUNT] += tile[_COUNT]
    if acc[_SUM] is not None:
        acc[_SUM] += tile[_SUM]
    if acc[_MIN] is not None and tile[_MIN] < acc[_MIN]:
        acc[_MIN] = tile[_MIN]
    if acc[_MAX] is not None and tile[_MAX] > acc[_MAX]:
        acc[_MAX] = tile[_MAX]


class Positions:
    """The last applied position of each source (a Kafka ``topic/partition`` -> offset, a file
    -> line), so a redelivered event is recognised: a source delivers its events in position
    order, so anything at or before the last applied position was applied already."""

    __slots__ = ("last",)

    def __init__(self, last: dict[str, int] | None = None) -> None:
        self.last: dict[str, int] = {} if last is None else last

    def is_new(self, source: str, position: int) -> bool:
        """Whether the event at ``position`` of ``source`` was not applied yet."""
        return position > self.last.get(source, -1)

    def advance(self, source: str, position: int) -> None:
        """Record that ``source`` is applied up to ``position``."""
        if position > self.last.get(source, -1):
            self.last[source] = position

    def to_obj(self) -> dict[str, int]:
        return self.last

    @classmethod
    def from_obj(cls, obj: dict[str, int]) -> "Positions":
        return cls(dict(obj))


class Aggregator:
    """The window states of one shard, per entity ``{feature: state}``: decoded for the
    :data:`HOT_ENTITIES` entities used last, one msgpack blob each for the others; the applied
    position of each source; and counters.

    :arg specs: the configured aggregations (``Config.aggregations``).
    """

    HOT_ENTITIES = 20_000  # entities kept decoded: a write or read of them skips unpack and pack

    def __init__(self, specs: tuple[Aggregation, ...] = ()) -> None:
        self.specs = {a.feature: a for a in specs}
        self.outputs = {o.name: a.feature for a in specs for o in a.outputs}  # name -> feature
        self.states: dict[str, bytes] = {}  # entity id -> packed {feature: state object}, if not hot
        self.hot: dict[str, dict] = {}  # entity id -> {feature: WindowState}, least recent first
        self.positions = Positions()
        self.counts = {APPLIED: 0, LATE: 0, EARLY: 0, DUPLICATE: 0, "redelivered": 0}

    def __bool__(self) -> bool:
        return bool(self.specs)

    def has(self, eid: str) -> bool:
        """Whether the entity had an aggregated event (that was not deleted)."""
        return eid in self.hot or eid in self.states

    def _decoded(self, eid: str, create: bool = False, evict: bool = True) -> dict | None:
        """The entity's ``{feature: WindowState}``, now the most recent hot one; None if it has
        none and not ``create``. With ``evict``, the least recent beyond :data:`HOT_ENTITIES`
        are packed away (a write packs them once it is done with its entities)."""
        states = self.hot.pop(eid, None)
        if states is None:
            blob = self.states.pop(eid, None)
            if blob is None and not create:
                return None
            states = {} if blob is None else self._states_of(blob)
        self.hot[eid] = states
        if evict:
            self._evict()
        return states

    def _states_of(self, blob: bytes) -> dict:
        """Packed states, decoded (those of a feature no longer aggregated are dropped)."""
        specs = self.specs
        return {f: WindowState.from_obj(specs[f], obj) for f, obj in _unpack(blob).items() if f in specs}

    def _evict(self) -> None:
        hot = self.hot
        while len(hot) > self.HOT_ENTITIES:
            cold = next(iter(hot))
            self.states[cold] = _pack_states(hot.pop(cold))

    def packed(self):
        """Every entity's packed states, ``(eid, blob)`` (a snapshot writes them)."""
        yield from self.states.items()
        for eid, states in self.hot.items():
            yield eid, _pack_states(states)

    def __len__(self) -> int:
        return len(self.states) + len(self.hot)

    # ---- writes
    def check(self, writes: list, event_ids: list | None = None) -> None:
        """Raise :class:`AggregateRefused` if a write cannot be aggregated: a non-number for a
        numeric function, a write to an aggregate's own name, an event id that is not a string
        or an integer."""
        specs, outputs = self.specs, self.outputs
        for i, (eid, name, value, ts) in enumerate(writes):
            if name in outputs:
                raise AggregateRefused(computed_refusal(name, outputs[name]))
            spec = specs.get(name)
            if spec is not None and spec.needs_number and not is_number(value):
                raise AggregateRefused(refusal(spec, value))
        for event_id in event_ids or ():
            if event_id is not None and type(event_id) not in (str, int):
                raise AggregateRefused("an event id must be a string or an integer")

    def apply(self, writes: list, now: int, event_ids: list | None = None, source: str | None = None,
              positions: list | None = None) -> set[str]:
        """Count the writes of aggregated features (checked by :meth:`check`) at the clock
        reading ``now``; return the entities whose state changed. ``event_ids`` and
        ``positions`` run parallel to ``writes``; a write at a position of ``source`` at or
        before the last one applied is a redelivery and is skipped."""
        specs = self.specs
        applied = -1 if source is None else self.positions.last.get(source, -1)
        touched: dict[str, dict] = {}
        counts = self.counts
        for i, (eid, name, value, ts) in enumerate(writes):
            spec = specs.get(name)
            if spec is None:
                continue
            if positions is not None and positions[i] <= applied:
                counts["redelivered"] += 1
                continue
            states = touched.get(eid)
            if states is None:
                states = touched[eid] = self._decoded(eid, create=True, evict=False)
            state = states.get(name)
            if state is None:
                state = states[name] = WindowState(spec, now)
            counts[state.apply(value, ts, now, None if event_ids is None else event_ids[i])] += 1
        if positions and source is not None:
            self.positions.advance(source, max(positions))
        self._evict()
        return set(touched)

    def delete(self, eid: str, name: str | None = None) -> bool:
        """Forget an entity's states (``name`` None) or one feature's; whether there was one."""
        if name is None:
            return self.hot.pop(eid, None) is not None or self.states.pop(eid, None) is not None
        states = self._decoded(eid)
        if states is None or states.pop(name, None) is None:
            return False
        if not states:
            del self.hot[eid]
        return True

    # ---- reads
    def read(self, eid: str, now: int, names=None) -> tuple[dict, dict, int] | None:
        """``({name: value}, {name: event_us}, valid until)`` of an entity's aggregates at
        ``now`` (only ``names`` if given), or None when it never had an aggregated event."""
        states = self._decoded(eid)
        if states is None:
            return None
        values, times, until = {}, {}, 1 << 62
        for state in states.values():
            got, valid = state.read_until(now)
            if names is not None:
                got = {n: v for n, v in got.items() if n in names}
                if not got:
                    continue
            values.update(got)
            times.update(dict.fromkeys(got, state.newest))
            until = min(until, valid)
        return values, times, until

    # ---- snapshots
    def to_obj(self) -> dict:
        return {"states": dict(self.packed()), "positions": self.positions.to_obj()}

    def load(self, obj: dict) -> None:
        """Install a snapshot made by :meth:`to_obj`."""
        self.states, self.hot = dict(obj["states"]), {}
        self.positions = Positions.from_obj(obj["positions"])

    def stats(self) -> dict:
        c = self.counts
        return {"agg_entities": len(self), "agg_events": c[APPLIED], "agg_late": c[LATE],
                "agg_early": c[EARLY], "agg_duplicates": c[DUPLICATE], "agg_redelivered": c["redelivered"]}
