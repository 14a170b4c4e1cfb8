"""Decoder.add_lines: a chunk is looked at once for long numbers, each line still judged alone."""
import pytest

from common.events import Limits
from common.partition import Partitioner
from ingest.decode import DeadLetters, Decoder, Unit

GOOD = b'{"entity_id": "u1", "features": {"x": 1.5, "n": 9223372036854775807}, "event_timestamp": 1}'
HUGE = b'{"entity_id": "u2", "features": {"x": 184467440737095516150}, "event_timestamp": 1}'
OTHER = b'{"entity_id": "u3", "features": {"x": 2}, "event_timestamp": 1}'


@pytest.fixture
def decoder(tmp_path):
    return Decoder(Limits(), Partitioner(1), DeadLetters(str(tmp_path / "dead.jsonl")), 1 << 20)


def writes(unit):
    return sorted(w for ws in unit.by_shard.values() for w in ws)


@pytest.mark.parametrize("lines", [[GOOD, OTHER], iter([GOOD, OTHER]), (GOOD, OTHER)])
def test_a_chunk_without_long_numbers_is_read_exactly(decoder, lines):
    unit = Unit()
    decoder.add_lines(unit, lines, str)
    assert (unit.events, unit.rejected) == (2, 0)
    assert writes(unit) == [("u1", "n", 2**63 - 1, 1_000_000), ("u1", "x", 1.5, 1_000_000),
                            ("u3", "x", 2, 1_000_000)]


def test_an_integer_past_64_bits_is_refused_and_only_its_event(decoder):
    unit = Unit()
    decoder.add_lines(unit, [GOOD, HUGE, OTHER], str)
    assert (unit.events, unit.rejected) == (2, 1)
    assert "64-bit" in unit.errors[0] and unit.errors[0].startswith("1:")
    assert [w[0] for w in writes(unit)] == ["u1", "u1", "u3"]


def test_lines_that_are_not_bytes_are_judged_one_by_one(decoder):
    unit = Unit()
    decoder.add_lines(unit, [GOOD, bytearray(OTHER), memoryview(OTHER)], str)
    assert (unit.events, unit.rejected) == (3, 0)
