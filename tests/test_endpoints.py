"""The POST endpoints' logic (frontend/endpoints.py, fanout.py), socket-free: ``Endpoint.start``
runs on shard-reply callbacks alone (no loop, future or task), and ``Endpoint.run`` (the Tornado
handlers' way) renders the same replies."""
import asyncio
import logging

import orjson
import pytest

from common import protocol as P
from common.config import Config, FeatureView
from common.partition import Partitioner
from frontend import endpoints, fanout
from frontend.app import make_context
from frontend.feast.catalog import Catalog
from frontend.feast.handlers import online_features_endpoint
from tests.fake_shards import FakeShards

DRIVER = FeatureView("driver", ("driver_id",))


class SyncShards(FakeShards):
    """FakeShards answering inside ``send`` (as ShardClient does for a shard that is not
    connected); ``held`` shards keep their callbacks until :meth:`release`."""

    def __init__(self, n_shards: int) -> None:
        super().__init__(n_shards)
        self.held: set[int] = set()
        self.waiting: list = []

    def send(self, shard: int, request: dict, done) -> None:
        self.requests.append((shard, request))
        if shard in self.held:
            self.waiting.append((done, self._answer(shard, request)))
        else:
            done(self._answer(shard, request))

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for done, outcome in waiting:
            done(outcome)


def ctx_of(shards: FakeShards, **settings):
    return make_context(Config(shards=shards.n_shards, ingest_stats_endpoint=None, views=(DRIVER,), **settings),
                        shards)


def on(shard: int, prefix: str = "e", n: int = 1) -> list[str]:
    part = Partitioner(2)
    return [e for e in (f"{prefix}{i}" for i in range(1000)) if part.shard_for(e) == shard][:n]


def started(endpoint, ctx, body) -> list:
    """``endpoint.start`` with no event loop running: what ``done`` was called with."""
    got = []
    endpoint.start(ctx, {}, orjson.dumps(body), got.append)
    return got


def test_a_write_is_answered_from_the_shard_reply_callback_without_a_loop():
    shards = SyncShards(2)
    ctx = ctx_of(shards)
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # nothing could run a task or a future's callbacks
    events = [{"entity_id": on(0)[0], "name": "a", "value": 1}, {"entity_id": on(1)[0], "name": "b", "value": 2}]
    shards.held = {1}
    got = started(endpoints.WRITE, ctx, events)
    assert got == []  # shard 1 has not answered yet
    shards.release()
    assert got == [(200, {}, b'{"message":"feature saved","written":2,"stale":0}')]
    assert shards.data[0][on(0)[0]] == {"a": 1} and shards.data[1][on(1)[0]] == {"b": 2}
    assert sorted(s for s, _ in shards.requests) == [0, 1]  # one request per shard


def test_a_failed_shard_of_a_write_is_a_503_once_every_shard_answered():
    shards = SyncShards(2)
    shards.down = {1}
    shards.held = {0}
    events = [{"entity_id": on(0)[0], "name": "a", "value": 1}, {"entity_id": on(1)[0], "name": "b", "value": 2}]
    got = started(endpoints.WRITE, ctx_of(shards), events)
    assert got == []  # shard 1 failed at once; shard 0's reply is still owed
    shards.release()
    status, headers, body = got[0]
    assert (status, headers["Retry-After"]) == (503, "1")
    assert orjson.loads(body)["detail"].endswith("(writes to the other shards were applied; retrying is safe)")


def test_a_batch_across_shards_keeps_the_request_order():
    shards = SyncShards(2)
    ctx = ctx_of(shards)
    eids = [on(1, n=3)[0], on(0, n=2)[0], on(1, n=3)[1], on(1, n=3)[2], on(0, n=2)[1]]
    for i, eid in enumerate(eids):
        shards.data[Partitioner(2).shard_for(eid)][eid] = {"x": i}
    (status, _, body), = started(endpoints.BATCH, ctx, {"entity_ids": eids + ["nobody"]})
    assert status == 200
    results = orjson.loads(body)["results"]
    assert [r["entity_id"] for r in results] == eids + ["nobody"]
    assert [r["features"].get("x") for r in results] == [0, 1, 2, 3, 4, None]


def test_a_response_over_the_limit_names_its_size_and_one_at_it_passes():
    shards = SyncShards(2)
    eids = on(0, n=2) + on(1, n=2)
    for i, eid in enumerate(eids):
        shards.data[Partitioner(2).shard_for(eid)][eid] = {"x": i}
    (status, _, body), = started(endpoints.BATCH, ctx_of(shards), {"entity_ids": eids})
    size = len(body) + 3  # the parts, a comma each and 16 bytes
    (status, _, refusal), = started(endpoints.BATCH, ctx_of(shards, max_response_bytes=size - 1), {"entity_ids": eids})
    assert (status, orjson.loads(refusal)["detail"]) == (
        413, f"the response would be {size} bytes; the limit is {size - 1} (FS_MAX_RESPONSE_BYTES)")
    assert started(endpoints.BATCH, ctx_of(shards, max_response_bytes=size), {"entity_ids": eids})[0][2] == body
    feast = online_features_endpoint(Catalog.from_config(ctx_of(shards).cfg))
    ask = {"entities": {"driver_id": [1, 2]}, "features": ["driver:x"]}
    (_, _, body), = started(feast, ctx_of(shards), ask)
    cols = orjson.loads(body)["results"]
    size = sum(len(orjson.dumps(c)) for c in cols) + len(cols) + 64  # the columns, a comma each and 64 bytes
    (status, _, refusal), = started(feast, ctx_of(shards, max_response_bytes=size - 1), ask)
    assert (status, orjson.loads(orjson.loads(refusal))["message"]) == (  # (Feast's detail: JSON in a string)
        413, f"the response would be {size} bytes; the limit is {size - 1} (FS_MAX_RESPONSE_BYTES)")


def test_a_refusal_and_a_failing_render_are_answered_once():
    shards = SyncShards(2)
    ctx = ctx_of(shards)
    assert started(endpoints.BATCH, ctx, {"entity_ids": []})[0][0] == 400
    assert shards.requests == []  # refused before any shard request
    shards.refuse = {0: (P.TOO_LARGE, "too big")}
    got = started(endpoints.BATCH, ctx, {"entity_ids": on(0)})
    assert got == [(413, {}, b'{"detail":"too big"}')]


def test_an_unexpected_failure_in_finish_is_a_logged_500(caplog, monkeypatch):
    shards = SyncShards(2)
    monkeypatch.setattr(fanout, "parts_of", lambda *args: 1 / 0)
    with caplog.at_level(logging.ERROR, "frontend"):
        got = started(endpoints.BATCH, ctx_of(shards), {"entity_ids": on(0)})
    assert got == [(500, {}, b'{"detail":"Internal server error"}')]
    assert "BatchHandler failed" in caplog.text and "ZeroDivisionError" in caplog.text


@pytest.mark.parametrize("name, body", [
    ("write", [{"entity_id": "e1", "name": "a", "value": 1}, {"entity_id": "e2", "features": {"b": [1, 2]}}]),
    ("write", {"entity_id": "e1", "name": "bad name!", "value": 1}),
    ("batch", {"entity_ids": ["e1", "e2", "e3", "nobody"], "features": ["a"]}),
    ("batch", {"entity_ids": ["e1"], "extra": 1}),
    ("feast", {"entities": {"driver_id": [1, 2, 3, 4]}, "features": ["driver:a", "driver:b"]}),
    ("feast", {"entities": {"driver_id": [1.5]}, "features": ["driver:a"]}),
])
def test_start_and_run_render_the_same_replies(name, body):
    """The fast engine's way (callbacks) and the handlers' way (awaited futures) share plan and
    finish: their replies are the same, byte for byte."""
    endpoint = {"write": endpoints.WRITE, "batch": endpoints.BATCH,
                "feast": online_features_endpoint(Catalog({"driver": DRIVER}))}[name]

    async def both():
        shards = FakeShards(2)  # replies on a later loop iteration, as from a socket
        for eid, feats in (("e1", {"a": 1}), ("e2", {"a": 2, "b": 3}), ("1", {"driver:a": 0.5})):
            shards.data[Partitioner(2).shard_for(eid)][eid] = feats
        ctx = ctx_of(shards)
        raw = orjson.dumps(body)
        fut = asyncio.get_running_loop().create_future()
        endpoint.start(ctx, {}, raw, fut.set_result)
        via_start = await fut
        try:
            via_run = await endpoint.run(ctx, raw)
        except Exception as exc:  # what the handler's write_error renders
            via_run = endpoint.error_reply(exc)
        return via_start, via_run

    via_start, via_run = asyncio.run(both())
    assert via_start == via_run
    assert via_start[0] in (200, 400)
