"""The internal wire protocol: every message between processes, encoded with msgpack.

Sockets: the front end and the ingest process each hold one DEALER per shard; each shard binds
one ROUTER. A ZeroMQ message is one frame (the ROUTER sees ``[identity, frame]``). The frame is
a msgpack *array of requests*, so a client may send several pending requests in one message;
the shard answers with one frame holding an array of replies, in the same order.

A request is a map ``{"t": <type>, "id": <int>, ...fields}``. A reply echoes the ``id`` and has
one of two shapes, built only by :func:`ok` and :func:`error`::

    {"id": 7, "ok": True, ...result fields}
    {"id": 7, "ok": False, "code": "not_found", "reason": "No features found for entity"}

| type      | request fields                          | ok reply fields                         |
|-----------|-----------------------------------------|-----------------------------------------|
| ``ping``  | -                                       | ``shard``, ``ready``                    |
| ``get``   | ``e`` entity id, ``f`` names or nil     | ``body``: JSON bytes of the entity      |
| ``get1``  | ``e``, ``n`` name                       | ``body``: JSON bytes of the feature     |
| ``mget``  | ``es`` entity ids, ``f`` names or nil   | ``parts``: JSON bytes per id, in order  |
| ``fget``  | ``es`` entity ids, ``f`` names          | ``v``, ``s``, ``ts``: one row per id    |
| ``write`` | ``w``: ``[[e, n, value, ts_us], ...]``  | ``written``, ``stale``                  |
| ``del``   | ``e``, ``n`` name or nil                | ``deleted``                             |
| ``stats`` | -                                       | counters of the shard                   |

``fget`` serves Feast reads with pre-rendered fragments, one row per requested entity id, in
order, so the front end transposes rows into Feast's columns without decoding any value:

- ``v[i]``: the JSON of each requested name's value, joined by :data:`SEP` (``null`` when
  absent). :data:`SEP` (0x1F) cannot occur in JSON text, so splitting on it is exact.
- ``s[i]``: one status byte per requested name (:data:`FEAST_STATUS` gives Feast's names).
- ``ts[i]``: the JSON string of each name's event time joined by :data:`SEP`, or a single
  fragment when every name of the row has the same event time (the usual case).

The ingest process binds a ROUTER of its own (``FS_INGEST_ENDPOINT``, the ZeroMQ source) that
producers' DEALERs send the same kind of frames to, and answers ``stats`` on
``FS_INGEST_STATS_ENDPOINT`` (the front end's ``/stats`` asks it there):

| type      | request fields                          | ok reply fields                         |
|-----------|-----------------------------------------|-----------------------------------------|
| ``events``| ``json``: bytes, JSON lines of events   | ``written``, ``stale`` (values) and     |
|           | (each an event or an array of events),  | ``rejected`` (events), ``errors``: the  |
|           | or ``ev``: an array of event maps       | first reasons; sent once the shards     |
|           |                                         | acknowledged every write of the request |
| ``stats`` | -                                       | counters of the ingest process          |
| ``ping``  | -                                       | ``source``                              |
"""
from __future__ import annotations

from typing import Any

import msgpack

# message types
PING = "ping"
GET = "get"
GET1 = "get1"
MGET = "mget"
FGET = "fget"
WRITE = "write"
DELETE = "del"
STATS = "stats"
EVENTS = "events"  # producer -> ingest process only
TYPES = (PING, GET, GET1, MGET, FGET, WRITE, DELETE, STATS, EVENTS)

# error codes, listed once
NOT_FOUND = "not_found"  # no such entity or feature
BAD_REQUEST = "bad_request"  # a field is missing or has the wrong type
UNKNOWN_TYPE = "unknown_type"  # a message type this shard does not know
MALFORMED = "malformed"  # the frame is not a msgpack array of request maps
UNAVAILABLE = "unavailable"  # the shard cannot take writes now (recovering, log failed)
DISK_FULL = "disk_full"  # the shard's log cannot be written: no space left
INTERNAL = "internal"  # a handler failed unexpectedly; the shard logged the traceback
CODES = (NOT_FOUND, BAD_REQUEST, UNKNOWN_TYPE, MALFORMED, UNAVAILABLE, DISK_FULL, INTERNAL)


# fget rows
SEP = b"\x1f"  # separates the fragments of one row; never part of JSON text
PRESENT, NOT_FOUND_S, NULL_VALUE, OUTSIDE_MAX_AGE = b"P", b"N", b"U", b"O"  # status bytes
FEAST_STATUS = {ord(PRESENT): "PRESENT", ord(NOT_FOUND_S): "NOT_FOUND",
                ord(NULL_VALUE): "NULL_VALUE", ord(OUTSIDE_MAX_AGE): "OUTSIDE_MAX_AGE"}
EPOCH_TS = b'"1970-01-01T00:00:00Z"'  # the event time of an absent value, as Feast renders it


class ProtocolError(ValueError):
    """A frame that is not a valid message."""


def ok(req_id: Any, **fields: Any) -> dict:
    """A success reply to request ``req_id``."""
    fields["id"] = req_id
    fields["ok"] = True
    return fields


def error(req_id: Any, code: str, reason: str) -> dict:
    """An error reply to request ``req_id``; ``code`` is one of :data:`CODES`."""
    return {"id": req_id, "ok": False, "code": code, "reason": reason}




def encode(messages: list) -> bytes:
    """Encode a list of requests or replies as one frame."""
    return msgpack.packb(messages, use_bin_type=True)


def decode(frame: bytes) -> list:
    """Decode one frame into a list of request or reply maps; :class:`ProtocolError` if not."""
    try:
        messages = msgpack.unpackb(frame, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"not msgpack: {exc.__class__.__name__}") from None
    if type(messages) is not list:
        raise ProtocolError("frame is not an array of messages")
    return messages


def request(kind: str, req_id: int, **fields: Any) -> dict:
    """A request map of type ``kind``."""
    fields["t"] = kind
    fields["id"] = req_id
    return fields
