import math

import pytest

from common import timefmt
from common.events import EventError, Limits, TooLarge, loads_json, parse_body

L = Limits()
NOW = 1_700_000_000_000_000


def one(body):
    return parse_body(body, L, NOW)


def test_seed_form_takes_receive_time_when_no_timestamp():
    assert one({"entity_id": "2025-06-01", "name": "temperature", "value": 28.5}) == [
        ("2025-06-01", "temperature", 28.5, NOW)]


def test_grouped_form_and_array_form():
    body = [{"entity_id": "u1", "features": {"a": 1, "b": "1", "c": [0.5, None], "d": {"k": True}},
             "event_timestamp": "2026-01-22T12:31:29.5+02:00"},
            {"entity_id": "u2", "name": "view:f", "value": None, "event_timestamp": 1769077889}]
    ts = timefmt.parse("2026-01-22T10:31:29.5Z")
    assert one(body) == [("u1", "a", 1, ts), ("u1", "b", "1", ts), ("u1", "c", [0.5, None], ts),
                         ("u1", "d", {"k": True}, ts), ("u2", "view:f", None, 1769077889 * 10**6)]


@pytest.mark.parametrize("body, field", [
    ({}, "entity_id is required"),
    ({"entity_id": "", "name": "x", "value": 1}, "entity_id must not be empty"),
    ({"entity_id": 5, "name": "x", "value": 1}, "entity_id must be a string"),
    ({"entity_id": "e", "value": 1}, "name is required"),
    ({"entity_id": "e", "name": "", "value": 1}, "name must not be empty"),
    ({"entity_id": "e", "name": "x"}, "value is required"),
    ({"entity_id": "e", "name": "a b", "value": 1}, "name may hold only"),
    ({"entity_id": "e", "name": "x", "value": math.inf}, "value must be a finite number"),
    ({"entity_id": "e", "name": "x", "value": [1, math.nan]}, "value[1] must be a finite number"),
    ({"entity_id": "e", "name": "x", "value": 2**63}, "value is outside the 64-bit integer range"),
    ({"entity_id": "x" * 513, "name": "x", "value": 1}, "entity_id is longer than 512 bytes"),
    ({"entity_id": "\u00fc" * 257, "name": "x", "value": 1}, "entity_id is longer than 512 bytes"),
    ({"entity_id": "e", "name": "n" * 257, "value": 1}, "name is longer than 256 bytes"),
    ({"entity_id": "e", "name": "x", "value": "v" * 65537}, "value is larger than 65536 bytes"),
    ({"entity_id": "e", "name": "x", "value": ["v" * 40000, "w" * 40000]}, "value is larger than"),
    ({"entity_id": "e", "name": "x", "value": 1, "event_timestamp": "yesterday"}, "event_timestamp"),
    ({"entity_id": "e", "name": "x", "value": 1, "event_timestamp": "2026-01-22T10:31:29"}, "no time zone"),
    ({"entity_id": "e", "name": "x", "value": 1, "event_timestamp": True}, "event_timestamp"),
    ({"entity_id": "e", "name": "x", "value": 1, "event_time": 1}, "event_time is not a field"),
    ({"entity_id": "e", "features": {}}, "features must not be empty"),
    ({"entity_id": "e", "features": [1]}, "features must be an object"),
    ({"entity_id": "e", "features": {"ok": 1, "bad name": 2}}, "features name 'bad name'"),
    ({"entity_id": "e", "features": {"x": math.nan}}, "features.x must be a finite number"),
    ([], "body must not be an empty array"),
    ([{"entity_id": "e", "name": "x", "value": 1}, 3], "[1] must be a JSON object"),
    ([{"entity_id": "e", "name": "x", "value": 1}, {"entity_id": "e"}], "[1].name is required"),
    ("text", "body must be a JSON object or an array"),
])
def test_bad_writes_name_the_field(body, field):
    with pytest.raises(EventError) as info:
        one(body)
    assert field in info.value.detail
    assert "Error" not in info.value.detail and "Traceback" not in info.value.detail


def test_limits_are_configurable():
    small = Limits(max_entity_id_bytes=4, max_name_bytes=3, max_value_bytes=8)
    with pytest.raises(EventError, match="longer than 4 bytes"):
        parse_body({"entity_id": "abcde", "name": "x", "value": 1}, small, NOW)
    with pytest.raises(EventError, match="larger than 8 bytes"):
        parse_body({"entity_id": "a", "name": "x", "value": [1, 2, 3, 4, 5, 6, 7, 8]}, small, NOW)


@pytest.mark.parametrize("text, rendered", [
    ("2026-01-22T10:31:29Z", "2026-01-22T10:31:29Z"),
    ("2026-01-22T12:31:29.5+02:00", "2026-01-22T10:31:29.500000Z"),
    ("2026-01-22T10:31:29.000001z", "2026-01-22T10:31:29.000001Z"),
    (0, "1970-01-01T00:00:00Z"),
    (1769077889.25, "2026-01-22T10:31:29.250000Z"),
])
def test_timestamps_parse_and_render_as_utc(text, rendered):
    assert timefmt.render(timefmt.parse(text)) == rendered


def test_naive_timestamps_only_when_asked():
    with pytest.raises(timefmt.TimestampError):
        timefmt.parse("2026-01-22 10:31:29")
    assert timefmt.render(timefmt.parse("2026-01-22 10:31:29", naive_is_utc=True)) == "2026-01-22T10:31:29Z"


@pytest.mark.parametrize("bad", [-1, math.nan, "10000-01-01T00:00:00Z", None, [1]])
def test_out_of_range_or_mistyped_timestamps_are_refused(bad):
    with pytest.raises(timefmt.TimestampError):
        timefmt.parse(bad)


def test_a_name_known_under_one_limit_is_checked_again_under_a_smaller_one():
    long = "abcdef"
    grouped = {"entity_id": "a", "features": {long: 1.5}}
    assert parse_body(grouped, Limits(), NOW) == [("a", long, 1.5, NOW)]
    with pytest.raises(EventError, match="longer than 3 bytes"):
        parse_body(grouped, Limits(max_name_bytes=3), NOW)
    assert parse_body(grouped, Limits(), NOW) == [("a", long, 1.5, NOW)]


@pytest.mark.parametrize("ts", [0, 1, 1_769_077_889, 253402300799, 253402300800, -1, True, False,
                                2**70, 1.5, "2026-01-22T10:31:29Z"])
def test_event_times_of_grouped_writes_parse_as_timefmt_does(ts):
    """The integer fast path of the grouped form accepts and refuses exactly what parse does."""
    grouped = {"entity_id": "a", "features": {"x": 1}, "event_timestamp": ts}
    try:
        want = timefmt.parse(ts)
    except timefmt.TimestampError as exc:
        with pytest.raises(EventError) as info:
            parse_body(grouped, Limits(), NOW)
        assert info.value.detail == f"event_timestamp {exc}"
        return
    assert parse_body(grouped, Limits(), NOW) == [("a", "x", 1, want)]


def test_non_ascii_ids_are_still_checked_for_surrogates():
    assert parse_body({"entity_id": "é", "name": "x", "value": 1}, Limits(), NOW)[0][0] == "é"
    with pytest.raises(EventError, match="not valid Unicode"):
        parse_body({"entity_id": "a\ud800", "name": "x", "value": 1}, Limits(), NOW)


@pytest.mark.parametrize("text, exact", [
    (b'{"v": 184467440737095516150}', True),  # 21 digits: parsed again exactly
    (b'[1234567890123456789]', True),  # exactly 19 digits
    (b'[123456789012345678]', False),  # 18: orjson's own reading is exact
    (b'{"v": 1234567890.12345678901, "w": "x"}', False),  # runs of 10 and 11 digits
    (b'{"v": "1234567890123456789"}', True),  # inside a string: parsed again, same result
])
def test_loads_json_reparses_exactly_when_there_is_a_run_of_19_digits(text, exact, monkeypatch):
    import json

    from common import events

    calls = []
    monkeypatch.setattr(events, "json", type("J", (), {"loads": staticmethod(lambda raw: calls.append(raw) or json.loads(raw))}))
    for raw in (text, bytearray(text)):
        assert events.loads_json(raw) == json.loads(bytes(raw))
    assert len(calls) == (2 if exact else 0)
    assert events.loads_json(memoryview(b"[1, 2]")) == [1, 2]  # as before: orjson reads a view


DEEP = 1000  # deeper than the stdlib parser's recursion allows, shallower than orjson's 1024


@pytest.mark.parametrize("raw", [
    b"[" * DEEP + b"1234567890123456789" + b"]" * DEEP,  # re-parsed by the stdlib: RecursionError
    b'{"a":' * DEEP + b"12345678901234567890" + b"}" * DEEP,
    b"[" * 5000 + b"]" * 5000,  # past orjson's depth limit
    b"\xff\xfe",
    b"",
    "text, not bytes".encode()[:-1] + b"\x00",
])
def test_loads_json_raises_only_value_error(raw):
    with pytest.raises(ValueError):
        loads_json(raw)


def test_loads_json_refuses_what_is_not_a_document():
    with pytest.raises(ValueError):
        loads_json(12345)  # a TypeError inside: still a ValueError to the caller


def test_loads_json_keeps_long_integers_exact():
    assert loads_json(b'{"v": 184467440737095516150}') == {"v": 184467440737095516150}


def test_a_value_over_its_size_limit_is_too_large_413_and_a_bad_value_is_400():
    small = Limits(max_value_bytes=8)
    with pytest.raises(TooLarge) as big:
        parse_body({"entity_id": "a", "name": "x", "value": "123456789"}, small, NOW)
    assert big.value.status == 413 and "FS_MAX_VALUE_BYTES" in big.value.detail
    with pytest.raises(TooLarge):
        parse_body({"entity_id": "a", "features": {"x": [1] * 20}}, small, NOW)
    with pytest.raises(EventError) as bad:
        parse_body({"entity_id": "a", "name": "x", "value": math.nan}, small, NOW)
    assert bad.value.status == 400 and not isinstance(bad.value, TooLarge)


@pytest.mark.parametrize("text, event_id", [("1.0", 1), ("-3.0", -3), ("1e3", 1000), ("9007199254740992.0", 2**53),
                                            ("9007199254740993", 2**53 + 1), ('"x"', "x")])
def test_an_event_id_is_a_string_or_an_integer_and_an_integral_float_an_exact_one(text, event_id):
    ids: list = []
    parse_body(loads_json(b'{"entity_id": "e", "name": "n", "value": 1, "event_id": %s}' % text.encode()),
               Limits(), 0, ids)
    assert ids == [event_id] and type(ids[0]) is type(event_id)


@pytest.mark.parametrize("text", ["1.5", "9007199254740994.0", "9.3e18", "true", '""', "[1]"])
def test_an_event_id_that_names_no_one_event_is_refused(text):
    with pytest.raises(EventError, match="event_id"):
        parse_body(loads_json(b'{"entity_id": "e", "name": "n", "value": 1, "event_id": %s}' % text.encode()),
                   Limits(), 0, [])
