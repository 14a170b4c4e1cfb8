"""Cluster mode in the front end: a shard client whose "shards" are the topic's partitions.

:class:`ClusterClient` has the interface the handlers already use (``send``, ``submit``,
``call_all``, with the partition as the shard index, ``common.murmur2.KafkaPartitioner`` as the
partitioner), so every read path works unchanged: a request for partition ``p`` goes to a
caught-up replica (:class:`~frontend.cluster_router.Router`) and, when that one does not answer
or answers ``not_owner``, to the next, within ``FS_SHARD_TIMEOUT_S``. A ``write`` request is not
sent to a shard: its records go to Kafka (:class:`~frontend.cluster_writes.Writer`), and the
reply comes once an owner applied them (``not_applied`` when none did in time, which the front
end answers with 202; ``unavailable`` when Kafka did not ack: 503). See docs/CLUSTER.md.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from functools import partial
from typing import Callable

import orjson

from common import membership
from common import protocol as P
from common.records import delete_record, records
from frontend.cluster_router import Router
from frontend.cluster_writes import AppliedWatch, KafkaRefused, Writer
from frontend.shard_client import ShardUnavailable, _run, _settle

log = logging.getLogger("frontend.cluster")

MEMBERSHIP_WAIT_S = 0.5  # the membership thread's longest wait in Kafka (and for close)
ROUND_PAUSE_S = 0.02  # between two rounds over the replicas of a partition, within the deadline
ATTEMPT_SHARE = 0.5  # one replica gets at most this share of the deadline, so another can answer


class PartitionUnavailable(ShardUnavailable):
    """No caught-up replica of a partition answered in time."""

    def __init__(self, partition: int, why: str) -> None:
        Exception.__init__(self, f"no replica of partition {partition} answered: {why}")
        self.shard = partition


def _outcome(p: int, done: Callable, fut: asyncio.Future) -> None:
    """``done`` with a submitted call's reply or exception; a cancelled call (the loop is
    closing) is answered as an unavailable partition, never left hanging."""
    try:
        outcome = fut.result()
    except asyncio.CancelledError:
        outcome = ShardUnavailable(p, "call cancelled")
    except Exception as exc:  # a 500 (``fanout.ok`` raises it)
        outcome = exc
    done(outcome)


def _share(left: float) -> float:
    """The share of ``left`` seconds that one replica gets when another could answer."""
    return max(left * ATTEMPT_SHARE, min(left, 0.05))


def _why(endpoint: str, outcome) -> str:
    """What a replica's failure says, for the 503 if no other replica answers."""
    return f"{endpoint}: {outcome if isinstance(outcome, Exception) else P.reason_of(outcome)}"


def _retryable(outcome) -> bool:
    """Whether a call's outcome means another replica must be asked: none answered, or the
    shard does not own the partition (any more)."""
    return isinstance(outcome, ShardUnavailable) or (type(outcome) is dict and P.code_of(outcome) == P.NOT_OWNER)


class _Attempt:
    """The reply callback of a read sent to ``candidates[i]``: done, unless the reply means
    another replica must be asked (:meth:`ClusterClient.retry`)."""

    __slots__ = ("client", "p", "request", "done", "candidates", "i", "deadline")

    def __init__(self, client, p: int, request: dict, done: Callable, candidates: list, i: int,
                 deadline: float) -> None:
        self.client, self.p, self.request, self.done = client, p, request, done
        self.candidates, self.i, self.deadline = candidates, i, deadline

    def __call__(self, reply) -> None:
        if type(reply) is dict and P.CODE not in reply:
            self.done(reply)
        elif not self.client.retry(self.p, self.request, self.done, self.candidates, self.i, self.deadline,
                                   self.candidates[self.i], reply):
            self.done(reply)


class ClusterClient:
    """Partitions as shards, over a ``ShardClient`` whose links are added as shards appear."""

    def __init__(self, cfg, shards, reader: membership.Reader, writer: Writer, partitions: int) -> None:
        self.cfg = cfg
        self.shards = shards
        self.reader = reader
        self.writer = writer
        self.partitions = partitions
        self.timeout_s = cfg.shard_timeout_s
        self._first_share = _share(self.timeout_s)  # a first attempt's, when another replica could answer
        self.router = Router(reader.view, partitions, shards.add_link, read_replica=cfg.cluster_read_replica,
                             spread=cfg.cluster_read_spread)
        self.watch = AppliedWatch(self.router, shards)
        shards.on_failed = self._first_failed
        self._members: threading.Thread | None = None
        self._closing = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def n_shards(self) -> int:
        return self.partitions

    @property
    def on_roundtrip(self):
        return self.shards.on_roundtrip

    @on_roundtrip.setter
    def on_roundtrip(self, hook) -> None:
        """``featurestore_shard_roundtrip_seconds``: by link, as the shards of ``/metrics`` are."""
        self.shards.on_roundtrip = hook

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.shards.start(self._loop)
        self.reader.catch_up(5.0)
        self.router.start(self._loop)
        self._members = threading.Thread(target=self._read_members, name="membership", daemon=True)
        self._members.start()

    def _read_members(self) -> None:
        """The membership thread: wait in Kafka for records and hand them to the loop, which alone
        applies them to the view. The loop itself never calls into Kafka: on a busy machine a
        consumer call with no wait at all stalled it by up to about a millisecond, 50 times a second."""
        while not self._closing.is_set():
            try:
                msgs = self.reader.fetch(MEMBERSHIP_WAIT_S)
            except Exception:  # a broker hiccup: the view just ages; never stop reading
                log.exception("membership read failed")
                self._closing.wait(MEMBERSHIP_WAIT_S)
                continue
            if msgs and not self._closing.is_set():
                try:
                    self._loop.call_soon_threadsafe(self._apply_members, msgs)
                except RuntimeError:  # the loop has closed
                    return

    def _apply_members(self, msgs: list) -> None:
        try:
            self.reader.apply(msgs)
        finally:  # (whatever was applied before a failure is in the view: the routes follow it)
            self.router.expire()

    def close(self) -> None:
        self._closing.set()
        if self._members is not None:
            self._members.join(MEMBERSHIP_WAIT_S + 1.0)
        self.router.close()
        self.shards.close()
        self.writer.close()
        if self._members is None or not self._members.is_alive():  # (never under a thread still in it)
            self.reader.close()

    # ---- the ShardClient interface, by partition
    def send(self, p: int, request: dict, done: Callable) -> None:
        """Send ``request`` to a caught-up replica of partition ``p``, retrying on the others. A
        write or a delete becomes Kafka records (:meth:`submit`); ``done`` gets its outcome."""
        kind = request.get(P.TYPE)  # (P.kind_of)
        if kind == P.WRITE or kind == P.DELETE:
            self.submit(p, request).add_done_callback(partial(_outcome, p, done))
            return
        router = self.router
        if router.stale:
            router.refresh()
        route = router.routes[p]
        if route is not None:  # the common case: the route's first owner; a failure comes back
            link, candidates = route  # to _first_failed with the call's deadline
            self.shards.send(link, request, done, None if len(candidates) == 1 else self._first_share, p)
            return
        self._attempt(p, request, done, router.candidates(p), 0, time.monotonic() + self.timeout_s,
                      "no live replica has caught up")

    def _first_failed(self, entry: tuple, outcome) -> bool:
        """The shard client's ``on_failed``: a read sent by its route failed. Whether another
        replica is asked (the others of the partition's candidates now, within the read's deadline)."""
        done, deadline, link, request, p = entry
        if not _retryable(outcome):
            return False
        endpoint = self.router.endpoint_of(link)
        others = [e for e in self.router.candidates(p) if e != endpoint]
        try:  # taken over from here: whatever happens, the call is never answered twice
            self._attempt(p, request, done, others, 0, deadline, _why(endpoint, outcome))
        except Exception:  # (a send that raised left its call pending: the sweep answers it)
            log.exception("retrying a read of partition %d failed", p)
        return True

    def _attempt(self, p: int, request: dict, done: Callable, candidates: list, i: int,
                 deadline: float, why: str) -> None:
        left = deadline - time.monotonic()
        if i >= len(candidates) and left > ROUND_PAUSE_S and self._loop is not None:
            # every replica failed (a new shard not connected yet, one restarting, a partition
            # moving): go round again, with what the membership topic says by then
            self._loop.call_later(ROUND_PAUSE_S, lambda: self._attempt(
                p, request, done, self.router.candidates(p), 0, deadline, why))
            return
        if i >= len(candidates) or left <= 0:
            _run(done, PartitionUnavailable(p, why if left > 0 else f"{why}; the deadline passed"))
            return
        link = self.router.link(candidates[i])
        if link is None:
            why = f"{candidates[i]}: cannot connect: {self.router.unreachable.get(candidates[i])}"
            self._attempt(p, request, done, candidates, i + 1, deadline, why)
            return
        share = left if i == len(candidates) - 1 else _share(left)
        self.shards.send(link, request, _Attempt(self, p, request, done, candidates, i, deadline), timeout_s=share)

    def retry(self, p: int, request: dict, done: Callable, candidates: list, i: int, deadline: float,
              endpoint: str, reply) -> bool:
        """Whether ``reply`` (of ``candidates[i]``) means another replica must be asked; if so,
        ask it."""
        if not _retryable(reply):
            return False
        self._attempt(p, request, done, candidates, i + 1, deadline, _why(endpoint, reply))
        return True

    def submit(self, p: int, request: dict) -> asyncio.Future:
        kind = P.kind_of(request)
        if kind == P.WRITE:
            return asyncio.ensure_future(self._write(p, request[P.WRITES], P.write_origin(request)[0]))
        if kind == P.DELETE:
            return asyncio.ensure_future(self._delete(p, request[P.ENTITY], request[P.NAME]))
        fut = self._loop.create_future()
        self.send(p, request, partial(_settle, fut))
        return fut

    async def call_all(self, build: Callable[[], dict], shards=None) -> dict:
        """``build()`` to every live shard (``/stats``, ``/metrics``); keyed by link index."""
        links = {self.router.link(m.endpoint) for m in self.reader.view.live()} - {None}
        return await self.shards.call_all(build, sorted(links))

    async def _write(self, p: int, writes: list, event_ids: list | None) -> dict:
        """Produce the records of ``writes`` (all of partition ``p``; ``event_ids`` parallel to
        them, or None) and wait for an owner."""
        failed, acked = await self._produce(p, records(writes, event_ids))
        return failed or P.write_reply(None, len(writes), 0, acked)

    async def _delete(self, p: int, eid: str, name: str | None) -> dict:
        """A delete is a record: a tombstone for the entity, a delete record for one feature (its
        other features stay). Its reply counts the values read just before."""
        reply = await self.submit(p, P.get(eid) if name is None else P.get1(eid, name))
        if not P.is_ok(reply):
            return reply
        rec = (eid.encode(), None) if name is None else delete_record(eid, [name])
        failed, acked = await self._produce(p, [rec])
        deleted = len(orjson.loads(reply[P.BODY])["features"]) if name is None else 1
        return failed or P.delete_reply(None, deleted, acked)

    async def _produce(self, p: int, recs: list) -> tuple[dict | None, list]:
        """Produce ``recs`` and wait until an owner applied each: (an error reply or None, the
        ``[partition, offset]`` of each record)."""
        try:
            acked = await self.writer.send(recs)
        except KafkaRefused as exc:
            return P.error(None, P.UNAVAILABLE, f"Kafka did not acknowledge the write: {exc}"), []
        apply_s = self.cfg.cluster_apply_timeout_s
        results = await asyncio.gather(*(self.watch.applied(part, offset, apply_s) for part, offset in acked))
        if not all(results):
            return P.error(None, P.NOT_APPLIED, f"the write is durable in Kafka but no owner of partition "
                                                f"{p} applied it within {apply_s:g} s; it will be applied"), []
        return None, [list(a) for a in acked]

    # ---- readiness
    def readiness(self) -> tuple[bool, str, dict]:
        """Ready once every partition has a caught-up live owner: (ready, detail, body fields)."""
        uncovered = self.router.uncovered()
        shards = [{"replica": m.replica, "endpoint": m.endpoint, "serving": m.serving()}
                  for m in sorted(self.reader.view.live(), key=lambda m: m.key)]
        detail = (f"partitions without a caught-up replica: {', '.join(map(str, uncovered))}"
                  if uncovered else "")
        return not uncovered, detail, {"partitions": self.partitions, "shards": shards}
