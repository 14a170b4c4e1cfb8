"""GET /metrics: request histograms summed over front-end processes, shard round trips and
sizes, feature freshness per view, ingest; bounded labels; FS_METRICS=0. Real processes, plus
socket-free tests of the slot files (across a fork) and of the freshness sampling."""
from __future__ import annotations

import http.client
import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import protocol as P
from frontend.metrics import REQUESTS, Metrics
from ingest.producer import Producer
from shard.freshness import MAX_VIEWS, Freshness
from tests.support import Cluster, poll_for, request, zmq_call

ENTITY_ROUTE = "/features/{entity_id}"


def samples(text: str) -> dict[tuple, float]:
    """``{(sample name, sorted label items): value}`` of a Prometheus text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def scrape_on(url: str) -> tuple[int, str]:
    """One keep-alive connection: ask which process it reached, then scrape through it."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/healthz")
        pid = json.loads(conn.getresponse().read())["pid"]
        conn.request("GET", "/metrics")
        return pid, conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two front-end processes on one port, shards with a data dir, every read's ages counted, ingest."""
    tmp = tmp_path_factory.mktemp("metrics")
    with Cluster(tmp, frontend_processes=2, data_dir=tmp / "data", freshness_sample_every=1) as c:
        c.ingest = c.start_process(["-m", "ingest"], "ingest", dead_letter_path=tmp / "dead.jsonl")
        poll_for(lambda: zmq_call(c.ingest_endpoint, [P.ping(1)], 200)[0][P.OK], 15,
                 what="ingest to answer a ping")
        yield c


def test_requests_over_two_processes_are_counted_in_every_scrape(two):
    assert request("POST", two.url + "/features", {"entity_id": "m:one", "name": "x", "value": 1})[0] == 200
    pids = set()
    n = 120
    for _ in range(n):  # a connection each: the kernel spreads them over both processes
        status, _, body = request("GET", two.url + "/features/m:one")
        assert status == 200
    for _ in range(10):  # a hot POST of the fast engine
        assert request("POST", two.url + "/features/batch", {"entity_ids": ["m:one"]})[0] == 200
    for _ in range(40):
        pids.add(request("GET", two.url + "/healthz")[2]["pid"])
    assert len(pids) == 2, "the requests did not reach both processes"
    scraped_by = set()
    for _ in range(60):
        pid, text = scrape_on(two.url)
        scraped_by.add(pid)
        assert value(text, "featurestore_http_requests_total", route=ENTITY_ROUTE, method="GET", status="200") == n
        assert value(text, REQUESTS + "_count", route=ENTITY_ROUTE, method="GET", status="200") == n
        assert value(text, REQUESTS + "_bucket", route=ENTITY_ROUTE, method="GET", status="200", le="+Inf") == n
        assert value(text, "featurestore_http_requests_total", route="/features/batch", method="POST",
                     status="200") == 10
        if len(scraped_by) == 2 and _ >= 10:
            break
    assert scraped_by == pids  # both processes answered scrapes, each one counting all n


def test_latency_histogram_and_shard_round_trips(two):
    request("POST", two.url + "/features", {"entity_id": "m:two", "name": "y", "value": 2})
    text = request("GET", two.url + "/metrics")[2].decode()
    labels = dict(route="/features", method="POST", status="200")
    count = value(text, REQUESTS + "_count", **labels)
    assert count >= 1 and 0 < value(text, REQUESTS + "_sum", **labels) < count * 5
    buckets = [v for (name, lab), v in samples(text).items() if name == REQUESTS + "_bucket"
               and dict(lab).get("route") == "/features" and dict(lab).get("method") == "POST"]
    assert buckets == sorted(buckets)  # cumulative
    for shard in ("0", "1"):
        assert value(text, "featurestore_shard_roundtrip_seconds_count", shard=shard) > 0
        assert value(text, "featurestore_shard_memory_bytes", shard=shard) > 10 << 20
        assert value(text, "featurestore_shard_log_bytes", shard=shard) >= 0
        assert value(text, "featurestore_shard_up", shard=shard) == 1
    assert sum(value(text, "featurestore_shard_log_bytes", shard=s) for s in "01") > 0


def test_freshness_histogram_per_view(two):
    now = time.time()
    request("POST", two.url + "/features", [
        {"entity_id": "m:f", "name": "old_view:a", "value": 1, "event_timestamp": now - 7200},
        {"entity_id": "m:f", "name": "new_view:b", "value": 2, "event_timestamp": now - 2},
        {"entity_id": "m:f", "name": "plain", "value": 3, "event_timestamp": now - 2}])
    before = request("GET", two.url + "/metrics")[2].decode()
    for _ in range(5):
        request("GET", two.url + "/features/m:f")
    request("GET", two.url + "/features/m:f/old_view:a")
    request("POST", two.url + "/get-online-features", {"entities": {"m_id": ["m:f"]}, "features": ["new_view:b"]})
    text = request("GET", two.url + "/metrics")[2].decode()

    def moved(view, le):
        name = "featurestore_feature_age_seconds_bucket"
        return (value(text, name, view=view, le=le) or 0) - (value(before, name, view=view, le=le) or 0)

    assert moved("old_view", "+Inf") == 6 and moved("old_view", "3600.0") == 0 and moved("old_view", "14400.0") == 6
    assert moved("new_view", "+Inf") == 6 and moved("new_view", "10.0") == 6  # 5 entity reads, 1 Feast read
    assert moved("none", "+Inf") == 5
    assert 7200 * 6 <= value(text, "featurestore_feature_age_seconds_sum", view="old_view") < 7200 * 6 + 600


def test_labels_stay_bounded(two):
    writes = [{"entity_id": f"m:v{i}", "name": f"view{i}:f", "value": i} for i in range(MAX_VIEWS + 20)]
    request("POST", two.url + "/features", writes)
    for i in range(MAX_VIEWS + 20):
        request("GET", f"{two.url}/features/m:v{i}")
    request("GET", two.url + "/nowhere/secret-entity")
    request("PROPFIND", two.url + "/features/m:v1")  # a method the store has no label for
    text = request("GET", two.url + "/metrics")[2].decode()
    views = {dict(lab)["view"] for (name, lab) in samples(text) if name == "featurestore_feature_age_seconds_count"}
    assert len(views) <= MAX_VIEWS + 1 and "other" in views
    routes = {dict(lab).get("route") for (name, lab) in samples(text) if name.startswith("featurestore_http")}
    assert "unmatched" in routes and all(r == "unmatched" or r.startswith("/") for r in routes)
    assert "secret-entity" not in text and "m:v1" not in text and "m:one" not in text
    methods = {dict(lab).get("method") for (name, lab) in samples(text) if name.startswith("featurestore_http")}
    assert "PROPFIND" not in methods and "other" in methods


def test_ingest_counters(two):
    with Producer(two.ingest_endpoint, timeout_s=20) as producer:
        producer.send([{"entity_id": f"m:i{i}", "name": "ing:x", "value": i} for i in range(30)]
                      + [{"entity_id": "m:bad"}])
        totals = producer.flush()
    assert (totals["written"], totals["rejected"]) == (30, 1)
    text = request("GET", two.url + "/metrics")[2].decode()
    assert value(text, "featurestore_ingest_applied_total") >= 30
    assert value(text, "featurestore_ingest_rejected_total") >= 1
    assert value(text, "featurestore_ingest_events_total") >= 30
    assert value(text, "featurestore_ingest_events_per_second") is not None


def test_metrics_off(tmp_path):
    with Cluster(tmp_path, shards=1, metrics=0) as c:
        request("POST", c.url + "/features", {"entity_id": "off", "name": "x", "value": 1})
        for _ in range(5):
            request("GET", c.url + "/features/off")
        text = request("GET", c.url + "/metrics")[2].decode()
        names = {name for name, _ in samples(text)}
        assert value(text, "featurestore_shard_up", shard="0") == 1 and value(text, "featurestore_shard_values",
                                                                             shard="0") == 1
        assert not any(n.startswith(("featurestore_http", "featurestore_feature_age",
                                     "featurestore_shard_roundtrip")) for n in names)


# ---- socket-free
def test_slot_files_of_several_processes_are_summed(tmp_path):
    mine = Metrics(str(tmp_path))
    mine.request("/a", "GET", 200, 0.0004)
    pid = os.fork()
    if pid == 0:  # another front-end process: counts of its own, then it dies
        try:
            child = Metrics(str(tmp_path))
            for _ in range(3):
                child.request("/a", "GET", 200, 0.003)
            child.request("/b", "POST", 400, 0.02)
            child.shard_roundtrip(1, 0.0002)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    totals = mine.totals()
    a = totals[(REQUESTS, "/a", "GET", 200)]
    assert sum(a[:-1]) == 4 and abs(a[-1] - 0.0094) < 1e-9
    assert a[1] == 1 and a[4] == 3  # 0.4 ms in the 0.5 ms bucket, 3 ms in the 5 ms one
    assert sum(totals[(REQUESTS, "/b", "POST", 400)][:-1]) == 1
    assert sum(totals[("featurestore_shard_roundtrip_seconds", 1)][:-1]) == 1
    assert len(list(tmp_path.glob("*.slots"))) == 2


def test_metrics_off_records_nothing():
    m = Metrics(None, enabled=False)
    m.request("/a", "GET", 200, 0.1)
    m.shard_roundtrip(0, 0.1)
    assert m.totals() == {} and [f.samples for f in m.families()] == [[], [], []]


def test_freshness_samples_one_entity_in_n_across_reads_and_weighs_it_n():
    f = Freshness(sample_every=4)
    assert [f.pick([i]) for i in range(8)] == [[], [], [], [3], [], [], [], [7]]
    assert f.pick(list(range(10))) == [3, 7] and f.pick([0, 1]) == [1] and f.pick(list(range(3))) == []
    assert f.pick([0, 1]) == [0]  # every 4th entity, whatever the batch sizes
    assert Freshness(sample_every=0).pick(list(range(100))) == []
    f.observe([("v:a", 0), ("v:b", 0), ("w:a", 5_000_000)], now_us=30_000_000)
    snap = f.snapshot()
    bounds = snap["bounds"]
    assert snap["views"]["v"][bounds.index(60.0)] == 8 and snap["views"]["v"][-1] == 240.0
    assert snap["views"]["w"][bounds.index(60.0)] == 4


def test_freshness_of_whole_entities_counts_as_value_by_value():
    """``observe_entities`` (one event time per entity counted once per view) counts what
    ``observe`` counts for the same values, one by one."""
    entities = [(("v:a", "v:b", "w:a", "none"), 5_000_000), (("v:a", "w:b"), (1_000_000, 29_000_000)),
                (("w:a",), 0), ((), 7)]
    by_entity, by_value = Freshness(sample_every=3), Freshness(sample_every=3)
    by_entity.observe_entities(entities, now_us=30_000_000)
    by_entity.observe_entities(entities[:1], now_us=40_000_000)  # the memoised views again
    for now, ents in ((30_000_000, entities), (40_000_000, entities[:1])):
        for names, times in ents:
            by_value.observe(zip(names, [times] * len(names) if type(times) is int else times), now_us=now)
    got, want = by_entity.snapshot(), by_value.snapshot()
    assert got["views"].keys() == want["views"].keys() == {"v", "w", "none"}
    for view, counts in want["views"].items():
        assert got["views"][view] == pytest.approx(counts)
