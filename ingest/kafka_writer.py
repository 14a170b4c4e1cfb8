"""Ingest in cluster mode: batches of units become records of the cluster topic, not shard writes.

:class:`KafkaWriter` keeps :class:`~ingest.writer.ShardWriter`'s batching and flow control (at most
``ingest_max_in_flight`` batches out, released to the source in order) but a batch is done when
Kafka has acknowledged every record of it (idempotent producer, ``acks=all``). The shards then
apply the records themselves; ``written``/``stale`` are counted by them, not here.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import deque

import zmq

from common.config import Config
from common.records import records
from ingest.decode import DeadLetters
from ingest.writer import Batch, ShardWriter

log = logging.getLogger("ingest")


class KafkaWriter(ShardWriter):
    """Batches units and produces them to the cluster topic, keyed by entity id."""

    def __init__(self, cfg: Config, dead: DeadLetters, producer=None) -> None:  # no shard sockets
        if producer is None:
            from confluent_kafka import Producer

            from common.membership import ensure_topic

            ensure_topic(cfg.cluster_kafka, cfg.cluster_topic, cfg.cluster_partitions)

            producer = Producer({"bootstrap.servers": cfg.cluster_kafka, "enable.idempotence": True,
                                 "acks": "all", "partitioner": "murmur2_random", "linger.ms": 5,
                                 "queue.buffering.max.messages": 1_000_000,
                                 "logger": logging.getLogger("ingest.kafka")})
        self.producer = producer
        self.topic = cfg.cluster_topic
        self.batch_events = cfg.ingest_batch_events
        self.window_s = cfg.ingest_batch_window_s
        self.max_in_flight = cfg.ingest_max_in_flight
        self.dead = dead
        self.links = []
        self.poller = zmq.Poller()
        self._seq = itertools.count(1)
        self._tags = itertools.count(1)  # one per record in flight, in its batch's waiting set
        self.current: Batch | None = None
        self.in_flight: deque[Batch] = deque()
        self.events = self.rejected = self.written = self.stale = self.refused = 0
        self.resends = self.retries = 0
        self._errors = 0.0

    def wait_connected(self, timeout_s: float) -> list[int]:
        return []

    def connected(self) -> list[int]:
        return []

    def flush(self) -> None:
        """Close the open batch: produce one record per entity of each unit."""
        batch, self.current = self.current, None
        if batch is None or not batch.units:
            return
        self.in_flight.append(batch)
        for unit in batch.units:
            for shard, writes in unit.by_shard.items():
                meta = unit.meta.get(shard)  # (event ids, positions) when aggregations are on
                for key, value in records(writes, None if meta is None else meta[0]):
                    self._produce(batch, key, value)
                    unit.written += 1  # records, as produced

    def _produce(self, batch: Batch, key: bytes, value: bytes) -> None:
        tag = next(self._tags)
        batch.waiting.add(tag)

        def delivered(err, _msg) -> None:
            if err is None:
                batch.waiting.discard(tag)
                return
            self.retries += 1
            now = time.monotonic()
            if now - self._errors > 1.0:
                self._errors = now
                log.warning("kafka did not take a record (%s): sending it again", err)
            self.resends += 1
            self._send_now(key, value, delivered)

        self._send_now(key, value, delivered)

    def _send_now(self, key: bytes, value: bytes, delivered) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key=key, on_delivery=delivered)
                return
            except BufferError:  # the producer's queue is full: let it deliver some
                self.producer.poll(0.05)

    def poll(self, timeout_ms: int, extra: list | None = None) -> set:
        """Wait for ``extra`` items (at most ``timeout_ms``, less while records are out) and
        collect delivery reports; return the ``extra`` items that are readable."""
        poller = zmq.Poller()
        for item in extra or ():
            poller.register(item, zmq.POLLIN)
        wait = min(timeout_ms, 5) if self.in_flight else timeout_ms
        ready = {item for item, _ in poller.poll(wait)} if extra else set()
        if not extra and wait:
            self.producer.poll(wait / 1000)
        self.producer.poll(0)
        return ready

    def close(self) -> None:
        left = self.producer.flush(10)
        if left:
            log.error("%d records were not acknowledged by Kafka at exit: they will be read again", left)
