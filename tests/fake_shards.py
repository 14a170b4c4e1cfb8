"""A fake ShardClient for socket-free front-end tests: it answers from a dict, in-process.

Same interface as ``frontend.shard_client.ShardClient`` (``send``, ``submit``, ``call_all``,
``n_shards``, ``start``, ``close``); replies come on a later loop iteration, as from a socket.
``down`` holds shards that fail with ``ShardUnavailable``; ``refuse`` maps a shard to the
``(code, reason)`` of the error reply it gives to every request but ``ping``.
"""
from __future__ import annotations

import asyncio

import orjson

from common import protocol as P
from frontend.shard_client import ShardUnavailable


class FakeShards:
    def __init__(self, n_shards: int) -> None:
        self.n_shards = n_shards
        self.data: list[dict[str, dict]] = [{} for _ in range(n_shards)]  # per shard: eid -> {name: value}
        self.down: set[int] = set()
        self.refuse: dict[int, tuple[str, str]] = {}
        self.requests: list[tuple[int, dict]] = []  # every request received, in order

    def start(self, loop=None) -> None:
        pass

    def close(self) -> None:
        pass

    # ---- the ShardClient interface
    def send(self, shard: int, request: dict, done) -> None:
        self.requests.append((shard, request))
        outcome = self._answer(shard, request)
        asyncio.get_running_loop().call_soon(done, outcome)

    def submit(self, shard: int, request: dict) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()

        def settle(outcome) -> None:
            if isinstance(outcome, Exception):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

        self.send(shard, request, settle)
        return fut

    async def call_all(self, build, shards=None) -> dict:
        out = {}
        for s in range(self.n_shards) if shards is None else shards:
            try:
                out[s] = await self.submit(s, build())
            except ShardUnavailable as exc:
                out[s] = exc
        return out

    # ---- answers
    def _answer(self, shard: int, req: dict):
        if shard in self.down:
            return ShardUnavailable(shard, "did not answer in 1 s")
        kind = P.kind_of(req)
        if shard in self.refuse and kind != P.PING:
            return P.error(None, *self.refuse[shard])
        data = self.data[shard]
        if kind == P.PING:
            return P.ping_reply(None, shard=shard)
        if kind == P.STATS:
            return P.ok(None, shard=shard, entities=len(data), values=sum(map(len, data.values())),
                        writes=0, stale=0)
        if kind == P.GET:
            feats = data.get(req[P.ENTITY])
            if feats is None:
                return P.error(None, P.NOT_FOUND, "No features found for entity")
            body = _entity_json(req[P.ENTITY], feats, req[P.NAMES])
            return P.body_reply(None, body, FAKE_TAG % len(body))  # (get1 replies carry none)
        if kind == P.GET1:
            feats = data.get(req[P.ENTITY], {})
            if req[P.NAME] not in feats:
                return P.error(None, P.NOT_FOUND, "No such feature")
            return P.body_reply(None, orjson.dumps({"name": req[P.NAME], "value": feats[req[P.NAME]]}))
        if kind == P.MGET:
            return P.parts_reply(None, [_entity_json(e, data.get(e, {}), req[P.NAMES]) for e in req[P.ENTITIES]])
        if kind == P.FGET:
            rows = [[data.get(e, {}).get(n) for n in req[P.NAMES]] for e in req[P.ENTITIES]]
            values = [P.SEP.join(orjson.dumps(v) for v in row) for row in rows]
            statuses = [b"".join(P.NOT_FOUND_S if v is None else P.PRESENT for v in row) for row in rows]
            return P.rows_reply(None, values, statuses, [b'"2026-01-01T00:00:00Z"'] * len(rows))
        if kind == P.WRITE:
            for eid, name, value, _ in req[P.WRITES]:
                data.setdefault(eid, {})[name] = value
            return P.write_reply(None, len(req[P.WRITES]), 0)
        if kind == P.DELETE:
            feats = data.get(req[P.ENTITY], {})
            if req[P.NAME] is None:
                deleted = len(data.pop(req[P.ENTITY], {}))
            else:
                deleted = int(feats.pop(req[P.NAME], None) is not None)
            return P.delete_reply(None, deleted)
        return P.error(None, P.UNKNOWN_TYPE, f"unknown message type {kind!r}")


FAKE_TAG = '"fake-%d"'  # the ETag of a get reply: not the SHA-1 the front end would compute


def _entity_json(eid: str, feats: dict, names) -> bytes:
    picked = feats if names is None else {n: feats[n] for n in names if n in feats}
    return orjson.dumps({"entity_id": eid, "features": picked})
