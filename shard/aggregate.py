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

from bisect import bisect_left, bisect_right
from operator import itemgetter
from typing import Any

import msgpack

from common.aggregations import US, Aggregation, computed_refusal, refusal
from common.events import INT64_MAX, INT64_MIN

APPLIED, LATE, EARLY, DUPLICATE = "applied", "late", "early", "duplicate"  # apply() outcomes


class AggregateRefused(ValueError):
    """A write an aggregation cannot take (a non-number for a sum, say); the message says why."""


def is_number(value: Any) -> bool:
    """Whether ``value`` can enter a sum, a mean, a min or a max (a bool cannot)."""
    t = type(value)
    return t is int or t is float


def layout_at(spec: Aggregation, now: int) -> tuple:
    """The levels at clock reading ``now``, finest first: ``(B_k, S_k in us, S_k in s)`` each;
    level k holds event times in ``[B_k, B_(k-1))``, and ``B_last`` is the late boundary."""
    return tuple(((now - span) // tile * tile, tile, tile // US) for tile, span in spec.layout_us)


def _combined(a, b) -> tuple:
    """Two tiles ``(count, sum, min, max)`` as one (an unkept column is None in both)."""
    total, low, high = a[1], a[2], a[3]
    if total is not None:
        total = _bounded(total + b[1])
    if low is not None and b[2] < low:
        low = b[2]
    if high is not None and b[3] > high:
        high = b[3]
    return a[0] + b[0], total, low, high


def _bounded(total):
    """A sum msgpack can hold: an integer past 64 bits becomes a float."""
    if type(total) is int and not INT64_MIN <= total <= INT64_MAX:
        return float(total)
    return total


class WindowState:
    """Tiles, the N latest events and the seen event ids of one (entity, aggregated feature).

    A tile is a tuple ``(count, sum, min, max)`` (None for a column no function needs) keyed by
    its start in seconds; the N latest events are ``(event_us, value)`` tuples, oldest first.
    Tuples of numbers are not tracked by the garbage collector: few objects per state keep its
    passes short.

    :arg spec: the feature's :class:`~common.aggregations.Aggregation`.
    """

    __slots__ = ("spec", "horizon", "tiles", "last", "seen", "newest", "_layout")

    def __init__(self, spec: Aggregation, horizon: int = 0, tiles: dict | None = None,
                 last: list | None = None, seen: dict | None = None, newest: int = 0) -> None:
        self.spec = spec
        self.horizon = horizon  # the latest clock reading the tiles are laid out for
        self.tiles: dict[int, tuple] = {} if tiles is None else tiles  # start in s -> tile
        # the N latest events, oldest first (no list at all for a spec without last_N)
        self.last: list[tuple] | tuple = [(ts, v) for ts, v in last] if last else [] if spec.last_n else ()
        self.seen: dict[Any, int] = {} if seen is None else seen  # event id -> event_us
        self.newest = newest  # the latest event time counted: the aggregates' event time
        self._layout: tuple | None = None  # layout_at(horizon), once worked out

    # ---- layout
    def _layout_for(self, now: int) -> tuple:
        if now == self.horizon:
            if self._layout is None:
                self._layout = layout_at(self.spec, now)
            return self._layout
        return layout_at(self.spec, now)

    def window_start(self, now: int, window_us: int) -> int:
        """Where a read of a ``window_us`` window at ``now`` starts: the start of the tile holding
        its old edge, in the layout at ``now`` (or at the state's horizon if later)."""
        return _edge(now, window_us, self._layout_for(max(now, self.horizon)))[0]

    def advance(self, now: int, layout: tuple | None = None) -> None:
        """Lay the tiles out for ``now`` (``layout``: ``layout_at(spec, now)``, if known): fold
        fine tiles past their level into coarse ones, drop what became late."""
        if now <= self.horizon:
            return
        if layout is None:
            layout = layout_at(self.spec, now)
        old = self._layout
        if old is None:
            old = layout_at(self.spec, self.horizon)
        self.horizon, self._layout = now, layout
        if layout is not old and layout != old:
            self._fold(layout)

    def _fold(self, layout: tuple) -> None:
        tiles: dict[int, tuple] = {}
        late = layout[-1][0]
        for key, tile in sorted(self.tiles.items()):
            start = key * US
            if start < late:
                continue
            for bound, size, size_s in layout:
                if start >= bound:
                    break
            key = start // size * size_s
            have = tiles.get(key)
            tiles[key] = tile if have is None else _combined(have, tile)
        self.tiles = tiles
        if self.seen:
            self.seen = {eid: ts for eid, ts in self.seen.items() if ts >= late}
        last = self.last
        if last and last[0][0] < late:
            del last[:bisect_left(last, late, key=_TIME)]

    # ---- writes
    def apply(self, value: Any, ts: int, now: int, event_id: Any = None, layout: tuple | None = None) -> str:
        """Count one event (``value`` at event time ``ts``, seen at the clock reading ``now``;
        ``layout``: ``layout_at(spec, now)`` if the caller has it): returns :data:`APPLIED`, or
        :data:`LATE` (older than the longest window), :data:`EARLY` (further ahead of ``now``
        than clock skew explains) or :data:`DUPLICATE` (an event id already counted), which
        change nothing. Numeric functions need :func:`is_number` values; the caller checks that."""
        spec = self.spec
        if now > self.horizon:
            if layout is not None and layout is self._layout:
                self.horizon = now
            else:
                self.advance(now, layout)
        layout = self._layout
        if layout is None:
            layout = self._layout = layout_at(spec, self.horizon)
        if ts < layout[-1][0]:
            return LATE
        if ts >= self.horizon + spec.ahead_us:
            return EARLY
        if event_id is not None:
            seen = self.seen
            if event_id in seen:
                return DUPLICATE
            seen[event_id] = ts
        for bound, size, size_s in layout:  # the tile size of its level
            if ts >= bound:
                break
        key = ts // size * size_s
        tiles = self.tiles
        tile = tiles.get(key)
        if tile is None:
            keep_sum, keep_min, keep_max = spec.columns
            tiles[key] = (1, value if keep_sum else None, value if keep_min else None, value if keep_max else None)
        else:
            count, total, low, high = tile
            if total is not None:
                total += value
                if type(total) is int and not INT64_MIN <= total <= INT64_MAX:
                    total = float(total)
            if low is not None and value < low:
                low = value
            if high is not None and value > high:
                high = value
            tiles[key] = (count + 1, total, low, high)
        n = spec.last_n
        if n:
            last = self.last
            if not last or ts >= last[-1][0]:  # the usual case: the latest so far
                last.append((ts, value))
            elif len(last) < n or ts >= last[0][0]:
                last.insert(bisect_right(last, ts, key=_TIME), (ts, value))
            if len(last) > n:
                del last[0]
        if ts > self.newest:
            self.newest = ts
        return APPLIED

    # ---- reads
    def read(self, now: int) -> dict[str, Any]:
        """``{output name: value}`` of every function and window at ``now`` (see the module
        docstring for what each window covers). An empty window: count and sum 0, mean, min and
        max None, last_N []."""
        return self.read_until(now)[0]

    def read_until(self, now: int) -> tuple[dict[str, Any], int]:
        """:meth:`read`, and the first clock reading after ``now`` at which it may differ."""
        spec = self.spec
        layout = self._layout_for(max(now, self.horizon))
        starts = [_edge(now, w, layout) for w in spec.window_us]
        totals, ahead = self._window_totals(now, starts)
        last = self.last
        out: dict[str, Any] = {}
        for name, fn, n, i in spec.plan:
            if fn == "last":
                lo, hi = bisect_left(last, now - spec.window_us[i], key=_TIME), bisect_left(last, now, key=_TIME)
                out[name] = [value for _, value in last[max(lo, hi - n):hi]]
                continue
            count, total, low, high = totals[i]
            if fn == "count":
                out[name] = count
            elif not count:
                out[name] = 0 if fn == "sum" else None
            elif fn == "sum":
                out[name] = total
            elif fn == "mean":
                out[name] = total / count
            else:
                out[name] = low if fn == "min" else high
        # when it changes next: a window's old edge reaches its next tile, a tile ahead of now
        # starts, an event of last_N enters (ts + 1) or leaves (ts + w + 1) a window
        until = min(start + size + w for start, w, size in starts)
        if ahead is not None and ahead * US + 1 < until:
            until = ahead * US + 1
        if last:
            at = bisect_right(last, now - 1, key=_TIME)
            if at < len(last) and last[at][0] + 1 < until:
                until = last[at][0] + 1
            for w in spec.window_us:
                at = bisect_right(last, now - w - 1, key=_TIME)  # the first event still in the window
                if at < len(last) and last[at][0] + w + 1 < until:
                    until = last[at][0] + w + 1
        return out, until

    def _window_totals(self, now: int, starts: list) -> tuple[list, int | None]:
        """``[count, sum, min, max]`` of each window (one pass over the tiles, newest first), and
        the start in seconds of the first tile ahead of ``now`` (None if none)."""
        totals: list = []
        count, total, low, high = 0, None, None, None
        ahead = None
        i, last = 0, len(starts)
        edge = starts[0][0] // US
        cut = -(-now // US)  # the tiles from this start on begin at or after now
        for key, tile in sorted(self.tiles.items(), reverse=True):
            if key >= cut:
                ahead = key
                continue
            while key < edge:
                totals.append((count, total, low, high))
                i += 1
                if i == last:
                    return totals, ahead
                edge = starts[i][0] // US
            if not count:
                count, total, low, high = tile
                continue
            count += tile[0]
            if total is not None:
                total += tile[1]
            if low is not None and tile[2] < low:
                low = tile[2]
            if high is not None and tile[3] > high:
                high = tile[3]
        while i < last:
            totals.append((count, total, low, high))
            i += 1
        return totals, ahead

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


def _edge(now: int, window_us: int, layout: tuple) -> tuple[int, int, int]:
    """``(start, window_us, tile)``: the tile holding a window's old edge, and its size (a
    window reaching past every level is cut at the coarsest one's tile size)."""
    edge = now - window_us
    for bound, size, _ in layout:
        if edge >= bound:
            break
    return edge // size * size, window_us, size


_TIME = itemgetter(0)  # the event time of a last_N item
_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _pack_states(states: dict) -> bytes:
    return _pack({feature: state.to_obj() for feature, state in states.items()})


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
    SWEEP_BATCH = 100  # entities examined per reclamation step (a cold one is unpacked: ~5 us)
    SWEEP_PAUSE_US = 600_000_000  # between two reclamation passes over the shard: 10 minutes

    def __init__(self, specs: tuple[Aggregation, ...] = ()) -> None:
        self.specs = {a.feature: a for a in specs}
        self.outputs = {o.name: a.feature for a in specs for o in a.outputs}  # name -> feature
        self.watched = frozenset(self.specs) | frozenset(self.outputs)  # the names a write is checked for
        self.states: dict[str, bytes] = {}  # entity id -> packed {feature: state object}, if not hot
        self.hot: dict[str, dict] = {}  # entity id -> {feature: WindowState}, least recent first
        self.positions = Positions()
        self.counts = {APPLIED: 0, LATE: 0, EARLY: 0, DUPLICATE: 0, "redelivered": 0, "reclaimed": 0}
        self._layouts: dict[str, tuple] = {}  # feature -> (clock reading, its layout_at)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def has(self, eid: str) -> bool:
        """Whether the entity had an aggregated event (that was not deleted or reclaimed)."""
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

    def packed_of(self, eid: str) -> bytes | None:
        """One entity's packed states, or None (a partition handed to a peer carries them)."""
        states = self.hot.get(eid)
        return self.states.get(eid) if states is None else _pack_states(states)

    def install(self, eid: str, blob: bytes) -> None:
        """Put an entity's packed states (from :meth:`packed_of`) in place of its own."""
        self.hot.pop(eid, None)
        self.states[eid] = blob

    def __len__(self) -> int:
        return len(self.states) + len(self.hot)

    def _layout(self, feature: str, now: int) -> tuple:
        """``layout_at(spec, now)``, the same object while it does not change (a state laid out
        for it then skips comparing)."""
        cached = self._layouts.get(feature)
        if cached is not None and cached[0] == now:
            return cached[1]
        layout = layout_at(self.specs[feature], now)
        if cached is not None and cached[1] == layout:
            layout = cached[1]
        self._layouts[feature] = now, layout
        return layout

    # ---- writes
    def pick(self, writes: list) -> list[int]:
        """The indexes of the writes of aggregated features or of aggregates' own names."""
        watched = self.watched
        return [i for i, w in enumerate(writes) if w[1] in watched]

    def check(self, writes: list, event_ids: list | None = None, picked: list | None = None) -> None:
        """Raise :class:`AggregateRefused` if a write cannot be aggregated: a non-number for a
        numeric function, a write to an aggregate's own name, an event id that is not a string
        or an integer (``picked``: :meth:`pick` of ``writes``, if known)."""
        specs, outputs = self.specs, self.outputs
        for i in self.pick(writes) if picked is None else picked:
            _, name, value, _ = writes[i]
            if name in outputs:
                raise AggregateRefused(computed_refusal(name, outputs[name]))
            spec = specs[name]
            if spec.needs_number and not is_number(value):
                raise AggregateRefused(refusal(spec, value))
        for event_id in event_ids or ():
            if event_id is not None and type(event_id) is not str and type(event_id) is not int:
                raise AggregateRefused("an event id must be a string or an integer")

    def apply(self, writes: list, now: int, event_ids: list | None = None, source: str | None = None,
              positions: list | None = None, picked: list | None = None) -> set[str]:
        """Count the writes of aggregated features (checked by :meth:`check`; ``picked``:
        :meth:`pick` of ``writes``, if known) at the clock reading ``now``; return the entities
        whose state changed. ``event_ids`` and ``positions`` run parallel to ``writes``; a write
        at a position of ``source`` at or before the last one applied is a redelivery and is skipped."""
        hot, counts = self.hot, self.counts
        applied = -1 if source is None else self.positions.last.get(source, -1)
        touched: dict[str, dict] = {}
        plans: dict[str, tuple] = {}  # feature -> (spec, layout at now), for this call
        done = 0
        last_eid, states = None, None
        for i in self.pick(writes) if picked is None else picked:
            eid, name, value, ts = writes[i]
            plan = plans.get(name)
            if plan is None:
                if name not in self.specs:
                    continue
                plan = plans[name] = self.specs[name], self._layout(name, now)
            if positions is not None and positions[i] <= applied:
                counts["redelivered"] += 1
                continue
            if eid != last_eid:  # ingest sends an entity's writes in runs
                states = touched.get(eid)
                if states is None:
                    states = hot.pop(eid, None)
                    if states is None:
                        blob = self.states.pop(eid, None)
                        states = {} if blob is None else self._states_of(blob)
                    hot[eid] = touched[eid] = states
                last_eid = eid
            spec, layout = plan
            state = states.get(name)
            if state is None:
                state = states[name] = WindowState(spec, now)
                state._layout = layout
            got = state.apply(value, ts, now, None if event_ids is None else event_ids[i], layout)
            if got is APPLIED:
                done += 1
            else:
                counts[got] += 1
        counts[APPLIED] += done
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

    # ---- reclamation
    def entities(self) -> list[str]:
        """Every entity with window states."""
        return [*self.hot, *self.states]

    def reclaim(self, eids: list[str], now: int) -> list[str]:
        """Drop the states of ``eids`` whose every event is older than the longest window at
        ``now`` (they read as empty windows from then on; see :meth:`read`'s ``plain``), so an
        entity that stops receiving events stops costing memory; return the entities changed."""
        if not eids:
            return []
        late = {f: self._layout(f, now)[-1][0] for f in self.specs}  # each feature's late boundary
        return [eid for eid in eids if self._reclaim(eid, late)]

    def _reclaim(self, eid: str, late: dict[str, int]) -> bool:
        """Drop the entity's states whose newest event is older than ``late[feature]``
        (the boundary only moves on: they stay aged out); whether there was one."""
        states = self.hot.get(eid)
        if states is not None:
            gone = [f for f, st in states.items() if st.newest < late[f]]
            for f in gone:
                del states[f]
            if gone and not states:
                del self.hot[eid]
        else:
            blob = self.states.get(eid)
            if blob is None:
                return False
            objs = _unpack(blob)  # [horizon, tiles, last, seen, newest] per feature
            gone = [f for f, obj in objs.items() if f not in late or obj[4] < late[f]]
            for f in gone:
                del objs[f]
            if objs and gone:
                self.states[eid] = _pack(objs)
            elif gone:
                del self.states[eid]
        self.counts["reclaimed"] += len(gone)
        return bool(gone)

    # ---- reads
    def read(self, eid: str, now: int, names=None, plain: dict | None = None) -> tuple[dict, int] | None:
        """``({name: (value, event_us)}, valid until)`` of an entity's aggregates at ``now``
        (only ``names`` if given), or None when it has none. ``plain`` is the entity's
        ``{name: [value, event_us]}``: an aggregated feature in it without a state (reclaimed,
        or written before it was aggregated) reads as empty windows, at that value's event time."""
        states = self._decoded(eid)
        if states is None and not plain:
            return None
        out: dict = {}
        until = 1 << 62
        if states:
            for state in states.values():
                got, valid = state.read_until(now)
                newest = state.newest
                if names is None:
                    for name, value in got.items():
                        out[name] = (value, newest)
                else:
                    for name, value in got.items():
                        if name in names:
                            out[name] = (value, newest)
                if valid < until:
                    until = valid
        if plain:
            for feature, spec in self.specs.items():
                vt = plain.get(feature)
                if vt is not None and (not states or feature not in states):
                    for name, fn, _, _ in spec.plan:
                        if names is None or name in names:
                            out[name] = (_EMPTY.get(fn), vt[1]) if fn != "last" else ([], vt[1])
        if states is None and not out:
            return None
        return out, until

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
                "agg_early": c[EARLY], "agg_duplicates": c[DUPLICATE], "agg_redelivered": c["redelivered"],
                "agg_reclaimed": c["reclaimed"]}


_EMPTY = {"count": 0, "sum": 0}  # what an empty window reads (None for mean, min, max; [] for last_N)
