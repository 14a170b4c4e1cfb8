"""Feature freshness: a histogram of the age (now - event time) of the values a shard serves, per view.

The view is the part of a name before ``:`` (``driver_stats:conv_rate`` -> ``driver_stats``;
``none`` for a name without one). At most ``MAX_VIEWS`` views get a label of their own, the
rest count as ``other``: label values stay bounded whatever names clients write.

Looking at every value of every read would cost the shard more than the metrics' whole budget,
so one entity read in ``sample_every`` is looked at (across reads, so a batch of 1,000 entities
decodes 100 of them, not all), and each of its values counts ``sample_every`` times: the counts
estimate the values served, the shape is that of a uniform sample.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

AGE_BUCKETS_S = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)
MAX_VIEWS = 50
OTHER, NO_VIEW = "other", "none"


class Freshness:
    """Per-view bucket counts of served values' ages; ``pick()`` says which entities to look at."""

    def __init__(self, sample_every: int = 10) -> None:
        self.sample_every = sample_every  # 0: off
        self._countdown = sample_every
        self.views: dict[str, list[float]] = {}  # view -> [count per bucket..., +Inf, sum of ages]
        self._view_of: dict[str, list[float]] = {}  # name -> its view's counts, memoised
        self._groups: dict[tuple, list] = {}  # names of an entity -> [(view counts, n)], see _group

    def pick(self, eids: list) -> list:
        """The entities of a read whose values to look at: every ``sample_every``-th entity
        read, counted across reads (a batch read costs its share, not a decode of every entity)."""
        first = self._countdown - 1  # the index, in this read, of the next entity due
        if first >= len(eids):
            self._countdown -= len(eids)
            return []
        every = self.sample_every
        if not every:
            return []
        self._countdown = every - (len(eids) - 1 - first) % every
        return eids[first::every]

    def observe(self, stamped: Iterable[tuple[str, int]], now_us: int) -> None:
        """Count each served ``(name, event_us)``, ``sample_every`` times."""
        weight = self.sample_every
        view_of = self._view_of
        last = bucket = added = None
        for name, event_us in stamped:
            counts = view_of.get(name) or self._require(name)
            if event_us != last:  # an entity's values often share their event time
                last = event_us
                age_s = (now_us - event_us) / 1e6
                bucket = bisect_left(AGE_BUCKETS_S, age_s)
                added = age_s * weight
            counts[bucket] += weight
            counts[-1] += added

    def observe_entities(self, entries: Iterable[tuple[tuple, object]], now_us: int) -> None:
        """:meth:`observe` of each entity's ``(names, event times)`` (``Store.sampled``): one
        event time for all its values (an int) is counted once per view, not once per value."""
        weight = self.sample_every
        groups_of = self._groups
        for names, times in entries:
            if type(times) is not int:
                self.observe(zip(names, times), now_us)
                continue
            groups = groups_of.get(names) or self._group(names)
            age_s = (now_us - times) / 1e6
            bucket = bisect_left(AGE_BUCKETS_S, age_s)
            for counts, n in groups:
                counts[bucket] += weight * n
                counts[-1] += age_s * weight * n

    def _group(self, names: tuple) -> list:
        """``[(a view's counts, how many of names are in it), ...]``, memoised per name tuple."""
        by_view: dict[int, list] = {}
        for name in names:
            counts = self._view_of.get(name) or self._require(name)
            by_view.setdefault(id(counts), [counts, 0])[1] += 1
        if len(self._groups) > 10_000:
            self._groups.clear()
        groups = self._groups[names] = [tuple(g) for g in by_view.values()]
        return groups

    def _require(self, name: str) -> list[float]:
        cut = name.find(":")
        view = name[:cut] if cut > 0 else NO_VIEW
        if view not in self.views and len(self.views) >= MAX_VIEWS:
            view = OTHER
        counts = self.views.setdefault(view, [0.0] * (len(AGE_BUCKETS_S) + 2))
        if len(self._view_of) > 10_000:
            self._view_of.clear()
        self._view_of[name] = counts
        return counts

    def snapshot(self) -> dict:
        """What a ``stats`` reply carries: the bucket bounds and the counts per view."""
        return {"bounds": list(AGE_BUCKETS_S), "views": {v: list(c) for v, c in self.views.items()}}
