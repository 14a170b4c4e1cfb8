"""Windowed aggregations declared in the configuration file (``[[aggregations]]``).

::

    [[aggregations]]
    feature = "clicks"                 # a written feature; a Feast name "view:clicks" works too
    functions = ["count", "sum", "mean", "min", "max", "last_5"]
    windows = ["1h", "24h", "7d"]

Each function and window is a readable feature named ``{feature}_{function}_{window}``
(``clicks_sum_1h``, ``view:clicks_count_24h``). :func:`parse_aggregations` turns the entries
into frozen :class:`Aggregation` objects, each with the tile :class:`Level` layout its windows
need; the shard keeps the state (shard/aggregate.py). See docs/AGGREGATIONS.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

US = 1_000_000
MAX_WINDOW_US = 7 * 86400 * US  # the longest window; the memory bound is stated for it
MAX_LAST_N = 100
TILES_PER_WINDOW = (12, 10, 8, 6, 4)  # tiles a window spans, the most that fits: error < 1/12 of it
MAX_STATE_BYTES = 2048  # worst-case msgpack size of one state's tiles (last_N values aside)
AHEAD_TILES = 2  # events up to this many finest tiles past the shard's clock (skew) still count
NUMERIC = ("sum", "mean", "min", "max")
FUNCTIONS = ("count",) + NUMERIC  # and last_N
_WINDOW_RE = re.compile(r"([1-9][0-9]*)([smhd])\Z")
_UNIT_US = {"s": US, "m": 60 * US, "h": 3600 * US, "d": 86400 * US}
_NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]+\Z")
_KEYS = frozenset(("feature", "functions", "windows"))


class AggregationError(ValueError):
    """An ``[[aggregations]]`` entry the store cannot use; the message names it."""


@dataclass(frozen=True)
class Window:
    label: str  # as written: "1h"
    us: int  # its length in microseconds


@dataclass(frozen=True)
class Level:
    """Tiles of ``tile_us`` hold the events whose age is below about ``span_us``."""

    tile_us: int
    span_us: int


@dataclass(frozen=True)
class Output:
    """One readable feature of an aggregation: ``{feature}_{function}_{window}``."""

    name: str
    function: str  # count | sum | mean | min | max | last
    n: int  # N of last_N; 0 for the others
    window: Window


@dataclass(frozen=True)
class Aggregation:
    feature: str
    functions: tuple[str, ...]  # as written: "count", "last_5"
    windows: tuple[Window, ...]  # shortest first
    outputs: tuple[Output, ...]
    levels: tuple[Level, ...]  # finest first (see layout())
    last_n: int  # the largest N of its last_N functions; 0 if none
    needs_number: bool  # a numeric function is declared: a value must be a number
    columns: tuple[bool, bool, bool]  # whether tiles keep a sum, a min, a max
    layout_us: tuple[tuple[int, int], ...] = ()  # (tile_us, span_us) of each level: the hot paths'
    ahead_us: int = 0  # how far past the shard's clock an event may be and still count (skew)
    window_us: tuple[int, ...] = ()  # each window's length, shortest first
    plan: tuple[tuple[str, str, int, int], ...] = ()  # (name, function, N, window index) of each output

    def error_bound_us(self, window: Window) -> int:
        """The most a read of ``window`` can reach past its old edge: one tile of its level."""
        for level in self.levels:
            if window.us <= level.span_us:
                return level.tile_us
        raise ValueError(f"{window.label} is not a window of {self.feature}")


def parse_window(text: Any, where: str) -> Window:
    """``"90m"`` -> a :class:`Window`; whole seconds, minutes, hours or days, at most 7d."""
    m = _WINDOW_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise AggregationError(f"{where}: window {text!r} must be a number and a unit s, m, h or d, as \"1h\"")
    us = int(m.group(1)) * _UNIT_US[m.group(2)]
    if us > MAX_WINDOW_US:
        raise AggregationError(f"{where}: window {text!r} is longer than 7d")
    return Window(text, us)


def _parse_function(text: Any, where: str) -> tuple[str, int]:
    if text in FUNCTIONS:
        return text, 0
    if isinstance(text, str) and text.startswith("last_") and text[5:].isdigit():
        n = int(text[5:])
        if 1 <= n <= MAX_LAST_N and text[5:] == str(n):
            return "last", n
        raise AggregationError(f"{where}: {text!r}: N of last_N must be 1 to {MAX_LAST_N}")
    raise AggregationError(f"{where}: function {text!r} must be one of count, sum, mean, min, max, last_N")


def _largest_tile(window_us: int, step_us: int, per_window: int) -> int:
    """The largest multiple of ``step_us`` at most ``1/per_window`` of the window, preferring
    one that divides it (then a read at a time that is a multiple of the tile is exact)."""
    most = max(1, window_us // (per_window * step_us))
    for m in range(most, 0, -1):
        if window_us % (m * step_us) == 0:
            return m * step_us
    return most * step_us


def layout(windows: tuple[Window, ...], per_window: int = TILES_PER_WINDOW[0]) -> tuple[Level, ...]:
    """Tile levels for ``windows`` (shortest first): one per window, tiles of about
    ``1/per_window`` of it, each size a multiple of the finer one, so fine tiles fold into coarse
    ones exactly. A window too close to the one before (no larger tile fits) extends that level."""
    levels: list[Level] = []
    for w in windows:
        if not levels:
            levels.append(Level(_largest_tile(w.us, US, per_window), w.us))
            continue
        prev = levels[-1]
        tile = _largest_tile(w.us, prev.tile_us, per_window)
        if tile == prev.tile_us or w.us < prev.span_us + prev.tile_us:
            levels[-1] = Level(prev.tile_us, w.us)
        else:
            levels.append(Level(tile, w.us))
    return tuple(levels)


def worst_case_tiles(levels: tuple[Level, ...]) -> int:
    """The most tiles a state with these levels holds (every tile holding an event)."""
    total, below = AHEAD_TILES + 1, 0  # the tiles of events ahead of the clock
    for level in levels:
        total += (level.span_us - below) // level.tile_us + 2  # + the partial tiles at each end
        below = level.span_us
    return total


def worst_case_bytes(levels: tuple[Level, ...], columns: tuple[bool, bool, bool]) -> int:
    """An upper bound of the msgpack size of a state's tiles: per tile a 5-byte key, an array
    header, a count (at most 5 bytes) and 9 bytes per kept float (1 for an unused column)."""
    per_tile = 5 + 1 + 5 + sum(9 if kept else 1 for kept in columns)
    return 16 + worst_case_tiles(levels) * per_tile


def _check_names(entry: dict, where: str) -> str:
    extra = entry.keys() - _KEYS
    if extra:
        raise AggregationError(f"{where}: {sorted(extra)[0]!r} is not a key (feature, functions, windows)")
    for key in _KEYS:
        if key not in entry:
            raise AggregationError(f"{where}: {key} is required")
    feature = entry["feature"]
    if not isinstance(feature, str) or not _NAME_RE.match(feature):
        raise AggregationError(f"{where}: feature must be a feature name (letters, digits and _ . : -)")
    for key in ("functions", "windows"):
        if not isinstance(entry[key], list) or not entry[key]:
            raise AggregationError(f"{where}: {key} must be a non-empty list")
    return feature


def parse_aggregation(entry: Any, where: str = "aggregations[0]") -> Aggregation:
    """Validate one ``[[aggregations]]`` table; :class:`AggregationError` names what is wrong."""
    if not isinstance(entry, dict):
        raise AggregationError(f"{where} must be a table")
    feature = _check_names(entry, where)
    where = f"{where} ({feature})"
    functions = [_parse_function(f, where) for f in entry["functions"]]
    if len(set(entry["functions"])) != len(functions):
        raise AggregationError(f"{where}: a function is listed twice")
    windows = sorted((parse_window(w, where) for w in entry["windows"]), key=lambda w: w.us)
    if len({w.us for w in windows}) != len(windows):
        raise AggregationError(f"{where}: two windows have the same length")
    names = {fn for fn, _ in functions}
    columns = ("sum" in names or "mean" in names, "min" in names, "max" in names)
    for per_window in TILES_PER_WINDOW:  # the finest tiles whose worst case fits the bound
        levels = layout(tuple(windows), per_window)
        if worst_case_bytes(levels, columns) <= MAX_STATE_BYTES:
            break
    else:
        raise AggregationError(f"{where}: windows {entry['windows']} need more than {MAX_STATE_BYTES} bytes of "
                               f"tiles: declare fewer or more widely spaced windows")
    outputs = tuple(
        Output(f"{feature}_{text}_{w.label}", fn, n, w)
        for text, (fn, n) in zip(entry["functions"], functions)
        for w in windows
    )
    return Aggregation(
        feature=feature,
        functions=tuple(entry["functions"]),
        windows=tuple(windows),
        outputs=outputs,
        levels=levels,
        last_n=max((n for _, n in functions), default=0),
        needs_number=any(fn in NUMERIC for fn, _ in functions),
        columns=columns,
        layout_us=tuple((lv.tile_us, lv.span_us) for lv in levels),
        ahead_us=AHEAD_TILES * levels[0].tile_us,
        window_us=tuple(w.us for w in windows),
        plan=tuple((o.name, o.function, o.n, windows.index(o.window)) for o in outputs),
    )


def parse_aggregations(entries: Any, where: str = "aggregations") -> tuple[Aggregation, ...]:
    """Validate the ``[[aggregations]]`` array of tables: one :class:`Aggregation` each."""
    if not isinstance(entries, list):
        raise AggregationError(f"{where} must be an array of tables ([[aggregations]])")
    aggs = tuple(parse_aggregation(e, f"{where}[{i}]") for i, e in enumerate(entries))
    features = [a.feature for a in aggs]
    for f in features:
        if features.count(f) > 1:
            raise AggregationError(f"{where}: feature {f!r} is aggregated twice (list every function in one entry)")
    names = set(features)
    for a in aggs:
        for out in a.outputs:
            if out.name in names:
                raise AggregationError(f"{where}: {out.name!r} is both an aggregate and an aggregated feature")
            names.add(out.name)
    return aggs


_KINDS = {str: "a string", bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}


def refusal(spec: Aggregation, value: Any) -> str:
    """Why ``value`` cannot be a write of ``spec``'s feature (a numeric function needs numbers)."""
    numeric = ", ".join(f for f in spec.functions if f in NUMERIC)
    kind = _KINDS.get(type(value), type(value).__name__)
    return f"{spec.feature} is aggregated with {numeric}: its value must be a number, not {kind}"


def computed_refusal(name: str, feature: str) -> str:
    """Why a write to an aggregate's own name is refused."""
    return f"{name} is computed by the aggregation of {feature}: write {feature}"
