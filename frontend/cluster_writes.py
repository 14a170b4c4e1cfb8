"""Cluster mode, front-end side: writes go to Kafka, then wait for an owner to apply them.

:class:`Writer` produces the records of a write (``common.records.records``: one per entity)
with an idempotent producer (``acks=all``) from the asyncio loop, and :class:`AppliedWatch` asks the partitions' caught-up owners for their applied offsets
(``offsets``) until one has passed each record's offset. See docs/CLUSTER.md, "Writes".
"""
from __future__ import annotations

import asyncio
import logging

from common import protocol as P
from frontend.cluster_router import Router
from frontend.errors import APIError

log = logging.getLogger("frontend.cluster")

READ_AFTER = "X-Read-After"  # a write's reply: where its records are; sent back on a read, that read
# is served only by a replica that has applied them (read-your-writes through any front end)

PUMP_S = 0.001  # how often delivery reports are collected while records are in flight
WATCH_S = 0.002  # how often owners are asked for their offsets while a write waits


class Writer:
    """An idempotent Kafka producer driven from the asyncio loop."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float, producer=None) -> None:
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                 "partitioner": "murmur2_random", "linger.ms": 1,
                                 "message.timeout.ms": max(1000, int(timeout_s * 1000)),
                                 "logger": logging.getLogger("frontend.kafka")})
        self.producer = producer
        self.topic = topic
        self.in_flight = 0
        self._pump: asyncio.TimerHandle | None = None

    async def send(self, recs: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
        """Produce ``recs``; return each one's (partition, offset) once Kafka acked all of them.
        Raises :class:`KafkaRefused` when one is not acked."""
        loop = asyncio.get_running_loop()
        futs = []
        for key, value in recs:
            fut = loop.create_future()
            try:
                self.producer.produce(self.topic, value, key=key, on_delivery=_delivered(fut))
            except BufferError:
                raise KafkaRefused("the Kafka producer's queue is full") from None
            self.in_flight += 1
            futs.append(fut)
        self._schedule(loop)
        try:
            return list(await asyncio.gather(*futs))
        finally:
            self.in_flight -= len(futs)

    def _schedule(self, loop) -> None:
        if self._pump is None:
            self._pump = loop.call_later(PUMP_S, self._poll, loop)

    def _poll(self, loop) -> None:
        self._pump = None
        self.producer.poll(0)
        if self.in_flight:
            self._schedule(loop)

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self.producer.flush(2)


class KafkaRefused(Exception):
    """Kafka did not acknowledge a record."""


def _delivered(fut: asyncio.Future):
    def done(err, msg) -> None:
        if fut.done():
            return
        if err is not None:
            fut.set_exception(KafkaRefused(str(err)))
        else:
            fut.set_result((msg.partition(), msg.offset()))
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
            self.asking.add(endpoint)
            fut = self.client.submit(self.router.link(endpoint), P.offsets())
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
                    self.router.wrote(p, endpoint)
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
