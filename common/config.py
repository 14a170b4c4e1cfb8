"""One frozen configuration object, built once from ``FS_*`` variables and flags.

Every process calls :func:`load` (or :func:`load_or_exit`) in its ``main()`` and passes the
result down. Nothing else in the project reads ``os.environ``.

Each :class:`Config` field is declared with :func:`setting`: its one-line help, the processes
that use it (``--help`` of each process lists its own), how its default reads (``64 MiB``) and
its bounds. An empty value (``FS_DATA_DIR=``) is None for an Optional setting (``str | None``,
``float | None``), the empty tuple for ``FS_SHARD_ENDPOINTS`` (derived), and for any other
setting an error naming the variable.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from common.aggregations import Aggregation, AggregationError, parse_aggregations

FRONTEND, SHARD, INGEST = "frontend", "shard", "ingest"
ROLES = (FRONTEND, SHARD, INGEST)
EVERY = ROLES
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting has a value the store cannot use."""


def setting(default: Any, help: str, roles: Sequence[str], *, shown: str | None = None,
            env: str | None = None, flags: Sequence[str] = (), at_least: float | None = None,
            above: float | None = None, choices: Sequence[str] = ()) -> Any:
    """A Config field with its metadata.

    :arg help: one line, shown by ``--help``.
    :arg roles: the processes that use it (their ``--help`` lists it, their parser takes its flag).
    :arg shown: how the default reads in ``--help`` when the automatic form is not right.
    :arg env: the variable, when it is not ``FS_`` + the field's name in capitals.
    :arg flags: extra flags besides ``--field-name`` (``--index``).
    :arg at_least, above, choices: the values accepted.
    """
    meta = {"help": help, "roles": tuple(roles), "shown": shown, "env": env, "flags": tuple(flags),
            "at_least": at_least, "above": above, "choices": tuple(choices)}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class FeatureView:
    """A Feast feature view declared in the configuration file."""

    name: str
    join_keys: tuple[str, ...] = ()
    ttl_s: float | None = None  # None: the global default applies
    features: tuple[str, ...] = ()  # empty: any feature name is accepted
    push_source: str | None = None  # the Feast push source whose pushes land in this view


F, S, I = FRONTEND, SHARD, INGEST


@dataclass(frozen=True)
class Config:
    # --- HTTP front end
    http_host: str = setting("127.0.0.1", "the front end's HTTP address", [F])
    http_port: int = setting(8000, "the front end's HTTP port", [F], at_least=0)
    frontend_processes: int = setting(1, "HTTP processes sharing the port", [F], flags=["--processes"],
                                      at_least=1)
    http_engine: str = setting("fast", "the HTTP/1.1 connection layer (fast: httptools; tornado: "
                               "Tornado's HTTPServer)", [F], choices=["fast", "tornado"])
    event_loop: str = setting("uvloop", "the front end's asyncio loop (uvloop falls back to asyncio when "
                              "not installed)", [F], choices=["uvloop", "asyncio"])
    http_idle_timeout_s: float = setting(75.0, "close a connection idle this long", [F], above=0)
    http_header_timeout_s: float = setting(10.0, "a request's line and headers must arrive within this",
                                           [F], above=0)
    http_body_timeout_s: float = setting(60.0, "a request's body must arrive within this", [F], above=0)
    http_max_request_line_bytes: int = setting(8192, "longest request line (414 past it)", [F], at_least=64)
    http_max_header_bytes: int = setting(65536, "largest header block (431 past it)", [F], at_least=256)
    http_max_connections: int = setting(10000, "open connections per HTTP process; past it a new one "
                                        "is closed at once", [F], at_least=1)
    http_max_concurrent_requests: int = setting(2048, "requests in progress per HTTP process (503 past it)",
                                                [F], at_least=1)
    # --- shards
    shards: int = setting(2, "number of shards (every process must agree)", EVERY, at_least=1)
    shard_base_port: int = setting(5700, "shard i listens on base + i", EVERY, at_least=1)
    shard_endpoints: tuple[str, ...] = setting(
        (), "comma-separated ZeroMQ endpoints, one per shard (decides the shard count)", EVERY,
        shown="derived from the base port")
    shard_bind_host: str = setting("127.0.0.1", "the host of the derived shard endpoints", EVERY)
    shard_timeout_s: float = setting(1.0, "bound on every shard call; past it, 503", [F, I], above=0)
    retry_after_s: int = setting(1, "Retry-After of a 503, seconds", [F], at_least=0)
    # --- durability (memory only when data_dir is None)
    data_dir: str | None = setting(None, "where the shard keeps its log and snapshots", [S],
                                   shown="unset, memory only")
    fsync: str = setting("everysec", "when the log is fsynced", [S], choices=["always", "everysec", "no"])
    snapshot_log_bytes: int = setting(64 << 20, "snapshot once the log grew this much", [S], at_least=1)
    snapshot_interval_s: float = setting(300.0, "and at least this often if written", [S], above=0)
    max_frame_bytes: int = setting(256 << 20, "largest ZeroMQ message a shard or ingest socket accepts "
                                   "(ZMQ_MAXMSGSIZE: the peer is disconnected past it)", [F, S, I], at_least=1024)
    max_frame_requests: int = setting(4096, "requests per message to a shard (the rest are refused)",
                                      [F, S, I], at_least=1)
    max_features_per_entity: int = setting(10000, "features one entity may hold (a write past it is refused)",
                                           [S], at_least=1)
    skip_damaged: bool = setting(False, "on recovery, skip damaged records (losing them)", [S])
    # --- data model limits
    max_entity_id_bytes: int = setting(512, "longest entity id, UTF-8", EVERY, at_least=1)
    max_name_bytes: int = setting(256, "longest feature name, UTF-8", EVERY, at_least=1)
    max_value_bytes: int = setting(65536, "largest value, msgpack-encoded", EVERY, at_least=1)
    max_body_bytes: int = setting(16 << 20, "largest HTTP request body / ingest message", [F, I], at_least=1)
    max_batch_entities: int = setting(1000, "entities per batch read", [F], at_least=1)
    max_response_bytes: int = setting(64 << 20, "largest batch-read response", [F], at_least=1)
    # --- TTL
    ttl_s: float | None = setting(None, "default TTL of every feature, seconds", [S], shown="unset, none",
                                  above=0)
    views: tuple[FeatureView, ...] = ()  # from the configuration file
    feature_services: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name -> references
    aggregations: tuple[Aggregation, ...] = ()  # [[aggregations]] of the configuration file
    ttl_grace_s: float | None = setting(None, "an expired value is kept this long (Feast: OUTSIDE_MAX_AGE)",
                                        [S], shown="unset, one TTL", at_least=0)
    render_cache_entities: int = setting(100_000, "entities kept rendered, per shard; 0 = off", [S],
                                         at_least=0)
    # --- access
    read_only: bool = setting(False, "every mutation answers 403", [F])
    read_token: str | None = setting(None, "bearer token for reads", [F], shown="unset, open")
    write_token: str | None = setting(None, "bearer token for writes (and reads)", [F], shown="unset, open")
    read_token_file: str | None = setting(None, "file holding the read token (instead of FS_READ_TOKEN)", [F])
    write_token_file: str | None = setting(None, "file holding the write token (instead of FS_WRITE_TOKEN)", [F])
    metrics_open: bool = setting(False, "/metrics answers without the read token (for a scraper)", [F])
    curve_dir: str | None = setting(None, "CurveZMQ certificates (python -m common.curve DIR): every shard "
                                    "and ingest socket encrypts and requires the client key", EVERY,
                                    shown="unset, plain tcp")
    # --- ingest
    ingest_endpoint: str = setting("tcp://127.0.0.1:5690", "the ZeroMQ socket producers send to", [I])
    ingest_source: str = setting("zmq", "where events come from", [I], choices=["zmq", "kafka", "file"],
                                 shown="zmq; kafka with FS_KAFKA_BOOTSTRAP, file with --file")
    ingest_file: str | None = setting(None, "JSON-lines file to read ('-' = stdin)", [I], flags=["--file"])
    dead_letter_path: str = setting("dead-letter.jsonl", "JSON-lines file of events not applied", [I])
    kafka_bootstrap: str | None = setting(None, "Kafka bootstrap servers", [I])
    kafka_topic: str | None = setting(None, "Kafka topic", [I])
    kafka_group: str | None = setting(None, "Kafka consumer group", [I])
    kafka_session_timeout_ms: int = setting(10000, "consumer-group session (a join takes ~half)", [S, I],
                                            at_least=1)
    kafka_fetch_wait_ms: int = setting(50, "the broker's longest wait for data", [S, I], at_least=0)
    ingest_batch_events: int = setting(2000, "events per batch (all shards)", [I], at_least=1)
    ingest_batch_window_s: float = setting(0.005, "longest a batch waits to fill", [I], at_least=0)
    ingest_max_in_flight: int = setting(4, "batches sent and not yet acknowledged", [I], at_least=1)
    ingest_ack_timeout_s: float = setting(5.0, "a shard's ack later than this: resend", [I], above=0)
    ingest_retry_max_s: float = setting(2.0, "longest backoff between resends", [I], above=0)
    ingest_max_event_bytes: int = setting(1 << 20, "longest JSON line / event", [I], at_least=1)
    ingest_progress_s: float = setting(10.0, "seconds between progress log lines", [I], above=0)
    ingest_stats_endpoint: str | None = setting("tcp://127.0.0.1:5691", "where ingest answers stats; empty = none",
                                                [F, I])
    # --- cluster mode (docs/CLUSTER.md); off unless cluster_kafka is set
    cluster_kafka: str | None = setting(None, "Kafka bootstrap servers: cluster mode (docs/CLUSTER.md)", EVERY,
                                        shown="unset, embedded mode")
    cluster_topic: str = setting("features", "the topic every write goes to", EVERY)
    cluster_partitions: int = setting(16, "partitions of the topic when it is created", EVERY, at_least=1)
    replica: str = setting("a", "this shard's replica set (one consumer group each)", [S])
    cluster_read_replica: str | None = setting(None, "the replica set a front end reads from first (its zone's), "
                                               "then the others", [F], shown="unset, every replica set alike")
    cluster_read_spread: str = setting("partition", "how reads spread over a partition's replicas: 'partition' "
                                       "(each partition read on one preferred replica, partitions shared out "
                                       "as evenly as ownership allows) or 'request' (each replica first in turn)", [F],
                                       choices=["partition", "request"])
    cluster_advertise: str | None = setting(None, "the ZeroMQ endpoint other hosts reach this shard at", [S],
                                            shown="where it binds")
    cluster_heartbeat_s: float = setting(1.0, "between a shard's membership records", [S], above=0)
    cluster_apply_timeout_s: float = setting(2.0, "a write not applied by an owner in this long: 202", [F],
                                             above=0)
    cluster_tail_records: int = setting(100_000, "own snapshot this close to a peer's copy: no transfer", [S],
                                        at_least=0)
    cluster_idle_fetch_s: float = setting(0.25, "a shard no writer waited on for 2 s looks for new records this "
                                          "often (one ListOffsets), not every fetch wait (0: always)", [S], at_least=0)
    # --- this process
    shard_index: int = setting(0, "which shard this process is", [S], env="", flags=["--index"], at_least=0)
    config_file: str | None = setting(None, "TOML file with Feast views, feature services and aggregations",
                                      [F, S, I], env="FS_CONFIG")
    log_level: str = setting("INFO", "logging level", EVERY, choices=LOG_LEVELS)
    log_format: str = setting("text", "log lines as text, or as one JSON object each", EVERY, choices=["text", "json"])
    access_log: bool = setting(False, "log every HTTP request (costs CPU)", [F])
    # --- metrics
    metrics: bool = setting(True, "request, round-trip and freshness histograms (0 = off)", [F, S])
    metrics_dir: str | None = setting(None, "where the front-end processes of a port share their counts", [F],
                                      shown="unset, a fresh one per run")
    freshness_sample_every: int = setting(10, "a shard counts the ages of the values of one entity read in this many",
                                          [S], at_least=1)

    def endpoints(self) -> tuple[str, ...]:
        """The ZeroMQ endpoint of each shard, in shard order."""
        if self.shard_endpoints:
            return self.shard_endpoints
        return tuple(
            f"tcp://{self.shard_bind_host}:{self.shard_base_port + i}" for i in range(self.shards)
        )

    def shard_endpoint(self) -> str:
        """Where shard ``shard_index`` binds; in cluster mode any index only picks the port."""
        if self.cluster_kafka and self.shard_index >= len(self.shard_endpoints):
            return f"tcp://{self.shard_bind_host}:{self.shard_base_port + self.shard_index}"
        return self.endpoints()[self.shard_index]

    def view_ttls(self) -> dict[str, float]:
        """Per-view TTLs, keyed by the name prefix ``view:``."""
        return {f"{v.name}:": v.ttl_s for v in self.views if v.ttl_s is not None}


del F, S, I
SETTINGS = {f.name: f for f in dataclasses.fields(Config) if f.metadata}


def env_name(field: str) -> str:
    """The ``FS_*`` variable of a Config field ('' for a flag-only setting)."""
    env = SETTINGS[field].metadata["env"]
    return "FS_" + field.upper() if env is None else env


def shown_default(field: str) -> str:
    """The default of a setting as ``--help`` shows it: ``64 MiB``, ``1.0 s``, ``off``."""
    f = SETTINGS[field]
    if f.metadata["shown"]:
        return f.metadata["shown"]
    value = f.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if field.endswith("_bytes"):
        for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size and value % size == 0:
                return f"{value // size} {unit}"
        return f"{value} bytes"
    for suffix, unit in (("_s", "s"), ("_ms", "ms")):
        if field.endswith(suffix):
            return f"{value} {unit}"
    return str(value)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_KIND = {"int": "an integer", "float": "a number", "bool": "one of " + ", ".join(_TRUE + _FALSE)}


def _convert(name: str, raw: str, source: str) -> Any:
    """``raw`` as the type of setting ``name``; ``source`` (a variable or flag) names it in errors."""
    typ = str(SETTINGS[name].type)
    text = raw.strip()
    if not text:
        if typ.endswith("| None"):
            return None
        if typ.startswith("tuple"):
            return ()
        raise ConfigError(f"{source} is empty: give a value, or unset it for the default "
                          f"({shown_default(name)})")
    base = typ.split(" | ")[0]
    if base == "bool" and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    try:
        if base == "int":
            return int(text)
        if base == "float" and math.isfinite(number := float(text)):
            return number
    except ValueError:
        pass
    if base in _KIND:
        raise ConfigError(f"{source}: cannot use {raw!r}; expected {_KIND[base]}")
    if base == "tuple[str, ...]":
        return tuple(e.strip() for e in text.split(",") if e.strip())
    return raw


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
    try:
        aggregations = parse_aggregations(doc.get("aggregations", []))
    except AggregationError as exc:
        raise ConfigError(f"configuration file {path}: {exc}") from None
    return {"views": views, "feature_services": services, "aggregations": aggregations}


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


def _token_from_file(values: dict[str, Any], kind: str) -> None:
    """Set ``<kind>_token`` from ``<kind>_token_file``: its text without surrounding whitespace."""
    path = values.get(f"{kind}_token_file")
    if not path:
        return
    if values.get(f"{kind}_token") is not None:
        raise ConfigError(f"{env_name(kind + '_token')} and {env_name(kind + '_token_file')} are both set: "
                          "give one")
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{env_name(kind + '_token_file')}: cannot read {path}: {exc}") from None
    if not token:
        raise ConfigError(f"{env_name(kind + '_token_file')}: {path} is empty")
    values[f"{kind}_token"] = token


def _flags(name: str) -> list[str]:
    return ["--" + name.replace("_", "-"), *SETTINGS[name].metadata["flags"]]


def _help(name: str) -> str:
    meta, env = SETTINGS[name].metadata, env_name(name)
    choices = f": {' | '.join(meta['choices'])}" if meta["choices"] else ""
    text = f"{meta['help']}{choices} (default: {shown_default(name)})"
    return (f"{env}: {text}" if env else text).replace("%", "%%")


def build_parser(prog: str = "feature-store", role: str | None = None) -> argparse.ArgumentParser:
    """Flags for the settings of ``role`` (every setting when None): ``--http-port 8001``.

    A boolean flag works bare (``--read-only``) or with a value (``--read-only 0``).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Every flag can also be set by the FS_ variable named in its help; a flag "
        "wins over the variable. An empty value unsets a setting that can be unset (its "
        "default says 'unset', or its help 'empty = none') and is an error for any other.")
    for name, f in SETTINGS.items():
        if role is not None and role not in f.metadata["roles"]:
            continue
        if str(f.type) == "bool":
            parser.add_argument(*_flags(name), dest=name, nargs="?", const="1", default=None,
                                metavar="0|1", help=_help(name))
        else:
            parser.add_argument(*_flags(name), dest=name, default=None, metavar="V", help=_help(name))
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
    for name in SETTINGS:
        env = env_name(name)
        if env and env in environ:
            values[name] = _convert(name, environ[env], env)
    args = (parser or build_parser()).parse_args(list(argv or []))
    for name, raw in vars(args).items():
        if raw is not None and name in SETTINGS:
            values[name] = _convert(name, raw, _flags(name)[0])
    values.update(overrides)
    if "ingest_source" not in values:  # a source given alone picks itself
        if values.get("ingest_file"):
            values["ingest_source"] = "file"
        elif values.get("kafka_bootstrap"):
            values["ingest_source"] = "kafka"
    path = values.get("config_file")
    if path:
        values.update(_views_from_file(path))
    for kind in ("read", "write"):
        _token_from_file(values, kind)
    cfg = Config(**values)
    _check(cfg)
    return cfg


def load_or_exit(argv: Sequence[str] | None, role: str) -> Config:
    """:func:`load` for the ``main()`` of ``role``: its own flags; a bad setting prints one line
    and exits with 2."""
    parser = build_parser(f"python3 -m {role}", role)
    try:
        return load(sys.argv[1:] if argv is None else argv, parser=parser)
    except ConfigError as exc:
        print(f"{role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check(cfg: Config) -> None:
    """Refuse a value out of its setting's bounds, naming its variable."""
    for name, f in SETTINGS.items():
        value, meta = getattr(cfg, name), f.metadata
        what = env_name(name) or _flags(name)[-1]
        if value is None:
            continue
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{what} must be {' or '.join(meta['choices'])}, not {value!r}")
        if meta["at_least"] is not None and value < meta["at_least"]:
            raise ConfigError(f"{what} must be at least {meta['at_least']}, not {value!r}")
        if meta["above"] is not None and value <= meta["above"]:
            raise ConfigError(f"{what} must be greater than {meta['above']}, not {value!r}")
    if cfg.shard_endpoints and len(cfg.shard_endpoints) != cfg.shards:
        # endpoints given explicitly decide the shard count
        object.__setattr__(cfg, "shards", len(cfg.shard_endpoints))
    if cfg.cluster_kafka:  # any index only picks the port
        if not _set_name(cfg.replica):
            raise ConfigError(f"FS_REPLICA must be letters, digits, '-' or '_', not {cfg.replica!r}")
        if cfg.cluster_read_replica is not None and not _set_name(cfg.cluster_read_replica):
            raise ConfigError(f"FS_CLUSTER_READ_REPLICA must be letters, digits, '-' or '_', "
                              f"not {cfg.cluster_read_replica!r}")
    elif not cfg.shard_index < cfg.shards:
        raise ConfigError(f"shard index {cfg.shard_index} is outside 0..{cfg.shards - 1}")


def _set_name(name: str) -> bool:
    """Whether ``name`` can name a replica set (letters, digits, '-' and '_')."""
    return bool(name) and name.replace("-", "").replace("_", "").isalnum()
