"""Logging for one process: every line names the process (``shard 1``, ``frontend 0``);
``FS_LOG_FORMAT=json`` writes one JSON object per line through python-json-logger."""
from __future__ import annotations

import logging
import sys

TEXT_FORMAT = "%(asctime)s {process} %(levelname)s %(name)s: %(message)s"


def setup(cfg, role: str, index: int | None = None) -> None:
    """(Re)configure the root logger for this process, on stderr."""
    process = role if index is None else f"{role} {index}"
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level"},
                                           static_fields={"process": process}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.format(process=process)))
    logging.basicConfig(level=cfg.log_level, handlers=[handler], force=True)
