"""A partition arriving from a peer does not stop the receiving shard's loop: real shard loops
(``shard.server.Server``) on real ZeroMQ sockets, a real :class:`shard.cluster.Transfer` stepped
as the loop's chore, no Kafka."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import zmq

from common import protocol as P
from common.events import Limits
from common.link import connect_dealer
from common.murmur2 import partition_of
from shard.cluster import Partitions, Transfer
from shard.handlers import ShardState
from shard.server import Server, bind
from shard.store import Store
from tests.support import free_port, poll_for

N = 2
ENTITIES = 40_000  # in partition 1, 3 values each: 10 chunks


def shard_over(parts: Partitions, chores=()) -> tuple[Server, str, threading.Thread]:
    state = ShardState(0, parts.store, owner=parts)
    state.cluster = SimpleNamespace(parts=parts)  # what handle_pdump asks
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = Server(state, bind(zmq.Context.instance(), endpoint), chores=chores, poll_ms=5)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, endpoint, thread


def test_reads_on_an_owned_partition_keep_answering_while_another_arrives():
    peer = Partitions(Store(), N, Limits(), "t")
    big = [e for e in (f"u{i}" for i in range(2 * ENTITIES + 2000)) if partition_of(e, N) == 1][:ENTITIES]
    peer.store.apply([(e, f"f{j}", j, 1_700_000_000_000_000) for e in big for j in range(3)])
    h = peer.require(1)
    h.entities, h.serving, h.next = set(big), True, 77
    here = Partitions(Store(), N, Limits(), "t")
    mine = next(e for e in (f"m{i}" for i in range(100)) if partition_of(e, N) == 0)
    h = here.require(0)
    h.serving = h.assigned = True
    here.apply([(0, 0, mine.encode(), b'{"entity_id": "%s", "features": {"x": 1}}' % mine.encode(), 0)])

    progress: dict = {"steps": []}  # monotonic time of each loop pass that loaded a chunk

    def chore() -> None:  # what Tail.poll does for a transfer, once per loop pass
        t = progress.get("transfer")
        if t is None or progress.get("done"):
            return
        before = t.entities
        progress["done"] = t.step(here)
        if t.entities != before:
            progress["steps"].append(time.monotonic())

    servers = []
    try:
        servers.append(shard_over(peer))
        servers.append(shard_over(here, [chore]))
        progress["transfer"] = Transfer(zmq.Context.instance(), 1, servers[0][1])
        sock = connect_dealer(zmq.Context.instance(), servers[1][1], immediate=False)
        answered = []  # monotonic times of the reads of partition 0 answered
        deadline = time.monotonic() + 60
        while not progress.get("done") and time.monotonic() < deadline:
            sock.send(P.encode([P.get(mine, req_id=1)]))
            assert sock.poll(5000), "a read got no answer"
            assert P.is_ok(P.decode(sock.recv())[0])
            answered.append(time.monotonic())
        sock.close()
        steps = progress["steps"]
        assert progress.get("done") and len(steps) >= 10, steps
        during = [t for t in answered if steps[0] < t < steps[-1]]
        assert len(during) >= 5, (len(during), steps[-1] - steps[0])  # answered between the chunks
        poll_for(lambda: here.held[1].entities == set(big), 5, what="the transfer's entities")
        assert here.held[1].next == 77 and here.held[1].loading
        assert here.store.values == 3 * ENTITIES + 1 and here.store.render_entity(big[0]) is not None
    finally:
        for server, _, thread in servers:
            server.stop()
            thread.join(5)
            server.sock.close()
