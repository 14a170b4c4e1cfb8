"""The three sources of events: a file (or stdin) of JSON lines, a ZeroMQ socket, a Kafka topic.

A source is read only while the writer has room (``writer.can_accept()``), and learns through
:meth:`complete` that a batch was acknowledged by every shard, in order: that is where it
commits its Kafka offsets, answers its producers or counts. Each source has the same small
surface:

- ``item``: a socket or file descriptor the main loop polls for readability, or None;
- ``idle``: True when the last :meth:`pull` found nothing more to read right away;
- ``pull(writer)``: read what is there without blocking long, add units to the writer;
- ``complete(batch)``: the shards acknowledged every write of ``batch``;
- ``finished``: True when the source has ended (end of file);
- ``lag()``: events known to wait in the source (Kafka consumer lag), or None.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import zmq

from common import curve
from common import protocol as P
from common.config import Config
from ingest.decode import Decoder, Unit
from ingest.writer import Batch, ShardWriter

log = logging.getLogger("ingest")

READ_BYTES = 1 << 20  # one read of the file source
RCVHWM = 16  # producer requests queued in the ZeroMQ source before producers must wait


class StartError(Exception):
    """A source that cannot start with the settings given."""


class FileSource:
    """JSON lines from a file, or standard input for ``-``; ends at end of file."""

    name = "file"

    def __init__(self, path: str, decoder: Decoder, batch_events: int) -> None:
        self.label = "stdin" if path == "-" else path
        self.fd = sys.stdin.buffer.fileno() if path == "-" else os.open(path, os.O_RDONLY)
        # line numbers are positions in the file: a file read again is not counted twice
        self.origin = None if path == "-" else f"file:{os.path.abspath(path)}"
        self.decoder = decoder
        self.batch_events = batch_events
        self.limit = decoder.max_event_bytes
        self.rest = b""  # an incomplete last line
        self.line_no = 1  # number of the first line not yet read
        self.skipping = False  # inside a line already rejected as over-size
        self.eof = False
        self.idle = False

    @property
    def item(self):
        return None if self.eof else self.fd

    @property
    def finished(self) -> bool:
        return self.eof

    def lag(self) -> None:
        return None

    def pull(self, writer: ShardWriter) -> None:
        data = os.read(self.fd, READ_BYTES)
        self.idle = len(data) < READ_BYTES
        if not data:
            self.eof = True
            lines = [self.rest] if self.rest and not self.skipping else []
            self.rest = b""
        else:
            lines = (self.rest + data if self.rest else data).split(b"\n")
            self.rest = lines.pop()
            if self.skipping and lines:  # the end of an over-size line already dead-lettered
                lines.pop(0)
                self.line_no += 1
                self.skipping = False
        if len(self.rest) > self.limit and not self.skipping:
            unit = Unit()
            self.decoder.reject(unit, f"{self.label}:{self.line_no + len(lines)}",
                                f"event is larger than {self.limit} bytes", self.rest[:1024])
            writer.add(unit)
            self.rest, self.skipping = b"", True
        elif self.skipping:
            self.rest = b""
        step = self.batch_events
        for start in range(0, len(lines), step):
            unit = Unit(origin=self.origin)
            first, label = self.line_no + start, self.label
            chunk = lines[start:start + step]
            self.decoder.add_lines(unit, chunk, lambda i: f"{label}:{first + i}", range(first, first + len(chunk)))
            writer.add(unit)
        self.line_no += len(lines)

    def complete(self, batch: Batch) -> None:
        pass

    def close(self) -> None:
        if self.fd != sys.stdin.buffer.fileno():
            os.close(self.fd)


class ZmqSource:
    """A ROUTER socket that producers send ``events`` requests to; each is answered once the
    shards acknowledged all of its writes (see :mod:`ingest.producer`)."""

    name = "zmq"

    def __init__(self, ctx: zmq.Context, endpoint: str, decoder: Decoder, stats,
                 max_request_bytes: int, curve_dir: str | None = None) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        if curve_dir:
            curve.serve(self.sock, curve_dir)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # an ack to a vanished producer is dropped
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)  # unread requests wait in the producers' queues
        # past the limit a request is refused and dead-lettered; far past it (a runaway or hostile
        # peer), ZeroMQ drops the connection before the message is buffered whole
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * max_request_bytes)
        self.sock.bind(endpoint)
        self.max_request_bytes = max_request_bytes
        self.decoder = decoder
        self.stats = stats  # callable returning the counters for a ``stats`` request
        self.item = self.sock
        self.idle = True
        self.finished = False

    def lag(self) -> None:
        return None

    def pull(self, writer: ShardWriter) -> None:
        sock = self.sock
        self.idle = False
        while writer.can_accept():
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self.idle = True
                return
            if len(frames) != 2:
                log.warning("zmq source: dropped a message of %d frames", len(frames))
                continue
            ident, frame = frames
            try:
                requests = P.decode(frame)
            except P.ProtocolError as exc:
                self._reply(ident, P.error(None, P.MALFORMED, str(exc)))
                continue
            if len(frame) > self.max_request_bytes:
                self._refuse(ident, requests, frame, writer)
                continue
            for req in requests:
                try:
                    self._handle(ident, req, writer)
                except Exception:  # no request a producer sends may stop the source
                    log.exception("zmq source: request %s failed", P.shown(P.id_of(req)))
                    self._reply(ident, P.error(None, P.INTERNAL, "internal error in ingest"))

    def _refuse(self, ident: bytes, requests: list, frame: bytes, writer: ShardWriter) -> None:
        """An over-size message: each request in it is rejected, dead-lettered and answered."""
        reason = f"request is larger than {self.max_request_bytes} bytes (FS_MAX_BODY_BYTES)"
        for req in requests:
            req_id = P.id_of(req) if type(req) is dict else None
            unit = Unit((ident, req_id))
            self.decoder.reject(unit, f"zmq:{P.shown(req_id)}", reason, frame[:1024])
            writer.add(unit)  # answered in order with the others, once released

    def _handle(self, ident: bytes, req, writer: ShardWriter) -> None:
        if type(req) is not dict:
            self._reply(ident, P.error(None, P.MALFORMED, "a request must be a map"))
            return
        kind, req_id = P.kind_of(req), P.id_of(req)
        label = P.shown(req_id)  # names its events in dead letters
        if kind == P.STATS:
            self._reply(ident, P.stats_reply(req_id, self.stats()))
        elif kind == P.PING:
            self._reply(ident, P.ping_reply(req_id, source=self.name))
        elif kind != P.EVENTS:
            self._reply(ident, P.error(req_id, P.UNKNOWN_TYPE, f"unknown message type {P.shown(kind)}"))
        elif isinstance(req.get(P.JSON_LINES), (bytes, str)):
            unit = Unit((ident, req_id))
            payload = req[P.JSON_LINES]
            lines = (payload.encode("utf-8", "surrogatepass") if type(payload) is str else payload).split(b"\n")
            self.decoder.add_lines(unit, lines, lambda i: f"zmq:{label}:{i + 1}")
            writer.add(unit)
        elif type(req.get(P.EVENT_MAPS)) is list:
            unit = Unit((ident, req_id))
            for i, obj in enumerate(req[P.EVENT_MAPS]):
                self.decoder.add_object(unit, obj, lambda i: f"zmq:{label}:[{i}]", i)
            writer.add(unit)
        else:
            self._reply(ident, P.error(req_id, P.BAD_REQUEST,
                                       f"an events request needs {P.JSON_LINES!r} (bytes) or "
                                       f"{P.EVENT_MAPS!r} (an array)"))

    def _reply(self, ident: bytes, reply: dict) -> None:
        self.sock.send_multipart([ident, P.encode([reply])])

    def complete(self, batch: Batch) -> None:
        for unit in batch.units:
            ident, req_id = unit.tag
            self._reply(ident, P.events_reply(req_id, unit.written, unit.stale, unit.rejected, unit.errors))

    def close(self) -> None:
        self.sock.close()


class KafkaSource:
    """A consumer in a group; offsets are committed only for batches every shard acknowledged."""

    name = "kafka"

    def __init__(self, cfg: Config, decoder: Decoder, drain) -> None:
        from confluent_kafka import Consumer  # only the Kafka source needs librdkafka loaded

        if not (cfg.kafka_bootstrap and cfg.kafka_topic and cfg.kafka_group):
            raise StartError("the Kafka source needs FS_KAFKA_BOOTSTRAP, FS_KAFKA_TOPIC and FS_KAFKA_GROUP")
        self.topic = cfg.kafka_topic
        self.decoder = decoder
        self.drain = drain  # callable: flush, wait for acks and complete batches (on revoke)
        self.batch_events = cfg.ingest_batch_events
        self.consumer = Consumer({
            "bootstrap.servers": cfg.kafka_bootstrap,
            "group.id": cfg.kafka_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": cfg.kafka_session_timeout_ms,
            "heartbeat.interval.ms": max(100, cfg.kafka_session_timeout_ms // 4),
            "fetch.wait.max.ms": cfg.kafka_fetch_wait_ms,
            "logger": logging.getLogger("ingest.kafka"),
        })
        self.consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
        self.item = None
        self.idle = True
        self.finished = False
        self._lag: int | None = None
        self._lag_at = 0.0
        self._last_error = ""

    def _assigned(self, consumer, partitions) -> None:
        log.info("kafka: assigned partitions %s", sorted(p.partition for p in partitions))

    def _revoked(self, consumer, partitions) -> None:
        log.info("kafka: partitions %s revoked; finishing their batches",
                 sorted(p.partition for p in partitions))
        self.drain()

    def pull(self, writer: ShardWriter) -> None:
        msgs = self.consumer.consume(self.batch_events, 0.005 if writer.busy() else 0.05)
        self.idle = len(msgs) < self.batch_events
        if not msgs:
            return
        if not self.decoder.track:
            self._add(writer, msgs, None)
            return
        by_part: dict[int, list] = {}  # offsets are positions in one partition: a unit each
        for msg in msgs:
            by_part.setdefault(msg.partition(), []).append(msg)
        for part, some in by_part.items():
            self._add(writer, some, f"kafka:{self.topic}/{part}")

    def _add(self, writer: ShardWriter, msgs: list, origin: str | None) -> None:
        from confluent_kafka import KafkaError

        unit = Unit({}, origin)
        offsets, values, where = unit.tag, [], []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF and str(err) != self._last_error:
                    self._last_error = str(err)  # logged once, not at every poll
                    log.warning("kafka: %s", err)
                continue
            part, off = msg.partition(), msg.offset()
            offsets[part] = off
            value = msg.value()
            if not value:
                self.decoder.reject(unit, f"kafka:{self.topic}[{part}]@{off}", "empty message", b"")
                continue
            values.append(value)
            where.append((part, off))
        topic = self.topic
        self.decoder.add_lines(unit, values, lambda i: f"kafka:{topic}[{where[i][0]}]@{where[i][1]}",
                               [off for _, off in where])
        writer.add(unit)

    def complete(self, batch: Batch) -> None:
        """Commit the Kafka offsets past the batch's messages: a restart resumes after them."""
        from confluent_kafka import KafkaException, TopicPartition

        offsets: dict[int, int] = {}
        for unit in batch.units:
            offsets.update(unit.tag)  # units are in stream order: the last offset wins
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, o + 1) for p, o in offsets.items()],
                                 asynchronous=False)
        except KafkaException as exc:  # e.g. the partition moved to another member meanwhile
            log.warning("kafka: offset commit of %s failed: %s", offsets, exc)

    def lag(self) -> int | None:
        """Messages between this member's position and the end of its partitions (cached 1 s)."""
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return self._lag
        self._lag_at = now
        try:
            parts = self.consumer.assignment()
            total = 0
            for tp in self.consumer.position(parts) if parts else ():
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue
                total += high - (tp.offset if tp.offset >= 0 else low)
            self._lag = total
        except Exception as exc:  # lag is informative only: never let it stop ingest
            log.debug("kafka: lag unavailable: %s", exc)
        return self._lag

    def close(self) -> None:
        self.consumer.close()
