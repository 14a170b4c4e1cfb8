"""A producer for the ingest process's ZeroMQ source, as a class and as a command.

    from ingest.producer import Producer
    with Producer("tcp://127.0.0.1:5690") as p:
        p.send([{"entity_id": "user:1", "features": {"ctr": 0.5}}])   # msgpack
        p.send(b'{"entity_id": "user:2", "name": "ctr", "value": 1}')   # JSON lines
        totals = p.flush()   # requests, written 2, stale 0, rejected 0, errors []

    python -m ingest.producer [--ingest-endpoint E] [--batch 1000] [--msgpack] events.jsonl|-

Each :meth:`Producer.send` is one ``events`` request (common/protocol.py). The ingest process
answers it once every shard acknowledged its writes, with the values ``written``, the
``stale`` ones (older than what the store has) and the ``rejected`` events (also in the
dead-letter file) with their first reasons. At most ``window`` requests are unacknowledged at
a time; :meth:`send` waits for room. A request that gets no answer in ``timeout_s`` raises
:class:`TimeoutError`: it may or may not have been applied, and sending it again is safe
(writes are last-write-wins by event time), except for the windows of an aggregated feature:
ZeroMQ carries no position, so a resent event counts once only if it has an ``event_id``
(docs/AGGREGATIONS.md, "Exactly once").
"""
from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import orjson
import zmq

from common import config
from common import protocol as P
from common.link import connect_dealer

MAX_ERRORS = 100  # reasons kept in the totals


class Producer:
    """Sends events to ``endpoint`` and collects the acknowledgements."""

    def __init__(self, endpoint: str, window: int = 8, timeout_s: float = 30.0,
                 ctx: zmq.Context | None = None, curve_dir: str | None = None) -> None:
        self.sock = connect_dealer(ctx or zmq.Context.instance(), endpoint, immediate=False, curve_dir=curve_dir)
        self.endpoint = endpoint
        self.curve_dir = curve_dir
        self.window = window
        self.timeout_s = timeout_s
        self.pending: dict[int, float] = {}  # request id -> time sent
        self.totals: dict[str, Any] = {"requests": 0, P.WRITTEN: 0, P.STALE: 0, P.REJECTED: 0, P.ERRORS: []}
        self._ids = itertools.count(1)

    def send(self, events: list | dict | bytes | str) -> int:
        """Send events (a list of event maps, one map, or JSON-lines bytes); return the request id."""
        while len(self.pending) >= self.window:
            self._receive(self._wait_s())
        req_id = next(self._ids)
        if isinstance(events, (bytes, str)):
            req = P.events_json(events if isinstance(events, bytes) else events.encode(), req_id)
        else:
            req = P.events_maps(events if isinstance(events, list) else [events], req_id)
        self.sock.send(P.encode([req]))
        self.pending[req_id] = time.monotonic()
        return req_id

    def flush(self) -> dict:
        """Wait until every request sent is acknowledged; return the totals so far."""
        while self.pending:
            self._receive(self._wait_s())
        return self.totals

    def call(self, kind: str) -> dict:
        """One request without events (``stats`` or ``ping``) on a socket of its own."""
        build = {P.STATS: P.stats, P.PING: P.ping}[kind]
        sock = connect_dealer(self.sock.context, self.endpoint, immediate=False, curve_dir=self.curve_dir)
        try:
            sock.send(P.encode([build(1)]))
            if not sock.poll(int(self.timeout_s * 1000)):
                raise TimeoutError(f"no answer to {kind}")
            return P.decode(sock.recv())[0]
        finally:
            sock.close()

    def _wait_s(self) -> float:
        oldest = min(self.pending.values())
        left = oldest + self.timeout_s - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no acknowledgement in {self.timeout_s:g} s for requests "
                               f"{sorted(self.pending)[:10]}")
        return left

    def _receive(self, wait_s: float) -> None:
        if not self.sock.poll(int(wait_s * 1000) + 1):
            return
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            for reply in P.decode(frame):
                req_id = P.id_of(reply)
                if self.pending.pop(req_id, None) is None:
                    continue
                if not P.is_ok(reply):
                    raise RuntimeError(f"ingest refused request {req_id}: "
                                       f"{P.code_of(reply)}: {P.reason_of(reply)}")
                t = self.totals
                t["requests"] += 1
                for key in (P.WRITTEN, P.STALE, P.REJECTED):
                    t[key] += reply[key]
                t[P.ERRORS].extend(reply[P.ERRORS][:MAX_ERRORS - len(t[P.ERRORS])])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = config.build_parser("python -m ingest.producer")
    parser.add_argument("path", nargs="?", default="-", help="JSON lines to send ('-' = stdin)")
    parser.add_argument("--batch", type=int, default=1000, help="events per request")
    parser.add_argument("--msgpack", action="store_true", help="send msgpack maps, not JSON bytes")
    args = parser.parse_args(argv)
    cfg = config.load(argv, parser=parser)
    fh = sys.stdin.buffer if args.path == "-" else open(args.path, "rb")
    with Producer(cfg.ingest_endpoint, curve_dir=cfg.curve_dir) as producer, fh:
        for chunk in iter(lambda: list(itertools.islice(fh, args.batch)), []):
            if args.msgpack:
                events = []
                for line in chunk:
                    try:
                        events.append(orjson.loads(line))
                    except orjson.JSONDecodeError:
                        if line.strip():
                            events.append(line.decode("utf-8", "replace"))  # ingest rejects it
                producer.send(events)
            else:
                producer.send(b"".join(chunk))
        totals = producer.flush()
    print(orjson.dumps(totals).decode())
    return 1 if totals[P.REJECTED] else 0


if __name__ == "__main__":
    sys.exit(main())
