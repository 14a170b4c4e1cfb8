"""Cluster mode, front-end side: writes go to Kafka, then wait for an owner to apply them.

:class:`Writer` produces the records of a write (``common.records.records``: one per entity)
with an idempotent producer (``acks=all``), whose delivery reports a thread of its own collects
and hands to the asyncio loop (confluent-kafka's asyncio pattern: the loop never waits in
Kafka), and :class:`AppliedWatch` asks the partitions' caught-up owners for their applied
offsets (``offsets``) until one has passed each record's offset. See docs/CLUSTER.md, "Writes".
"""
from __future__ import annotations

import asyncio
import logging
import threading

from common import protocol as P
from frontend.cluster_router import Router
from frontend.errors import APIError
from frontend.shard_client import _settle

log = logging.getLogger("frontend.cluster")

READ_AFTER = "X-Read-After"  # a write's reply: where its records are; sent back on a read, that read
# is served only by a replica that has applied them (read-your-writes through any front end)

REPORTS_WAIT_S = 0.1  # the delivery-report thread's longest wait in Kafka (and for close)
WATCH_S = 0.002  # how often owners are asked for their offsets while a write waits


class Writer:
    """An idempotent Kafka producer: records produced from the asyncio loop, delivery reports
    collected by a thread (``producer.poll`` runs their callbacks there)."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float, producer=None) -> None:
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                 "partitioner": "murmur2_random", "linger.ms": 1,
                                 "message.timeout.ms": max(1000, int(timeout_s * 1000)),
                                 "logger": logging.getLogger("frontend.kafka")})
        self.producer = producer
        self.topic = topic
        self._closing = threading.Event()
        self._reports = threading.Thread(target=self._collect, name="kafka-reports", daemon=True)
        self._reports.start()

    def _collect(self) -> None:
        while not self._closing.is_set():
            try:
                self.producer.poll(REPORTS_WAIT_S)
            except Exception:  # a callback's failure is logged; the reports go on
                log.exception("collecting Kafka delivery reports failed")

    async def send(self, recs: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
        """Produce ``recs``; return each one's (partition, offset) once Kafka acked all of them.
        Raises :class:`KafkaRefused` when one is not acked."""
        loop = asyncio.get_running_loop()
        futs = []
        for key, value in recs:
            fut = loop.create_future()
            try:
                self.producer.produce(self.topic, value, key=key, on_delivery=_delivered(loop, fut))
            except BufferError:
                for sent in futs:  # their reports still come, and nobody waits for them
                    sent.add_done_callback(_retrieved)
                raise KafkaRefused("the Kafka producer's queue is full") from None
            futs.append(fut)
        return list(await asyncio.gather(*futs))

    def close(self) -> None:
        self._closing.set()
        self._reports.join(REPORTS_WAIT_S + 1.0)
        self.producer.flush(2)


def _retrieved(fut: asyncio.Future) -> None:
    """Take a future's outcome, so that a failure nobody awaits is not logged as unretrieved."""
    if not fut.cancelled():
        fut.exception()


class KafkaRefused(Exception):
    """Kafka did not acknowledge a record."""


def _delivered(loop: asyncio.AbstractEventLoop, fut: asyncio.Future):
    """The delivery callback of one record (run by the reports thread): settles ``fut`` on the
    loop with its (partition, offset), or :class:`KafkaRefused`."""
    def done(err, msg) -> None:
        outcome = KafkaRefused(str(err)) if err is not None else (msg.partition(), msg.offset())
        try:
            loop.call_soon_threadsafe(_settle, fut, outcome)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass
    return done


class AppliedWatch:
    """Waits until a caught-up owner of a partition has applied an offset.

    One ``offsets`` request per owner is in flight at a time, whatever the number of writes
    waiting; its reply settles every waiter it satisfies.
    """

    def __init__(self, router: Router, client) -> None:
        self.router = router
        self.client = client
        self.waiting: dict[int, list[tuple[int, asyncio.Future]]] = {}  # p -> [(offset, fut)]
        self.asking: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def applied(self, p: int, offset: int, timeout_s: float) -> bool:
        """Whether an owner of ``p`` applied ``offset`` within ``timeout_s``."""
        fut = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(p, []).append((offset, fut))
        self._ask()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError:
            return False
        finally:
            self._drop(p, fut)

    def _drop(self, p: int, fut: asyncio.Future) -> None:
        left = [w for w in self.waiting.get(p, ()) if w[1] is not fut]
        if left:
            self.waiting[p] = left
        else:
            self.waiting.pop(p, None)

    def _ask(self) -> None:
        wanted: set[str] = set()
        for p in self.waiting:
            wanted.update(self.router.table()[p])
        for endpoint in wanted - self.asking:
            link = self.router.link(endpoint)
            if link is None:  # (logged once by the router)
                continue
            self.asking.add(endpoint)
            fut = self.client.submit(link, P.offsets())
            fut.add_done_callback(lambda f, e=endpoint: self._answered(e, f))
        if self.waiting and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WATCH_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.waiting:
            self._ask()

    def _answered(self, endpoint: str, fut: asyncio.Future) -> None:
        self.asking.discard(endpoint)
        if fut.cancelled() or fut.exception() is not None or not P.is_ok(fut.result()):
            return
        for p, next_offset, serving in fut.result().get(P.PARTITIONS) or ():
            if not serving:
                continue
            for offset, waiter in self.waiting.get(p, ()):
                if next_offset > offset and not waiter.done():
                    waiter.set_result(True)
                    self.router.wrote(p, endpoint, offset)
                elif next_offset > offset:
                    self.router.confirmed(p, endpoint)


def render_positions(applied: list) -> str:
    """The ``X-Read-After`` value of a write's records: ``partition:offset`` pairs, the highest
    offset of each partition."""
    top: dict[int, int] = {}
    for p, offset in applied:
        top[p] = max(offset, top.get(p, -1))
    return ",".join(f"{p}:{o}" for p, o in sorted(top.items()))


def positions(value: str) -> dict[int, int]:
    """``{partition: offset}`` of an ``X-Read-After`` value (the highest offset of each); 400
    when it is not ``partition:offset`` pairs."""
    found: dict[int, int] = {}
    for pair in value.split(","):
        part, _, offset = pair.strip().partition(":")
        if not (part.isdigit() and offset.isdigit()):
            raise APIError(400, f"{READ_AFTER} must be partition:offset pairs, as a write's reply gives them")
        found[int(part)] = max(int(offset), found.get(int(part), -1))
    return found


def position_in(value: str, p: int) -> int | None:
    """The offset an ``X-Read-After`` value names for partition ``p`` (None: none); 400 when
    it is not ``partition:offset`` pairs."""
    return positions(value).get(p)


def read_positions(cfg, headers) -> dict[int, int] | None:
    """The positions a batch read must wait for: cluster mode and an ``X-Read-After`` header."""
    if headers is None or not cfg.cluster_kafka or READ_AFTER not in headers:
        return None
    return positions(headers[READ_AFTER])
