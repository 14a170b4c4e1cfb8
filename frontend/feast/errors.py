"""Feast's error forms: ``FeastError`` bodies the SDK rebuilds, FastAPI's 422 for a bad shape."""
from __future__ import annotations

import json
from typing import Any

import orjson

from frontend.errors import APIError, Reply, error_reply


class FeastFailure(APIError):
    """An error in Feast's form: the SDK rebuilds ``feast.errors.<cls>`` from it."""

    def __init__(self, status: int, cls: str, message: str) -> None:
        super().__init__(status, message)
        self.body = orjson.dumps(json.dumps({"module": "feast.errors", "class": cls, "message": message}))


class ShapeError(APIError):
    """A body of the wrong shape: 422 in FastAPI's validation form, as ``feast serve`` answers."""

    def __init__(self, loc: tuple, kind: str, msg: str, value: Any = None) -> None:
        super().__init__(422, f"{'.'.join(map(str, loc))}: {msg}")
        item = {"type": kind, "loc": ["body", *loc], "msg": msg}
        if kind != "missing":
            item["input"] = value
        try:
            self.body = orjson.dumps({"detail": [item]}, default=str)
        except TypeError:  # the input echoed back holds an integer orjson cannot write, or is deep
            try:
                self.body = json.dumps({"detail": [item]}, default=str).encode()
            except RecursionError:  # too deep to echo back: the error says where it is without it
                item.pop("input", None)
                self.body = orjson.dumps({"detail": [item]})


def failure_reply(exc: APIError) -> Reply:
    """The response of a refusal: Feast's own body for its errors, else ``{"detail"}``."""
    if isinstance(exc, (FeastFailure, ShapeError)):
        return exc.status_code, {}, exc.body
    return error_reply(exc)
