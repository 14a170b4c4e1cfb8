"""Cluster mode end to end: a real Kafka-protocol broker (Tansu), shards of two replica sets,
two front ends, as real processes. One cluster is shared by the module and its topology changes
as the tests go (in file order): external producer, writes, failover, restart from snapshot,
scale-out, then the loss of a whole replica set."""
from __future__ import annotations

import signal
import socket
import sys
import threading
import uuid

import orjson
import pytest

from common import protocol as P
from common.murmur2 import partition_of
from ingest.producer import Producer
from tests.cluster_support import FAST, KafkaCluster
from tests.support import Honcho, Proc, base_env, free_port, poll_for, quote, request, zmq_call

PARTITIONS = 8
ENTITIES = [f"user:{i}" for i in range(60)]


@pytest.fixture(scope="module")
def cluster(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster-mode")
    c = KafkaCluster(broker, tmp, PARTITIONS, data_dir=tmp / "data", snapshot_interval_s=0.5)
    try:
        for name in ("a0", "a1", "b0"):  # started together, then waited for
            c.start_shard(name, wait=False)
        for name in ("a0", "a1", "b0"):
            c.wait_bound(name)
        c.second_port = free_port()  # another front end, started alongside the first
        c.others.append(Proc([sys.executable, "-m", "frontend"], c.env(http_port=c.second_port),
                             tmp / "frontend2.log"))
        c.start_frontend()
        status, _, body = request("POST", c.url + "/features",  # a base every test reads, in one write
                                  [{"entity_id": eid, "features": {"n": i}} for i, eid in enumerate(ENTITIES)])
        assert status == 200 and body["written"] == len(ENTITIES), body
        yield c
    finally:
        c.stop()


def read(cluster, eid: str):
    return request("GET", cluster.url + "/features/" + quote(eid), timeout=5)


class Loop(threading.Thread):
    """Reads every base entity (and optionally writes) in a loop until stopped; records failures."""

    def __init__(self, cluster, write: bool = False) -> None:
        super().__init__(daemon=True)
        self.cluster, self.write = cluster, write
        self.failures: list[str] = []
        self.reads = 0
        self.acked: dict[str, int] = {}  # entity -> the value of its last 200 write
        self.statuses: dict[int, int] = {}
        self.running = True

    def run(self) -> None:
        serial = 0
        while self.running:
            for i, eid in enumerate(ENTITIES):
                if not self.running:
                    break
                status, _, body = read(self.cluster, eid)
                self.reads += 1
                if status != 200 or "n" not in body.get("features", {}):
                    self.failures.append(f"{eid}: {status} {body}")
                if self.write:
                    serial += 1
                    target = f"w:{serial % 40}"
                    status, _, body = request("POST", self.cluster.url + "/features",
                                              {"entity_id": target, "name": "v", "value": serial}, timeout=5)
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == 200:
                        self.acked[target] = serial

    def stop(self) -> None:
        self.running = False
        self.join(15)


def test_an_external_producer_keyed_by_entity_feeds_the_store(cluster, broker):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    eid = f"ext/{uuid.uuid4().hex[:6]} ü"
    event = {"entity_id": eid, "features": {"clicks": 3, "emb": [0.5, 1]}, "event_timestamp": "2026-01-02T03:04:05Z"}
    producer.produce(cluster.topic, orjson.dumps(event), key=eid.encode())
    assert producer.flush(10) == 0
    got = poll_for(lambda: (lambda r: r[0] == 200 and r)(read(cluster, eid)), 10, what="the event over HTTP")
    assert got[2] == {"entity_id": eid, "features": {"clicks": 3, "emb": [0.5, 1]},
                      "last_updated": "2026-01-02T03:04:05Z"}


def test_an_idle_shard_parks_its_partitions_and_still_applies_records(cluster, broker):
    """With no record and no waiting writer for a while, b0 stops fetching every fetch wait (its
    partitions are parked: an empty fetch costs the broker CPU); a record from an outside producer
    is still applied within an idle round, and a writer waiting (``offsets``) unparks them at once."""
    from confluent_kafka import Producer

    b0 = cluster.endpoints["b0"]
    parked = lambda: cluster.stats("b0")["cluster_parked"]  # noqa: E731 (stats does not wake a shard)
    poll_for(lambda: parked() == list(range(PARTITIONS)), 10, what="b0 to park its partitions")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    eid = f"idle/{uuid.uuid4().hex[:6]}"
    producer.produce(cluster.topic, orjson.dumps({"entity_id": eid, "features": {"n": 1}}), key=eid.encode())
    assert producer.flush(10) == 0
    poll_for(lambda: P.is_ok(zmq_call(b0, [P.get(eid, req_id=1)], 1000)[0]), 3, interval=0.02,
             what="b0 to apply the record while idle")
    assert parked() == []  # the record woke it: it fetches on for a while
    poll_for(lambda: parked() == list(range(PARTITIONS)), 10, what="b0 to park its partitions again")
    cluster.held("b0")  # what a front end asks while a write waits
    assert parked() == []


def test_bad_records_from_a_producer_are_skipped_and_the_shards_go_on(cluster, broker):
    """Records from a user's producer are untrusted input: not JSON, JSON 1,000 levels deep with a
    19-digit number, a wrong type, an entity past FS_MAX_FEATURES_PER_ENTITY (10,000). Each is
    skipped and logged; every shard stays up and a good record after them is applied."""
    from confluent_kafka import Producer

    def rejected() -> int:
        return sum(P.counters_of(cluster.stats(name)).get("rejected_records", 0) for name in cluster.shards)

    before = rejected()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    eid = f"bad/{uuid.uuid4().hex[:6]}"
    wide = {"entity_id": eid, "features": {f"f{i}": i for i in range(10_001)}}
    for value in (b"not json", b"[" * 1000 + b"1234567890123456789" + b"]" * 1000,
                  orjson.dumps({"entity_id": eid, "name": ["n"], "value": 1}), orjson.dumps(wide)):
        producer.produce(cluster.topic, value, key=eid.encode())
    producer.produce(cluster.topic, orjson.dumps({"entity_id": eid, "name": "ok", "value": 1}), key=eid.encode())
    assert producer.flush(10) == 0
    got = poll_for(lambda: (lambda r: r[0] == 200 and r)(read(cluster, eid)), 10, what="the good record")
    assert got[2]["features"] == {"ok": 1}  # and not the wide entity's 10,001
    assert all(proc.alive() for proc in cluster.shards.values())
    # 4 records, skipped by a shard of each of the 2 replica sets
    poll_for(lambda: rejected() - before == 4 * 2, 10, what="every replica to skip the 4 bad records")
    assert "Traceback" not in "".join(proc.output() for proc in cluster.shards.values())


def test_a_write_gets_200_and_reads_back_at_once(cluster):
    for i in range(20):
        eid = f"rw:{i}"
        status, _, body = request("POST", cluster.url + "/features",
                                  {"entity_id": eid, "features": {"a": i, "b": str(i)}})
        assert (status, body["written"]) == (200, 2), body
        status, _, body = read(cluster, eid)  # the writer reads its own write, whichever replica
        assert status == 200 and body["features"] == {"a": i, "b": str(i)}, body
    status, _, body = request("POST", cluster.url + "/features", {"entity_id": "rw:0", "name": "x"})
    assert status == 400 and body["detail"] == "value is required"


def test_metrics_count_the_round_trips_to_each_shard_it_reads(cluster):
    from tests.test_metrics import samples

    for eid in ENTITIES:
        assert read(cluster, eid)[0] == 200
    text = request("GET", cluster.url + "/metrics")[2].decode()
    got = samples(text)
    trips = {dict(lab)["shard"]: v for (name, lab), v in got.items() if name == "featurestore_shard_roundtrip_seconds_count"}
    up = {dict(lab)["shard"] for (name, lab), v in got.items() if name == "featurestore_shard_up" and v == 1}
    assert trips and set(trips) <= up and sum(trips.values()) >= 1, trips  # labelled as the shards are


def test_a_write_position_makes_any_replica_wait_and_one_feature_deletes(cluster):
    """A 200 write's ``X-Read-After`` (partition:offset): a read that sends it back is served only
    by a replica that has applied it, whichever front end serves it (each shard checks it)."""
    eid = "del:1"
    status, headers, _ = request("POST", cluster.url + "/features", {"entity_id": eid, "features": {"a": 1, "b": 2}})
    p, offset = map(int, headers["X-Read-After"].split(":"))
    assert status == 200 and p == partition_of(eid, PARTITIONS), headers
    second = f"http://127.0.0.1:{cluster.second_port}"  # a front end that did not take the write
    poll_for(lambda: request("GET", second + "/readyz")[0] == 200, 20, what="the second front end")
    for url in (cluster.url, second):
        status, _, body = request("GET", url + "/features/" + eid, headers={"X-Read-After": f"{p}:{offset}"})
        assert status == 200 and body["features"] == {"a": 1, "b": 2}, (url, body)
    for name in ("a0", "a1", "b0"):  # straight to the shards: those that hold p check the offset
        if cluster.held(name).get(p, (0, False))[1]:
            far = zmq_call(cluster.endpoints[name], [P.read_after(P.get(eid, req_id=1), 10**9)], 1000)[0]
            assert P.code_of(far) == P.NOT_OWNER and "not yet 1000000000" in P.reason_of(far), far
    status, _, body = request("GET", cluster.url + "/features/" + eid, headers={"X-Read-After": f"{p}:{10**9}"})
    assert status == 503 and "not yet 1000000000" in body["detail"], body
    status, _, body = request("GET", cluster.url + "/features/" + eid, headers={"X-Read-After": "x"})
    assert status == 400 and "partition:offset" in body["detail"], body
    status, headers, body = request("DELETE", cluster.url + f"/features/{eid}/a")  # a record through Kafka
    assert (status, body) == (200, {"message": "feature deleted", "entity_id": eid, "deleted": 1, "name": "a"})
    status, _, body = request("GET", second + "/features/" + eid, headers={"X-Read-After": headers["X-Read-After"]})
    assert status == 200 and body["features"] == {"b": 2}, body
    status, _, body = request("DELETE", cluster.url + f"/features/{eid}/a")
    assert (status, body["detail"]) == (404, "Feature not found")


def _batch_values(eids: list, name: str):
    return {"entity_ids": eids}, lambda body: [r["features"] for r in body["results"]] == [
        {name: i} for i in range(len(eids))]


def _feast_values(eids: list, name: str):
    return {"entities": {"driver_id": eids}, "features": [name]}, lambda body: (
        body["results"][1]["values"] == list(range(len(eids))) and set(body["results"][1]["statuses"]) == {"PRESENT"})


@pytest.mark.parametrize("path, query", [("/features/batch", _batch_values), ("/get-online-features", _feast_values)])
def test_a_many_entity_read_with_a_write_position_waits_for_it_on_every_partition(cluster, path, query):
    """The batch and Feast reads honour ``X-Read-After`` as the single-entity reads do: each
    partition's ``mget`` / ``fget`` is answered only by a copy that has applied that partition's offset."""
    eids = [f"after{path.replace('/', '-')}:{i}" for i in range(6)]  # several partitions
    body, matches = query(eids, "st:v")
    status, headers, _ = request("POST", cluster.url + "/features", [{"entity_id": e, "features": {"st:v": i}}
                                                                     for i, e in enumerate(eids)])
    assert status == 200 and len(headers["X-Read-After"].split(",")) > 1, headers
    second = f"http://127.0.0.1:{cluster.second_port}"  # a front end that did not take the write
    poll_for(lambda: request("GET", second + "/readyz")[0] == 200, 20, what="the second front end")
    status, _, got = request("POST", second + path, body, headers={"X-Read-After": headers["X-Read-After"]})
    assert status == 200 and matches(got), got
    p = partition_of(eids[0], PARTITIONS)
    status, _, got = request("POST", second + path, body, headers={"X-Read-After": f"{p}:{10**9}"})
    assert status == 503 and f"partition {p} " in got["detail"] and "not yet 1000000000" in got["detail"], got
    status, _, got = request("POST", cluster.url + path, body, headers={"X-Read-After": "1:x"})
    assert status == 400 and "partition:offset" in got["detail"], got


def test_killing_a_shard_fails_no_read(cluster):
    loop = Loop(cluster, write=True)
    loop.start()
    poll_for(lambda: loop.reads >= 60, 20, what="the reader to go round once")
    cluster.shards["a1"].kill()  # SIGKILL: no goodbye, the group notices after the session timeout
    reads = loop.reads
    poll_for(lambda: loop.reads >= reads + 3 * len(ENTITIES), 60, what="three rounds after the kill")
    cluster.wait_ready()  # a0 took a1's partitions over
    loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert loop.statuses.get(200, 0) > 0 and set(loop.statuses) <= {200, 202}, loop.statuses
    for eid, value in loop.acked.items():  # every write that got a 200 is there
        status, _, body = read(cluster, eid)
        assert status == 200 and body["features"]["v"] >= value, (eid, value, body)


def test_a_restarted_shard_loads_its_snapshot_and_reads_the_tail(cluster):
    """b0 is the only shard of replica set b: it gets every partition back after a restart."""
    b0 = cluster.endpoints["b0"]
    poll_for(lambda: all(up for _, up in cluster.held("b0").values()), 10, what="b0 to serve")
    before = cluster.held("b0")
    data = cluster.tmp / "data" / f"cluster-b-{b0.split('://')[1].replace(':', '-')}"
    poll_for(lambda: list(data.glob("snapshot-*.snap")), 10, what="b0's snapshot (written by a forked child)")
    assert "started in child" in cluster.shards["b0"].output()
    cluster.shards["b0"].kill()
    for i in range(30):  # the tail b0 has to read after its snapshot
        status, _, body = request("POST", cluster.url + "/features", {"entity_id": f"tail:{i}", "name": "t", "value": i})
        assert status == 200, body
    cluster.start_shard("b0")
    poll_for(lambda: len(cluster.held("b0")) == PARTITIONS and all(up for _, up in cluster.held("b0").values()),
             30, what="b0 to serve every partition again")
    sources = cluster.stats("b0")["bootstrapped_from"]
    assert all(s.startswith("own copy at") for s in sources.values()), sources
    offsets = {int(p): int(s.rsplit(" ", 1)[1]) for p, s in sources.items()}
    assert set(offsets) == set(before) and all(offsets[p] <= before[p][0] for p in before)  # a snapshot
    assert sum(offsets.values()) >= len(ENTITIES)  # taken after the base was written
    assert sum(o for o, _ in cluster.held("b0").values()) > sum(offsets.values())  # it read a tail
    for i in range(30):  # straight from b0: the tail is applied there
        reply = zmq_call(b0, [P.get(f"tail:{i}", req_id=1)], 1000)[0]
        assert P.is_ok(reply) and orjson.loads(reply[P.BODY])["features"] == {"t": i}, reply


def test_a_new_shard_takes_partitions_then_the_other_replica_set_dies(cluster):
    """a2 joins replica set a (with a0; a1 was killed before): Kafka gives it partitions, which
    it fills from a peer; then replica set b dies and every entity is read from a0 and a2."""
    loop = Loop(cluster, write=True)
    loop.start()
    cluster.start_shard("a2")
    poll_for(lambda: any(up for _, up in cluster.held("a2").values()), 30, what="a2 to serve a partition")
    sources = cluster.stats("a2")["bootstrapped_from"]
    assert any(s.startswith("peer ") for s in sources.values()), sources
    def split():  # a0 and a2 serve disjoint halves, and the front end knows it
        a0, a2 = cluster.held("a0"), cluster.held("a2")
        body = request("GET", cluster.url + "/readyz")[2]
        seen = {p for s in body["shards"] if s["replica"] == "a" for p in s["serving"]}
        return (a0 and a2 and set(a0).isdisjoint(a2) and len(a0) + len(a2) == PARTITIONS
                and all(up for _, up in [*a0.values(), *a2.values()]) and seen == set(range(PARTITIONS)))

    poll_for(split, 30, what="a0 and a2 to split the partitions")
    before = {name: set(cluster.held(name)) for name in ("a0", "a2")}
    cluster.start_shard("a3")  # cooperative-sticky: a3 takes some of each; the rest stay put

    def split3():
        held = {name: cluster.held(name) for name in ("a0", "a2", "a3")}
        parts = [set(h) for h in held.values()]
        return (all(parts) and sum(map(len, parts)) == PARTITIONS and set.union(*parts) == set(range(PARTITIONS))
                and all(up for h in held.values() for _, up in h.values()) and held)

    held = poll_for(split3, 30, what="a0, a2 and a3 to split the partitions")
    assert set(held["a0"]) < before["a0"] or set(held["a2"]) < before["a2"], (before, held)
    assert set(held["a0"]) <= before["a0"] and set(held["a2"]) <= before["a2"], (before, held)  # nothing else moved
    poll_for(lambda: {p for s in request("GET", cluster.url + "/readyz")[2]["shards"] if s["replica"] == "a"
                      for p in s["serving"]} == set(range(PARTITIONS)), 10, what="the front end to see replica set a")
    cluster.shards["b0"].kill()
    reads = loop.reads
    poll_for(lambda: loop.reads >= reads + 2 * len(ENTITIES), 60, what="two rounds without replica set b")
    loop.stop()
    assert loop.failures == [], loop.failures[:5]
    for eid in ENTITIES + [f"tail:{i}" for i in range(30)]:
        assert read(cluster, eid)[0] == 200, eid
    for eid, value in loop.acked.items():
        status, _, body = read(cluster, eid)
        assert status == 200 and body["features"]["v"] >= value, (eid, value, body)
    status, _, body = request("GET", cluster.url + "/readyz")
    assert status == 200 and {s["replica"] for s in body["shards"]} == {"a"}, body


def test_a_stopped_shard_hands_its_partitions_over_first(cluster):
    """SIGTERM to a2, with no other replica set left: a0 (and a3) take a2's partitions from a2
    itself while a2 keeps serving them, and a2 exits once they are taken; no read fails meanwhile."""
    if "a2" not in cluster.shards:  # run alone: a2 joins first
        cluster.start_shard("a2")
    heirs = [name for name in ("a0", "a3") if name in cluster.shards and cluster.shards[name].alive()]
    poll_for(lambda: any(up for _, up in cluster.held("a2").values()), 30, what="a2 to serve")
    moving = [p for p, (_, up) in cluster.held("a2").items() if up]
    loop = Loop(cluster, write=True)
    loop.start()
    poll_for(lambda: loop.reads >= 20, 20, what="the reader to start")
    cluster.shards["a2"].signal(signal.SIGTERM)
    assert cluster.shards["a2"].popen.wait(40) == 0
    reads = loop.reads
    poll_for(lambda: loop.reads >= reads + len(ENTITIES), 30, what="a round after a2 left")
    loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert set(loop.statuses) <= {200, 202}, loop.statuses
    sources = {p: s for name in heirs for p, s in cluster.stats(name)["bootstrapped_from"].items()
               if int(p) in cluster.held(name)}
    assert all(sources[str(p)].startswith(f"peer {cluster.endpoints['a2']}") for p in moving), sources
    held = [cluster.held(name) for name in heirs]
    assert all(up for h in held for _, up in h.values()) and sum(map(len, held)) == PARTITIONS
    assert "handing partitions" in cluster.shards["a2"].output()
    for eid, value in loop.acked.items():
        status, _, body = read(cluster, eid)
        assert status == 200 and body["features"]["v"] >= value, (eid, value, body)


def consecutive_free_ports(n: int) -> int:
    """A port P such that P .. P + n - 1 are free (the Procfile's shards bind base + index)."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {n} consecutive free ports")


def test_a_shard_joins_while_the_others_have_parked_every_partition(broker, tmp_path):
    """A rebalance that revokes parked partitions (not in the consumer's own assignment) takes
    them away cleanly: the new shard serves its share, the old one the rest, with no failed chore."""
    c = KafkaCluster(broker, tmp_path, 4)
    try:
        c.start_shard("a0")
        c.start_frontend()
        assert request("POST", c.url + "/features", [{"entity_id": f"p{i}", "features": {"n": i}}
                                                     for i in range(20)])[0] == 200
        poll_for(lambda: c.stats("a0")["cluster_parked"] == [0, 1, 2, 3], 15, what="a0 to park its partitions")
        c.start_shard("a1")

        def split():  # (stats, unlike held, does not wake a shard: a0 stays parked until the rebalance)
            held = {name: c.stats(name)["cluster_partitions"] for name in ("a0", "a1")}
            return (all(held.values()) and sum(map(len, held.values())) == 4
                    and all(up for h in held.values() for _, up in h.values()))

        poll_for(split, 30, what="a0 and a1 to split the partitions")
        poll_for(lambda: all(read(c, f"p{i}")[0] == 200 for i in range(20)), 10, what="every entity")
        assert c.shards["a0"].alive() and "failed" not in c.shards["a0"].output(), c.shards["a0"].output()[-3000:]
    finally:
        c.stop()


def test_honcho_starts_the_local_cluster_and_ctrl_c_stops_it(tmp_path):
    """``honcho -f Procfile.cluster start``: a broker, 2 replica sets of 2 shards, front end, ingest."""
    http_port, base, kafka = free_port(), consecutive_free_ports(4), free_port()
    env = base_env(http_port=http_port, shard_base_port=base, cluster_kafka=f"127.0.0.1:{kafka}",
                   cluster_partitions=4, ingest_endpoint=f"tcp://127.0.0.1:{free_port()}",
                   ingest_stats_endpoint=f"tcp://127.0.0.1:{free_port()}",
                   dead_letter_path=str(tmp_path / "dead.jsonl"), **FAST)
    honcho = Honcho(["-f", "Procfile.cluster"], env)
    try:
        url = f"http://127.0.0.1:{http_port}"
        def split():  # ready, and each replica set's two shards share the partitions
            status, _, body = request("GET", url + "/readyz")
            return status == 200 and len(body["shards"]) == 4 and all(s["serving"] for s in body["shards"])

        poll_for(split, 60, interval=0.2, what="the local cluster")
        assert request("POST", url + "/features", {"entity_id": "h", "name": "x", "value": 1})[0] == 200
        assert request("GET", url + "/features/h/x")[2]["value"] == 1
        with Producer(env["FS_INGEST_ENDPOINT"]) as producer:  # the ingest process writes to Kafka
            producer.send({"entity_id": "via-ingest", "name": "y", "value": 2})
            producer.flush()
        poll_for(lambda: request("GET", url + "/features/via-ingest/y")[0] == 200, 10, what="the ingested event")
        text = honcho.interrupt()
    finally:
        honcho.kill()
    assert honcho.returncode in (0, 130), text
    for line in ("shard 0 stopped", "shard 3 stopped", "front end stopped", "ingest.1 stopped"):
        assert line in text, text


def test_every_procfile_line_execs_its_process():
    """honcho runs each line with ``sh -c``; without ``exec`` the shell stays the parent, and a
    signal to it (a killed honcho's group aside) never reaches the Python process."""
    from tests.support import ROOT

    for name in ("Procfile", "Procfile.cluster"):
        lines = [ln for ln in (ROOT / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        assert lines and all(ln.split(":", 1)[1].split()[0] == "exec" for ln in lines), (name, lines)
