"""Record framing of the shard's files: an 8-byte header ``<II`` (payload length, CRC-32 of the
payload) followed by the msgpack payload, and the scan that checks and splits a file."""
from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field

log = logging.getLogger("shard.persistence")

HEADER = struct.Struct("<II")  # payload length, crc32(payload)
OP_WRITE, OP_DELETE = 1, 2  # log records: [1, [[e, n, value, ts_us], ...]] and [2, e, n-or-nil]
# a write record of a store with aggregations has a third item: [clock_us, ids, origin, positions]


class RecoveryError(Exception):
    """The shard's files cannot be recovered without losing data; names the file and offset."""


def frame(payload: bytes) -> bytes:
    """One record: header plus payload."""
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _valid_at(buf, off: int) -> int:
    """The end of a valid record starting at ``off``, or -1."""
    if len(buf) - off < HEADER.size:
        return -1
    length, crc = HEADER.unpack_from(buf, off)
    end = off + HEADER.size + length
    if length == 0 or end > len(buf) or zlib.crc32(buf[off + HEADER.size:end]) != crc:
        return -1
    return end


@dataclass
class Scan:
    """What :func:`scan` found in one file."""

    payloads: list = field(default_factory=list)
    end: int = 0  # where the valid records end (the file is cut here when torn)
    torn: bool = False
    damaged: list = field(default_factory=list)  # offsets of skipped damaged records


def scan(buf, path: str, last: bool, skip: bool) -> Scan:
    """Split ``buf`` (a file's bytes) into record payloads, checking every checksum.

    An incomplete record at the end of the ``last`` file, or a final record that fails its
    checksum there, or zero bytes to the end, with no valid record after it, is a torn write:
    the scan stops before it.
    Anything else that fails raises :class:`RecoveryError` naming ``path`` and the offset, unless
    ``skip``: then the scan looks for the next valid record and reports the damaged offset.
    """
    view = memoryview(buf)
    out = Scan()
    off, n = 0, len(buf)
    while off < n:
        end = _valid_at(view, off)
        if end > 0:
            out.payloads.append(view[off + HEADER.size:end])
            off = end
            continue
        resume = _next_valid(view, off)
        if last and resume == n and _torn_tail(view, off):
            out.torn = True
            break
        why = _why(view, off)
        if not skip:
            raise RecoveryError(
                f"{path}: damaged record at offset {off} ({why}); the shard stops rather than "
                f"lose data. Restore the file, or start with FS_SKIP_DAMAGED=1 to skip damaged "
                f"records (their writes are lost)")
        out.damaged.append(off)
        log.error("%s: skipped a damaged record at offset %d (%s)", path, off, why)
        off = resume
    out.end = off
    return out


def _next_valid(view, off: int) -> int:
    """The offset of the first valid record after ``off``, or the end of the buffer."""
    return next((p for p in range(off + 1, len(view)) if _valid_at(view, p) > 0), len(view))


def _torn_tail(view, off: int) -> bool:
    n = len(view)
    if n - off < HEADER.size:
        return True
    length, _ = HEADER.unpack_from(view, off)
    end = off + HEADER.size + length
    return end >= n or not any(view[off:])  # runs past the end, ends at it, or is all zeros


def _why(view, off: int) -> str:
    length, _ = HEADER.unpack_from(view, off)
    if length == 0:
        return "zero length"
    if off + HEADER.size + length > len(view):
        return f"length {length} runs past the end of the file"
    return "checksum mismatch"
