"""Cluster mode, front-end side: which shard serves an entity, and retry on another replica.

The membership :class:`~common.membership.View` says which live shards have caught up on each
partition. A read goes to one of them (replicas that confirmed this process's last write to the
partition first, so a writer reads its own write; the others in turn, spreading load); a shard
that does not answer, or answers ``not_owner``, is skipped and the next one is tried within the
request's deadline. Shards are reached through links of a ``ShardClient`` that the router adds
as endpoints appear (``connect(endpoint) -> link index``).
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

from common.membership import View
from common.murmur2 import partition_of

TABLE_TTL_S = 0.1  # the owner table is recomputed at most this often (liveness is time-based)


class Router:
    """Candidates per partition, from the membership view."""

    def __init__(self, view: View, partitions: int, connect: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.partitions = partitions
        self.connect = connect
        self.clock = clock
        self.links: dict[str, int] = {}  # endpoint -> link index
        self.fresh: dict[int, set[str]] = {}  # partition -> endpoints that applied our last write
        self._table: list[list[str]] = [[] for _ in range(partitions)]
        self._rotations: list[list[list[str]]] = [[] for _ in range(partitions)]  # p -> each owner first in turn
        self._table_at = -1.0
        self._table_version = -1
        self._turn = itertools.count()

    def partition(self, eid: str) -> int:
        return partition_of(eid, self.partitions)

    def table(self) -> list[list[str]]:
        """For each partition, the endpoints of its caught-up live owners."""
        now = self.clock()
        if now - self._table_at > TABLE_TTL_S or self.view.version != self._table_version:
            table = self.view.table(self.partitions)
            if table != self._table:
                self._rotations = [[owners[k:] + owners[:k] for k in range(len(owners))] for owners in table]
            self._table = table
            self._table_at, self._table_version = now, self.view.version
        return self._table

    def link(self, endpoint: str) -> int:
        index = self.links.get(endpoint)
        if index is None:
            index = self.links[endpoint] = self.connect(endpoint)
        return index

    def candidates(self, p: int) -> list[str]:
        """The endpoints to try for partition ``p``, best first (a list not to be changed)."""
        self.table()
        rotations = self._rotations[p]
        if len(rotations) < 2:
            return rotations[0] if rotations else []
        rotated = rotations[next(self._turn) % len(rotations)]
        fresh = self.fresh.get(p)
        if fresh:  # stable: fresh ones first, rotation kept
            return sorted(rotated, key=lambda e: e not in fresh)
        return rotated

    def wrote(self, p: int, applied_by: str) -> None:
        """This process's newest write to ``p`` has been applied by ``applied_by`` (only)."""
        self.fresh[p] = {applied_by}

    def confirmed(self, p: int, endpoint: str) -> None:
        """Another replica applied this process's newest write to ``p`` too."""
        self.fresh.setdefault(p, set()).add(endpoint)

    def uncovered(self) -> list[int]:
        return [p for p, eps in enumerate(self.table()) if not eps]
