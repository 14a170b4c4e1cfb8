"""The front end's logic through the real Application and fast path (frontend/app.py), over
Tornado's AsyncHTTPTestCase, with a fake shard client answering from a dict (no shard processes)."""
import json
from unittest import mock

import orjson
from tornado.httputil import HTTPHeaders
from tornado.testing import AsyncHTTPTestCase, gen_test

from common import protocol as P
from common.config import Config, FeatureView
from common.partition import Partitioner
from frontend import fast, reads
from frontend.app import make_app, make_context
from frontend.metrics import REQUESTS
from tests.fake_shards import FAKE_TAG, FakeShards

DRIVER = FeatureView("driver", ("driver_id",), None, ("rate", "trips"))


class FrontEndCase(AsyncHTTPTestCase):
    settings: dict = {}

    def get_app(self):
        self.shards = FakeShards(2)
        cfg = Config(shards=2, ingest_stats_endpoint=None, views=(DRIVER,), **self.settings)
        self.ctx = make_context(cfg, self.shards)
        return fast.Router(make_app(self.ctx), self.ctx)

    def call(self, method, path, body=None, headers=None):
        if body is not None and not isinstance(body, bytes):
            body = orjson.dumps(body)
        return self.fetch(path, method=method, body=body, headers=headers, allow_nonstandard_methods=True)

    def both_ways(self, path, headers=None):
        """The fast path's response and the application's (a query string goes to the handlers),
        each as (status, reason, headers but Date, body); also how many the fast path served."""
        served = []
        finish = fast._Read.finish

        def spy(read):
            served.append(read.request.uri)
            finish(read)

        with mock.patch.object(fast._Read, "finish", spy):
            out = [self._summary(self.call("GET", p, headers=headers)) for p in (path, path + "?via=app")]
        return out[0], out[1], served

    @staticmethod
    def _summary(resp):
        headers = {k: v for k, v in resp.headers.get_all() if k != "Date"}
        return resp.code, resp.reason, headers, resp.body

    def entity_on(self, shard: int, prefix: str = "e") -> str:
        part = Partitioner(2)
        return next(f"{prefix}{i}" for i in range(1000) if part.shard_for(f"{prefix}{i}") == shard)

    def put(self, *events):
        resp = self.call("POST", "/features", list(events), headers=getattr(self, "write_auth", None))
        assert resp.code == 200, resp.body
        return json.loads(resp.body)


class ReadsTest(FrontEndCase):
    def test_both_paths_answer_byte_for_byte_alike(self):
        self.put({"entity_id": "a/b ü", "features": {"x": 1, "y": [1.5, "s"]}})
        for path in ("/features/a%2Fb%20%C3%BC", "/features/a%2Fb%20%C3%BC/x", "/features/missing",
                     "/features/a%2Fb%20%C3%BC/none"):
            fast_reply, app_reply, served = self.both_ways(path)
            assert served == [path], "the fast path did not serve " + path
            assert fast_reply == app_reply, path
        assert fast_reply[0] == 404 and json.loads(fast_reply[3])["detail"]

    def test_a_read_returns_the_shard_body_with_its_etag(self):
        self.put({"entity_id": "e", "name": "x", "value": 7})
        resp = self.call("GET", "/features/e")
        assert resp.code == 200 and json.loads(resp.body) == {"entity_id": "e", "features": {"x": 7}}
        assert resp.headers["Etag"] == FAKE_TAG % len(resp.body)  # the shard's, not hashed again
        assert self.call("GET", "/features/e", headers={"If-None-Match": resp.headers["Etag"]}).code == 304
        one = self.call("GET", "/features/e/x")  # a reply without a tag: the front end hashes the body
        assert one.code == 200 and one.headers["Etag"] == P.etag_for(one.body)
        assert json.loads(self.call("GET", "/features?entity_id=e&name=x").body) == {"name": "x", "value": 7}

    def test_shard_down_is_503_with_retry_after_on_both_paths(self):
        eid = self.entity_on(1)
        self.shards.down.add(1)
        fast_reply, app_reply, served = self.both_ways("/features/" + eid)
        assert served and fast_reply == app_reply
        assert fast_reply[0] == 503 and fast_reply[2]["Retry-After"] == "1"
        assert "shard 1" in json.loads(fast_reply[3])["detail"]

    def test_shard_error_codes_map_to_statuses(self):
        eid = self.entity_on(0)
        for code, status, retry in ((P.NOT_FOUND, 404, None), (P.DISK_FULL, 507, None),
                                    (P.UNAVAILABLE, 503, "1"), (P.INTERNAL, 500, None)):
            self.shards.refuse[0] = (code, "said no")
            fast_reply, app_reply, _ = self.both_ways("/features/" + eid)
            assert fast_reply == app_reply, code
            assert fast_reply[0] == status and fast_reply[2].get("Retry-After") == retry, code
            detail = json.loads(fast_reply[3])["detail"]
            assert detail == ("Internal server error" if status == 500 else "said no"), code

    def test_reads_are_counted_once_under_their_route_on_both_paths(self):
        self.put({"entity_id": "e", "name": "x", "value": 7})
        self.call("GET", "/features/e")
        self.call("GET", "/features/e?via=app")
        self.call("GET", "/features/e/nope")
        self.call("GET", "/features/e/nope?via=app")
        self.call("DELETE", "/features/e/x")
        totals = self.ctx.metrics.totals()

        def count(route, method, status):
            return sum(totals.get((REQUESTS, route, method, status), [0, 0])[:-1])

        assert count("/features/{entity_id}", "GET", 200) == 2
        assert count("/features/{entity_id}/{name}", "GET", 404) == 2
        assert count("/features/{entity_id}/{name}", "DELETE", 200) == 1
        assert count("/features", "POST", 200) == 1


class ReadWithoutHandlerTest(FrontEndCase):
    @gen_test
    async def test_a_read_runs_without_a_request_handler(self):
        self.shards.data[Partitioner(2).shard_for("e")]["e"] = {"x": 1}
        got = []
        reads.ENTITY.start(self.ctx, ("e",), HTTPHeaders(), got.append)
        reads.FEATURE.start(self.ctx, ("e", ""), HTTPHeaders(), got.append)  # refused before any shard call
        assert got and got[0] == (400, {}, b'{"detail":"entity_id and name must not be empty"}')
        while len(got) < 2:
            await self.shards.submit(0, P.ping())  # a loop iteration: the fake answers on the next
        status, headers, body = got[1]
        assert status == 200 and json.loads(body)["features"] == {"x": 1} and headers["Etag"].startswith('"')


class TokenTest(FrontEndCase):
    settings = {"read_token": "reader", "write_token": "writer"}
    write_auth = {"Authorization": "Bearer writer"}

    def test_the_fast_path_serves_reads_with_a_read_token_and_checks_it(self):
        self.put({"entity_id": "e", "name": "x", "value": 1})
        for headers, status in ((None, 401), ({"Authorization": "Bearer nope"}, 403),
                                ({"Authorization": "Bearer reader"}, 200), ({"Authorization": "Bearer writer"}, 200)):
            fast_reply, app_reply, served = self.both_ways("/features/e", headers)
            assert served == ["/features/e"] and fast_reply == app_reply
            assert fast_reply[0] == status
        assert fast_reply[2]["Etag"]
        unauthorised = self.both_ways("/features/e/x")[0]
        assert unauthorised[0] == 401 and unauthorised[2]["Www-Authenticate"] == "Bearer"

    def test_writes_need_the_write_token(self):
        event = {"entity_id": "e", "name": "x", "value": 1}
        assert self.call("POST", "/features", [event]).code == 401
        assert self.call("POST", "/features", [event], {"Authorization": "Bearer reader"}).code == 403
        assert self.call("DELETE", "/features/e", headers={"Authorization": "Bearer reader"}).code == 403
        assert self.call("GET", "/healthz").code == 200  # probes are open


class WritesAndBatchTest(FrontEndCase):
    def test_a_write_reaches_each_owning_shard(self):
        a, b = self.entity_on(0), self.entity_on(1)
        body = self.put({"entity_id": a, "name": "x", "value": 1}, {"entity_id": b, "features": {"x": 2, "y": 3}})
        assert (body["written"], body["stale"]) == (3, 0)
        assert self.shards.data[0][a] == {"x": 1} and self.shards.data[1][b] == {"x": 2, "y": 3}

    def test_a_failed_shard_fails_the_write_and_says_the_rest_applied(self):
        a, b = self.entity_on(0), self.entity_on(1)
        self.shards.refuse[1] = (P.DISK_FULL, "no space left")
        resp = self.call("POST", "/features", [{"entity_id": a, "name": "x", "value": 1},
                                               {"entity_id": b, "name": "x", "value": 2}])
        assert resp.code == 507 and "other shards were applied" in json.loads(resp.body)["detail"]
        assert self.shards.data[0][a] == {"x": 1}
        self.shards.down.add(0)
        resp = self.call("POST", "/features", [{"entity_id": a, "name": "x", "value": 1}])
        assert resp.code == 503 and resp.headers["Retry-After"] == "1"

    def test_delete(self):
        self.put({"entity_id": "e", "features": {"x": 1, "y": 2}})
        resp = self.call("DELETE", "/features/e/x")
        assert json.loads(resp.body) == {"message": "feature deleted", "entity_id": "e", "deleted": 1, "name": "x"}
        assert json.loads(self.call("DELETE", "/features/e").body)["deleted"] == 1

    def test_batch_results_come_in_request_order_across_shards(self):
        eids = [self.entity_on(s, p) for p in "abc" for s in (1, 0)]
        for i, eid in enumerate(eids):
            self.put({"entity_id": eid, "features": {"i": i, "other": 0}})
        resp = self.call("POST", "/features/batch", {"entity_ids": eids, "features": ["i"]})
        results = json.loads(resp.body)["results"]
        assert [r["entity_id"] for r in results] == eids and [r["features"] for r in results] == [
            {"i": i} for i in range(len(eids))]
        assert {s for s, r in self.shards.requests if P.kind_of(r) == P.MGET} == {0, 1}

    def test_batch_checks_its_body_and_maps_shard_failures(self):
        assert self.call("POST", "/features/batch", {"entity_ids": []}).code == 400
        assert self.call("POST", "/features/batch", b"{nope").code == 400
        self.shards.down.add(0)
        resp = self.call("POST", "/features/batch", {"entity_ids": [self.entity_on(0), self.entity_on(1)]})
        assert resp.code == 503 and resp.headers["Retry-After"] == "1"

    def test_readyz_names_the_shard_down(self):
        assert self.call("GET", "/readyz").code == 200
        self.shards.down.add(1)
        resp = self.call("GET", "/readyz")
        assert resp.code == 503 and json.loads(resp.body)["detail"] == "shards not ready: 1"
        assert self.call("GET", "/health").code == 503


class FeastTest(FrontEndCase):
    def test_get_online_features_gathers_rows_in_request_order(self):
        ids = [self.entity_on(s, "") for s in (1, 0)] + ["no-such"]
        ids = [int(i) if i.isdigit() else i for i in ids]
        for i, eid in enumerate(ids[:2]):
            self.put({"entity_id": str(eid), "features": {"driver:rate": i + 0.5, "driver:trips": i}})
        body = {"entities": {"driver_id": ids}, "features": ["driver:trips", "driver:rate"]}
        resp = self.call("POST", "/get-online-features", body)
        assert resp.code == 200, resp.body
        out = json.loads(resp.body)
        assert out["metadata"]["feature_names"] == ["driver_id", "trips", "rate"]
        keys, trips, rate = out["results"]
        assert keys["values"] == ids
        assert trips["values"] == [0, 1, None] and rate["values"] == [0.5, 1.5, None]
        assert trips["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]

    def test_feast_errors_and_shard_failures(self):
        resp = self.call("POST", "/get-online-features", {"entities": {"driver_id": [1]}, "features": ["nope:x"]})
        assert resp.code == 404 and json.loads(json.loads(resp.body))["class"] == "FeatureViewNotFoundException"
        assert self.call("POST", "/get-online-features", {"features": ["driver:rate"]}).code == 422
        self.shards.down.update((0, 1))
        resp = self.call("POST", "/get-online-features", {"entities": {"driver_id": [1]}, "features": ["driver:rate"]})
        assert resp.code == 503 and resp.headers["Retry-After"] == "1"

    def test_write_to_online_store_lands_on_the_shards(self):
        a, b = self.entity_on(0, ""), self.entity_on(1, "")
        resp = self.call("POST", "/write-to-online-store",
                         {"feature_view_name": "driver", "df": {"driver_id": [a, b], "rate": [0.1, 0.2]}})
        assert resp.code == 200 and resp.body == b"null"
        assert self.shards.data[0][a] == {"driver:rate": 0.1} and self.shards.data[1][b] == {"driver:rate": 0.2}
