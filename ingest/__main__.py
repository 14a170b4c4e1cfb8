"""``python -m ingest``: read events from the configured source and write them to the shards.

Sources: ``--ingest-source zmq`` (default, ``FS_INGEST_ENDPOINT``), ``kafka``
(``FS_KAFKA_BOOTSTRAP``/``TOPIC``/``GROUP``) or ``--file PATH`` (``-`` = stdin). See docs/INGEST.md.
"""
from __future__ import annotations

import logging
import signal
import sys
import time

import orjson
import zmq

from common import config, curve, logs
from common import protocol as P
from common.config import Config
from common.events import Limits
from common.partition import Partitioner
from ingest.decode import DeadLetters, Decoder
from ingest.kafka_writer import KafkaWriter
from ingest.sources import FileSource, KafkaSource, StartError, ZmqSource
from ingest.writer import ShardWriter

log = logging.getLogger("ingest")

IDLE_POLL_MS = 100  # the longest the loop sleeps when nothing happens
DRAIN_S = 30.0  # on shutdown, the longest spent waiting for the shards' last acks


class Ingest:
    """The main loop: pull from the source while there is room, send, release acked batches."""

    def __init__(self, cfg: Config, ctx: zmq.Context) -> None:
        self.cfg = cfg
        self.dead = DeadLetters(cfg.dead_letter_path)
        # cluster mode: one bucket per unit (records are keyed by entity), produced to Kafka
        self.decoder = Decoder(Limits.from_config(cfg), Partitioner(1 if cfg.cluster_kafka else cfg.shards),
                               self.dead, cfg.ingest_max_event_bytes)
        self.guard = curve.start_authenticator(ctx, cfg.curve_dir)  # before any socket binds
        self.writer = KafkaWriter(cfg, self.dead) if cfg.cluster_kafka else ShardWriter(cfg, ctx, self.dead)
        self.stats_sock = _bind_stats(ctx, cfg.ingest_stats_endpoint, cfg.curve_dir)
        self.running = True
        self.started = time.monotonic()
        self._rate, self._last = 0.0, (self.started, 0)
        self._logged: tuple = (0, 0, 0, None)  # what the last progress line showed
        if cfg.ingest_source == "file":
            self.source = FileSource(cfg.ingest_file or "-", self.decoder, cfg.ingest_batch_events)
        elif cfg.ingest_source == "kafka":
            self.source = KafkaSource(cfg, self.decoder, self.drain)
        else:
            self.source = ZmqSource(ctx, cfg.ingest_endpoint, self.decoder, self.stats, cfg.max_body_bytes,
                                    cfg.curve_dir)

    def run(self) -> None:
        """Loop until the source ends or a signal asks to stop, then finish what is in flight."""
        writer, source = self.writer, self.source
        next_log = time.monotonic() + self.cfg.ingest_progress_s
        while self.running and not (source.finished and not writer.busy()):
            room = writer.can_accept() and not source.finished
            ready = writer.poll(self._timeout_ms(room), self._watched(room))
            if self.stats_sock in ready:
                self._answer_stats()
            if room and (source.item is None or source.item in ready):  # never block in a read
                source.pull(writer)
            writer.flush_due(source.idle)
            self._release()
            if time.monotonic() >= next_log:
                next_log += self.cfg.ingest_progress_s
                self.log_progress()
        self.drain(DRAIN_S)

    def _timeout_ms(self, room: bool) -> int:
        source, writer = self.source, self.writer
        if not room:
            return IDLE_POLL_MS  # a shard's reply wakes the loop up
        if not source.idle or source.item is None:
            return 0  # more is waiting in the source, or the source (Kafka) waits inside pull()
        if writer.current is not None and writer.current.units:
            left = writer.current.opened + writer.window_s - time.monotonic()
            return max(0, min(IDLE_POLL_MS, int(left * 1000) + 1))
        return IDLE_POLL_MS

    def _watched(self, room: bool) -> list:
        items = [self.stats_sock] if self.stats_sock is not None else []
        if room and self.source.item is not None:
            items.append(self.source.item)
        return items

    def drain(self, limit_s: float | None = None) -> None:
        """Send the open batch and wait (at most ``limit_s``) until every batch is acknowledged."""
        writer = self.writer
        writer.flush()
        deadline = time.monotonic() + (limit_s if limit_s is not None else 2 * self.cfg.ingest_ack_timeout_s)
        while writer.in_flight and time.monotonic() < deadline:
            ready = writer.poll(IDLE_POLL_MS, [self.stats_sock] if self.stats_sock is not None else [])
            if self.stats_sock in ready:
                self._answer_stats()
            self._release()
        if writer.in_flight:
            log.error("stopping with %d batch(es) not acknowledged: they will be read again",
                      len(writer.in_flight))
        self.dead.flush()

    def _release(self) -> None:
        """Hand acknowledged batches back to the source (commit, ack), dead letters on disk first."""
        batches = self.writer.done()
        if batches:
            self.dead.flush()
            for batch in batches:
                self.source.complete(batch)

    def stop(self, *_args) -> None:
        self.running = False

    # ---- progress
    def stats(self) -> dict:
        """The counters, as logged and as answered to ``stats`` requests."""
        w = self.writer
        now = time.monotonic()
        t0, n0 = self._last
        if now - t0 >= 1.0:
            self._rate = (w.events - n0) / (now - t0)
            self._last = (now, w.events)
        return {"source": self.source.name, "events": w.events, "applied": w.written,
                "stale": w.stale, "rejected": w.rejected, "dead_letters": self.dead.count,
                "dead_letter_failures": self.dead.failures,
                "refused": w.refused, "retries": w.retries, "resends": w.resends, "in_flight": len(w.in_flight),
                "shards_connected": w.connected(),
                "lag": self.source.lag(), "events_per_s": round(self._rate, 1),
                "uptime_s": round(now - self.started, 1)}

    def _answer_stats(self) -> None:
        while True:
            try:
                ident, frame = self.stats_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # not two frames
            try:
                reqs = P.decode(frame)
                req_id = P.id_of(reqs[0]) if reqs and type(reqs[0]) is dict else None
                reply = P.stats_reply(req_id, self.stats())
            except P.ProtocolError as exc:
                reply = P.error(None, P.MALFORMED, str(exc))
            self.stats_sock.send_multipart([ident, P.encode([reply])])

    def log_progress(self, final: bool = False) -> None:
        """One progress line, when something happened since the last one (idle is quiet)."""
        self.dead.flush()
        s = self.stats()
        moved = (s["events"], s["retries"], s["in_flight"], s["lag"])
        if moved == self._logged and not final:
            return
        self._logged = moved
        log.info("progress: %.0f events/s, events=%d applied=%d stale=%d rejected=%d lag=%s "
                 "in_flight=%d retries=%d", s["events_per_s"], s["events"], s["applied"], s["stale"],
                 s["rejected"], s["lag"], s["in_flight"], s["retries"])

    def summary(self) -> dict:
        w = self.writer
        return {"events": w.events, "applied": w.written, "stale": w.stale, "rejected": w.rejected,
                "seconds": round(time.monotonic() - self.started, 3)}

    def close(self) -> None:
        self.source.close()
        self.writer.close()
        self.dead.close()
        if self.stats_sock is not None:
            self.stats_sock.close()
        if self.guard is not None:
            self.guard.stop()


def _bind_stats(ctx: zmq.Context, endpoint: str | None, curve_dir: str | None) -> zmq.Socket | None:
    if not endpoint:
        return None
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_dir:
        curve.serve(sock, curve_dir)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        log.warning("stats endpoint %s not bound (%s): /stats will not show ingest", endpoint, exc)
        sock.close()
        return None
    return sock


def main(argv: list[str] | None = None) -> int:
    cfg = config.load_or_exit(argv, "ingest")
    logs.setup(cfg, "ingest")
    ctx = zmq.Context()
    try:
        ingest = Ingest(cfg, ctx)
    except (OSError, zmq.ZMQError, StartError, curve.CurveError) as exc:  # a missing file, an address in use
        print(f"ingest: cannot start: {exc}", file=sys.stderr)
        ctx.destroy(linger=0)
        return 2
    signal.signal(signal.SIGTERM, ingest.stop)
    signal.signal(signal.SIGINT, ingest.stop)
    log.info("ingest from %s into %s (stats on %s)", ingest.source.name,
             f"topic {cfg.cluster_topic}" if cfg.cluster_kafka else f"{cfg.shards} shards",
             cfg.ingest_stats_endpoint if ingest.stats_sock is not None else "-")
    up = ingest.writer.wait_connected(cfg.shard_timeout_s)
    if len(up) < cfg.shards and not cfg.cluster_kafka:
        log.warning("shards %s do not answer yet: their writes wait", sorted(set(range(cfg.shards)) - set(up)))
    print(f"READY ingest {ingest.source.name}", file=sys.stderr, flush=True)
    try:
        ingest.run()
    finally:
        ingest.log_progress(final=True)
        ingest.close()
        ctx.term()
    if cfg.ingest_source == "file":
        summary = ingest.summary()
        print(orjson.dumps(summary).decode(), flush=True)
        return 1 if summary["rejected"] or ingest.writer.in_flight else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
