"""Cluster mode, front-end side: which shard serves an entity, and retry on another replica.

The membership :class:`~common.membership.View` says which live shards have caught up on each
partition. A read goes to one of them: replicas that confirmed this process's last write to the
partition first, so a writer reads its own write; then, with ``FS_CLUSTER_READ_REPLICA`` (a
zone's own replica set), the owners in that set, then the others. Load spreads over the replicas
by ``FS_CLUSTER_READ_SPREAD``: ``partition`` (the default) gives each partition one preferred
owner (:func:`preferred_owners`: as even as the ownership allows, the same choice in every front
end from the same view), so each entity is read, and its rendering cached, on one replica while
the ownership holds; ``request`` puts each owner first in turn, read after read. A shard that
does not answer, or answers ``not_owner``, is skipped and the next one is tried within the
request's deadline. Shards are reached through links of a ``ShardClient`` that the router adds
as endpoints appear (``connect(endpoint) -> link index``).

A read's first attempt does not look at the table: :attr:`Router.routes` holds, for each
partition with one order of owners and no fresh replica, the link of its first owner and that
order. The routes are marked stale when the membership view or the owner table changes and every
``TABLE_TTL_S`` while reads come (a timer; an idle front end has none), and rebuilt
(:meth:`Router.refresh`) at the next read. Everything else (no route: several orders, fresh
replicas, no owner, an endpoint that cannot be connected to; a retry) asks :meth:`Router.candidates`.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

import zmq

from common.membership import View
from common.murmur2 import partition_of

TABLE_TTL_S = 0.1  # the owner table is recomputed at most this often (liveness is time-based)

log = logging.getLogger("frontend.cluster")


class Router:
    """Candidates per partition, from the membership view."""

    def __init__(self, view: View, partitions: int, connect: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic, read_replica: str | None = None,
                 spread: str = "partition") -> None:
        self.view = view
        self.read_replica = read_replica  # FS_CLUSTER_READ_REPLICA: the set read first, or None
        self.spread = spread  # FS_CLUSTER_READ_SPREAD: "partition" or "request"
        self.partitions = partitions
        self.connect = connect
        self.clock = clock
        self.links: dict[str, int] = {}  # endpoint -> link index
        self.unreachable: dict[str, str] = {}  # endpoint -> why ZeroMQ cannot connect to it (never retried)
        self.fresh: dict[int, set[str]] = {}  # partition -> endpoints that applied our last write
        self._written: dict[int, int] = {}  # partition -> the offset of our last write (for fresh)
        self._table: list[list[str]] = [[] for _ in range(partitions)]
        self._rotations: list[list[list[str]]] = [[] for _ in range(partitions)]  # p -> its orders to use in turn
        self._replica_of: dict[str, str] = {}  # endpoint -> its replica set, as the table was made
        self._table_at = -1.0
        self._table_version = -1
        self._turn = itertools.count()
        self.routes: list[tuple[int, list[str]] | None] = [None] * partitions  # p -> (link, order) or None
        self.stale = True  # the routes must be refreshed before they are used
        self._loop = None  # once started: the timer that marks the routes stale runs on it
        self._timer = None

    def start(self, loop) -> None:
        """Refresh the routes on ``loop``'s timer (without a loop they are refreshed every read)."""
        self._loop = loop

    def refresh(self) -> None:
        """Recompute :attr:`routes` from the table (recomputed itself when the view changed or
        ``TABLE_TTL_S`` passed); with a loop, they stay valid until :meth:`expire` or the timer."""
        self.table()
        fresh = self.fresh
        routes = []
        for p, rotations in enumerate(self._rotations):
            link = self.link(rotations[0][0]) if len(rotations) == 1 and p not in fresh else None
            routes.append(None if link is None else (link, rotations[0]))  # (None: the per-read path)
        self.routes = routes
        if self._loop is not None:
            self.stale = False
            if self._timer is None:
                self._timer = self._loop.call_later(TABLE_TTL_S, self._expired)

    def expire(self) -> None:
        """The routes are to be refreshed before the next read (the view changed)."""
        self.stale = True

    def close(self) -> None:
        """Stop the timer (the loop is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _expired(self) -> None:
        self._timer = None
        self._table_at = -1.0  # (the table is recomputed too: liveness is time-based)
        self.stale = True

    def partition(self, eid: str) -> int:
        return partition_of(eid, self.partitions)

    def table(self) -> list[list[str]]:
        """For each partition, the endpoints of its caught-up live owners."""
        now = self.clock()
        if now - self._table_at > TABLE_TTL_S or self.view.version != self._table_version:
            table = self.view.table(self.partitions)
            replica_of = {m.endpoint: m.replica for m in self.view.live()}
            if table != self._table or replica_of != self._replica_of:
                self._rotations = self._plan(table, replica_of)
                self.stale = True  # (the routes follow; refresh() made this call or comes next)
            self._table, self._replica_of = table, replica_of
            self._table_at, self._table_version = now, self.view.version
            if self._written:
                self._forget_applied()
        return self._table

    def _plan(self, table: list[list[str]], replica_of: dict[str, str]) -> list[list[list[str]]]:
        """For each partition, the orders in which to try its owners, used in turn. The owners in
        the read replica set (if any) come first, the others after. Spread by request: one order
        per owner of the first tier, each first in turn. By partition: one order, its preferred
        owner first (:func:`preferred_owners`)."""
        home = self.read_replica
        tiers = []  # per partition: (first tier, the others)
        for owners in table:
            first = owners if home is None else [e for e in owners if replica_of.get(e) == home]
            first = first or owners  # (no owner in the read replica set: all of them alike)
            tiers.append((first, [e for e in owners if e not in first]))
        if self.spread == "request":
            return [[first[k:] + first[:k] + rest for k in range(len(first))] for first, rest in tiers]
        best = preferred_owners([first for first, _ in tiers])
        return [[[b, *(e for e in first if e != b), *rest]] if first else []
                for b, (first, rest) in zip(best, tiers)]

    def link(self, endpoint: str) -> int | None:
        """The link index of ``endpoint``, connected on first use; None for an endpoint ZeroMQ
        refuses (a member advertising ``tcp://host`` without a port): logged once, its reads go
        to the partition's other owners."""
        index = self.links.get(endpoint)
        if index is None:
            if endpoint in self.unreachable:
                return None
            try:
                index = self.links[endpoint] = self.connect(endpoint)
            except zmq.ZMQError as exc:
                self.unreachable[endpoint] = str(exc)
                log.warning("cannot connect to the shard endpoint %r that the membership topic advertises: %s",
                            endpoint, exc)
                return None
        return index

    def endpoint_of(self, link: int) -> str | None:
        """The endpoint of a link index (None: not one of the router's)."""
        for endpoint, index in self.links.items():
            if index == link:
                return endpoint
        return None

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

    def wrote(self, p: int, applied_by: str, offset: int | None = None) -> None:
        """This process's newest write to ``p`` (at ``offset``) has been applied by ``applied_by`` (only)."""
        self.fresh[p] = {applied_by}
        self.routes[p] = None  # (reads of p ask candidates(), fresh ones first, until it is forgotten)
        if offset is not None:
            self._written[p] = max(offset, self._written.get(p, -1))

    def confirmed(self, p: int, endpoint: str) -> None:
        """Another replica applied this process's newest write to ``p`` too."""
        self.fresh.setdefault(p, set()).add(endpoint)
        self.routes[p] = None

    def _forget_applied(self) -> None:
        """Drop the fresh replicas of a partition once the membership view shows every caught-up
        owner past our last write there: its reads go back to their usual order (the preferred
        owner, the read replica set), not to whichever replica happened to confirm first."""
        nexts = {m.endpoint: m.partitions for m in self.view.live()}
        for p, offset in list(self._written.items()):
            owners = self._table[p] if 0 <= p < len(self._table) else []
            if all(nexts.get(e, {}).get(p, (0, False))[0] > offset for e in owners):
                self.fresh.pop(p, None)
                del self._written[p]
                self.stale = True  # (its route comes back)

    def uncovered(self) -> list[int]:
        return [p for p, eps in enumerate(self.table()) if not eps]


def preferred_owners(owners: list[list[str]]) -> list[str | None]:
    """One owner of each partition (None for none), the partitions shared out as evenly as the
    ownership allows: greedily, the least loaded owner so far (ties: a different one per
    partition), then partitions moved, in order, from an owner to a co-owner with at least two
    fewer, until none moves (each move lowers the sum of squared loads, so this ends). A pure
    function of ``owners``: every front end with the same view makes the same choice."""
    load: dict[str, int] = {}
    best: list[str | None] = []
    for p, mine in enumerate(owners):
        if not mine:
            best.append(None)
            continue
        turned = mine[p % len(mine):] + mine[:p % len(mine)]
        b = min(turned, key=lambda e: load.get(e, 0))  # (min keeps the first of equals)
        load[b] = load.get(b, 0) + 1
        best.append(b)
    moved = True
    while moved:
        moved = False
        for p, mine in enumerate(owners):
            b = best[p]
            for e in mine:
                if load[b] > load.get(e, 0) + 1:
                    load[b] -= 1
                    load[e] = load.get(e, 0) + 1
                    best[p] = b = e
                    moved = True
    return best
