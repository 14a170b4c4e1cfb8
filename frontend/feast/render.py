"""Rendering Feast's column-major response from the shards' pre-rendered rows.

A column is a tuple of its pieces (:data:`Column`), joined once with the whole response by
:func:`response`: building each column's bytes first copied every value 3-6 times over.
"""
from __future__ import annotations

from functools import lru_cache

import orjson

from common import protocol as P

_TOKENS = [None] * 256
for _code, _name in P.FEAST_STATUS.items():
    _TOKENS[_code] = b'"' + _name.encode() + b'"'


@lru_cache(maxsize=64)
def _same(token: bytes, n: int) -> bytes:
    return b",".join([token] * n)


Column = tuple  # the pieces of one result column's JSON object, in order


def _column(values: bytes, statuses: bytes, stamps: bytes) -> Column:
    return b'{"values":[', values, b'],"statuses":[', statuses, b'],"event_timestamps":[', stamps, b"]}"


def column_size(col: Column) -> int:
    """The bytes of a column's JSON."""
    return sum(map(len, col))


def response(cols: list[Column], tail: bytes) -> bytes:
    """``{"results":[`` the columns ``]`` then ``tail``, in one join."""
    pieces = [b'{"results":[']
    for col in cols:
        pieces += col
        pieces.append(b",")
    if cols:
        pieces.pop()  # (the last column's comma)
    pieces += (b"]", tail)
    return b"".join(pieces)


def empty_column() -> Column:
    """A result column of no rows."""
    return _column(b"", b"", b"")


def view_columns(rows: tuple[list, list, list], m: int) -> list[Column]:
    """The ``m`` result columns of one view from its Feast rows, already in request order."""
    v_rows, s_rows, t_rows = rows
    n = len(v_rows)
    if m == 1:
        vcols = [v_rows]
    else:  # one split of all rows, then every m-th fragment: fewer objects than row by row
        flat = P.SEP.join(v_rows).split(P.SEP)
        vcols = [flat[j::m] for j in range(m)]
    statuses = b"".join(s_rows)
    if statuses.count(P.PRESENT) == n * m:
        scols = [_same(_TOKENS[P.PRESENT[0]], n)] * m
    else:
        scols = [b",".join(map(_TOKENS.__getitem__, statuses[j::m])) for j in range(m)]
    stamps = b",".join(t_rows)
    if P.SEP not in stamps:  # each row's names share one event time
        tcols = [stamps] * m
    else:
        tcols = [b",".join(c) for c in zip(*[t.split(P.SEP) if P.SEP in t else [t] * m for t in t_rows])]
    return [_column(b",".join(vcols[j]), scols[j], tcols[j]) for j in range(m)]


def key_column(values: list) -> Column:
    """A join-key column, echoed as Feast does: the request's values, PRESENT, epoch times."""
    n = len(values)
    return _column(orjson.dumps(values)[1:-1], _same(_TOKENS[P.PRESENT[0]], n), _same(P.EPOCH_TS, n))
