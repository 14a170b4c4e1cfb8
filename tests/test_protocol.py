import msgpack
import pytest

from common import protocol as P


def test_requests_round_trip_through_one_frame():
    reqs = [P.get("user/1", req_id=1), P.write([["a", "x", 1.5, 10]], 2)]
    assert P.decode(P.encode(reqs)) == reqs


def test_builders_spell_the_documented_fields():
    """The wire spelling is pinned here, as the table in protocol.py's docstring gives it."""
    assert P.get("u", ["a"], 1) == {"t": "get", "id": 1, "e": "u", "f": ["a"]}
    assert P.fget(["u"], ["a"], 2) == {"t": "fget", "id": 2, "es": ["u"], "f": ["a"]}
    assert P.delete("u") == {"t": "del", "e": "u", "n": None}
    req = P.events_json(b"{}\n")
    assert P.stamp(req, 9) == 9 and req == {"t": "events", "id": 9, "json": b"{}\n"}
    assert P.events_reply(4, 3, 1, 2, ["x"]) == {"id": 4, "ok": True, "written": 3, "stale": 1,
                                                 "rejected": 2, "errors": ["x"]}
    assert P.ping_reply(5, source="zmq") == {"id": 5, "ok": True, "source": "zmq"}
    assert P.ping_reply(5, shard=0) == {"id": 5, "ok": True, "shard": 0}
    assert P.ping_reply(5, shard=1, table=[2, 1, 7]) == {"id": 5, "ok": True, "shard": 1, "table": [2, 1, 7]}


def test_stats_replies_carry_counters_without_the_envelope():
    reply = P.decode(P.encode([P.stats_reply(6, {"values": 3, "shard": 1})]))[0]
    assert P.is_ok(reply) and P.id_of(reply) == 6
    assert P.counters_of(reply) == {"values": 3, "shard": 1}


def test_bytes_and_strings_keep_their_types():
    reply = P.ok(3, body=b'{"a":1}', name="caf\u00e9")
    (back,) = P.decode(P.encode([reply]))
    assert back["body"] == b'{"a":1}' and isinstance(back["body"], bytes)
    assert back["name"] == "caf\u00e9" and isinstance(back["name"], str)


def test_replies_have_two_shapes_and_echo_the_id():
    assert P.ok(7, deleted=2) == {"id": 7, "ok": True, "deleted": 2}
    err = P.error(7, P.NOT_FOUND, "gone")
    assert err == {"id": 7, "ok": False, "code": "not_found", "reason": "gone"}
    assert err["code"] in P.CODES


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x92\x01", msgpack.packb({"t": "ping"}), b"\xff" * 20])
def test_garbage_frames_raise_protocol_error(frame):
    with pytest.raises(P.ProtocolError):
        P.decode(frame)
