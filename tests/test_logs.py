"""Logs: each line names its process (``shard 1``, ``frontend 0``), JSON with FS_LOG_FORMAT=json,
and an idle ingest process stays quiet."""
from __future__ import annotations

import io
import json
import logging

from common import logs
from common import protocol as P
from common.config import Config
from ingest.producer import Producer
from tests.support import Cluster, poll_for, request, zmq_call


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_json_logs_name_each_process(tmp_path):
    with Cluster(tmp_path, frontend_processes=2, log_format="json") as c:
        request("GET", c.url + "/healthz")
        shard_lines = _json_lines(c.shards[1].output())
        assert shard_lines and all(d["process"] == "shard 1" for d in shard_lines)
        assert any("listening on" in d["message"] for d in shard_lines)
        assert {"time", "level", "name", "message"} <= shard_lines[0].keys()
        front = poll_for(lambda: {d["process"] for d in _json_lines(c.frontend.output())} >= {"frontend 0", "frontend 1"}
                         and _json_lines(c.frontend.output()), what="both front-end processes to log")
        assert all(d["level"] in ("INFO", "WARNING") for d in front)
    # every line of a process logging JSON is JSON, but the READY line the tests wait for
    text = c.frontend.log_path.read_text() + c.shards[0].log_path.read_text()
    assert all(line.startswith(("{", "READY")) for line in text.splitlines() if line.strip())


def test_text_logs_name_the_process_too():
    stream = io.StringIO()
    logs.setup(Config(log_level="INFO"), "shard", 3)
    root = logging.getLogger()
    root.handlers[0].setStream(stream)
    try:
        logging.getLogger("shard").info("hello %d", 5)
    finally:
        logs.setup(Config(), "pytest")
    line = stream.getvalue().strip()
    assert line.endswith(" shard 3 INFO shard: hello 5")


def test_idle_ingest_is_quiet(tmp_path):
    with Cluster(tmp_path, shards=1) as c:
        ingest = c.start_process(["-m", "ingest"], "ingest", ingest_progress_s=0.05,
                                 dead_letter_path=tmp_path / "dead.jsonl")
        poll_for(lambda: zmq_call(c.ingest_endpoint, [P.ping(1)], 200)[0][P.OK], 15,
                 what="ingest to answer a ping")

        def uptime() -> float:
            return request("GET", c.url + "/stats")[2]["ingest"]["uptime_s"]

        start = uptime()
        poll_for(lambda: uptime() >= start + 1.0, what="a second of ingest uptime (20 progress periods)")
        assert "progress:" not in ingest.output()
        with Producer(c.ingest_endpoint, timeout_s=20) as producer:
            producer.send([{"entity_id": "idle", "name": "x", "value": 1}])
            producer.flush()
        poll_for(lambda: "events=1 " in ingest.output() and "in_flight=0 " in ingest.output().splitlines()[-1],
                 what="a progress line showing the event applied")
        seen = ingest.output().count("progress:")
        start = uptime()
        poll_for(lambda: uptime() >= start + 1.0, what="another idle second")
        assert ingest.output().count("progress:") == seen <= 3  # nothing while idle again
