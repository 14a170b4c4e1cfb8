"""The file source end to end: JSON lines (a file or stdin) -> ingest -> shards -> HTTP reads."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.ingest_support import INGEST_LIMITS, assert_store_matches, dead_letters, make_stream
from tests.support import Cluster, poll_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("ingest-file"), ingest_stats_endpoint="") as c:
        yield c


def run_ingest(cluster: Cluster, args: list[str], name: str, stdin=None, **extra) -> tuple[int, dict, str]:
    """Run ``python -m ingest`` to its end; return (exit code, summary line, output)."""
    proc = cluster.start_process(["-m", "ingest", *args], name, stdin=stdin, **INGEST_LIMITS, **extra)
    proc.popen.wait(60)
    out = proc.output()
    summary = orjson.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return proc.popen.returncode, summary, out


def test_file_matches_oracle_and_dead_letters_bad_lines(cluster, tmp_path):
    stream = make_stream("file", 3000, seed=1, entities=200, bad_every=97)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(stream.lines) + b"\n\n")  # a trailing blank line is not an event
    dead = tmp_path / "dead.jsonl"
    # small batches and few in flight: many batches, windows and acks in one run
    code, summary, out = run_ingest(cluster, ["--file", str(path)], "ingest-file",
                                    dead_letter_path=dead, ingest_batch_events=50, ingest_max_in_flight=2)
    assert code == 1, out  # something was rejected
    assert summary["rejected"] == len(stream.bad)
    assert summary["events"] == stream.events
    assert summary["applied"] + summary["stale"] == stream.good_values
    assert summary["stale"] > 0  # the stream has out-of-order events
    assert_store_matches(cluster.url, stream.oracle(), stream.entities | {"file:big", "file:huge", "x"})

    letters = dead_letters(dead)
    assert {d["source"] for d in letters} == {f"{path}:{i + 1}" for i in stream.bad}
    for d in letters:
        i = int(d["source"].rsplit(":", 1)[1]) - 1
        assert stream.bad[i] in d["reason"], d
        assert d["time"].endswith("Z")
        raw = stream.lines[i]
        if raw.startswith(b"["):  # an array's element is set aside alone, as an object
            assert [d["event"]] == orjson.loads(raw)
        elif "larger than 16384" not in d["reason"]:  # an over-size line keeps only its start
            assert d["event"].encode() == raw


def test_stdin_without_bad_events_exits_zero(cluster, tmp_path):
    stream = make_stream("stdin", 500, seed=2, entities=40)
    proc = cluster.start_process(["-m", "ingest", "--file", "-"], "ingest-stdin", stdin=subprocess.PIPE,
                                 dead_letter_path=tmp_path / "dead.jsonl", **INGEST_LIMITS)
    proc.popen.stdin.write(b"\n".join(stream.lines))  # no newline after the last line
    proc.popen.stdin.close()
    assert proc.popen.wait(60) == 0, proc.output()
    summary = orjson.loads(proc.output().splitlines()[-1])
    assert summary == {**summary, "events": stream.events, "rejected": 0}
    assert_store_matches(cluster.url, stream.oracle(), stream.entities)
    assert not (tmp_path / "dead.jsonl").exists()


def test_file_waits_for_a_shard_that_is_down(cluster, tmp_path):
    """With a shard down, ingest retries with backoff and ends only once everything is applied."""
    stream = make_stream("down", 400, seed=3, entities=60)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(stream.lines))
    cluster.shards[1].kill()
    try:
        proc = cluster.start_process(["-m", "ingest", "--file", str(path)], "ingest-down",
                                     dead_letter_path=tmp_path / "dead.jsonl", ingest_retry_max_s=0.2,
                                     ingest_ack_timeout_s=0.5, ingest_progress_s=0.2, **INGEST_LIMITS)
        # it cannot finish: shard 1's writes are not acknowledged
        poll_for(lambda: "resending" in proc.output(), 15, what="ingest to retry shard 1")
        assert proc.alive(), proc.output()
    finally:
        cluster.start_shard(1)  # memory only: it comes back empty
    assert proc.popen.wait(30) == 0, proc.output()
    summary = orjson.loads(proc.output().splitlines()[-1])
    assert summary["events"] == stream.events
    assert_store_matches(cluster.url, stream.oracle(), stream.entities)


def test_ingest_rejects_a_bad_setting_or_a_missing_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ingest", "--ingest-source", "carrier-pigeon"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "FS_INGEST_SOURCE" in out.stderr
    out = subprocess.run([sys.executable, "-m", "ingest", "--file", str(tmp_path / "missing.jsonl"),
                          "--ingest-stats-endpoint", ""], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "cannot start" in out.stderr and "missing.jsonl" in out.stderr
    assert "Traceback" not in out.stderr



def test_stdin_events_are_applied_before_the_stream_ends(cluster, tmp_path):
    """A trickle on stdin is sent at once, not held until a batch fills or the input ends."""
    first, second = make_stream("trickle", 30, seed=8, entities=10), make_stream("trickle2", 30, seed=9, entities=10)
    proc = cluster.start_process(["-m", "ingest", "--file", "-"], "ingest-trickle", stdin=subprocess.PIPE,
                                 dead_letter_path=tmp_path / "dead.jsonl", **INGEST_LIMITS)
    proc.popen.stdin.write(b"\n".join(first.lines) + b"\n")
    proc.popen.stdin.flush()
    assert_store_matches(cluster.url, first.oracle(), first.entities)  # stdin still open
    proc.popen.stdin.write(b"\n".join(second.lines) + b"\n")
    proc.popen.stdin.flush()
    assert_store_matches(cluster.url, second.oracle(), second.entities)
    assert proc.alive()
    proc.popen.stdin.close()
    assert proc.popen.wait(30) == 0, proc.output()
    assert orjson.loads(proc.output().splitlines()[-1])["events"] == first.events + second.events
