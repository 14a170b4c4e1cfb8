"""The shard's handlers, called without sockets."""
import orjson
import pytest

from common import protocol as P
from shard.handlers import ShardState, dispatch, handle_frame


@pytest.fixture
def shard():
    return ShardState(0)


def call(shard, req):
    P.stamp(req, 1)
    return dispatch(shard, req)


def write(shard, *writes):
    reply = call(shard, P.write([list(w) for w in writes]))
    assert P.is_ok(reply), reply
    return reply[P.WRITTEN], reply[P.STALE]


def entity(shard, eid, names=None):
    reply = call(shard, P.get(eid, names))
    return orjson.loads(reply[P.BODY]) if P.is_ok(reply) else reply


def test_last_write_wins_by_event_time_not_arrival(shard):
    assert write(shard, ("u", "x", 1, 200)) == (1, 0)
    assert write(shard, ("u", "x", 2, 100)) == (0, 1)  # older event: stale, ignored
    assert entity(shard, "u")["features"] == {"x": 1}
    assert write(shard, ("u", "x", 3, 200)) == (1, 0)  # equal time: the later arrival wins
    assert entity(shard, "u")["features"] == {"x": 3}


def test_any_order_of_replay_gives_the_same_state():
    events = [("u", "x", i, ts) for i, ts in enumerate([5, 1, 9, 3, 7])] + [("u", "y", "s", 4)]
    states = []
    for order in (events, list(reversed(events)), sorted(events, key=lambda e: str(e[2]))):
        s = ShardState(0)
        write(s, *order)
        states.append(entity(s, "u"))
    assert states[0] == states[1] == states[2]
    assert states[0]["features"] == {"x": 2, "y": "s"}


def test_entity_reply_has_values_of_their_types_and_newest_event_time(shard):
    write(shard, ("u", "i", 1, 10**15), ("u", "s", "1", 2 * 10**15), ("u", "l", [1.5, None], 10**15))
    body = entity(shard, "u")
    assert body == {"entity_id": "u", "features": {"i": 1, "s": "1", "l": [1.5, None]},
                    "last_updated": "2033-05-18T03:33:20Z"}
    assert entity(shard, "u", ["i"])["features"] == {"i": 1}


def test_reads_carry_the_etag_of_their_body_kept_with_the_rendering_until_a_write(shard):
    write(shard, ("u", "x", 1, 1), ("u", "y", 2, 1))
    first, again = call(shard, P.get("u")), call(shard, P.get("u"))
    assert P.etag_of(first) == P.etag_for(first[P.BODY]) and P.etag_of(first).startswith('"')
    assert P.etag_of(again) is P.etag_of(first)  # from the render cache, not hashed again
    some = call(shard, P.get("u", ["x"]))
    assert P.etag_of(some) == P.etag_for(some[P.BODY]) != P.etag_of(first)
    one = call(shard, P.get1("u", "y"))
    assert P.etag_of(one) == P.etag_for(one[P.BODY])
    write(shard, ("u", "x", 3, 2))
    changed = call(shard, P.get("u"))
    assert P.etag_of(changed) == P.etag_for(changed[P.BODY]) != P.etag_of(first)
    assert P.etag_of(call(shard, P.get("nobody"))) is None


def test_missing_entity_and_feature_are_not_found(shard):
    assert P.code_of(entity(shard, "nobody")) == P.NOT_FOUND
    write(shard, ("u", "x", 1, 1))
    reply = call(shard, P.get1("u", "y"))
    assert (P.is_ok(reply), P.reason_of(reply)) == (False, "Feature not found")
    assert orjson.loads(call(shard, P.get1("u", "x"))[P.BODY])["value"] == 1


def test_mget_answers_in_request_order_with_missing_ones(shard):
    write(shard, ("a", "x", 1, 1), ("b", "x", 2, 1))
    parts = call(shard, P.mget(["b", "zz", "a", "b"]))[P.PARTS]
    bodies = [orjson.loads(p) for p in parts]
    assert [b["entity_id"] for b in bodies] == ["b", "zz", "a", "b"]
    assert bodies[1] == {"entity_id": "zz", "detail": "No features found for entity"}


def test_delete_entity_and_feature(shard):
    write(shard, ("u", "x", 1, 1), ("u", "y", 2, 1))
    assert call(shard, P.delete("u", "x"))[P.DELETED] == 1
    assert P.code_of(call(shard, P.delete("u", "x"))) == P.NOT_FOUND
    assert call(shard, P.delete("u"))[P.DELETED] == 1
    assert P.code_of(call(shard, P.delete("u"))) == P.NOT_FOUND
    assert call(shard, P.stats())["values"] == 0


def test_ids_that_look_alike_never_collide(shard):
    write(shard, ("a:b", "c", 1, 1), ("a", "b:c", 2, 1))
    assert entity(shard, "a:b")["features"] == {"c": 1}
    assert entity(shard, "a")["features"] == {"b:c": 2}


def test_stats_count_values(shard):
    write(shard, ("u", "x", 1, 5), ("u", "y", 1, 5), ("v", "x", 1, 5), ("u", "x", 0, 1))
    stats = call(shard, P.stats())
    assert (stats["entities"], stats["values"], stats["writes"], stats["stale"]) == (2, 3, 3, 1)


@pytest.mark.parametrize("req, code", [
    ({P.TYPE: "nope", P.ID: 1}, P.UNKNOWN_TYPE),
    ({P.ID: 1}, P.UNKNOWN_TYPE),
    ({P.TYPE: P.GET, P.ID: 1}, P.BAD_REQUEST),
    (P.get(5, req_id=1), P.BAD_REQUEST),
    (P.write([["e", "n", 1]], 1), P.BAD_REQUEST),
    (P.write("x", 1), P.BAD_REQUEST),
    (P.mget([1], req_id=1), P.BAD_REQUEST),
    (P.mget(["a"], [3], 1), P.BAD_REQUEST),
    ([1, 2], P.MALFORMED),
])
def test_bad_requests_get_error_replies(shard, req, code):
    reply = dispatch(shard, req)
    assert reply[P.OK] is False and P.code_of(reply) == code


def test_a_frame_mixing_good_and_bad_requests_answers_each(shard):
    frame = P.encode([P.ping(1), {P.TYPE: "bogus", P.ID: 2}, P.stats(3)])
    replies = P.decode(handle_frame(shard, frame))
    assert [(P.id_of(r), P.is_ok(r)) for r in replies] == [(1, True), (2, False), (3, True)]


def test_a_garbage_frame_gets_a_malformed_reply(shard):
    (reply,) = P.decode(handle_frame(shard, b"\xc1garbage"))
    assert P.code_of(reply) == P.MALFORMED and P.id_of(reply) is None
    assert P.is_ok(call(shard, P.ping()))
