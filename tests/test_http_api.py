"""Every native endpoint and error, over real HTTP to real shard and front-end processes."""
import json
import socket

import pytest

from tests.support import quote, request


@pytest.fixture
def api(cluster):
    def call(method, path, body=None, headers=None):
        return request(method, cluster.url + path, body, headers)
    return call


def test_seed_write_then_read_one_feature(api):
    status, _, body = api("POST", "/features", {"entity_id": "2025-06-01", "name": "temperature", "value": 28.5,
                                                "event_timestamp": "2025-06-01T12:00:00Z"})
    assert (status, body) == (200, {"message": "feature saved", "written": 1, "stale": 0})
    status, headers, body = api("GET", "/features/2025-06-01/temperature")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert body == {"entity_id": "2025-06-01", "name": "temperature", "value": 28.5,
                    "event_timestamp": "2025-06-01T12:00:00Z"}
    assert api("GET", "/features?entity_id=2025-06-01&name=temperature")[2] == body


def test_whole_entity_has_the_event_driven_seed_shape(api):
    api("POST", "/features", {"entity_id": "user_123abc", "features": {"last_action_click": "1", "n": 3},
                              "event_timestamp": "2026-01-22T10:31:29Z"})
    api("POST", "/features", {"entity_id": "user_123abc", "name": "older", "value": [0.1, 0.2],
                              "event_timestamp": "2026-01-21T10:31:29Z"})
    status, _, body = api("GET", "/features/user_123abc")
    assert status == 200
    assert body == {"entity_id": "user_123abc", "features": {"last_action_click": "1", "n": 3, "older": [0.1, 0.2]},
                    "last_updated": "2026-01-22T10:31:29Z"}


def test_values_keep_their_json_types(api):
    values = {"i": 1, "s": "1", "f": 1.5, "b": False, "z": None, "l": [1, "a", None], "o": {"k": {"n": 2}},
              "big": 2**63 - 1, "neg": -(2**63)}
    assert api("POST", "/features", {"entity_id": "types", "features": values})[0] == 200
    assert api("GET", "/features/types")[2]["features"] == values


def test_last_updated_is_the_stored_event_time_and_older_writes_are_stale(api):
    api("POST", "/features", {"entity_id": "lww", "name": "x", "value": "new", "event_timestamp": 2000000000})
    status, _, body = api("POST", "/features", [
        {"entity_id": "lww", "name": "x", "value": "old", "event_timestamp": "2000-01-01T00:00:00Z"},
        {"entity_id": "lww", "name": "y", "value": 1, "event_timestamp": 1000000000.5}])
    assert (status, body["written"], body["stale"]) == (200, 1, 1)
    body = api("GET", "/features/lww")[2]
    assert body["features"] == {"x": "new", "y": 1}
    assert body["last_updated"] == "2033-05-18T03:33:20Z"
    assert api("GET", "/features/lww/y")[2]["event_timestamp"] == "2001-09-09T01:46:40.500000Z"


def test_writes_spread_over_both_shards_in_one_request(api, cluster):
    events = [{"entity_id": f"spread{i}", "name": "v", "value": i} for i in range(50)]
    assert api("POST", "/features", events)[2]["written"] == 50
    stats = api("GET", "/stats")[2]
    assert all(s["entities"] > 0 for s in stats["shards"])
    for i in (0, 17, 49):
        assert api("GET", f"/features/spread{i}/v")[2]["value"] == i


@pytest.mark.parametrize("eid", ["user/1", "a:b", "\u00fc 1", "sp ace", "100%", "?q=1&x", "..", "#frag", "batch"])
def test_awkward_entity_ids_round_trip_through_every_url_form(api, eid):
    assert api("POST", "/features", {"entity_id": eid, "name": "view:f", "value": eid})[0] == 200
    assert api("GET", f"/features/{quote(eid)}")[2]["features"] == {"view:f": eid}
    assert api("GET", f"/features/{quote(eid)}/{quote('view:f')}")[2]["value"] == eid
    assert api("GET", f"/features?entity_id={quote(eid)}&name=view:f")[2]["value"] == eid


def test_ids_and_names_with_colons_never_collide(api):
    api("POST", "/features", [{"entity_id": "k:l", "name": "m", "value": 1},
                              {"entity_id": "k", "name": "l:m", "value": 2}])
    assert api("GET", "/features/k%3Al")[2]["features"] == {"m": 1}
    assert api("GET", "/features/k")[2]["features"] == {"l:m": 2}
    assert api("GET", "/features/k:l/m")[2]["value"] == 1
    assert api("GET", "/features/k/l:m")[2]["value"] == 2
    assert api("GET", "/features/k:l/l:m")[0] == 404


def test_not_found_bodies(api):
    assert api("GET", "/features/nobody") [0:3:2] == (404, {"detail": "No features found for entity"})
    api("POST", "/features", {"entity_id": "someone", "name": "x", "value": 1})
    assert api("GET", "/features/someone/y")[0:3:2] == (404, {"detail": "Feature not found"})
    assert api("GET", "/features?entity_id=nobody&name=y")[0] == 404
    assert api("GET", "/nowhere")[0] == 404
    assert api("GET", "/nowhere")[2]["detail"].startswith("no such endpoint")


def test_delete_feature_then_entity(api):
    api("POST", "/features", {"entity_id": "del/me", "features": {"x": 1, "y": 2}})
    status, _, body = api("DELETE", "/features/del%2Fme/x")
    assert (status, body["deleted"]) == (200, 1)
    assert api("GET", "/features/del%2Fme")[2]["features"] == {"y": 2}
    assert api("DELETE", "/features/del%2Fme/x")[0:3:2] == (404, {"detail": "Feature not found"})
    assert api("DELETE", "/features/del%2Fme")[0:3:2][0] == 200
    assert api("GET", "/features/del%2Fme")[0] == 404
    assert api("DELETE", "/features/del%2Fme")[0:3:2] == (404, {"detail": "No features found for entity"})


def test_batch_read_keeps_request_order_and_reports_missing(api):
    api("POST", "/features", [{"entity_id": f"b{i}", "features": {"x": i, "y": -i}} for i in range(20)])
    ids = ["b7", "missing", "b0", "b19", "b7"]
    status, _, body = api("POST", "/features/batch", {"entity_ids": ids})
    assert status == 200 and [r["entity_id"] for r in body["results"]] == ids
    assert body["results"][1] == {"entity_id": "missing", "detail": "No features found for entity"}
    assert body["results"][0]["features"] == {"x": 7, "y": -7}
    picked = api("POST", "/features/batch", {"entity_ids": ["b3"], "features": ["y"]})[2]
    assert picked["results"][0]["features"] == {"y": -3}


def test_health_and_readiness(api):
    assert api("GET", "/healthz")[0] == 200 and api("GET", "/healthz")[2]["status"] == "ok"
    status, _, body = api("GET", "/readyz")
    assert status == 200 and [s["ready"] for s in body["shards"]] == [True, True]


BAD_WRITES = [
    (b"{not json", "body is not valid JSON"),
    (b"", "body is empty"),
    (b"42", "body must be a JSON object or an array"),
    (b'{"name": "x", "value": 1}', "entity_id is required"),
    (b'{"entity_id": "", "name": "x", "value": 1}', "entity_id must not be empty"),
    (b'{"entity_id": "e", "value": 1}', "name is required"),
    (b'{"entity_id": "e", "name": "", "value": 1}', "name must not be empty"),
    (b'{"entity_id": "e", "name": "x"}', "value is required"),
    (b'{"entity_id": "e", "name": "x", "value": 1e999}', "infinity"),
    (b'{"entity_id": "e", "name": "x", "value": NaN}', "body is not valid JSON"),
    (b'[{"entity_id": "e", "name": "x", "value": 1}, {"entity_id": 7, "name": "x", "value": 1}]',
     "[1].entity_id must be a string"),
    (json.dumps({"entity_id": "e" * 600, "name": "x", "value": 1}).encode(), "entity_id is longer than 512"),
    (b'{"entity_id": "e", "name": "x", "value": 1, "event_timestamp": "soon"}', "event_timestamp"),
]


@pytest.mark.parametrize("body, detail", BAD_WRITES)
def test_bad_writes_get_400_naming_the_field(api, body, detail):
    status, _, reply = api("POST", "/features", body)
    assert status == 400 and detail in reply["detail"]
    assert "Traceback" not in reply["detail"] and "Exception" not in reply["detail"]


@pytest.mark.parametrize("body, status, detail", [
    ({"entity_ids": []}, 400, "entity_ids must be a non-empty array"),
    ({"entity_ids": "b1"}, 400, "entity_ids must be a non-empty array"),
    ({"entity_ids": ["ok", ""]}, 400, "entity_ids[1] must not be empty"),
    ({"entity_ids": ["ok"], "features": ["bad name"]}, 400, "features[0] may hold only"),
    ({"entity_ids": ["ok"], "extra": 1}, 400, "extra is not a field"),
    ([1], 400, "body must be a JSON object"),
    ({"entity_ids": [f"e{i}" for i in range(1001)]}, 413, "the limit is 1000"),
])
def test_bad_batch_reads(api, body, status, detail):
    got, _, reply = api("POST", "/features/batch", body)
    assert got == status and detail in reply["detail"]


def test_query_form_needs_both_parameters(api):
    assert api("GET", "/features?name=x")[0:3:2] == (400, {"detail": "query parameter entity_id is required"})
    assert api("GET", "/features?entity_id=x")[0:3:2] == (400, {"detail": "query parameter name is required"})


def test_a_body_over_the_limit_gets_413_before_it_is_read(cluster):
    sock = socket.create_connection(("127.0.0.1", cluster.http_port), timeout=5)
    try:
        sock.sendall(b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{")
        reply = sock.recv(65536).decode()
    finally:
        sock.close()
    assert reply.startswith("HTTP/1.1 413")
    assert '"detail":"body is larger than' in reply


def test_json_without_content_type_as_curl_sends_it(api):
    status, _, _ = api("POST", "/features", b'{"entity_id":"curl","name":"x","value":1}',
                       {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200


def test_method_not_allowed_is_json(api):
    status, _, body = api("PUT", "/features/x")
    assert status == 405 and "detail" in body


def test_metrics_in_prometheus_text_count_requests_and_shard_values(api):
    api("POST", "/features", {"entity_id": "metered", "features": {"a": 1, "b": 2}})
    before = api("GET", "/stats")[2]["totals"]["values"]
    status, headers, body = api("GET", "/metrics")
    text = body.decode() if isinstance(body, bytes) else str(body)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'featurestore_shard_up{shard="0"} 1.0' in text and 'featurestore_shard_up{shard="1"} 1.0' in text
    values = sum(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("featurestore_shard_values{"))
    assert values == before
    assert 'featurestore_http_requests_total{method="POST",route="/features",status="200"}' in text


def test_openapi_describes_every_route(api, cluster):
    status, _, spec = api("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    for path in ("/features", "/features/{entity_id}", "/features/{entity_id}/{name}", "/features/batch",
                 "/healthz", "/readyz", "/metrics", "/get-online-features"):
        assert path in spec["paths"]


@pytest.mark.parametrize("literal", [b"184467440737095516150", b"-9223372036854775809", b"18446744073709551616"])
def test_integers_beyond_64_bits_are_refused_not_turned_into_floats(api, literal):
    status, _, body = api("POST", "/features", b'{"entity_id": "bigint", "name": "x", "value": ' + literal + b"}")
    assert status == 400 and "64-bit integer range" in body["detail"]
    status, _, body = api("POST", "/features", b'{"entity_id": "bigint", "features": {"y": [1, ' + literal + b"]}}")
    assert status == 400 and "64-bit integer range" in body["detail"]
    assert api("GET", "/features/bigint")[0] == 404


def test_a_long_digit_string_is_still_a_string(api):
    digits = "1234567890123456789012345"
    assert api("POST", "/features", {"entity_id": "digits", "name": "x", "value": digits})[0] == 200
    assert api("GET", "/features/digits/x")[2]["value"] == digits


def test_a_chunked_body_over_the_limit_gets_413(cluster):
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(300)) + b"0\r\n\r\n"  # ~19 MiB
    sock = socket.create_connection(("127.0.0.1", cluster.http_port), timeout=10)
    try:
        sock.sendall(b"POST /features HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        reply = sock.recv(65536).decode()
    finally:
        sock.close()
    assert reply.startswith("HTTP/1.1 413") and '"detail":"body is larger than' in reply


def test_a_body_over_the_limit_on_any_endpoint_gets_413(api):
    status, _, body = api("DELETE", "/features/e", b"x" * (16 * 1024 * 1024 + 1))
    assert status == 413 and "FS_MAX_BODY_BYTES" in body["detail"]
