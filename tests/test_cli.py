"""The featurestore command against real processes: click's CliRunner for each command, and the
installed console script itself on a pipe and on a pseudo-terminal."""
from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from common import protocol as P
from featurestore import BadRequest, Client, PayloadTooLarge, WriteResult
from featurestore import loader as L
from featurestore.cli import main
from tests.support import base_env, free_port, poll_for, zmq_call


@pytest.fixture(scope="module")
def run(cluster):
    """``run("get", "x")``: the command's result, with FS_URL pointing at the cluster."""
    runner = CliRunner()

    def invoke(*args, input=None, env=None):
        return runner.invoke(main, list(args), input=input, env={"FS_URL": cluster.url, **(env or {})})
    return invoke


def test_put_get_delete_and_their_exit_codes(run):
    r = run("put", "cli:u1", "ctr", "0.5", "--time", "2026-01-01T00:00:00Z")
    assert (r.exit_code, json.loads(r.stdout)) == (0, {"written": 1, "stale": 0})
    assert run("put", "cli:u1", "label", "007", "--string", "--time", "1767225600").exit_code == 0
    assert run("put", "cli:u1", "tags", '["a", 1]').exit_code == 0
    r = run("get", "cli:u1")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"entity_id": "cli:u1", "features": {"ctr": 0.5, "label": "007", "tags": ["a", 1]},
                                    "last_updated": json.loads(r.stdout)["last_updated"]}
    r = run("get", "cli:u1", "ctr")
    assert json.loads(r.stdout) == {"entity_id": "cli:u1", "name": "ctr", "value": 0.5,
                                    "event_timestamp": "2026-01-01T00:00:00Z"}
    assert json.loads(run("delete", "cli:u1", "ctr").stdout) == {"deleted": 1}
    r = run("get", "cli:u1", "ctr")
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", "featurestore: 404 Feature not found\n")
    assert json.loads(run("delete", "cli:u1").stdout) == {"deleted": 2}
    assert run("get", "cli:u1").exit_code == 1
    assert run("delete", "cli:u1").exit_code == 1


def test_usage_and_refused_input_exit_2_in_one_line(run):
    r = run("put", "cli:x", "name")
    assert r.exit_code == 2 and "Missing argument 'VALUE'" in r.stderr
    r = run("put", "cli:x", "bad name", "1")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("featurestore: 400 name ")
    r = run("put", "cli:x", "n", "1", "--time", "yesterday")
    assert r.exit_code == 2 and "event_timestamp" in r.stderr
    assert run("nonsense").exit_code == 2


def test_unreachable_store_exits_3(run):
    for args in (["get", "x"], ["status"], ["put", "x", "n", "1"]):
        r = run(*args, "--url", f"http://127.0.0.1:{free_port()}")
        assert r.exit_code == 3 and r.stderr.startswith("featurestore: cannot reach the store at ")
        assert r.stderr.count("\n") == 1


def test_every_command_has_help_url_and_token(run):
    for cmd in ("get", "put", "delete", "load", "status"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "--url" in r.stdout and "--token" in r.stdout and "FS_URL" in r.stdout
    assert "Exit codes" in run("--help").stdout
    assert run("bench", "--help").exit_code == 0


def test_token_from_the_environment(tmp_path_factory):
    from tests.support import Cluster
    with Cluster(tmp_path_factory.mktemp("cli-tokens"), shards=1, write_token="w-tok") as c:
        runner = CliRunner()
        r = runner.invoke(main, ["put", "t", "n", "1", "--url", c.url])
        assert r.exit_code == 4 and r.stderr.startswith("featurestore: 401 a bearer token is required")
        assert runner.invoke(main, ["put", "t", "n", "1", "--url", c.url, "--token", "w-tok"]).exit_code == 0
        r = runner.invoke(main, ["get", "t", "n"], env={"FS_URL": c.url, "FS_TOKEN": "w-tok"})
        assert r.exit_code == 0 and json.loads(r.stdout)["value"] == 1


JSONL = b"""{"entity_id": "cli:l1", "features": {"a": 1, "b": 2}, "event_timestamp": "2026-01-02T00:00:00Z"}
{"entity_id": "cli:l2", "name": "a", "value": "x"}

not json at all
{"entity_id": "cli:l3", "name": "a"}
{"entity_id": "cli:l1", "name": "a", "value": 0, "event_timestamp": "2020-01-01T00:00:00Z"}
{"entity_id": "cli:l3", "name": "bad name", "value": 1}
{"entity_id": "cli:l3", "name": "c", "value": [1, 2]}
"""


def test_load_json_lines_over_http_sums_up_with_reasons(run, cluster, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(JSONL)
    r = run("load", str(path), "--batch", "3")
    assert r.exit_code == 4, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "7 events: 4 values written, 1 stale, 3 rejected"
    assert lines[1].startswith("  rejected: line 4: not JSON")
    assert lines[2] == "  rejected: line 5: value is required"
    assert lines[3] == "  rejected: line 7: name may hold only letters, digits and _ . : -"
    assert "\r" not in r.output and "ETA" not in r.output  # no progress bar when not on a terminal
    with Client(cluster.url) as fs:
        assert fs.get_entity("cli:l1").features == {"a": 1, "b": 2}
        assert fs.get_entity("cli:l3").features == {"c": [1, 2]}
    r = run("load", "-", "--batch", "100", input=b'{"entity_id": "cli:l9", "name": "z", "value": 9}\n')
    assert (r.exit_code, r.stdout) == (0, "1 events: 1 values written, 0 stale, 0 rejected\n")


def test_load_csv_wide_and_long(run, cluster, tmp_path):
    wide = tmp_path / "wide.csv"
    wide.write_text("entity_id,event_timestamp,clicks,ctr,city\n"
                    "cli:c1,2026-01-01T00:00:00Z,3,0.5,\"Paris, FR\"\n"
                    "cli:c2,,7,,\"multi\nline\"\n"
                    "cli:c3,,,,\n"
                    "cli:c4,1,2\n")
    r = run("load", str(wide))
    assert r.stdout.splitlines() == ["4 events: 5 values written, 0 stale, 2 rejected",
                                     "  rejected: line 5: no feature values",
                                     "  rejected: line 6: has 3 cells; the header has 5"]
    long = tmp_path / "long.txt"
    long.write_text("entity_id,name,value\ncli:c1,label,true\ncli:c1,note,hello\n")
    assert run("load", str(long), "--format", "csv").exit_code == 0
    with Client(cluster.url) as fs:
        assert fs.get_entity("cli:c1").features == {"clicks": 3, "ctr": 0.5, "city": "Paris, FR", "label": True,
                                                    "note": "hello"}
        assert fs.get_entity("cli:c2").features == {"clicks": 7, "city": "multi\nline"}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,x\n1,2\n")
    r = run("load", str(bad))
    assert (r.exit_code, r.stderr) == (2, "featurestore: a CSV file needs a header row with an entity_id column\n")


@pytest.fixture(scope="module")
def ingest(cluster, tmp_path_factory):
    proc = cluster.start_process(["-m", "ingest"], "ingest",
                                 dead_letter_path=tmp_path_factory.mktemp("cli-ingest") / "dead.jsonl")
    poll_for(lambda: zmq_call(cluster.ingest_endpoint, [P.ping(1)], 200)[0][P.OK], 15,
             what="ingest to answer a ping")
    return proc


def test_load_to_the_ingest_socket(run, cluster, ingest, tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(JSONL.replace(b"cli:l", b"cli:i"))
    r = run("load", str(path), "--batch", "2", "--ingest", cluster.ingest_endpoint)
    assert r.exit_code == 4, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "7 events: 4 values written, 1 stale, 3 rejected"
    assert lines[1].startswith("  rejected: line 4: not JSON")
    assert any("value is required" in line for line in lines[2:])
    with Client(cluster.url) as fs:  # acknowledged once applied: no waiting
        assert fs.get_entity("cli:i3").features == {"c": [1, 2]}
    r = run("load", str(path), "--ingest", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert r.exit_code == 3 and r.stderr.startswith("featurestore: ingest at tcp://127.0.0.1:")


def test_status_table(run, ingest):
    run("put", "cli:s", "x", "1")
    r = run("status")
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if "ready" in line and "│" in line]
    assert len(rows) == 2 and rows[0].split("│")[1].strip() == "0" and rows[1].split("│")[1].strip() == "1"
    assert "entities" in r.stdout and "ingest: events_per_s" in r.stdout
    data = json.loads(run("status", "--json").stdout)
    assert len(data["shards"]) == 2 and data["totals"]["entities"] >= 1


def test_bench_lists_and_runs_the_benchmarks(run):
    r = run("bench")
    assert r.exit_code == 0 and "http " in r.stdout and "ingest " in r.stdout
    assert run("bench", "nope").exit_code == 2
    proc = subprocess.run([sys.executable, "-m", "featurestore", "bench", "write_path", "--help"], env=base_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--values" in proc.stdout



def test_bench_store_measures_a_running_store_against_healthz(run, cluster):
    r = run("bench", "store", "--seconds", "0.3", "--connections", "2", "--entities", "3", "--features", "2")
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") >= 6}
    assert {"GET /healthz", "GET /features/{entity_id}"} <= set(rows)
    reads = [c.strip() for c in rows["GET /features/{entity_id}"].split("│")]
    assert float(reads[2].replace(",", "")) > 0 and reads[5] == "0"  # req/s, no errors
    with Client(cluster.url) as fs:  # the entities it wrote for itself are gone
        assert fs.get_many([f"fs-bench-{i}" for i in range(3)]) == [None, None, None]
    assert run("bench", "store", "--seconds", "0.1", "--entity", "cli:never-written").exit_code == 1
    assert run("bench", "store", "--url", f"http://127.0.0.1:{free_port()}", "--seconds", "0.1").exit_code == 3

# ---- socket-free: how a batch the store refuses is narrowed down
class _FakeClient:
    """Refuses an event holding "bad" by index, and bodies of more than 2 events as too large."""

    def __init__(self) -> None:
        self.accepted: list[list] = []

    def write(self, events: list) -> WriteResult:
        for i, e in enumerate(events):
            if e.get("bad"):
                raise BadRequest(f"[{i}].bad is not a field of a feature write", 400)
        if len(events) > 2:
            raise PayloadTooLarge("body is larger than 10 bytes (FS_MAX_BODY_BYTES)", 413)
        self.accepted.append([e["n"] for e in events])
        return WriteResult(len(events), 0)


def test_send_http_rejects_the_named_item_and_halves_a_body_too_large():
    lines = [L.Line(n, {"n": n, **({"bad": 1} if n == 3 else {})}) for n in range(1, 7)]
    summary, fake = L.Summary(), _FakeClient()
    L.send_http(fake, lines, summary)
    assert (summary.written, summary.rejected) == (5, 1)
    assert summary.reasons == ["line 3: bad is not a field of a feature write"]
    assert fake.accepted == [[1, 2], [4], [5, 6]]  # in file order
    summary = L.Summary()
    L.send_http(_TooLarge(), [L.Line(9, {})], summary)
    assert summary.reasons == ["line 9: body is larger than 1 bytes"]


class _TooLarge:
    def write(self, events):
        raise PayloadTooLarge("body is larger than 1 bytes", 413)


# ---- the installed console script itself
def _script() -> str:
    script = shutil.which("featurestore")
    if script is None:
        if os.environ.get("CI"):
            pytest.fail("the featurestore console script is not installed in CI (pip install -e .)")
        pytest.skip("the featurestore console script is not installed here (pip install -e .)")
    return script


def test_console_script_shows_progress_on_a_terminal_only(cluster, tmp_path):
    script = _script()
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"entity_id": "cli:p{i}", "name": "v", "value": {i}, "event_timestamp": 1}}\n'
                            for i in range(3000)))
    env = {**base_env(), "FS_URL": cluster.url, "TERM": "xterm", "COLUMNS": "150"}
    piped = subprocess.run([script, "load", str(path), "--batch", "200"], env=env, capture_output=True,
                           timeout=60)
    assert (piped.returncode, piped.stderr) == (0, b"")
    assert piped.stdout == b"3000 events: 3000 values written, 0 stale, 0 rejected\n"
    master, slave = pty.openpty()
    proc = subprocess.Popen([script, "load", str(path), "--batch", "200"], env=env, stdin=slave, stdout=slave,
                            stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(30) == 0
    text = out.decode(errors="replace")
    assert "100%" in text and "3,000 events" in text and "events/s" in text and "ETA" in text
    assert "3000 events: 3000 values written, 0 stale, 0 rejected" in text  # a tie is written again
