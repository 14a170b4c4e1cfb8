"""Durability with real shard processes: SIGKILL, SIGTERM, damaged files, a full disk, TTL."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from common import protocol as P
from common.link import connect_dealer
from tests.ingest_support import INGEST_LIMITS, assert_store_matches, make_stream
from tests.support import Cluster, Proc, poll_for, quote, request, zmq_call

TS = 1_700_000_000_000_000


def stats(c: Cluster, index: int = 0) -> dict:
    return zmq_call(c.endpoints[index], [P.stats(1)])[0]


def zwrite(c: Cluster, writes: list, index: int = 0) -> dict:
    return zmq_call(c.endpoints[index], [P.write(writes, 1)], 5000)[0]


def zget(c: Cluster, eid: str, index: int = 0) -> dict:
    return zmq_call(c.endpoints[index], [P.get(eid, req_id=1)])[0]


class Writer:
    """Threads that POST writes and remember every acknowledged one."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.acked: dict[tuple[str, str], int] = {}
        self.refused = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def _run(self, t: int) -> None:
        i = 0
        while not self.stop.is_set():
            eid = f"user/{t}-{i % 37}"
            feats = {f"f{i}.{k}": i * 10 + k for k in range(3)}
            try:
                status, _, _ = request("POST", self.url + "/features", {"entity_id": eid, "features": feats})
            except OSError:
                status = None
            if status == 200:
                for name, value in feats.items():
                    self.acked[(eid, name)] = value
            else:
                self.refused += 1
            i += 1

    def __enter__(self) -> "Writer":
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(30)


def check_all_readable(url: str, acked: dict) -> None:
    by_entity: dict[str, dict] = {}
    for (eid, name), value in acked.items():
        by_entity.setdefault(eid, {})[name] = value
    for eid, feats in by_entity.items():
        status, _, body = request("GET", f"{url}/features/{quote(eid)}")
        assert status == 200, (eid, body)
        missing = {n: v for n, v in feats.items() if body["features"].get(n) != v}
        assert not missing, f"{eid}: acknowledged writes lost after a restart: {missing}"


def check_all_readable_after_restart(tmp_path: Path, acked: dict) -> None:
    """Start a new cluster on the same files and read every acknowledged write over HTTP."""
    with Cluster(tmp_path, shards=2, data_dir=tmp_path / "data") as c:
        assert stats(c)["replayed_records"] == 0  # the SIGTERM before wrote a snapshot
        check_all_readable(c.url, acked)


def test_acknowledged_writes_survive_sigkill_at_random_points(tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with Cluster(tmp_path, shards=2, data_dir=tmp_path / "data", fsync="always",
                 snapshot_log_bytes=8192) as c, Writer(c.url) as w:
        for round_ in range(4):
            target = len(w.acked) + rng.randint(30, 300)
            poll_for(lambda: len(w.acked) >= target, 60, what=f"{target} acknowledged writes")
            if round_ == 2:  # make sure one kill lands after snapshots happened under load
                poll_for(lambda: stats(c)["snapshots"] >= 1, 30, what="a snapshot")
            c.shards[0].kill()
            poll_for(lambda: request("GET", c.url + "/readyz")[0] == 503, 10, what="/readyz 503")
            c.start_shard(0)  # waits for the ping: bound only after recovery
            poll_for(lambda: request("GET", c.url + "/readyz")[0] == 200, 10, what="/readyz 200")
        target = len(w.acked) + 30
        poll_for(lambda: len(w.acked) >= target, 60, what="writes after the last restart")
    check_all_readable_after_restart(tmp_path, w.acked)
    assert w.refused > 0, f"the kills never refused a write (seed {seed})"


def test_pipelined_zmq_writes_acknowledged_before_sigkill_survive(tmp_path):
    """32 writes in flight, so a kill lands in the middle of group commits."""
    import zmq

    c = Cluster(tmp_path, shards=1, data_dir=tmp_path / "data", fsync="always",
                snapshot_log_bytes=32768)
    try:
        for round_ in range(3):
            c.start_shard(0)
            sock = connect_dealer(zmq.Context.instance(), c.endpoints[0], immediate=False)
            sent: dict[int, list] = {}
            acked: list = []
            kill_after = random.randint(50, 800)
            for i in range(32):
                sent[i] = [f"z{round_}-{i % 61}", f"n{i}", i, TS]
                sock.send(P.encode([P.write([sent[i]], i)]))
            i = 32
            while sock.poll(1000):
                reply = P.decode(sock.recv())[0]
                assert reply[P.OK], reply
                acked.append(sent.pop(reply[P.ID]))
                if len(acked) == kill_after:
                    c.shards[0].kill()  # with 32 writes in flight
                sent[i] = [f"z{round_}-{i % 61}", f"n{i}", i, TS]
                sock.send(P.encode([P.write([sent[i]], i)]))
                i += 1
            sock.close()
            assert not c.shards[0].alive() and len(acked) >= kill_after
            c.start_shard(0)
            for eid, name, value, _ in acked:
                reply = zmq_call(c.endpoints[0], [P.get1(eid, name, 1)])[0]
                assert reply[P.OK], f"acknowledged write {eid}/{name} lost (round {round_})"
            c.shards[0].kill()
    finally:
        c.stop()


def test_ingest_after_a_shard_crash_has_nothing_acknowledged_missing(tmp_path):
    """Ingest never resends what a shard acknowledged: the shard's recovery must have it all."""
    stream = make_stream("dur", 3000, seed=5, entities=150)
    half = len(stream.lines) // 2
    with Cluster(tmp_path, shards=2, data_dir=tmp_path / "data", fsync="always",
                 snapshot_log_bytes=65536, ingest_stats_endpoint="") as c:
        proc = c.start_process(["-m", "ingest", "--file", "-"], "ingest", stdin=subprocess.PIPE,
                               dead_letter_path=tmp_path / "dead.jsonl", ingest_retry_max_s=0.2,
                               ingest_ack_timeout_s=0.5, **INGEST_LIMITS)
        proc.popen.stdin.write(b"\n".join(stream.lines[:half]) + b"\n")
        proc.popen.stdin.flush()
        assert_store_matches(c.url, stream.oracle(range(half)), stream.entities)  # acknowledged
        c.shards[0].kill()
        c.start_shard(0)
        proc.popen.stdin.write(b"\n".join(stream.lines[half:]) + b"\n")
        proc.popen.stdin.close()
        assert proc.popen.wait(60) == 0, proc.output()
        assert_store_matches(c.url, stream.oracle(), stream.entities)


def test_sigterm_writes_a_snapshot_and_the_restart_replays_nothing(tmp_path):
    c = Cluster(tmp_path, shards=1, data_dir=tmp_path / "data", snapshot_log_bytes=1 << 30)
    try:
        c.start_shard(0)
        for i in range(20):
            assert zwrite(c, [[f"e{i}", "a", i, TS], [f"e{i}", "b", str(i), TS]])[P.OK]
        assert zmq_call(c.endpoints[0], [P.delete("e3", None, 1)])[0][P.OK]
        assert c.shards[0].stop() == 0
        files = sorted(p.name for p in (tmp_path / "data" / "shard-0").iterdir())
        assert any(f.startswith("snapshot-") for f in files), files
        c.start_shard(0)
        s = stats(c)
        assert s["replayed_records"] == 0 and s["snapshot_entities"] == 19 and s["values"] == 38
        assert zget(c, "e3")[P.CODE] == P.NOT_FOUND
        assert zget(c, "e7")[P.OK]
    finally:
        c.stop()


def test_corrupted_log_stops_the_shard_naming_file_and_offset(tmp_path):
    c = Cluster(tmp_path, shards=1, data_dir=tmp_path / "data")
    try:
        c.start_shard(0)
        for i in range(3):
            assert zwrite(c, [["e", f"f{i}", i, TS]])[P.OK]
        c.shards[0].kill()  # no final snapshot: the records stay in the log
        copy = tmp_path / "copy"
        shutil.copytree(tmp_path / "data", copy)
        log = sorted((copy / "shard-0").glob("log-*.aof"))[-1]
        data = bytearray(log.read_bytes())
        size = len(data) // 3
        data[size + 10] ^= 0xFF  # inside the second record's payload
        log.write_bytes(bytes(data))

        bad = Proc([sys.executable, "-m", "shard", "--index", "0"], c.env(data_dir=copy),
                   tmp_path / "bad.log")
        assert bad.popen.wait(30) == 2
        assert f"{log}: damaged record at offset {size}" in bad.output()
        assert "FS_SKIP_DAMAGED" in bad.output()

        c.start_shard(0, data_dir=copy, skip_damaged=1)
        assert stats(c)["values"] == 2
        c.shards[0].stop()
        c.start_shard(0)  # the original files are intact
        assert stats(c)["values"] == 3
    finally:
        c.stop()


LIMIT = 64 * 1024
_LIMITED = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT})); "
            "sys.argv[0] = 'shard'; runpy.run_module('shard', run_name='__main__')")


def test_a_full_disk_refuses_writes_with_507_and_reads_go_on(tmp_path):
    c = Cluster(tmp_path, shards=1, data_dir=tmp_path / "data", snapshot_log_bytes=1 << 30)
    try:
        c.shards[0] = Proc([sys.executable, "-c", _LIMITED, "--index", "0"], c.env(),
                           tmp_path / "shard0.log")
        c.wait_shard(0)
        c.start_frontend()
        written = []
        for i in range(100):
            body = {"entity_id": f"e{i}", "features": {"blob": "x" * 2000}}
            status, _, reply = request("POST", c.url + "/features", body)
            if status != 200:
                break
            written.append(f"e{i}")
        assert status == 507, (status, reply)
        assert "cannot write its log" in reply["detail"] and "reads still work" in reply["detail"]
        assert written
        for eid in written:
            assert request("GET", f"{c.url}/features/{eid}")[0] == 200
        assert request("GET", f"{c.url}/features/e{len(written)}")[0] == 404  # refused, not applied
        status, _, _ = request("POST", c.url + "/features", {"entity_id": "again", "name": "n", "value": "y" * 4000})
        assert status == 507 and c.shards[0].alive()
        assert request("GET", c.url + "/readyz")[0] == 200
        c.shards[0].stop()
        c.start_shard(0)  # without the limit: everything acknowledged is there
        for eid in written:
            assert zget(c, eid)[P.OK]
        assert stats(c)["values"] == len(written)
    finally:
        c.stop()


def test_a_replay_does_not_resurrect_expired_values(tmp_path):
    now = time.time_ns() // 1000
    c = Cluster(tmp_path, shards=1, data_dir=tmp_path / "data", ttl_s=60, ttl_grace_s=0)
    try:
        c.start_shard(0)
        assert zwrite(c, [["e", "old", 1, now - 3_600_000_000], ["e", "fresh", 2, now],
                          ["gone", "old", 3, now - 3_600_000_000]])[P.OK]
        poll_for(lambda: stats(c)["reclaimed"] == 2, 10, what="the sweep to reclaim both")
        c.shards[0].kill()  # the log still holds the expired writes
        c.start_shard(0)
        assert stats(c)["replayed_values"] == 3
        body = orjson.loads(zget(c, "e")[P.BODY])
        assert body["features"] == {"fresh": 2}
        assert zget(c, "gone")[P.CODE] == P.NOT_FOUND
        reply = zmq_call(c.endpoints[0], [P.get1("e", "old", 1)])[0]
        assert reply[P.CODE] == P.NOT_FOUND
        # not even as Feast's OUTSIDE_MAX_AGE: recovery reclaimed them before serving
        assert stats(c)["reclaimed_on_recovery"] == 2
        row = zmq_call(c.endpoints[0], [P.fget(["e", "gone"], ["old", "fresh"], 1)])[0]
        assert row[P.STATUSES] == [P.NOT_FOUND_S + P.PRESENT, P.NOT_FOUND_S * 2]
    finally:
        c.stop()
