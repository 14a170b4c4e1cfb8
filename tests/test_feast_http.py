"""Feast endpoints over real HTTP against real shards, replaying the traffic recorded from Feast 0.67."""
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support import Cluster, quote, request

RECORDED = Path(__file__).parent / "data" / "feast"
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips", "rating", "trips_today", "earnings_today", "miles_today",
            "cancel_rate", "hours_online", "lifetime_trips"]
CONFIG = f"""
[views.driver_hourly_stats]
join_keys = ["driver_id"]
features = {json.dumps(FEATURES)}
push_source = "driver_stats_push"

[views.recent_stats]
join_keys = ["driver_id"]
ttl_s = 86400

[views.trips]
join_keys = ["driver_id", "customer_id"]

[feature_services]
driver_activity = {json.dumps([f"driver_hourly_stats:{f}" for f in FEATURES])}
"""


def recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text())


CASES = {c["name"]: c for c in recorded("curl_other_cases.json")["cases"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feast")
    (tmp / "store.toml").write_text(CONFIG)
    with Cluster(tmp, config_file=tmp / "store.toml", max_batch_entities=60, max_response_bytes=60_000) as c:
        yield c


@pytest.fixture
def api(cluster):
    def call(method, path, body=None, headers=None):
        return request(method, cluster.url + path, body, headers)
    return call


def by_name(body: dict) -> dict:
    """Feast's answer as {feature name: column}: clients map columns by metadata.feature_names."""
    return dict(zip(body["metadata"]["feature_names"], body["results"]))


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S")


def test_sdk_write_then_read_back_matches_feasts_answer(api):
    rec = recorded("sdk_write_to_online_store.json")
    write = rec["exchanges"][0]
    status, headers, body = api("POST", "/write-to-online-store", write["request"]["body_raw"],
                                {"Content-Type": "application/json"})
    assert (status, headers["Content-Type"], body) == (200, "application/json", None)
    read = rec["read_back"]["exchanges"][0]
    status, _, body = api("POST", "/get-online-features", read["request"]["body_raw"])
    assert status == 200
    assert by_name(body) == by_name(read["response"]["body_json"])
    assert body["metadata"]["feature_names"][0] == "driver_id"  # join key first, as Feast
    assert list(body) == ["results", "metadata"]


def write_driver_1(api):
    """Driver 1 as in the recordings' Redis: the values and event time of the recorded answers."""
    answer = by_name(recorded("curl_get_online_features.json")["exchanges"][0]["response"]["body_json"])
    df = {"driver_id": [1], "event_timestamp": ["2026-11-25T12:05:29"]}
    df.update({f: [answer[f]["values"][0]] for f in FEATURES})
    assert api("POST", "/write-to-online-store", {"feature_view_name": "driver_hourly_stats", "df": df})[0] == 200
    return answer


def test_curl_read_of_an_existing_and_a_missing_driver(api):
    answer = write_driver_1(api)
    exchange = recorded("curl_get_online_features.json")["exchanges"][0]
    status, _, body = api("POST", "/get-online-features", exchange["request"]["body_raw"])
    assert status == 200
    got = by_name(body)
    assert set(got) == set(answer)
    assert got["driver_id"] == answer["driver_id"]
    for name in FEATURES:
        assert got[name]["values"][0] == answer[name]["values"][0]
        assert got[name]["statuses"][0] == "PRESENT"
        assert got[name]["event_timestamps"][0] == answer[name]["event_timestamps"][0]
        # Feast's Redis store says PRESENT with null for a missing driver; we say NOT_FOUND
        assert (got[name]["values"][1], got[name]["statuses"][1], got[name]["event_timestamps"][1]) == \
            (None, "NOT_FOUND", "1970-01-01T00:00:00Z")


@pytest.mark.parametrize("case", ["curl_full_feature_names", "curl_feature_service"])
def test_full_feature_names_and_feature_service(api, case):
    write_driver_1(api)
    exchange = CASES[case]["exchanges"][0]
    status, _, body = api("POST", "/get-online-features", exchange["request"]["body_raw"])
    expected = by_name(exchange["response"]["body_json"])
    assert status == 200 and set(by_name(body)) == set(expected)
    for name, col in by_name(body).items():
        assert col["values"][0] == expected[name]["values"][0]


@pytest.mark.parametrize("case, status, cls", [
    ("curl_error_unknown_feature_view", 404, "FeatureViewNotFoundException"),
    ("curl_error_unknown_feature", 404, "FeastObjectNotFoundException"),
    ("curl_error_wrong_entity_key", 400, "FeastError"),
])
def test_errors_carry_feasts_error_body(api, case, status, cls):
    exchange = CASES[case]["exchanges"][0]
    got, headers, body = api("POST", "/get-online-features", exchange["request"]["body_raw"])
    assert got == status and headers["Content-Type"] == "application/json"
    assert isinstance(body, str)  # a JSON string holding Feast's error, as the SDK expects
    detail = json.loads(body)
    assert (detail["module"], detail["class"]) == ("feast.errors", cls)
    if case == "curl_error_unknown_feature_view":
        assert json.loads(exchange["response"]["body_json"])["message"].startswith(detail["message"])


def test_shape_error_is_feasts_422_byte_for_byte(cluster):
    exchange = CASES["curl_error_bad_json_shape"]["exchanges"][0]
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", cluster.http_port, timeout=10)
    conn.request("POST", "/get-online-features", exchange["request"]["body_raw"], {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert (resp.status, resp.read().decode()) == (422, exchange["response"]["body_raw"])
    conn.close()


def test_body_without_content_type_is_accepted(api):
    """Feast answers 422 here; our contract accepts JSON without a Content-Type, as curl -d sends."""
    write_driver_1(api)
    exchange = CASES["curl_error_no_content_type"]["exchanges"][0]
    status, _, body = api("POST", "/get-online-features", exchange["request"]["body_raw"],
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and by_name(body)["conv_rate"]["statuses"] == ["PRESENT", "NOT_FOUND"]


@pytest.mark.parametrize("body", ["{", "[1]", ""])
def test_unparsable_body_is_422(api, body):
    status, _, reply = api("POST", "/get-online-features", body)
    assert status == 422 and reply["detail"][0]["loc"] == ["body"]


def test_health_is_200_with_an_empty_body(api):
    status, headers, body = api("GET", "/health")
    assert (status, body) == (200, None) and headers["Content-Length"] == "0"


def test_statuses_present_missing_and_outside_max_age_with_ttl(api):
    """The recorded curl_read_statuses case, on a view with a one-day TTL, times relative to now."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    df = {"driver_id": [300001, 300002], "conv_rate": [1, 2], "acc_rate": [1, None],
          "event_timestamp": [iso(now - timedelta(minutes=1)), iso(now - timedelta(days=2))],
          "created": [iso(now), None]}
    status, _, body = api("POST", "/write-to-online-store", {"feature_view_name": "recent_stats", "df": df})
    assert (status, body) == (200, None)
    status, _, body = api("POST", "/get-online-features", {
        "features": ["recent_stats:conv_rate", "recent_stats:acc_rate"],
        "entities": {"driver_id": [1, 999999999, 300001, 300002]}})
    assert status == 200
    got = by_name(body)
    assert got["conv_rate"]["values"] == [None, None, 1, 2]
    assert got["conv_rate"]["statuses"] == ["NOT_FOUND", "NOT_FOUND", "PRESENT", "OUTSIDE_MAX_AGE"]
    assert got["conv_rate"]["event_timestamps"][3] == iso(now - timedelta(days=2)) + "Z"
    assert got["acc_rate"]["statuses"] == ["NOT_FOUND", "NOT_FOUND", "PRESENT", "OUTSIDE_MAX_AGE"]
    # native reads omit the expired values: 300002 has only expired ones
    assert api("GET", "/features/300002")[0] == 404
    assert api("GET", "/features/300001")[2]["features"] == {"recent_stats:conv_rate": 1, "recent_stats:acc_rate": 1}


def test_null_value_status(api):
    api("POST", "/write-to-online-store", {"feature_view_name": "recent_stats",
                                           "df": {"driver_id": ["n1"], "conv_rate": [None]}})
    got = by_name(api("POST", "/get-online-features", {"features": ["recent_stats:conv_rate"],
                                                       "entities": {"driver_id": ["n1"]}})[2])
    assert (got["conv_rate"]["values"], got["conv_rate"]["statuses"]) == ([None], ["NULL_VALUE"])


def test_many_drivers_across_shards_keep_request_order(api):
    ids = list(range(500, 540))
    df = {"driver_id": ids, "event_timestamp": ["2026-01-01T00:00:00"] * 40}
    df.update({f: [i * 10 + k for i in ids] for k, f in enumerate(FEATURES)})
    assert api("POST", "/write-to-online-store", {"feature_view_name": "driver_hourly_stats", "df": df})[0] == 200
    asked = ids + [10**9 + i for i in range(15)]
    random.Random(4).shuffle(asked)
    status, _, body = api("POST", "/get-online-features", {"feature_service": "driver_activity",
                                                           "entities": {"driver_id": asked}})
    assert status == 200
    got = by_name(body)
    assert got["driver_id"]["values"] == asked
    for k, f in enumerate(FEATURES):
        assert got[f]["values"] == [i * 10 + k if i < 10**9 else None for i in asked]
        assert got[f]["statuses"] == ["PRESENT" if i < 10**9 else "NOT_FOUND" for i in asked]


def test_compound_join_keys(api):
    df = {"customer_id": ["a&b", "c"], "driver_id": [1, 1], "fare": [9.5, 3]}
    assert api("POST", "/write-to-online-store", {"feature_view_name": "trips", "df": df})[0] == 200
    got = by_name(api("POST", "/get-online-features", {
        "features": ["trips:fare"], "entities": {"customer_id": ["c", "a&b", "z"], "driver_id": [1, 1, 1]}})[2])
    assert got["fare"]["values"] == [3, 9.5, None]
    assert list(got)[:2] == ["customer_id", "driver_id"]  # join keys echoed in request order
    status, _, body = api("GET", "/features/" + quote("driver_id=1&customer_id=a%26b"))
    assert (status, body["features"]) == (200, {"trips:fare": 9.5})


def test_push_writes_to_the_views_of_the_push_source(api):
    df = {"driver_id": [7007], "conv_rate": [0.25], "event_timestamp": ["2026-02-01T00:00:00"]}
    status, headers, body = api("POST", "/push", {"push_source_name": "driver_stats_push", "df": df})
    assert (status, body, headers["Content-Length"]) == (200, None, "0")
    assert api("GET", "/features/7007")[2]["features"] == {"driver_hourly_stats:conv_rate": 0.25}
    status, _, body = api("POST", "/push", {"push_source_name": "nope", "df": df})
    assert status == 422 and json.loads(body)["class"] == "PushSourceNotFoundException"
    status, _, body = api("POST", "/push", {"push_source_name": "driver_stats_push", "df": df, "to": "offline"})
    assert status == 400 and "online" in json.loads(body)["message"]


@pytest.mark.parametrize("body, status, words", [
    ({"feature_view_name": "nope", "df": {"driver_id": [1], "x": [1]}}, 404, "Feature view nope does not exist"),
    ({"feature_view_name": "driver_hourly_stats", "df": {"conv_rate": [1]}}, 400, "Missing join key values"),
    ({"feature_view_name": "driver_hourly_stats", "df": {"driver_id": [1, 2], "conv_rate": [1]}}, 400,
     "same length"),
    ({"feature_view_name": "driver_hourly_stats", "df": {"driver_id": [1], "conv_rate": [1],
                                                         "event_timestamp": ["soon"]}}, 400, "event_timestamp"),
])
def test_write_errors(api, body, status, words):
    got, _, reply = api("POST", "/write-to-online-store", body)
    assert got == status and words in json.loads(reply)["message"]


@pytest.mark.parametrize("body, loc", [({"df": {}}, ["body", "feature_view_name"]),
                                       ({"feature_view_name": "x", "df": [1]}, ["body", "df"])])
def test_write_shape_errors_are_422(api, body, loc):
    status, _, reply = api("POST", "/write-to-online-store", body)
    assert status == 422 and reply["detail"][0]["loc"] == loc


def test_limits_are_413_with_feasts_error_body(api):
    status, _, body = api("POST", "/get-online-features", {"feature_service": "driver_activity",
                                                           "entities": {"driver_id": list(range(61))}})
    assert status == 413 and "FS_MAX_BATCH_ENTITIES" in json.loads(body)["message"]
    df = {"driver_id": list(range(800, 860)), "conv_rate": ["x" * 2000] * 60}
    assert api("POST", "/write-to-online-store", {"feature_view_name": "driver_hourly_stats", "df": df})[0] == 200
    status, _, body = api("POST", "/get-online-features", {"features": ["driver_hourly_stats:conv_rate"],
                                                           "entities": {"driver_id": list(range(800, 860))}})
    assert status == 413 and "FS_MAX_RESPONSE_BYTES" in json.loads(body)["message"]


def test_a_shard_down_is_503_with_retry_after(tmp_path):
    with Cluster(tmp_path) as c:
        c.shards[1].stop()
        ids = [str(i) for i in range(20)]  # some on each shard
        status, headers, body = request("POST", c.url + "/get-online-features",
                                        {"features": ["v:f"], "entities": {"driver_id": ids}})
        assert (status, headers["Retry-After"]) == (503, "1") and "shard 1" in body["detail"]
        assert request("GET", c.url + "/health")[0] == 503


def test_no_entity_rows_and_view_version_metadata(api):
    status, _, body = api("POST", "/get-online-features", {"features": ["recent_stats:conv_rate"],
                                                           "entities": {"driver_id": []},
                                                           "include_feature_view_version_metadata": True})
    assert status == 200
    assert body["results"] == [{"values": [], "statuses": [], "event_timestamps": []}] * 2
    assert body["metadata"] == {"feature_names": ["driver_id", "conv_rate"],
                                "feature_view_metadata": [{"name": "recent_stats", "version": 0}]}


def _garbage(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, 10**30, 1.5])
    if kind == 3:
        return rng.choice(["", "driver_id", "driver_hourly_stats:conv_rate", "v:f", ":", "x" * 600, "ü"])
    if kind == 4:
        return rng.choice(["2026-01-01T00:00:00", "soon", "2026-01-01T00:00:00+02:00"])
    if kind == 5:
        return []
    if kind == 6:
        return [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["entities", "features", "feature_service", "full_feature_names", "df", "feature_view_name",
            "push_source_name", "to", "driver_id", "conv_rate", "event_timestamp", "customer_id"]
    return {rng.choice(keys): _garbage(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("path", ["/get-online-features", "/write-to-online-store", "/push"])
def test_garbage_bodies_never_get_a_server_error(api, path):
    rng = random.Random(path)
    statuses = set()
    for _ in range(150):
        status, _, body = api("POST", path, json.dumps(_garbage(rng)))
        assert status < 500, body
        statuses.add(status)
    assert statuses & {400, 404, 422}


def test_well_formed_bodies_with_garbage_values_never_get_a_server_error(api):
    rng = random.Random(11)
    leaf = lambda: _garbage(rng, 3)  # noqa: E731
    for _ in range(100):
        n = rng.randrange(3)
        keys = rng.choice([["driver_id"], ["driver_id", "customer_id"], ["x_id"], ["note"]])
        read = {"entities": {k: [leaf() for _ in range(n)] for k in keys},
                "features": rng.choice([["recent_stats:conv_rate"], ["trips:fare", "recent_stats:x"], [leaf()]])}
        status, _, body = api("POST", "/get-online-features", read)
        assert status < 500, (read, body)
        df = {k: [leaf() for _ in range(n)] for k in keys + ["conv_rate", "event_timestamp"]}
        for path, body in (("/write-to-online-store", {"feature_view_name": rng.choice(["recent_stats", "trips"]),
                                                       "df": df}),
                           ("/push", {"push_source_name": "driver_stats_push", "df": df})):
            status, _, reply = api("POST", path, body)
            assert status < 500, (body, reply)
