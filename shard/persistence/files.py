"""The files of one shard directory: ``log-<gen>.aof``, ``snapshot-<gen>.snap`` and ``.tmp``."""
from __future__ import annotations

import os
import re

_NAME = re.compile(r"(log|snapshot)-(\d+)\.(aof|snap)\Z")


def path(directory: str, kind: str, gen: int) -> str:
    """The file of ``kind`` (``log`` or ``snapshot``) of generation ``gen``."""
    ext = "aof" if kind == "log" else "snap"
    return os.path.join(directory, f"{kind}-{gen:08d}.{ext}")


def generations(directory: str) -> tuple[list[int], list[int]]:
    """The snapshot and log generations present, sorted; deletes unfinished ``.tmp`` snapshots."""
    snaps, logs = [], []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            (snaps if m.group(1) == "snapshot" else logs).append(int(m.group(2)))
        elif name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))  # a snapshot that never finished
    return sorted(snaps), sorted(logs)


def remove_older(directory: str, gen: int) -> None:
    """Snapshot ``gen`` is in place: older snapshots and logs are no longer needed."""
    snaps, logs = generations(directory)
    for g in snaps:
        if g < gen:
            os.unlink(path(directory, "snapshot", g))
    for g in logs:
        if g < gen:
            os.unlink(path(directory, "log", g))


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
