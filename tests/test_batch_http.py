"""``POST /features/batch`` and TTL over real HTTP: order across shards, limits, expiry."""
import random
import time

import pytest

from tests.support import Cluster, request

TTL_S = 3600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("batch"), ttl_s=TTL_S, max_batch_entities=100,
                 max_response_bytes=50_000) as c:
        yield c


@pytest.fixture
def api(cluster):
    def call(method, path, body=None):
        return request(method, cluster.url + path, body)
    return call


def test_order_duplicates_and_missing_across_both_shards(api, cluster):
    events = [{"entity_id": f"o{i}", "features": {"i": i, "s": str(i)}} for i in range(60)]
    assert api("POST", "/features", events)[2]["written"] == 120
    ids = [f"o{i}" for i in range(60)] + ["o7", "missing1", "o7", "missing2"]
    random.Random(3).shuffle(ids)
    shards = {cluster_shard(cluster, e) for e in ids}
    assert shards == {0, 1}  # the request really spans both shards
    status, _, body = api("POST", "/features/batch", {"entity_ids": ids})
    assert status == 200 and len(body["results"]) == len(ids)
    for eid, result in zip(ids, body["results"]):
        assert result["entity_id"] == eid
        if eid.startswith("missing"):
            assert result == {"entity_id": eid, "detail": "No features found for entity"}
        else:
            assert result["features"] == {"i": int(eid[1:]), "s": eid[1:]}


def cluster_shard(cluster, eid):
    from common.partition import Partitioner
    return Partitioner(len(cluster.shards)).shard_for(eid)


def test_feature_selection(api):
    api("POST", "/features", [{"entity_id": "sel1", "features": {"a": 1, "b": 2}},
                              {"entity_id": "sel2", "features": {"b": 3}}])
    body = api("POST", "/features/batch", {"entity_ids": ["sel1", "sel2"], "features": ["a", "zz"]})[2]
    assert body["results"][0]["features"] == {"a": 1}
    assert body["results"][1] == {"entity_id": "sel2", "detail": "No features found for entity"}


def test_expired_values_are_omitted_and_an_entity_with_only_expired_ones_is_missing(api):
    old = time.time() - TTL_S - 60
    api("POST", "/features", [{"entity_id": "ttl_old", "features": {"x": 1}, "event_timestamp": old},
                              {"entity_id": "ttl_mixed", "features": {"x": 2}, "event_timestamp": old},
                              {"entity_id": "ttl_mixed", "features": {"y": 3}}])
    body = api("POST", "/features/batch", {"entity_ids": ["ttl_old", "ttl_mixed"]})[2]
    assert body["results"][0] == {"entity_id": "ttl_old", "detail": "No features found for entity"}
    assert body["results"][1]["features"] == {"y": 3}
    assert api("GET", "/features/ttl_old")[0] == 404
    assert api("GET", "/features/ttl_mixed/x")[0] == 404
    assert api("GET", "/features/ttl_mixed")[2]["features"] == {"y": 3}
    # the Feast endpoint still reports it, with its value (an undeclared view: join key driver_id)
    api("POST", "/write-to-online-store", {"feature_view_name": "v", "df": {
        "driver_id": ["d1"], "f": [5], "event_timestamp": [old]}})
    status, _, body = api("POST", "/get-online-features", {"features": ["v:f"], "entities": {"driver_id": ["d1"]}})
    assert status == 200 and (body["results"][1]["values"], body["results"][1]["statuses"]) == ([5], ["OUTSIDE_MAX_AGE"])
    assert api("POST", "/features/batch", {"entity_ids": ["d1"]})[2]["results"][0]["detail"]


def test_batch_at_the_limit_passes_and_over_it_is_413(api):
    assert api("POST", "/features/batch", {"entity_ids": [f"x{i}" for i in range(100)]})[0] == 200
    status, _, body = api("POST", "/features/batch", {"entity_ids": [f"x{i}" for i in range(101)]})
    assert (status, body["detail"]) == (413, "entity_ids has 101 items; the limit is 100 (FS_MAX_BATCH_ENTITIES)")


def test_response_over_the_size_limit_is_413(api):
    api("POST", "/features", [{"entity_id": f"big{i}", "name": "blob", "value": "x" * 10_000} for i in range(6)])
    assert api("POST", "/features/batch", {"entity_ids": [f"big{i}" for i in range(4)]})[0] == 200
    status, _, body = api("POST", "/features/batch", {"entity_ids": [f"big{i}" for i in range(6)]})
    assert status == 413 and "FS_MAX_RESPONSE_BYTES" in body["detail"] and "50000" in body["detail"]


@pytest.mark.parametrize("ids, words", [([1], "entity_ids[0] must be a string"),
                                        (["a", ""], "entity_ids[1] must not be empty"),
                                        (["a", "b" * 513], "entity_ids[1] is longer than 512 bytes")])
def test_bad_ids_name_the_item(api, ids, words):
    status, _, body = api("POST", "/features/batch", {"entity_ids": ids})
    assert (status, body["detail"]) == (400, words)


def test_unicode_ids(api):
    ids = ["ü 1", "user/1", "a:b", "日本"]
    api("POST", "/features", [{"entity_id": e, "name": "n", "value": e} for e in ids])
    body = api("POST", "/features/batch", {"entity_ids": ids})[2]
    assert [r["features"]["n"] for r in body["results"]] == ids
