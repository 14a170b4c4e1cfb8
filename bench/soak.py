"""Soak: mixed reads, writes and ingest at ~70% of the measured maximum while a shard is killed
(SIGKILL) and restarted twice. Reports requests served and errors by status, acknowledged writes
lost (must be 0), and the RSS of the front end, shards and ingest at the start, every tenth of
the run, and the end.

    flock /tmp/bench.lock python3 -m bench.soak                # the documented run: 10 minutes
    flock /tmp/bench.lock python3 -m bench.soak --minutes 2    # a short one

Every write (HTTP or ingest) carries a per-key sequence number as its value and a rising event
time; at the end each key is read back and must hold at least the last acknowledged number.
Shards keep a log (``FS_DATA_DIR``, default fsync), so a killed shard recovers what it acked.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import protocol as P  # noqa: E402
from ingest.producer import Producer  # noqa: E402
from tests.support import Cluster, free_port, poll_for, request, zmq_call  # noqa: E402

KEYS = 2000  # entities written over HTTP: s0..s1999, feature "n"
INGEST_KEYS = 500  # entities written by ingest: i0..i499, feature "n"
MIX = (("get", 60), ("batch", 10), ("write", 30))  # HTTP requests; ingest runs beside them
BASE_S = 1_767_225_600  # event times start at 2026-01-01


class Acks:
    """The last acknowledged sequence number of every key, and the next one to send."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> int:
        with self.lock:
            n = self.next.get(key, 0) + 1
            self.next[key] = n
            return n

    def ack(self, key: str, n: int) -> None:
        with self.lock:
            if n > self.acked.get(key, 0):
                self.acked[key] = n


def _write_body(eid: str, n: int) -> bytes:
    # microsecond steps keep event times rising with the sequence number, whatever the rate
    return json.dumps({"entity_id": eid, "name": "n", "value": n,
                       "event_timestamp": BASE_S + n / 1000}).encode()


class HttpConn:
    """One keep-alive HTTP/1.1 connection: enough of a client for a load generator."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = None

    async def call(self, method: str, path: str, body: bytes = b"") -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        self.writer.write(head + body)
        try:
            status_line = await self.reader.readline()
            status = int(status_line.split()[1])
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await self.reader.readexactly(length)
            return status
        except (IndexError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            self.close()
            return 0  # the connection broke: counted as status 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_http(port: int, seconds: float, rate: float | None, acks: Acks, statuses: Counter,
                   workers: int = 32) -> int:
    """Send the HTTP mix for ``seconds`` at ``rate`` requests/s (None: as fast as it goes)."""
    kinds = [k for k, w in MIX for _ in range(w)]
    start = time.monotonic()
    end = start + seconds
    slot = [0]

    async def worker(seed: int) -> None:
        rng, conn = random.Random(seed), HttpConn(port)
        while True:
            i = slot[0]
            slot[0] += 1
            if rate is not None:
                wait = start + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if time.monotonic() >= end:
                break
            kind = rng.choice(kinds)
            if kind == "get":
                status = await conn.call("GET", f"/features/s{rng.randrange(KEYS)}")
            elif kind == "batch":
                ids = json.dumps({"entity_ids": [f"s{rng.randrange(KEYS)}" for _ in range(20)]})
                status = await conn.call("POST", "/features/batch", ids.encode())
            else:
                eid = f"s{rng.randrange(KEYS)}"
                n = acks.take(eid)
                status = await conn.call("POST", "/features", _write_body(eid, n))
                if status == 200:
                    acks.ack(eid, n)
            statuses[status] += 1
        conn.close()

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return sum(statuses.values())


def run_ingest(endpoint: str, stop: threading.Event, acks: Acks, counts: Counter, per_s: float) -> None:
    """Send ingest requests of 50 events at ``per_s`` events/s until ``stop``; count acked events."""
    rng = random.Random(7)
    with Producer(endpoint, window=1, timeout_s=60) as producer:
        while not stop.is_set():
            t0 = time.monotonic()
            batch = []
            for _ in range(50):
                eid = f"i{rng.randrange(INGEST_KEYS)}"
                batch.append((eid, acks.take(eid)))
            producer.send([{"entity_id": e, "name": "n", "value": n, "event_timestamp": BASE_S + n / 1000}
                           for e, n in batch])
            totals = producer.flush()
            if totals.get("rejected"):
                counts["ingest_rejected"] += totals["rejected"]
            else:
                for e, n in batch:
                    acks.ack(e, n)
                counts["ingest_events"] += len(batch)
            stop.wait(max(0.0, 50 / per_s - (time.monotonic() - t0)))


def lost_writes(url: str, acks: Acks) -> list[str]:
    """Keys whose stored sequence number is below the last acknowledged one."""
    lost = []
    keys = sorted(acks.acked)
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        status, _, body = request("POST", url + "/features/batch", {"entity_ids": chunk, "features": ["n"]})
        assert status == 200, (status, body)
        for eid, result in zip(chunk, body["results"]):
            if result.get("features", {}).get("n", 0) < acks.acked[eid]:
                lost.append(f"{eid}: stored {result.get('features')}, acked {acks.acked[eid]}")
    return lost


def rss_mb(pid: int) -> float:
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.NoSuchProcess:
        return float("nan")


def rss_of(c: Cluster, ingest) -> dict:
    return {"frontend": rss_mb(c.frontend.pid), **{f"shard{i}": rss_mb(s.pid) for i, s in enumerate(c.shards)},
            "ingest": rss_mb(ingest.pid)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of the measured maximum")
    ap.add_argument("--calibrate-s", type=float, default=8.0)
    args = ap.parse_args(argv)
    seconds = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    acks, statuses, counts = Acks(), Counter(), Counter()
    with Cluster(tmp, data_dir=tmp / "data") as c:
        ingest_ep = f"tcp://127.0.0.1:{free_port()}"
        ingest = c.start_process(["-m", "ingest"], "ingest", ingest_endpoint=ingest_ep,
                                 dead_letter_path=tmp / "dead.jsonl")
        poll_for(lambda: P.is_ok(zmq_call(ingest_ep, [P.ping(1)], 200)[0]), 15, what="ingest")
        port = c.http_port
        calib = Counter()
        served = asyncio.run(run_http(port, args.calibrate_s, None, acks, calib))
        max_rps = served / args.calibrate_s
        rate = args.load * max_rps
        print(f"measured max {max_rps:.0f} req/s (statuses {dict(calib)}); soaking {args.minutes} min "
              f"at {rate:.0f} req/s", flush=True)
        rss_start = rss_of(c, ingest)
        stop = threading.Event()
        feeder = threading.Thread(target=run_ingest, args=(ingest_ep, stop, acks, counts, max(100.0, rate / 2)),
                                  daemon=True)
        feeder.start()
        kills = []

        def killer() -> None:
            for k, at in enumerate((seconds / 3, 2 * seconds / 3)):
                if stop.wait(max(0.0, t0 + at - time.monotonic())):
                    return
                shard = k % len(c.shards)
                c.shards[shard].signal(signal.SIGKILL)
                c.shards[shard].popen.wait(5)
                time.sleep(2)
                t_restart = time.monotonic()
                c.start_shard(shard)
                kills.append({"shard": shard, "at_s": round(at), "recovered_in_s": round(time.monotonic() - t_restart, 2)})

        samples: list[dict] = []  # RSS every tenth of the run: growth, or a plateau

        def sampler() -> None:
            while not stop.wait(seconds / 10):
                samples.append({"at_s": round(time.monotonic() - t0), **rss_of(c, ingest)})

        t0 = time.monotonic()
        killing = threading.Thread(target=killer, daemon=True)
        killing.start()
        sampling = threading.Thread(target=sampler, daemon=True)
        sampling.start()
        served = asyncio.run(run_http(port, seconds, rate, acks, statuses))
        elapsed = time.monotonic() - t0
        stop.set()
        feeder.join(90)
        killing.join(60)
        sampling.join(10)
        rss_end = rss_of(c, ingest)
        lost = lost_writes(c.url, acks)
        alive = {"frontend": c.frontend.alive(), "ingest": ingest.alive(),
                 **{f"shard{i}": s.alive() for i, s in enumerate(c.shards)}}
    report = {"minutes": args.minutes, "max_rps": round(max_rps), "target_rps": round(rate),
              "served": served, "served_rps": round(served / elapsed),
              "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "ingest_events_acked": counts["ingest_events"], "ingest_rejected": counts["ingest_rejected"],
              "acked_keys": len(acks.acked), "acked_writes_lost": len(lost), "lost_examples": lost[:5],
              "kills": kills, "rss_mb_start": rss_start, "rss_mb_samples": samples,
              "rss_mb_end": rss_end, "alive": alive}
    print(json.dumps(report, indent=1))
    return 0 if not lost and all(alive.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
