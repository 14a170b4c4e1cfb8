"""``featurestore load``: read events from JSON lines or CSV, send them in batches, sum up.

JSON lines: one event per line in any form ``POST /features`` takes. CSV with a header row,
either long (``entity_id,name,value[,event_timestamp]``) or wide (``entity_id``, one column per
feature, optionally ``event_timestamp``; an empty cell is no value). A cell that reads as JSON
(``1.5``, ``true``, ``[1,2]``) is that value, any other cell is a string.
"""
from __future__ import annotations

import csv
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from common import protocol as P
from featurestore.client import Client
from featurestore.errors import BadRequest, PayloadTooLarge, ServerError, Unreachable

MAX_REASONS = 20  # rejection reasons kept for the summary
_ITEM = re.compile(r"^\[(\d+)\]\.?")  # the store names a bad item of an array body: "[3].value ..."
TIME_COLUMN = "event_timestamp"


class InputError(ValueError):
    """The file cannot be read as events at all (no header, no entity_id column)."""


@dataclass
class Summary:
    """What a load did: events read, values written, values stale, events rejected and why."""

    events: int = 0
    written: int = 0
    stale: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)


@dataclass
class Line:
    """One event of the input and the line it started on; ``reason`` set when it cannot be sent."""

    number: int
    event: Any = None
    reason: str | None = None


def _cell(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_jsonl(lines: Iterable[bytes]) -> Iterator[Line]:
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield Line(n, json.loads(raw))
        except ValueError as exc:
            yield Line(n, reason=f"not JSON: {exc}")


def read_csv(lines: Iterable[str]) -> Iterator[Line]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header or "entity_id" not in header:
        raise InputError("a CSV file needs a header row with an entity_id column")
    long_form = {"name", "value"} <= set(header)
    eid_col = header.index("entity_id")
    time_col = header.index(TIME_COLUMN) if TIME_COLUMN in header else None
    feature_cols = [i for i, h in enumerate(header) if i not in (eid_col, time_col)]
    for row in reader:
        n = reader.line_num
        if not any(row):
            continue
        if len(row) != len(header):
            yield Line(n, reason=f"has {len(row)} cells; the header has {len(header)}")
            continue
        event: dict[str, Any] = {"entity_id": row[eid_col]}
        if time_col is not None and row[time_col]:
            event[TIME_COLUMN] = _cell(row[time_col])
        if long_form:
            event["name"], event["value"] = row[header.index("name")], _cell(row[header.index("value")])
        else:
            feats = {header[i]: _cell(row[i]) for i in feature_cols if row[i] != ""}
            if not feats:
                yield Line(n, reason="no feature values")
                continue
            event["features"] = feats
        yield Line(n, event)


def batches(lines: Iterable[Line], size: int, summary: Summary) -> Iterator[list[Line]]:
    """Groups of ``size`` sendable events; unreadable ones are rejected on the way."""
    batch: list[Line] = []
    for line in lines:
        summary.events += 1
        if line.reason is not None:
            summary.reject(f"line {line.number}: {line.reason}")
            continue
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def send_http(client: Client, batch: list[Line], summary: Summary) -> None:
    """``POST /features`` of a batch. The store refuses a whole body for one bad item and names
    it (``[i]. ...``): that event is rejected and the rest sent again. A refusal that names no
    item (a body over the size limit) is narrowed down by sending halves."""
    while batch:
        try:
            result = client.write([line.event for line in batch])
        except (BadRequest, PayloadTooLarge) as exc:
            m = _ITEM.match(exc.detail) if isinstance(exc, BadRequest) else None
            if m is not None and int(m.group(1)) < len(batch):
                bad = batch.pop(int(m.group(1)))
                summary.reject(f"line {bad.number}: {exc.detail[m.end():].lstrip()}")
            elif len(batch) == 1:
                summary.reject(f"line {batch[0].number}: {exc.detail}")
                return
            else:
                half = len(batch) // 2
                send_http(client, batch[:half], summary)
                batch = batch[half:]
            continue
        summary.written += result.written
        summary.stale += result.stale
        return


class IngestSink:
    """Batches as ``events`` requests to the ingest process's ZeroMQ socket (ingest.producer)."""

    def __init__(self, producer) -> None:
        self.producer = producer

    def send(self, batch: list[Line]) -> None:
        with self._errors():
            self.producer.send([line.event for line in batch])

    def finish(self, summary: Summary) -> None:
        """Wait for every acknowledgement; add ingest's counts and reasons to ``summary``."""
        with self._errors():
            totals = self.producer.flush()
        summary.written += totals[P.WRITTEN]
        summary.stale += totals[P.STALE]
        summary.rejected += totals[P.REJECTED]
        summary.reasons.extend(totals[P.ERRORS][:MAX_REASONS - len(summary.reasons)])

    @contextmanager
    def _errors(self):
        try:
            yield
        except TimeoutError as exc:
            raise Unreachable(f"ingest at {self.producer.endpoint}: {exc}") from None
        except RuntimeError as exc:
            raise ServerError(str(exc)) from None


class CountingLines:
    """The lines of a binary file, counting the bytes read (for a progress bar)."""

    def __init__(self, fh) -> None:
        self.fh, self.bytes = fh, 0

    def __iter__(self) -> Iterator[bytes]:
        for raw in self.fh:
            self.bytes += len(raw)
            yield raw

    def text(self) -> Iterator[str]:
        for raw in self:
            yield raw.decode("utf-8-sig" if self.bytes == len(raw) else "utf-8", "replace")


def load(lines: Iterable[Line], size: int, send: Callable[[list[Line]], None], summary: Summary,
         progress: Callable[[], None] = lambda: None) -> Summary:
    """Send every batch; call ``progress()`` after each."""
    for batch in batches(lines, size, summary):
        send(batch)
        progress()
    return summary
