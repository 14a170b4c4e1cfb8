"""Cluster mode, front-end side: which shard serves an entity, and retry on another replica.

The membership :class:`~common.membership.View` says which live shards have caught up on each
partition. A read goes to one of them: replicas that confirmed this process's last write to the
partition first, so a writer reads its own write; then, with ``FS_CLUSTER_READ_REPLICA`` (a
zone's own replica set), the owners in that set, then the others; without it, each owner first
in turn, spreading load. A shard that does not answer, or answers ``not_owner``, is skipped and
the next one is tried within the request's deadline. Shards are reached through links of a ``ShardClient`` that the router adds
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
                 clock: Callable[[], float] = time.monotonic, read_replica: str | None = None) -> None:
        self.view = view
        self.read_replica = read_replica  # FS_CLUSTER_READ_REPLICA: the set read first, or None
        self.partitions = partitions
        self.connect = connect
        self.clock = clock
        self.links: dict[str, int] = {}  # endpoint -> link index
        self.fresh: dict[int, set[str]] = {}  # partition -> endpoints that applied our last write
        self._table: list[list[str]] = [[] for _ in range(partitions)]
        self._rotations: list[list[list[str]]] = [[] for _ in range(partitions)]  # p -> its orders to use in turn
        self._replica_of: dict[str, str] = {}  # endpoint -> its replica set, as the table was made
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
            replica_of = {m.endpoint: m.replica for m in self.view.live()}
            if table != self._table or replica_of != self._replica_of:
                self._rotations = [self._orders(owners, replica_of) for owners in table]
            self._table, self._replica_of = table, replica_of
            self._table_at, self._table_version = now, self.view.version
        return self._table

    def _orders(self, owners: list[str], replica_of: dict[str, str]) -> list[list[str]]:
        """The orders in which to try a partition's ``owners``, used in turn: with a read replica
        set, one (its owners first); else each owner first in turn."""
        home = self.read_replica
        if home is None:
            return [owners[k:] + owners[:k] for k in range(len(owners))]
        return [sorted(owners, key=lambda e: replica_of.get(e) != home)]  # (a stable sort)

    def link(self, endpoint: str) -> int:
        index = self.links.get(endpoint)
        if index is None:
            index = self.links[endpoint] = self.connect(endpoint)
        return index

    def candidates(self, p: int) -> list[str]:
        """The endpoints to try for partition ``p``, best first (a list not to be changed)."""
        self.table()
        rotations = self._rotations[p]
        if not rotations:
            return []
        order = rotations[0] if len(rotations) == 1 else rotations[next(self._turn) % len(rotations)]
        fresh = self.fresh.get(p)
        if fresh and len(order) > 1:  # stable: fresh ones first, the order kept
            return sorted(order, key=lambda e: e not in fresh)
        return order

    def wrote(self, p: int, applied_by: str) -> None:
        """This process's newest write to ``p`` has been applied by ``applied_by`` (only)."""
        self.fresh[p] = {applied_by}

    def confirmed(self, p: int, endpoint: str) -> None:
        """Another replica applied this process's newest write to ``p`` too."""
        self.fresh.setdefault(p, set()).add(endpoint)

    def uncovered(self) -> list[int]:
        return [p for p, eps in enumerate(self.table()) if not eps]
