"""GET /docs and /openapi.json: every route the app serves is described, every described
operation answers, and the docs and the status page load nothing from the internet."""
from __future__ import annotations

import re

import pytest

from common.config import Config
from frontend.app import make_app, make_context
from frontend.shard_client import ShardClient
from tests.support import quote, request

# a body that each described POST accepts
BODIES = {
    "/features": [{"entity_id": "docs:e", "name": "v:f", "value": 1},
                  {"entity_id": "batch", "name": "v:f", "value": 1}],  # GET/DELETE /features/batch: an entity
    "/features/batch": {"entity_ids": ["docs:e"]},
    "/get-online-features": {"entities": {"docs_id": ["e"]}, "features": ["v:f"]},
    "/write-to-online-store": {"feature_view_name": "v", "df": {"docs_id": ["e2"], "f": [1]}},
    "/push": {"push_source_name": "v", "df": {"docs_id": ["e3"], "f": [2]}},
}
PARAMS = {"entity_id": "docs:e", "name": "v:f"}
FILES = {"/static/{path}": "status.js", "/docs/assets/{path}": "swagger-ui-bundle.js"}


@pytest.fixture(scope="module")
def spec(cluster):
    status, _, body = request("GET", cluster.url + "/openapi.json")
    assert status == 200
    return body


def _served_templates() -> list[str]:
    client = ShardClient(["tcp://127.0.0.1:1"], 1.0)
    try:
        return make_app(make_context(Config(), client)).route_templates
    finally:
        client.close()


def test_every_route_the_app_serves_is_described(spec):
    served = _served_templates()
    assert len(served) >= 18 and "/features/{entity_id}" in served and "/docs" in served
    assert sorted(set(served) - set(spec["paths"])) == []


def _url(path: str, op: dict) -> str:
    """A described path with its path and query parameters filled in."""
    if path in FILES:
        return path.replace("{path}", FILES[path])
    url = re.sub(r"\{(\w+)\}", lambda m: quote(PARAMS[m.group(1)]), path)
    query = [f"{p['name']}={quote(PARAMS[p['name']])}" for p in op.get("parameters", []) if p["in"] == "query"]
    return url + ("?" + "&".join(query) if query else "")


def test_every_described_operation_answers(cluster, spec):
    request("POST", cluster.url + "/features", BODIES["/features"])
    answered = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method == "parameters":
                continue
            url = _url(path, ops[method])
            body = BODIES.get(path) if method == "post" else None
            status, headers, reply = request(method.upper(), cluster.url + url, body)
            if method == "delete":  # put it back for the operations after this one
                request("POST", cluster.url + "/features", BODIES["/features"])
            assert status == 200, (method, path, status, reply)
            assert str(status) in ops[method]["responses"]
            answered.append((method, path))
    assert len(answered) >= 20


def test_docs_page_uses_the_packaged_swagger_ui(cluster):
    status, headers, page = request("GET", cluster.url + "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for asset in re.findall(rb'(?:src|href)="([^"]+)"', page):
        assert asset.startswith(b"/"), asset  # nothing from another host
        status, headers, body = request("GET", cluster.url + asset.decode())
        assert status == 200 and len(body) > 50, asset
    js = request("GET", cluster.url + "/docs/assets/swagger-ui-bundle.js")[2]
    assert b"SwaggerUIBundle" in js


def test_status_page_loads_only_its_own_files(cluster):
    status, headers, page = request("GET", cluster.url + "/")
    assert status == 200 and b"<table id=\"shards\">" in page
    for asset in re.findall(rb'(?:src|href)="([^"]+)"', page):
        assert asset.startswith(b"/"), asset
        assert request("GET", cluster.url + asset.decode())[0] == 200
    for name in ("status.js", "docs.js"):
        js = request("GET", cluster.url + "/static/" + name)[2]
        assert b"http://" not in js and b"https://" not in js


def test_a_missing_static_file_is_a_json_404(cluster):
    status, _, body = request("GET", cluster.url + "/static/nope.js")
    assert status == 404 and body == {"detail": "no such file: /static/nope.js"}
    assert request("GET", cluster.url + "/static/../app.py")[0] in (403, 404)
