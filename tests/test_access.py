"""Bearer tokens and read-only mode, over real HTTP."""
import pytest

from tests.support import Cluster, request
from tests.test_http_fastpath import both_ways

W = {"entity_id": "t", "name": "x", "value": 1}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("secured"), read_token="reader", write_token="writer") as c:
        yield c


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_probes_are_always_open(secured):
    for path in ("/healthz", "/readyz", "/health"):
        assert request("GET", secured.url + path)[0] == 200


def test_writes_need_the_write_token(secured):
    status, headers, body = request("POST", secured.url + "/features", W)
    assert status == 401 and headers.get("WWW-Authenticate") == "Bearer" and "bearer token" in body["detail"]
    assert request("POST", secured.url + "/features", W, auth("reader"))[0] == 403
    assert request("POST", secured.url + "/features", W, auth("wrong"))[0] == 403
    assert request("POST", secured.url + "/features", W, auth("writer"))[0] == 200


def test_reads_take_either_token(secured):
    request("POST", secured.url + "/features", W, auth("writer"))
    assert request("GET", secured.url + "/features/t")[0] == 401
    assert request("GET", secured.url + "/features/t", headers=auth("nope"))[0] == 403
    for token in ("reader", "writer"):
        assert request("GET", secured.url + "/features/t", headers=auth(token))[2]["features"] == {"x": 1}
        assert request("POST", secured.url + "/features/batch", {"entity_ids": ["t"]}, auth(token))[0] == 200


def test_the_fast_path_checks_tokens_as_the_handlers_do(secured):
    request("POST", secured.url + "/features", W, auth("writer"))
    for path in ("/features/t", "/features/t/x"):
        for headers, status in ((None, 401), (auth("nope"), 403), (auth("reader"), 200), (auth("writer"), 200)):
            fast, slow = both_ways(secured, path, headers)
            assert fast == slow and fast[0] == status, (path, headers)


def test_feast_reads_take_the_read_token_and_feast_writes_the_write_token(secured):
    read = {"features": ["v:f"], "entities": {"driver_id": [1]}}
    assert request("POST", secured.url + "/get-online-features", read)[0] == 401
    assert request("POST", secured.url + "/get-online-features", read, auth("reader"))[0] == 200
    write = {"feature_view_name": "v", "df": {"driver_id": [1], "f": [1]}}
    assert request("POST", secured.url + "/write-to-online-store", write, auth("reader"))[0] == 403
    assert request("POST", secured.url + "/write-to-online-store", write, auth("writer"))[0] == 200
    push = {"push_source_name": "v", "df": {"driver_id": [1], "f": [2]}}
    assert request("POST", secured.url + "/push", push, auth("reader"))[0] == 403


def test_deletes_need_the_write_token(secured):
    assert request("DELETE", secured.url + "/features/t/x", headers=auth("reader"))[0] == 403


def test_read_only_mode_refuses_every_mutation(tmp_path):
    with Cluster(tmp_path, read_only=1) as c:
        status, _, body = request("POST", c.url + "/features", W)
        assert status == 403 and "read-only" in body["detail"]
        assert request("DELETE", c.url + "/features/t")[0] == 403
        assert request("GET", c.url + "/features/t")[0] == 404
        assert request("POST", c.url + "/features/batch", {"entity_ids": ["t"]})[0] == 200
        feast_write = {"feature_view_name": "v", "df": {"driver_id": [1], "f": [1]}}
        assert request("POST", c.url + "/write-to-online-store", feast_write)[0] == 403
        assert request("POST", c.url + "/push", {"push_source_name": "v", "df": feast_write["df"]})[0] == 403
        assert request("POST", c.url + "/get-online-features",
                       {"features": ["v:f"], "entities": {"driver_id": [1]}})[0] == 200
