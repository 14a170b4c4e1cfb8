"""The Kafka source against a real Kafka-protocol broker (Tansu): oracle, SIGKILL and restart,
commits that never pass the shards' acks, and two members of one group sharing partitions."""
from __future__ import annotations

import re
import uuid

import pytest

from common import protocol as P
from tests.ingest_support import (INGEST_LIMITS, Broker, assert_store_matches, dead_letters, free_port,
                                  make_stream)
from tests.support import Cluster, Proc, poll_for, zmq_call

FAST = {"kafka_session_timeout_ms": 2000, "kafka_fetch_wait_ms": 50}  # ~1 s group join


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, broker):  # stopped before the broker
    with Cluster(tmp_path_factory.mktemp("ingest-kafka"), ingest_stats_endpoint="") as c:
        yield c


def start_ingest(cluster: Cluster, broker: Broker, topic: str, group: str, name: str, **extra) -> Proc:
    stats = f"tcp://127.0.0.1:{free_port()}"
    settings = dict(ingest_source="kafka", kafka_bootstrap=broker.bootstrap, kafka_topic=topic,
                    kafka_group=group, ingest_stats_endpoint=stats, dead_letter_path=cluster.tmp / f"{group}.dead",
                    ingest_ack_timeout_s=0.5, ingest_retry_max_s=0.2, **FAST, **INGEST_LIMITS)
    settings.update(extra)
    proc = cluster.start_process(["-m", "ingest"], name, **settings)
    proc.stats_endpoint = stats
    return proc


def stats(proc: Proc) -> dict:
    assert proc.alive(), proc.output()
    return zmq_call(proc.stats_endpoint, [P.stats(1)], 1000)[0]


def test_kill_and_restart_resume_from_committed_offsets(cluster, broker):
    stream = make_stream("kafka", 6000, seed=11, entities=300, bad_every=101, arrays=False)
    topic, group = broker.create_topic(4), f"g-{uuid.uuid4().hex[:8]}"
    half = len(stream.lines) // 2
    broker.produce(topic, stream, range(half))
    first = start_ingest(cluster, broker, topic, group, "kafka-a", ingest_batch_events=100,
                         ingest_max_in_flight=2)
    poll_for(lambda: stats(first)["events"] >= 1000, 30, what="the first ingest to apply 1000 events")
    first.kill()  # SIGKILL: no drain, no last commit
    broker.produce(topic, stream, range(half, len(stream.lines)))
    second = start_ingest(cluster, broker, topic, group, "kafka-b")
    assert_store_matches(cluster.url, stream.oracle(), stream.entities | {"kafka:big", "kafka:huge", "x"})
    poll_for(lambda: stats(second)["lag"] == 0, 15, what="consumer lag 0")
    # the second one started from the committed offsets, not from the beginning
    assert stats(second)["events"] <= stream.events - 1000
    letters = dead_letters(cluster.tmp / f"{group}.dead")
    assert len({d["source"] for d in letters}) == len(stream.bad)  # replays may repeat a few
    assert all(re.fullmatch(rf"kafka:{topic}\[\d\]@\d+", d["source"]) for d in letters)
    assert {w for w in stream.bad.values()} == {w for w in stream.bad.values()
                                                if any(w in d["reason"] for d in letters)}


def test_no_commit_past_what_the_shards_acknowledged(cluster, broker):
    """Shard 1 is down: ingest reads, cannot get acks, is killed; nothing past the acks was
    committed, so the next ingest reads again what shard 1 never got."""
    stream = make_stream("kdown", 2000, seed=12, entities=120, arrays=False)
    topic, group = broker.create_topic(4), f"g-{uuid.uuid4().hex[:8]}"
    broker.produce(topic, stream)
    cluster.shards[1].kill()
    try:
        first = start_ingest(cluster, broker, topic, group, "kdown-a", ingest_batch_events=200)
        # it has read as much as it may (all batches out) and kept retrying for a while
        poll_for(lambda: stats(first)["in_flight"] == 4 and stats(first)["retries"] >= 6, 30,
                 what="ingest to fill its batches and retry shard 1")
        first.kill()
        # every batch held writes for shard 1: not one offset may have been committed
        assert broker.committed(topic, group, 4) == [None] * 4
    finally:
        cluster.start_shard(1)  # memory only: it comes back empty
    start_ingest(cluster, broker, topic, group, "kdown-b")
    assert_store_matches(cluster.url, stream.oracle(), stream.entities)


def _assigned(proc: Proc) -> set[int] | None:
    found = re.findall(r"assigned partitions \[([\d, ]*)\]", proc.output())
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else None


def test_two_members_of_one_group_share_the_partitions(cluster, broker):
    stream = make_stream("kpair", 3000, seed=13, entities=200, arrays=False)
    topic, group = broker.create_topic(4), f"g-{uuid.uuid4().hex[:8]}"
    a = start_ingest(cluster, broker, topic, group, "pair-a")
    poll_for(lambda: _assigned(a), 20, what="the first member's assignment")
    b = start_ingest(cluster, broker, topic, group, "pair-b")

    def split():
        pa, pb = _assigned(a), _assigned(b)
        return pa and pb and not (pa & pb) and (pa | pb) == {0, 1, 2, 3}

    poll_for(split, 30, what="the partitions to be split between the two members")
    broker.produce(topic, stream)
    assert_store_matches(cluster.url, stream.oracle(), stream.entities)
    sa, sb = stats(a), stats(b)
    assert sa["events"] > 0 and sb["events"] > 0
    assert sa["events"] + sb["events"] >= stream.events  # more only if a rebalance replayed some
