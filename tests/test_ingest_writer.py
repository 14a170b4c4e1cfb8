"""The ingest writer without sockets: backoff growth and cap, in-order resends after a reconnect."""
import time

import pytest
import zmq

from common import protocol as P
from common.config import Config
from ingest.decode import DeadLetters, Unit
from ingest.writer import RETRY_FIRST_S, ShardWriter
from tests.fake_zmq import FakeDealer


@pytest.fixture
def writer(tmp_path):
    cfg = Config(shards=2, ingest_batch_events=1, ingest_max_in_flight=8, ingest_ack_timeout_s=5.0,
                 ingest_retry_max_s=0.4)
    w = ShardWriter(cfg, None, DeadLetters(str(tmp_path / "dead.jsonl")),
                    connect=lambda ctx, endpoint: FakeDealer(endpoint))
    yield w
    w.close()


def unit(tag, shard, eid):
    u = Unit(tag)
    u.by_shard = {shard: [[eid, "x", 1, 1_000_000]]}
    u.events = 1
    return u


def ack(writer, shard, frame, written=1):
    """The shard answers every write request of ``frame`` (a decoded frame it was sent)."""
    sock = writer.links[shard].sock
    sock.queue(*(P.write_reply(P.id_of(req), written, 0) for req in frame))
    writer._drain(writer.links[shard])


def entities(frame):
    return [w[0] for req in frame for w in req[P.WRITES]]


def test_backoff_doubles_up_to_the_cap_and_resets_on_an_ack(writer):
    link = writer.links[0]
    link.sock.connected = False  # every send fails at once (ZMQ_IMMEDIATE)
    writer.add(unit("a", 0, "e1"))  # batch of one event: sent at once, and fails
    now = time.monotonic()
    waits = [round(link.retry_at - now, 3)]
    for _ in range(5):
        now = link.retry_at + 0.001  # each retry is due and fails again
        writer._chores(now)
        waits.append(round(link.retry_at - now, 3))
    assert waits == [pytest.approx(w, abs=0.01) for w in (0.05, 0.1, 0.2, 0.4, 0.4, 0.4)]
    assert writer.retries == 6 and not link.sock.sent and writer.done() == []
    link.sock.connected = True
    writer._chores(link.retry_at + 0.001)
    (frame,) = link.sock.sent
    assert entities(frame) == ["e1"] and writer.resends == 1
    ack(writer, 0, frame)
    assert link.backoff == RETRY_FIRST_S
    (batch,) = writer.done()
    assert batch.units[0].written == 1 and writer.events == 1


def test_a_retry_waits_for_its_backoff(writer):
    link = writer.links[1]
    link.sock.connected = False
    writer.add(unit("a", 1, "e1"))
    link.sock.connected = True
    writer._chores(link.retry_at - 0.01)  # not due yet: nothing is sent
    assert not link.sock.sent
    writer._chores(link.retry_at)
    assert len(link.sock.sent) == 1


def test_after_a_reconnect_unacknowledged_batches_are_resent_oldest_first(writer):
    link = writer.links[0]
    for i in range(4):
        writer.add(unit(i, 0, f"e{i}"))
    first = link.sock.sent[:]
    assert [entities(f) for f in first] == [["e0"], ["e1"], ["e2"], ["e3"]]
    ack(writer, 0, first[0])
    link.sock.monitor.event(zmq.EVENT_DISCONNECTED)  # the shard restarted: e1..e3 may be lost
    writer._monitor(link.sock.monitor)
    link.sock.monitor.event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    writer._monitor(link.sock.monitor)
    assert writer.connected() == [0]
    writer._chores(link.retry_at)
    resent = link.sock.sent[4:]
    assert [entities(f) for f in resent] == [["e1"], ["e2"], ["e3"]] and writer.resends == 3
    assert [P.id_of(r) for f in resent for r in f] == [P.id_of(r) for f in first[1:] for r in f]
    ack(writer, 0, resent[2])  # acknowledged out of order: released in order all the same
    assert [b.units[0].tag for b in writer.done()] == [0]
    ack(writer, 0, first[1])  # a late ack of the first send counts; its resend's ack is ignored
    ack(writer, 0, resent[0])
    ack(writer, 0, resent[1])
    assert [b.units[0].tag for b in writer.done()] == [1, 2, 3]
    assert writer.written == 4 and not writer.pending and not link.frames


def test_a_missed_ack_resends_from_the_oldest_frame(writer):
    link = writer.links[0]
    writer.add(unit("a", 0, "e1"))
    writer.add(unit("b", 0, "e2"))
    sent_at = link.frames[0].sent
    writer._chores(sent_at + writer.ack_timeout_s + 0.01)  # no ack in time: both marked for resend
    assert [f.sent for f in link.frames] == [0.0, 0.0]
    writer._chores(link.retry_at)
    assert [entities(f) for f in link.sock.sent[2:]] == [["e1"], ["e2"]]


def test_a_retryable_error_backs_off_and_a_refusal_is_dead_lettered(writer):
    link = writer.links[0]
    writer.add(unit("a", 0, "e1"))
    writer.add(unit("b", 0, "e2"))
    (r1,), (r2,) = link.sock.sent
    link.sock.queue(P.error(P.id_of(r1), P.UNAVAILABLE, "log failed"),
                    P.error(P.id_of(r2), P.BAD_REQUEST, "no"))
    link.sock.push(b"\xc1")  # a malformed frame is skipped
    writer._drain(link)
    assert writer.retries == 1 and [f.sent for f in link.frames] == [0.0]  # only the unavailable one waits
    assert writer.refused == 1 and writer.dead.count == 1
    writer._chores(link.retry_at)
    (again,) = link.sock.sent[2]
    ack(writer, 0, [again])
    assert [b.units[0].tag for b in writer.done()] == ["a", "b"]
    assert writer.rejected == 0 and writer.written == 1
