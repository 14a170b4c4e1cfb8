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
| ``ping``  | -                                       | ``shard``                               |
| ``get``   | ``e`` entity id, ``f`` names or nil     | ``body``: JSON bytes of the entity,     |
|           |                                         | ``tag``: its ETag                       |
| ``get1``  | ``e``, ``n`` name                       | ``body``: JSON bytes of the feature,    |
|           |                                         | ``tag``: its ETag                       |
| ``mget``  | ``es`` entity ids, ``f`` names or nil   | ``parts``: JSON bytes per id, in order  |
| ``fget``  | ``es`` entity ids, ``f`` names          | ``v``, ``s``, ``ts``: one row per id    |
| ``write`` | ``w``: ``[[e, n, value, ts_us], ...]``; | ``written``, ``stale``                  |
|           | optional, parallel to ``w``: ``ids``    |                                         |
|           | event ids, ``at`` positions in ``src``  |                                         |
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

from hashlib import sha1
from typing import Any

import msgpack
import msgspec

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
PDUMP = "pdump"  # cluster mode: a peer's frozen copy of one partition, in chunks
OFFSETS = "offsets"  # cluster mode: the next offset of every partition a shard holds

# field names: spelled here and nowhere else
TYPE = "t"
ID = "id"
OK = "ok"
CODE = "code"
REASON = "reason"
ENTITY = "e"  # one entity id
ENTITIES = "es"  # entity ids, in order
NAME = "n"  # one feature name, or nil for the whole entity
NAMES = "f"  # feature names, or nil for every feature
WRITES = "w"  # [[entity_id, name, value, event_us], ...]
EVENT_IDS = "ids"  # write: the event id of each write, or nil (a repeated id counts once)
ORIGIN = "src"  # write: the source the writes were read from ("kafka:topic/3", "file:/path")
POSITIONS = "at"  # write: the position in the source of each write (offset, line number)
BODY = "body"  # JSON bytes of an entity or a feature
ETAG = "tag"  # get, get1: the body's HTTP ETag (:func:`etag_for`), made where the body is rendered
PARTS = "parts"  # JSON bytes per entity id, in request order
VALUES = "v"  # fget rows: value fragments
STATUSES = "s"  # fget rows: status bytes
TIMES = "ts"  # fget rows: event-time fragments
WRITTEN = "written"
STALE = "stale"
REJECTED = "rejected"
ERRORS = "errors"
DELETED = "deleted"
APPLIED = "applied"  # cluster mode, a write's or delete's reply: [[partition, offset], ...] of its records
SHARD = "shard"
SOURCE = "source"
JSON_LINES = "json"  # events: JSON lines of events, as bytes
EVENT_MAPS = "ev"  # events: an array of event maps
PARTITION = "p"  # cluster mode: a partition of the cluster topic
DUMP = "dump"  # pdump: the token of a transfer (the partition's entity list when it began)
AT = "at"  # pdump: the position of the first entity wanted
OFFSET = "o"  # pdump: the partition's next offset when the transfer began (replay from it)
CHUNK = "chunk"  # pdump: msgpack ``[e, blob, e, blob, ...]``, as a snapshot's records hold them
STATES = "states"  # pdump: msgpack ``[e, window states, ...]`` of the chunk's entities that have some
STATES_AT = "sat"  # pdump: the partition's next offset when the chunk was packed (its states count up to it)
NEXT = "next"  # pdump: the position to ask for next, or nil at the end
AFTER = "after"  # get, get1, mget, fget: answer only once the entities' partition has applied this offset
PARTITIONS = "held"  # offsets: [[partition, next_offset, serving], ...]
SLOT_TABLE = "table"  # ping: the slot table a shard serves, [shards, index]; or the replica set

# error codes, listed once
NOT_FOUND = "not_found"  # no such entity or feature
BAD_REQUEST = "bad_request"  # a field is missing or has the wrong type
UNKNOWN_TYPE = "unknown_type"  # a message type this shard does not know
MALFORMED = "malformed"  # the frame is not a msgpack array of request maps
UNAVAILABLE = "unavailable"  # the shard cannot take writes now (recovering, log failed)
DISK_FULL = "disk_full"  # the shard's log cannot be written: no space left
INTERNAL = "internal"  # a handler failed unexpectedly; the shard logged the traceback
TOO_LARGE = "too_large"  # a value, an entity or a message over its limit (HTTP 413)
NOT_OWNER = "not_owner"  # the entity is not this shard's (another slot table, or a partition not held)
NOT_APPLIED = "not_applied"  # cluster mode: the write is in Kafka, but no owner applied it in time
CODES = (NOT_FOUND, BAD_REQUEST, UNKNOWN_TYPE, MALFORMED, UNAVAILABLE, DISK_FULL, INTERNAL, TOO_LARGE, NOT_OWNER,
         NOT_APPLIED)


# fget rows
SEP = b"\x1f"  # separates the fragments of one row; never part of JSON text
PRESENT, NOT_FOUND_S, NULL_VALUE, OUTSIDE_MAX_AGE = b"P", b"N", b"U", b"O"  # status bytes
FEAST_STATUS = {ord(PRESENT): "PRESENT", ord(NOT_FOUND_S): "NOT_FOUND",
                ord(NULL_VALUE): "NULL_VALUE", ord(OUTSIDE_MAX_AGE): "OUTSIDE_MAX_AGE"}
EPOCH_TS = b'"1970-01-01T00:00:00Z"'  # the event time of an absent value, as Feast renders it


class ProtocolError(ValueError):
    """A frame that is not a valid message."""


# ---- frames
def encode(messages: list) -> bytes:
    """Encode a list of requests or replies as one frame: the bytes ``msgpack.packb(messages,
    use_bin_type=True)`` writes, from msgspec's encoder (1.5x faster on a batch read's reply,
    3x on its request's entity ids); by msgpack itself when msgspec refuses (a value nested
    deeper than msgspec goes), so that what one accepted the other still does."""
    try:
        return _encode(messages)
    except Exception:
        return msgpack.packb(messages, use_bin_type=True)


_encode = msgspec.msgpack.Encoder().encode


def decode(frame: bytes) -> list:
    """Decode one frame into a list of request or reply maps; :class:`ProtocolError` if not."""
    try:
        messages = msgpack.unpackb(frame, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"not msgpack: {exc.__class__.__name__}") from None
    if type(messages) is not list:
        raise ProtocolError("frame is not an array of messages")
    return messages


# ---- requests: one builder per type. ``req_id`` may be left out and stamped by the sender
# (:func:`stamp`), as the shard client does when it sends.
def _request(kind: str, req_id: Any, fields: dict) -> dict:
    fields[TYPE] = kind
    if req_id is not None:
        fields[ID] = req_id
    return fields


def ping(req_id: Any = None) -> dict:
    """``ping``: is the peer up? (shard and ingest)"""
    return _request(PING, req_id, {})


def stats(req_id: Any = None) -> dict:
    """``stats``: the peer's counters (shard and ingest)."""
    return _request(STATS, req_id, {})


def get(eid: str, names: list | None = None, req_id: Any = None) -> dict:
    """``get``: an entity's JSON, every feature or ``names`` only."""
    return _request(GET, req_id, {ENTITY: eid, NAMES: names})


def get1(eid: str, name: str, req_id: Any = None) -> dict:
    """``get1``: one feature's JSON."""
    return _request(GET1, req_id, {ENTITY: eid, NAME: name})


def mget(eids: list, names: list | None = None, req_id: Any = None) -> dict:
    """``mget``: the JSON of several entities, in order."""
    return _request(MGET, req_id, {ENTITIES: eids, NAMES: names})


def fget(eids: list, names: list, req_id: Any = None) -> dict:
    """``fget``: Feast rows of several entities, in order."""
    return _request(FGET, req_id, {ENTITIES: eids, NAMES: names})


def write(writes: list, req_id: Any = None, event_ids: list | None = None, origin: str | None = None,
          positions: list | None = None) -> dict:
    """``write``: ``[[entity_id, name, value, event_us], ...]``; optionally, parallel to it, the
    event id of each write, and the position of each in the source ``origin`` (ingest), so the
    shard counts a redelivered event once in its aggregations."""
    fields: dict = {WRITES: writes}
    if event_ids is not None:
        fields[EVENT_IDS] = event_ids
    if origin is not None:
        fields[ORIGIN] = origin
        fields[POSITIONS] = positions
    return _request(WRITE, req_id, fields)


def write_origin(req: dict) -> tuple[Any, Any, Any]:
    """The ``(event ids, origin, positions)`` of a ``write`` request, each None when absent
    (not checked)."""
    return req.get(EVENT_IDS), req.get(ORIGIN), req.get(POSITIONS)


def read_after(request: dict, offset: int) -> dict:
    """``request`` (``get``, ``get1``, ``mget``, ``fget``), answered only by a replica whose copy of
    the entities' partition has applied ``offset`` (cluster mode: read-your-writes across front ends)."""
    request[AFTER] = offset
    return request


def after_of(req: dict) -> int | None:
    """The offset a read must see applied (:func:`read_after`), or None."""
    return req.get(AFTER)


def delete(eid: str, name: str | None = None, req_id: Any = None) -> dict:
    """``del``: one feature, or the whole entity when ``name`` is None."""
    return _request(DELETE, req_id, {ENTITY: eid, NAME: name})


def events_json(data: bytes, req_id: Any = None) -> dict:
    """``events`` to the ingest process: JSON lines of events."""
    return _request(EVENTS, req_id, {JSON_LINES: data})


def events_maps(events: list, req_id: Any = None) -> dict:
    """``events`` to the ingest process: an array of event maps."""
    return _request(EVENTS, req_id, {EVENT_MAPS: events})


def pdump(partition: int, dump: Any = None, at: int = 0, req_id: Any = None) -> dict:
    """``pdump``: a chunk of a peer's copy of ``partition`` (no ``dump``: begin a transfer)."""
    return _request(PDUMP, req_id, {PARTITION: partition, DUMP: dump, AT: at})


def offsets(req_id: Any = None) -> dict:
    """``offsets``: the next offset of every partition the shard holds, and whether it serves it."""
    return _request(OFFSETS, req_id, {})


def stamp(req: dict, req_id: Any) -> Any:
    """Give a request built without an id its id; return the id."""
    req[ID] = req_id
    return req_id


def kind_of(req: dict) -> Any:
    """A request's type, as sent (not checked)."""
    return req.get(TYPE)


def id_of(msg: dict) -> Any:
    """A request's or reply's id, or None."""
    return msg.get(ID)


def shown(value: Any) -> str:
    """A peer's value (a type, an id) as an error reason shows it: short, and never raising,
    whatever it holds (a map nested 1,000 deep)."""
    if type(value) is str:
        return repr(value[:100])
    if type(value) is int or value is None:
        return str(value)[:100]
    return f"of type {type(value).__name__}"


# ---- replies: two shapes, ``ok`` and ``error``, and one builder per ok-reply kind
def ok(req_id: Any, **fields: Any) -> dict:
    """A success reply to request ``req_id``."""
    fields[ID] = req_id
    fields[OK] = True
    return fields


def error(req_id: Any, code: str, reason: str) -> dict:
    """An error reply to request ``req_id``; ``code`` is one of :data:`CODES`."""
    return {ID: req_id, OK: False, CODE: code, REASON: reason}


def body_reply(req_id: Any, body: bytes, etag: str | None = None) -> dict:
    """Reply to ``get``/``get1`` (what ``ok(req_id, body=..., tag=...)`` builds, without its
    keywords); ``etag`` is :func:`etag_for` of ``body`` (the shard keeps it with a rendering)."""
    return {BODY: body, ETAG: etag, ID: req_id, OK: True}


def etag_of(reply: dict) -> str | None:
    """The ETag a ``get``/``get1`` reply carries, or None (a peer that sent none)."""
    return reply.get(ETAG)


def etag_for(body: bytes) -> str:
    """The HTTP ETag of a read's body, as Tornado computes one: its SHA-1, quoted."""
    return '"%s"' % sha1(body).hexdigest()


def parts_reply(req_id: Any, parts: list) -> dict:
    """Reply to ``mget``."""
    return ok(req_id, **{PARTS: parts})


def rows_reply(req_id: Any, values: list, statuses: list, times: list) -> dict:
    """Reply to ``fget``."""
    return ok(req_id, **{VALUES: values, STATUSES: statuses, TIMES: times})


def write_reply(req_id: Any, written: int, stale: int, applied: list | None = None) -> dict:
    """Reply to ``write``; in cluster mode, with the ``(partition, offset)`` of its records."""
    if applied is None:
        return ok(req_id, **{WRITTEN: written, STALE: stale})
    return ok(req_id, **{WRITTEN: written, STALE: stale, APPLIED: applied})


def applied_of(reply: dict) -> list:
    """The ``(partition, offset)`` pairs of a cluster-mode write's or delete's records ([] else)."""
    return reply.get(APPLIED) or []


def events_reply(req_id: Any, written: int, stale: int, rejected: int, errors: list) -> dict:
    """The ingest process's reply to ``events``, once the shards acknowledged its writes."""
    return ok(req_id, **{WRITTEN: written, STALE: stale, REJECTED: rejected, ERRORS: errors})


def stats_reply(req_id: Any, counters: dict) -> dict:
    """Reply to ``stats``: the peer's counters."""
    return ok(req_id, **counters)


def counters_of(reply: dict) -> dict:
    """The counters of a ``stats`` reply, without the envelope."""
    return {k: v for k, v in reply.items() if k != ID and k != OK}


def delete_reply(req_id: Any, deleted: int, applied: list | None = None) -> dict:
    """Reply to ``del``; in cluster mode, with the ``(partition, offset)`` of its record."""
    if applied is None:
        return ok(req_id, **{DELETED: deleted})
    return ok(req_id, **{DELETED: deleted, APPLIED: applied})


def ping_reply(req_id: Any, shard: int | None = None, source: str | None = None,
               table: list | None = None) -> dict:
    """Reply to ``ping``: ``shard`` (a shard's index, and ``table``: the slot table it serves, in
    embedded mode) or ``source`` (ingest's source). A peer that answers is ready (a shard binds
    its socket only once recovered)."""
    if source is not None:
        return ok(req_id, **{SOURCE: source})
    if table is not None:
        return ok(req_id, **{SHARD: shard, SLOT_TABLE: table})
    return ok(req_id, **{SHARD: shard})


def dump_reply(req_id: Any, dump: Any, offset: int, chunk: bytes, next_at: int | None,
               states: bytes | None = None, states_at: int | None = None) -> dict:
    """Reply to ``pdump``: the packed entities and blobs from position ``at`` on, and their
    window states as of offset ``states_at`` (aggregations)."""
    return ok(req_id, **{DUMP: dump, OFFSET: offset, CHUNK: chunk, NEXT: next_at, STATES: states,
                         STATES_AT: states_at})


def offsets_reply(req_id: Any, held: dict) -> dict:
    """Reply to ``offsets``, from ``{partition: (next_offset, serving)}``: a list of
    ``[partition, next_offset, serving]`` (msgpack map keys are strings)."""
    return ok(req_id, **{PARTITIONS: [[p, o, up] for p, (o, up) in held.items()]})


def is_ok(reply: dict) -> bool:
    return reply.get(OK) is True


def code_of(reply: dict) -> Any:
    return reply.get(CODE)


def reason_of(reply: dict) -> Any:
    return reply.get(REASON)
