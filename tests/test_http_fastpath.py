"""The single-entity GET fast path (frontend/fast.py) answers exactly as the Tornado handlers do
(both run frontend/reads.py; tests/test_frontend_app.py checks the same without processes).

A query string sends a GET through the application's handlers instead (they ignore it), so each
path is fetched both ways and the status, reason, headers (but ``Date``) and body compared.
"""
import http.client
import signal

import pytest

from common.partition import Partitioner
from tests.support import poll_for, quote, request


def fetch(cluster, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.reason, {k: v for k, v in resp.getheaders() if k != "Date"}, body
    finally:
        conn.close()


def both_ways(cluster, path, headers=None):
    fast = fetch(cluster, path, headers)
    slow = fetch(cluster, path + "?via=app", headers)
    return fast, slow


@pytest.fixture(scope="module")
def loaded(cluster):
    events = [{"entity_id": "fp1", "features": {"a": 1, "b": [1.5, "x"], "c": None},
               "event_timestamp": "2026-01-22T10:31:29.25Z"},
              {"entity_id": "ü 1/x:y", "name": "n.v:1-2", "value": "s"},
              {"entity_id": "batch", "name": "v", "value": 1}]
    assert request("POST", cluster.url + "/features", events)[0] == 200
    return cluster


@pytest.mark.parametrize("path", [
    "/features/fp1", "/features/fp1/b", "/features/fp1/c", "/features/missing", "/features/fp1/missing",
    "/features/" + quote("ü 1/x:y"), "/features/" + quote("ü 1/x:y") + "/" + quote("n.v:1-2"),
    "/features/%FF", "/features/fp1/%FF", "/features/batch", "/features/fp1/", "/features/fp1/b/c",
])
def test_fast_path_matches_the_handlers(loaded, path):
    fast, slow = both_ways(loaded, path)
    assert fast == slow


def test_fast_path_keeps_etag_and_304(loaded):
    status, _, headers, body = fetch(loaded, "/features/fp1")
    assert status == 200 and headers["Etag"].startswith('"') and body
    assert fetch(loaded, "/features/fp1", {"If-None-Match": headers["Etag"]})[0] == 304


def test_fast_path_counts_requests_in_metrics(loaded):
    def count(route, status):
        text = request("GET", loaded.url + "/metrics")[2].decode()
        line = f'featurestore_http_requests_total{{method="GET",route="{route}",status="{status}"}} '
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line))

    entity, feature = "/features/{entity_id}", "/features/{entity_id}/{name}"
    before = count(entity, 200), count(feature, 404)
    fetch(loaded, "/features/fp1")
    fetch(loaded, "/features/fp1/missing")
    assert (count(entity, 200), count(feature, 404)) == (before[0] + 1, before[1] + 1)


def test_fast_path_answers_503_like_the_handlers_when_a_shard_is_stopped(loaded):
    part = Partitioner(len(loaded.endpoints))
    shard = part.shard_for("fp1")
    proc = loaded.shards[shard]
    proc.signal(signal.SIGSTOP)  # connected but silent: every call times out
    try:
        fast, slow = both_ways(loaded, "/features/fp1")
    finally:
        proc.signal(signal.SIGCONT)
    assert fast == slow
    assert fast[0] == 503 and fast[2]["Retry-After"] == "1"
    poll_for(lambda: fetch(loaded, "/features/fp1")[0] == 200, 10, what="shard answering again")
