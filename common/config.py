"""One frozen configuration object, built once from ``FS_*`` variables and flags.

Every process calls :func:`load` in its ``main()`` and passes the result down.
Nothing else in the project reads ``os.environ``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


class ConfigError(ValueError):
    """A setting has a value the store cannot use."""


@dataclass(frozen=True)
class FeatureView:
    """A Feast feature view declared in the configuration file."""

    name: str
    join_keys: tuple[str, ...] = ()
    ttl_s: float | None = None  # None: the global default applies
    features: tuple[str, ...] = ()  # empty: any feature name is accepted
    push_source: str | None = None  # the Feast push source whose pushes land in this view


@dataclass(frozen=True)
class Config:
    # --- HTTP front end
    http_host: str = "127.0.0.1"  # FS_HTTP_HOST
    http_port: int = 8000  # FS_HTTP_PORT
    frontend_processes: int = 1  # FS_FRONTEND_PROCESSES: processes sharing the port
    # --- shards
    shards: int = 2  # FS_SHARDS
    shard_base_port: int = 5700  # FS_SHARD_BASE_PORT: shard i listens on base + i
    shard_endpoints: tuple[str, ...] = ()  # FS_SHARD_ENDPOINTS; empty = derived from the base port
    shard_bind_host: str = "127.0.0.1"  # FS_SHARD_BIND_HOST: where a shard binds when derived
    shard_timeout_s: float = 1.0  # FS_SHARD_TIMEOUT_S: bound on every shard call
    retry_after_s: int = 1  # FS_RETRY_AFTER_S: Retry-After on a 503
    # --- durability (memory only when data_dir is None)
    data_dir: str | None = None  # FS_DATA_DIR
    fsync: str = "everysec"  # FS_FSYNC: always | everysec | no
    snapshot_log_bytes: int = 64 << 20  # FS_SNAPSHOT_LOG_BYTES: snapshot once the log grew this much
    snapshot_interval_s: float = 300.0  # FS_SNAPSHOT_INTERVAL_S: and at least this often if written
    skip_damaged: bool = False  # FS_SKIP_DAMAGED: on recovery, skip damaged records (losing them)
    # --- data model limits
    max_entity_id_bytes: int = 512  # FS_MAX_ENTITY_ID_BYTES
    max_name_bytes: int = 256  # FS_MAX_NAME_BYTES
    max_value_bytes: int = 65536  # FS_MAX_VALUE_BYTES: one value, msgpack-encoded
    max_body_bytes: int = 16 * 1024 * 1024  # FS_MAX_BODY_BYTES: HTTP request body
    max_batch_entities: int = 1000  # FS_MAX_BATCH_ENTITIES: entities per batch read
    max_response_bytes: int = 64 * 1024 * 1024  # FS_MAX_RESPONSE_BYTES
    # --- TTL
    ttl_s: float | None = None  # FS_TTL_S: default TTL of every feature; None = none
    views: tuple[FeatureView, ...] = ()  # from the configuration file
    feature_services: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name -> references
    ttl_grace_s: float | None = None  # FS_TTL_GRACE_S: kept this long past TTL (Feast: OUTSIDE_MAX_AGE); None = one TTL
    render_cache_entities: int = 100_000  # FS_RENDER_CACHE_ENTITIES: per shard, entities kept rendered; 0 = off
    # --- access
    read_only: bool = False  # FS_READ_ONLY
    read_token: str | None = None  # FS_READ_TOKEN
    write_token: str | None = None  # FS_WRITE_TOKEN
    # --- ingest
    ingest_endpoint: str = "tcp://127.0.0.1:5690"  # FS_INGEST_ENDPOINT: ZeroMQ source
    ingest_source: str = "zmq"  # FS_INGEST_SOURCE: zmq | kafka | file
    ingest_file: str | None = None  # FS_INGEST_FILE ('-' = stdin)
    dead_letter_path: str = "dead-letter.jsonl"  # FS_DEAD_LETTER_PATH
    kafka_bootstrap: str | None = None  # FS_KAFKA_BOOTSTRAP
    kafka_topic: str | None = None  # FS_KAFKA_TOPIC
    kafka_group: str | None = None  # FS_KAFKA_GROUP
    kafka_session_timeout_ms: int = 10000  # FS_KAFKA_SESSION_TIMEOUT_MS: group session (join ~half)
    kafka_fetch_wait_ms: int = 50  # FS_KAFKA_FETCH_WAIT_MS: broker's longest wait for data
    ingest_batch_events: int = 2000  # FS_INGEST_BATCH_EVENTS: events per batch (all shards)
    ingest_batch_window_s: float = 0.005  # FS_INGEST_BATCH_WINDOW_S: longest a batch waits to fill
    ingest_max_in_flight: int = 4  # FS_INGEST_MAX_IN_FLIGHT: batches sent and not yet acknowledged
    ingest_ack_timeout_s: float = 5.0  # FS_INGEST_ACK_TIMEOUT_S: a shard's ack later than this: resend
    ingest_retry_max_s: float = 2.0  # FS_INGEST_RETRY_MAX_S: longest backoff between resends
    ingest_max_event_bytes: int = 1048576  # FS_INGEST_MAX_EVENT_BYTES: one JSON line / message
    ingest_progress_s: float = 10.0  # FS_INGEST_PROGRESS_S: seconds between progress log lines
    ingest_stats_endpoint: str | None = "tcp://127.0.0.1:5691"  # FS_INGEST_STATS_ENDPOINT
    # --- this process
    shard_index: int = 0  # --index of `python -m shard`
    config_file: str | None = None  # FS_CONFIG: TOML file with views and feature services
    log_level: str = "INFO"  # FS_LOG_LEVEL
    log_format: str = "text"  # FS_LOG_FORMAT: text | json (one JSON object per line)
    access_log: bool = False  # FS_ACCESS_LOG: log every HTTP request (costs CPU)
    # --- metrics
    metrics: bool = True  # FS_METRICS: request, round-trip and freshness histograms; 0 = off
    metrics_dir: str | None = None  # FS_METRICS_DIR: front-end processes share counts here; unset = a fresh one per run
    freshness_sample_every: int = 10  # FS_FRESHNESS_SAMPLE_EVERY: a shard counts the ages of one read in this many

    def endpoints(self) -> tuple[str, ...]:
        """The ZeroMQ endpoint of each shard, in shard order."""
        if self.shard_endpoints:
            return self.shard_endpoints
        return tuple(
            f"tcp://{self.shard_bind_host}:{self.shard_base_port + i}" for i in range(self.shards)
        )

    def view_ttls(self) -> dict[str, float]:
        """Per-view TTLs, keyed by the name prefix ``view:``."""
        return {f"{v.name}:": v.ttl_s for v in self.views if v.ttl_s is not None}


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_ENV_SKIP = {"views", "feature_services", "shard_index"}
_ENV_NAME = {"config_file": "FS_CONFIG"}  # where a variable's name is not FS_ + the field's


def env_name(field: str) -> str:
    """The ``FS_*`` variable of a Config field."""
    return _ENV_NAME.get(field, "FS_" + field.upper())


def _convert(name: str, raw: str) -> Any:
    f = _FIELDS[name]
    typ = str(f.type)
    try:
        if name == "shard_endpoints":
            return tuple(e.strip() for e in raw.split(",") if e.strip())
        if typ == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("", "0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ == "int":
            return int(raw)
        if typ.startswith("float"):
            return float(raw) if raw.strip() else None
        if typ.startswith("str | None"):
            return raw or None
        return raw
    except ValueError:
        raise ConfigError(f"{env_name(name)}: cannot use {raw!r}") from None


def _views_from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"configuration file {path}: {exc}") from None
    for name, spec in doc.get("views", {}).items():
        _check_view(path, name, spec)
    views = tuple(
        FeatureView(
            name=name,
            join_keys=tuple(spec.get("join_keys", ())),
            ttl_s=spec.get("ttl_s"),
            features=tuple(spec.get("features", ())),
            push_source=spec.get("push_source"),
        )
        for name, spec in doc.get("views", {}).items()
    )
    services = tuple((name, tuple(refs)) for name, refs in doc.get("feature_services", {}).items())
    return {"views": views, "feature_services": services}


def _check_view(path: str, name: str, spec: Any) -> None:
    where = f"configuration file {path}: views.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table")
    ttl = spec.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0):
        raise ConfigError(f"{where}.ttl_s must be a number of seconds >= 0 (0 = no TTL)")
    for key in ("join_keys", "features"):
        items = spec.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ConfigError(f"{where}.{key} must be a list of names")
    if not isinstance(spec.get("push_source", ""), str):
        raise ConfigError(f"{where}.push_source must be a string")


def _field_help() -> dict[str, str]:
    """Each field's one-line comment in the Config class above, as its flag's help text."""
    import inspect
    import re

    found = re.findall(r"^    (\w+): [^=]+= (.+?)  # (.+)$", inspect.getsource(Config), re.M)
    return {name: f"{comment} (default: {default})" for name, default, comment in found}


def build_parser(prog: str = "feature-store") -> argparse.ArgumentParser:
    """Flags for every setting: ``--http-port 8001`` sets ``http_port``."""
    parser = argparse.ArgumentParser(prog=prog, description="Every flag can also be set by the FS_ "
                                     "variable of the same name; a flag wins over the variable.")
    helps = _field_help()
    for f in dataclasses.fields(Config):
        if f.name in ("views", "feature_services"):
            continue
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, metavar="V", help=helps.get(f.name))
    parser.add_argument("--index", dest="shard_index", default=None, help="shard index")
    parser.add_argument("--processes", dest="frontend_processes", default=None)
    parser.add_argument("--file", dest="ingest_file", default=None, help="JSON lines, '-' = stdin")
    return parser


def load(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    **overrides: Any,
) -> Config:
    """Build the configuration: defaults, then ``FS_*`` variables, then flags, then overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name in _ENV_SKIP:
            continue
        raw = environ.get(env_name(name))
        if raw is not None:
            values[name] = _convert(name, raw)
    args = (parser or build_parser()).parse_args(list(argv or []))
    for name, raw in vars(args).items():
        if raw is not None and name in _FIELDS:
            values[name] = _convert(name, raw)
    values.update(overrides)
    if "ingest_source" not in values:  # a source given alone picks itself
        if values.get("ingest_file"):
            values["ingest_source"] = "file"
        elif values.get("kafka_bootstrap"):
            values["ingest_source"] = "kafka"
    path = values.get("config_file")
    if path:
        values.update(_views_from_file(path))
    cfg = Config(**values)
    _check(cfg)
    return cfg


def load_or_exit(argv: Sequence[str] | None, prog: str) -> Config:
    """:func:`load` for a process's ``main()``: a bad setting prints one line and exits with 2."""
    try:
        return load(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check(cfg: Config) -> None:
    if cfg.fsync not in ("always", "everysec", "no"):
        raise ConfigError(f"FS_FSYNC must be always, everysec or no, not {cfg.fsync!r}")
    if cfg.shards < 1:
        raise ConfigError("FS_SHARDS must be at least 1")
    if cfg.shard_endpoints and len(cfg.shard_endpoints) != cfg.shards:
        # endpoints given explicitly decide the shard count
        object.__setattr__(cfg, "shards", len(cfg.shard_endpoints))
    if not 0 <= cfg.shard_index < cfg.shards:
        raise ConfigError(f"shard index {cfg.shard_index} is outside 0..{cfg.shards - 1}")
    if cfg.frontend_processes < 1:
        raise ConfigError("FS_FRONTEND_PROCESSES must be at least 1")
    if cfg.snapshot_log_bytes < 1:
        raise ConfigError("FS_SNAPSHOT_LOG_BYTES must be positive")
    if cfg.snapshot_interval_s <= 0:
        raise ConfigError("FS_SNAPSHOT_INTERVAL_S must be positive")
    if cfg.shard_timeout_s <= 0:
        raise ConfigError("FS_SHARD_TIMEOUT_S must be positive")
    if cfg.ingest_source not in ("zmq", "kafka", "file"):
        raise ConfigError(f"FS_INGEST_SOURCE must be zmq, kafka or file, not {cfg.ingest_source!r}")
    if cfg.ingest_batch_events < 1 or cfg.ingest_max_in_flight < 1:
        raise ConfigError("FS_INGEST_BATCH_EVENTS and FS_INGEST_MAX_IN_FLIGHT must be at least 1")
    if cfg.ttl_s is not None and cfg.ttl_s <= 0:
        raise ConfigError("FS_TTL_S must be a positive number of seconds (unset = no TTL)")
    if cfg.ttl_grace_s is not None and cfg.ttl_grace_s < 0:
        raise ConfigError("FS_TTL_GRACE_S must be >= 0")
    if cfg.render_cache_entities < 0:
        raise ConfigError("FS_RENDER_CACHE_ENTITIES must be >= 0 (0 = no cache)")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"FS_LOG_FORMAT must be text or json, not {cfg.log_format!r}")
    if cfg.freshness_sample_every < 1:
        raise ConfigError("FS_FRESHNESS_SAMPLE_EVERY must be at least 1")
    if cfg.max_batch_entities < 1 or cfg.max_response_bytes < 1:
        raise ConfigError("FS_MAX_BATCH_ENTITIES and FS_MAX_RESPONSE_BYTES must be positive")
