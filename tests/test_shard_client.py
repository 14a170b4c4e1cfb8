"""ShardClient without sockets: batching, the timeout sweep and the reply drain, on fake DEALERs."""
import asyncio
import logging
import os

import pytest
import zmq

from common import protocol as P
from frontend.shard_client import ShardClient, ShardUnavailable
from tests.fake_zmq import FakeContext


def run(test, timeout_s=1.0, n_shards=2):
    """Run ``await test(client, sockets)`` on a fresh loop with a started client."""
    async def main():
        ctx = FakeContext()
        client = ShardClient([f"tcp://shard{i}" for i in range(n_shards)], timeout_s, ctx=ctx)
        client.start()
        try:
            return await test(client, ctx.sockets)
        finally:
            client.close()
    return asyncio.run(main())


def answer(sock, frame):
    """Queue the ok replies to one sent frame, echoing each request's entity."""
    sock.queue(*(P.body_reply(P.id_of(req), req[P.ENTITY].encode()) for req in frame))


async def wake(sock):
    """Make the socket's fd readable, as ZeroMQ does when frames arrive, and let the loop run."""
    os.write(sock.wake_fd, b"x")
    for _ in range(100):  # the reader runs within an iteration or two; never a wall-clock wait
        await asyncio.sleep(0)
        if not sock.inbox:
            return


def test_connects_one_dealer_per_shard_that_fails_fast_when_not_connected():
    async def test(client, socks):
        assert [s.endpoint for s in socks] == ["tcp://shard0", "tcp://shard1"]
        assert all(s.options[zmq.IMMEDIATE] == 1 and s.options[zmq.LINGER] == 0 for s in socks)
        socks[1].connected = False
        with pytest.raises(ShardUnavailable, match="shard 1 is not connected"):
            await client.submit(1, P.get("a"))
        assert not client.pending
    run(test)


def test_requests_of_one_loop_iteration_travel_in_one_frame_per_shard():
    async def test(client, socks):
        first = client.submit(0, P.get("a"))  # nothing in flight: sent at once, alone
        assert [[P.kind_of(r) for r in f] for f in socks[0].sent] == [[P.GET]]
        more = [client.submit(0, P.get("b")), client.submit(1, P.get("c")), client.submit(0, P.get("d"))]
        assert len(socks[0].sent) == 1 and not socks[1].sent  # queued until the iteration ends
        await asyncio.sleep(0)
        assert [[r[P.ENTITY] for r in f] for f in socks[0].sent] == [["a"], ["b", "d"]]
        assert [[r[P.ENTITY] for r in f] for f in socks[1].sent] == [["c"]]
        ids = [P.id_of(r) for f in socks[0].sent + socks[1].sent for r in f]
        assert len(set(ids)) == 4  # every request got its own id
        for sock in socks:
            for frame in sock.sent:
                answer(sock, frame)
            await wake(sock)
        bodies = [(await f)[P.BODY] for f in [first, *more]]
        assert bodies == [b"a", b"b", b"c", b"d"]
    run(test)


def test_the_drain_reads_every_queued_frame_and_skips_a_malformed_one(caplog):
    async def test(client, socks):
        sock = socks[0]
        futs = [client.submit(0, P.get("a"))]
        futs += [client.submit(0, P.get(e)) for e in "bcd"]
        await asyncio.sleep(0)
        (a,), (b, c, d) = sock.sent
        sock.queue(P.body_reply(P.id_of(c), b"c"))  # replies may come in any order, split up
        sock.push(b"\xc1 not msgpack")
        sock.queue(P.error(P.id_of(a), P.NOT_FOUND, "No features found for entity"), "not a map",
                   P.body_reply(P.id_of(d), b"d"))
        sock.queue(P.body_reply(12345, b"late"), P.body_reply(P.id_of(b), b"b"))  # 12345: unknown id
        with caplog.at_level(logging.WARNING):
            await wake(sock)  # one wake-up: the fd is edge-triggered, so everything is read now
            assert not sock.inbox
        assert "shard 0 sent a malformed frame" in caplog.text
        replies = [await f for f in futs]
        assert P.code_of(replies[0]) == P.NOT_FOUND
        assert [r[P.BODY] for r in replies[1:]] == [b"b", b"c", b"d"]
        assert not client.pending
    run(test)


def test_the_sweep_fails_expired_calls_with_shard_unavailable():
    async def test(client, socks):
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent = client.submit(1, P.get("never answered"))
        with pytest.raises(ShardUnavailable, match="shard 1 did not answer in 0.1 s"):
            await asyncio.wait_for(silent, 2.0)
        assert 0.1 <= loop.time() - started < 1.0
        assert not client.pending
        # a reply arriving after the sweep is dropped; the next call is served
        (frame,) = socks[1].sent
        answer(socks[1], frame)
        later = client.submit(1, P.get("x"))
        answer(socks[1], socks[1].sent[-1])
        await wake(socks[1])
        assert (await asyncio.wait_for(later, 2.0))[P.BODY] == b"x"
    run(test, timeout_s=0.1)


def test_the_sweep_sleeps_while_nothing_is_in_flight():
    async def test(client, socks):
        assert client._sweeper is None  # started, nothing sent: no timer wakes the process
        call = client.submit(0, P.get("a"))
        assert client._sweeper is not None
        answer(socks[0], socks[0].sent[-1])
        await wake(socks[0])
        assert (await asyncio.wait_for(call, 2.0))[P.BODY] == b"a"
        deadline = asyncio.get_running_loop().time() + 2.0
        while client._sweeper is not None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the next sweep finds nothing pending and does not come back
        assert client._sweeper is None
        silent = client.submit(1, P.get("never answered"))  # a new call wakes it again
        with pytest.raises(ShardUnavailable, match="did not answer"):
            await asyncio.wait_for(silent, 2.0)
    run(test, timeout_s=0.1)


def test_close_fails_what_is_pending():
    async def test(client, socks):
        fut = client.submit(0, P.ping())
        client.close()
        with pytest.raises(ShardUnavailable, match="client closed"):
            await fut
    run(test)


def test_each_reply_frame_reports_one_round_trip_for_its_shard():
    async def test(client, socks):
        seen = []
        client.on_roundtrip = lambda shard, seconds: seen.append((shard, seconds))
        first = client.submit(1, P.get("a"))
        more = [client.submit(1, P.get("b")), client.submit(1, P.get("c"))]
        await asyncio.sleep(0)
        for frame in socks[1].sent:
            answer(socks[1], frame)
        await wake(socks[1])
        await asyncio.gather(first, *more)
        assert [shard for shard, _ in seen] == [1, 1]  # two frames sent, two answered: one each
        assert all(0 <= seconds < 1.0 for _, seconds in seen)
    run(test)


def test_a_call_with_a_shorter_timeout_fails_at_it_and_reports_its_true_round_trip():
    async def test(client, socks):
        seen = []
        client.on_roundtrip = lambda shard, seconds: seen.append(seconds)
        loop = asyncio.get_running_loop()
        started = loop.time()
        short = loop.create_future()
        client.send(1, P.get("never answered"), short.set_result, timeout_s=0.1)
        assert isinstance(await asyncio.wait_for(short, 2.0), ShardUnavailable)
        assert 0.1 <= loop.time() - started < 0.9  # at its own timeout, not the client's 1 s
        answered = loop.create_future()
        client.send(0, P.get("a"), answered.set_result, timeout_s=0.5)
        answer(socks[0], socks[0].sent[-1])
        await wake(socks[0])
        assert (await asyncio.wait_for(answered, 2.0))[P.BODY] == b"a"
        assert len(seen) == 1 and 0 <= seen[0] < 0.1  # not inflated by the 0.5 s it did not use
    run(test)


def test_a_call_with_a_fallback_hands_its_failures_to_the_hook_and_its_answers_to_its_callback(caplog):
    async def test(client, socks):
        loop = asyncio.get_running_loop()
        taken = []  # (entry, outcome) of each failure the hook saw

        def hook(entry, outcome):
            taken.append((entry, outcome))
            return entry[4] != "decline"

        client.on_failed = hook
        got = {}
        for name in ("ok", "refused", "decline", "silent", "plain"):
            got[name] = loop.create_future()
        started = loop.time()
        client.send(0, P.get("ok"), got["ok"].set_result, fallback="ok")
        client.send(0, P.get("refused"), got["refused"].set_result, fallback="refused")
        client.send(0, P.get("decline"), got["decline"].set_result, fallback="decline")
        client.send(1, P.get("silent"), got["silent"].set_result, timeout_s=0.1, fallback="silent")
        client.send(0, P.get("plain"), got["plain"].set_result)  # no fallback: an error reply is its own
        await asyncio.sleep(0)
        by_entity = {req[P.ENTITY]: req for frame in socks[0].sent for req in frame}
        socks[0].queue(P.body_reply(P.id_of(by_entity["ok"]), b"ok"),
                       *(P.error(P.id_of(by_entity[e]), P.NOT_OWNER, "not here") for e in ("refused", "decline", "plain")))
        await wake(socks[0])
        assert got["ok"].result()[P.BODY] == b"ok"  # an answer goes straight to the callback
        assert P.code_of(got["decline"].result()) == P.NOT_OWNER  # the hook declined: the callback has it
        assert P.code_of(got["plain"].result()) == P.NOT_OWNER
        assert not got["refused"].done()  # the hook took it over (cluster mode asks another replica)
        await asyncio.wait_for(_until(lambda: len(taken) == 3), 2.0)
        assert not got["silent"].done()
        assert 0.1 <= loop.time() - started < 0.9  # at its own timeout
        entries = {entry[4]: (entry, outcome) for entry, outcome in taken}
        assert sorted(entries) == ["decline", "refused", "silent"]
        entry, outcome = entries["silent"]
        assert entry[2] == 1 and entry[3][P.ENTITY] == "silent" and isinstance(outcome, ShardUnavailable)
        assert started + 1.0 <= entry[1] < started + 1.5  # the call's whole deadline, for the next attempt
        assert P.code_of(entries["refused"][1]) == P.NOT_OWNER
        client.on_failed = lambda entry, outcome: 1 / 0  # a failing hook: logged, and the callback answered
        broken = loop.create_future()
        client.send(1, P.get("broken"), broken.set_result, timeout_s=0.1, fallback="x")
        with caplog.at_level(logging.ERROR, logger="frontend.shards"):
            assert isinstance(await asyncio.wait_for(broken, 2.0), ShardUnavailable)
        assert "fallback failed" in caplog.text
    run(test)


async def _until(check):
    while not check():
        await asyncio.sleep(0.01)
