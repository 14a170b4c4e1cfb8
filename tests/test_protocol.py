import msgpack
import pytest

from common import protocol as P


def test_requests_round_trip_through_one_frame():
    reqs = [P.request(P.GET, 1, e="user/1", f=None), P.request(P.WRITE, 2, w=[["a", "x", 1.5, 10]])]
    assert P.decode(P.encode(reqs)) == reqs


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
