"""The Python client (featurestore.Client, AsyncClient) against real shard and front-end processes,
plus its retry rule against a fake transport (no sockets)."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from featurestore import (AsyncClient, BadRequest, Client, Entity, Feature, Forbidden, NotFound, Unauthorized,
                          Unavailable, Unreachable, WriteResult)
from tests.support import Cluster, free_port, poll_for


@pytest.fixture(scope="module")
def fs(cluster):
    with Client(cluster.url) as client:
        yield client


def test_put_then_read_the_feature_and_the_entity(fs):
    t = datetime(2026, 1, 22, 10, 31, 29, tzinfo=timezone.utc)
    assert fs.put("c:user1", "ctr", 0.12, t) == WriteResult(1, 0)
    assert fs.put_features("c:user1", {"clicks": 3, "emb": [0.1, 0.2]}, "2026-01-21T00:00:00Z") == WriteResult(2, 0)
    feat = fs.get_feature("c:user1", "ctr")
    assert feat == Feature("c:user1", "ctr", 0.12, "2026-01-22T10:31:29Z") and feat.event_time == t
    ent = fs.get_entity("c:user1")
    assert ent == Entity("c:user1", {"ctr": 0.12, "clicks": 3, "emb": [0.1, 0.2]}, "2026-01-22T10:31:29Z")
    # a naive datetime is UTC; an older event is stale
    assert fs.put("c:user1", "ctr", 9, datetime(2020, 1, 1)) == WriteResult(0, 1)
    assert fs.get_feature("c:user1", "ctr").value == 0.12


@pytest.mark.parametrize("eid", ["user/1", "..", ".", "?q=1&x", "\u00fc 1", "100%", "#f", "batch"])
def test_awkward_entity_ids_round_trip(fs, eid):
    fs.put(eid, "v:f", eid)
    assert fs.get_feature(eid, "v:f").value == eid
    assert fs.get_entity(eid).features == {"v:f": eid}
    assert fs.delete(eid) == 1


def test_write_many_and_read_many_in_order(fs):
    result = fs.write([{"entity_id": f"c:b{i}", "features": {"x": i, "y": -i}} for i in range(20)])
    assert result == WriteResult(40, 0)
    got = fs.get_many(["c:b7", "c:nobody", "c:b0"])
    assert [e.entity_id if e else None for e in got] == ["c:b7", None, "c:b0"]
    assert got[0].features == {"x": 7, "y": -7}
    assert fs.get_many(["c:b3"], ["y"])[0].features == {"y": -3}


def test_delete_and_not_found_carry_status_and_detail(fs):
    fs.put_features("c:del", {"a": 1, "b": 2})
    assert fs.delete("c:del", "a") == 1
    with pytest.raises(NotFound) as exc:
        fs.get_feature("c:del", "a")
    assert (exc.value.status, exc.value.detail) == (404, "Feature not found")
    assert fs.delete("c:del") == 1
    with pytest.raises(NotFound) as exc:
        fs.get_entity("c:del")
    assert exc.value.detail == "No features found for entity" and exc.value.body == {"detail": exc.value.detail}
    with pytest.raises(NotFound):
        fs.delete("c:del")


def test_bad_input_is_a_bad_request_naming_the_field(fs):
    with pytest.raises(BadRequest) as exc:
        fs.put("c:x", "bad name!", 1)
    assert exc.value.status == 400 and "name" in exc.value.detail
    with pytest.raises(BadRequest) as exc:
        fs.write([{"entity_id": "c:x", "name": "ok", "value": 1}, {"entity_id": "c:x", "name": "n"}])
    assert exc.value.detail == "[1].value is required"


def test_feast_write_read_and_push(fs):
    fs.write_to_online_store("c_driver", {"driver_id": [1001, 1002], "conv_rate": [0.5, 0.7],
                                          "event_timestamp": ["2026-01-01T00:00:00", "2026-01-01T00:00:00"]})
    fs.push("c_driver", {"driver_id": [1003], "conv_rate": [0.9]})
    out = fs.get_online_features({"driver_id": [1001, 1003, 9999]}, ["c_driver:conv_rate"])
    assert out.feature_names == ["driver_id", "conv_rate"]
    assert out.to_dict() == {"driver_id": [1001, 1003, 9999], "conv_rate": [0.5, 0.9, None]}
    assert out.statuses()["conv_rate"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    with pytest.raises(BadRequest) as exc:
        fs.get_online_features({"driver_id": [1]}, ["no_colon"])
    assert exc.value.status == 400 and exc.value.detail.startswith("FeastError: feature reference")


def test_operations_endpoints(fs):
    assert fs.health() is True
    assert fs.healthz()["status"] == "ok"
    ready = fs.ready()
    assert ready.ready and [s["ready"] for s in ready.shards] == [True, True]
    fs.put("c:stats", "x", 1)
    stats = fs.stats()
    assert len(stats["shards"]) == 2 and stats["totals"]["entities"] >= 1
    names = {fam.name for fam in text_string_to_metric_families(fs.metrics())}
    assert "featurestore_shard_up" in names
    assert "/features/{entity_id}" in fs.openapi()["paths"]
    status = fs.status()
    assert [s["state"] for s in status["shards"]] == ["ready", "ready"]
    assert any(r["route"] == "POST /features" and r["count"] >= 1 for r in status["routes"])


def test_one_connection_is_reused(cluster):
    ports = []
    hook = lambda resp: ports.append(resp.extensions["network_stream"].get_extra_info("client_addr")[1])  # noqa: E731
    with Client(cluster.url) as client:
        client._http.event_hooks["response"] = [hook]
        for i in range(5):
            client.put("c:reuse", "n", i)
            client.get_entity("c:reuse")
    assert len(ports) == 10 and len(set(ports)) == 1


def test_async_client_does_the_same_concurrently(cluster):
    async def run():
        async with AsyncClient(cluster.url) as fs:
            await asyncio.gather(*(fs.put(f"c:a{i}", "v", i) for i in range(30)))
            got = await asyncio.gather(*(fs.get_feature(f"c:a{i}", "v") for i in range(30)))
            assert [f.value for f in got] == list(range(30))
            assert [e.features for e in await fs.get_many(["c:a1", "c:a2"])] == [{"v": 1}, {"v": 2}]
            assert await fs.delete("c:a1") == 1
            with pytest.raises(NotFound):
                await fs.get_entity("c:a1")
            assert (await fs.ready()).ready and await fs.health()
            assert (await fs.stats())["totals"]["entities"] >= 29

    asyncio.run(run())


def test_unreachable_store():
    with Client(f"http://127.0.0.1:{free_port()}", timeout_s=2) as fs:
        with pytest.raises(Unreachable) as exc:
            fs.get_entity("x")
    assert exc.value.status is None and "cannot reach the store" in exc.value.detail


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A cluster of its own with tokens (a shard of it gets stopped)."""
    with Cluster(tmp_path_factory.mktemp("client-guarded"), read_token="r-tok", write_token="w-tok") as c:
        yield c


def test_tokens(guarded):
    with pytest.raises(Unauthorized) as exc:
        Client(guarded.url).get_entity("x")
    assert exc.value.status == 401
    with pytest.raises(Forbidden) as exc:
        Client(guarded.url, token="r-tok").put("x", "n", 1)
    assert exc.value.detail == "this token may not write"
    with Client(guarded.url, token="w-tok") as fs:
        fs.put("x", "n", 1)
    assert Client(guarded.url, token="r-tok").get_feature("x", "n").value == 1


def _entity_on(shard: int, n_shards: int = 2) -> str:
    from common.partition import Partitioner
    p = Partitioner(n_shards)
    return next(f"c:e{i}" for i in range(1000) if p.shard_for(f"c:e{i}") == shard)


def test_503_is_retried_after_retry_after_then_raised(guarded):
    eid = _entity_on(1)
    guarded.shards[1].stop()
    try:
        with Client(guarded.url, token="w-tok", retries=2, max_retry_wait_s=0.3) as fs:
            t0 = time.monotonic()
            with pytest.raises(Unavailable) as exc:
                fs.get_entity(eid)
            elapsed = time.monotonic() - t0
            assert exc.value.status == 503 and exc.value.retry_after_s == 1.0
            assert elapsed >= 0.6  # two waits of min(Retry-After 1 s, 0.3 s)
            assert fs.ready().ready is False  # probes answer 503 at once, not retried
    finally:
        guarded.start_shard(1)
    poll_for(lambda: Client(guarded.url).ready().ready, what="the shard back")


# ---- the retry rule, socket-free: a fake transport answers 503 a few times
def _fake(answers: list[httpx.Response], seen: list[float]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return httpx.MockTransport(handle)


def test_retry_waits_retry_after_and_succeeds():
    seen: list[float] = []
    busy = httpx.Response(503, headers={"Retry-After": "0.1"}, json={"detail": "shard 1 did not answer"})
    ok = httpx.Response(200, json={"status": "ok", "pid": 1})
    with Client("http://fake", transport=_fake([busy, busy, ok], seen), retries=3) as fs:
        assert fs.stats() == {"status": "ok", "pid": 1}
    assert len(seen) == 3 and seen[1] - seen[0] >= 0.1 and seen[2] - seen[1] >= 0.1


def test_retries_are_bounded_in_number_and_wait():
    seen: list[float] = []
    busy = httpx.Response(503, headers={"Retry-After": "30"}, json={"detail": "busy"})
    with Client("http://fake", transport=_fake([busy], seen), retries=2, max_retry_wait_s=0.05) as fs:
        with pytest.raises(Unavailable) as exc:
            fs.put("e", "n", 1)
    assert len(seen) == 3 and seen[-1] - seen[0] < 5
    assert (exc.value.detail, exc.value.retry_after_s) == ("busy", 30.0)


def test_feast_error_strings_and_validation_lists_become_plain_details():
    import json
    feast = httpx.Response(404, json=json.dumps({"module": "feast.errors", "class": "FeatureViewNotFoundException",
                                                 "message": "Feature view v does not exist"}))
    shape = httpx.Response(422, json={"detail": [{"type": "missing", "loc": ["body", "df"], "msg": "Field required"}]})
    with Client("http://fake", transport=_fake([feast], [])) as fs:
        with pytest.raises(NotFound) as exc:
            fs.get_online_features({"k": [1]}, ["v:f"])
    assert exc.value.detail == "FeatureViewNotFoundException: Feature view v does not exist"
    with Client("http://fake", transport=_fake([shape], [])) as fs:
        with pytest.raises(BadRequest) as exc:
            fs.write_to_online_store("v", {})
    assert (exc.value.status, exc.value.detail) == (422, "body.df: Field required")


def test_event_time_forms():
    from featurestore._calls import event_timestamp
    aware = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert event_timestamp(aware) == "2026-01-01T10:00:00Z"
    assert event_timestamp(datetime(2026, 1, 1)) == "2026-01-01T00:00:00Z"
    assert event_timestamp(1.5) == 1.5 and event_timestamp("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"
