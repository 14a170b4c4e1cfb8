import subprocess
import sys
from pathlib import Path

import pytest

from common import config


def test_defaults_match_the_contract():
    cfg = config.load([], environ={})
    assert (cfg.http_host, cfg.http_port, cfg.shards, cfg.frontend_processes) == ("127.0.0.1", 8000, 2, 1)
    assert cfg.fsync == "everysec" and cfg.data_dir is None and cfg.ttl_s is None
    assert cfg.endpoints() == ("tcp://127.0.0.1:5700", "tcp://127.0.0.1:5701")


def test_flags_override_variables():
    env = {"FS_HTTP_PORT": "9000", "FS_SHARDS": "3", "FS_READ_ONLY": "1", "FS_TTL_S": "2.5"}
    cfg = config.load(["--http-port", "9100", "--processes", "2"], environ=env)
    assert cfg.http_port == 9100 and cfg.shards == 3 and cfg.frontend_processes == 2
    assert cfg.read_only is True and cfg.ttl_s == 2.5


def test_explicit_endpoints_decide_the_shard_count():
    cfg = config.load([], environ={"FS_SHARD_ENDPOINTS": "tcp://10.0.0.1:1, tcp://10.0.0.2:2,tcp://h:3"})
    assert cfg.shards == 3 and cfg.endpoints() == ("tcp://10.0.0.1:1", "tcp://10.0.0.2:2", "tcp://h:3")


@pytest.mark.parametrize("env", [{"FS_FSYNC": "sometimes"}, {"FS_SHARDS": "0"}, {"FS_HTTP_PORT": "eighty"},
                                 {"FS_READ_ONLY": "maybe"}, {"FS_SHARD_TIMEOUT_S": "0"}])
def test_bad_settings_are_refused_with_the_variable_named(env):
    with pytest.raises(config.ConfigError) as info:
        config.load([], environ=env)
    assert next(iter(env)) in str(info.value)


def test_the_configuration_file_is_named_by_fs_config(tmp_path):
    path = tmp_path / "store.toml"
    path.write_text('[views.v]\njoin_keys = ["k_id"]\n')
    assert config.load([], environ={"FS_CONFIG": str(path)}).views[0].name == "v"


def test_views_and_feature_services_come_from_the_file(tmp_path):
    path = tmp_path / "store.toml"
    path.write_text('[views.driver_hourly_stats]\njoin_keys = ["driver_id"]\nttl_s = 3600\n'
                    '[feature_services]\ndriver_activity = ["driver_hourly_stats:conv_rate"]\n')
    cfg = config.load(["--config-file", str(path)], environ={})
    assert cfg.views[0].join_keys == ("driver_id",)
    assert cfg.view_ttls() == {"driver_hourly_stats:": 3600}
    assert dict(cfg.feature_services) == {"driver_activity": ("driver_hourly_stats:conv_rate",)}


def test_config_is_frozen():
    cfg = config.load([], environ={})
    with pytest.raises(Exception):
        cfg.http_port = 1


def test_every_flag_has_help_naming_its_variable():
    parser = config.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest in ("help", "shard_index", "frontend_processes", "ingest_file"):
            continue
        assert action.help and action.help.split()[0].rstrip(":;") == config.env_name(action.dest), action.dest
    assert "--http-port" in text


def test_kafka_settings_alone_pick_the_kafka_source():
    env = {"FS_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "FS_KAFKA_TOPIC": "t", "FS_KAFKA_GROUP": "g"}
    assert config.load([], environ=env).ingest_source == "kafka"
    assert config.load([], environ={**env, "FS_INGEST_SOURCE": "zmq"}).ingest_source == "zmq"
    assert config.load(["--file", "x.jsonl"], environ=env).ingest_source == "file"
    assert config.load([], environ={}).ingest_source == "zmq"


@pytest.mark.parametrize("module", ["shard", "frontend", "ingest"])
def test_a_bad_setting_ends_a_process_with_one_line_and_status_2(module):
    from tests.support import ROOT, base_env
    args = ["--index", "0"] if module == "shard" else []
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=base_env(shards="abc"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "FS_SHARDS: cannot use 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- empty values: None for an Optional setting, () for the endpoint list, else an error naming the variable
_ENV_SETTINGS = [name for name in config.SETTINGS if config.env_name(name)]


@pytest.mark.parametrize("name", _ENV_SETTINGS)
def test_an_empty_variable_unsets_an_optional_setting_or_is_refused(name):
    env = {config.env_name(name): ""}
    typ = str(config.SETTINGS[name].type)
    if typ.endswith("| None"):
        assert getattr(config.load([], environ=env), name) is None
    elif typ.startswith("tuple"):
        assert getattr(config.load([], environ=env), name) == ()
    else:
        with pytest.raises(config.ConfigError) as info:
            config.load([], environ=env)
        assert str(info.value).startswith(config.env_name(name) + " is empty")
        assert "\n" not in str(info.value)


def test_the_empty_values_the_issue_names():
    for env in ("FS_SHARD_TIMEOUT_S", "FS_INGEST_BATCH_WINDOW_S", "FS_SHARDS", "FS_READ_ONLY", "FS_FSYNC"):
        with pytest.raises(config.ConfigError, match=env + " is empty"):
            config.load([], environ={env: ""})
    cfg = config.load([], environ={"FS_DATA_DIR": "", "FS_TTL_S": " ", "FS_READ_TOKEN": "",
                                   "FS_INGEST_STATS_ENDPOINT": "", "FS_SHARD_ENDPOINTS": ""})
    assert (cfg.data_dir, cfg.ttl_s, cfg.read_token, cfg.ingest_stats_endpoint) == (None, None, None, None)
    assert cfg.shard_endpoints == () and cfg.endpoints() == ("tcp://127.0.0.1:5700", "tcp://127.0.0.1:5701")


def test_an_empty_flag_is_named_as_the_flag():
    with pytest.raises(config.ConfigError, match="^--shard-index is empty"):
        config.load(["--index", ""], environ={})
    with pytest.raises(config.ConfigError, match="^--shard-timeout-s is empty"):
        config.load(["--shard-timeout-s", ""], environ={})


@pytest.mark.parametrize("env", [{"FS_INGEST_BATCH_WINDOW_S": "-1"}, {"FS_INGEST_ACK_TIMEOUT_S": "0"},
                                 {"FS_INGEST_RETRY_MAX_S": "0"}, {"FS_INGEST_PROGRESS_S": "0"},
                                 {"FS_SHARD_TIMEOUT_S": "nan"}, {"FS_SHARD_TIMEOUT_S": "inf"},
                                 {"FS_LOG_LEVEL": "LOUD"}, {"FS_MAX_BODY_BYTES": "0"},
                                 {"FS_RETRY_AFTER_S": "-1"}, {"FS_TTL_S": "0"}, {"FS_TTL_GRACE_S": "-1"},
                                 {"FS_INGEST_SOURCE": "pigeon"}, {"FS_RENDER_CACHE_ENTITIES": "-1"}])
def test_values_out_of_bounds_are_refused_with_the_variable_named(env):
    with pytest.raises(config.ConfigError) as info:
        config.load([], environ=env)
    assert str(info.value).startswith(next(iter(env)))


@pytest.mark.parametrize("module, env", [("frontend", "FS_SHARD_TIMEOUT_S"), ("ingest", "FS_INGEST_BATCH_WINDOW_S"),
                                         ("shard", "FS_SNAPSHOT_INTERVAL_S")])
def test_an_empty_required_variable_ends_a_process_with_one_line_and_status_2(module, env):
    from tests.support import ROOT, base_env
    args = ["--index", "0"] if module == "shard" else []
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**base_env(), env: ""},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"{module}: {env} is empty: give a value, or unset it for the default "
                                        f"({config.shown_default(env[3:].lower())})"]


# ---- flags
def test_boolean_flags_work_bare_or_with_a_value():
    cfg = config.load(["--read-only", "--access-log", "--skip-damaged"], environ={})
    assert cfg.read_only is cfg.access_log is cfg.skip_damaged is True
    cfg = config.load(["--read-only", "0", "--access-log", "off"], environ={"FS_READ_ONLY": "1"})
    assert cfg.read_only is False and cfg.access_log is False
    assert config.load(["--read-only", "--http-port", "9"], environ={}).http_port == 9
    with pytest.raises(config.ConfigError, match="^--read-only: cannot use 'maybe'"):
        config.load(["--read-only", "maybe"], environ={})


def _help(module: str) -> str:
    from tests.support import ROOT
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_each_process_lists_its_own_settings():
    frontend, shard, ingest = _help("frontend"), _help("shard"), _help("ingest")
    for flag in ("--http-port", "--read-only", "--max-batch-entities", "--processes", "--shard-timeout-s"):
        assert flag in frontend and flag not in shard
    for flag in ("--fsync", "--data-dir", "--snapshot-log-bytes", "--index", "--ttl-s"):
        assert flag in shard and flag not in frontend and flag not in ingest
    for flag in ("--ingest-batch-window-s", "--kafka-topic", "--file", "--dead-letter-path"):
        assert flag in ingest and flag not in frontend and flag not in shard
    for text in (frontend, shard, ingest):
        assert "--shards" in text and "--log-level" in text
    assert "--http-port" not in ingest and "--fsync" not in ingest


@pytest.mark.parametrize("role", config.ROLES)
def test_a_process_parser_has_a_flag_for_exactly_its_settings(role):
    parser = config.build_parser(role=role)
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests == {n for n, f in config.SETTINGS.items() if role in f.metadata["roles"]}
    with pytest.raises(SystemExit):
        other = "--fsync" if role != config.SHARD else "--http-port"
        parser.parse_args([other, "x"])


def test_defaults_are_shown_as_values():
    frontend, shard, ingest = _help("frontend"), _help("shard"), _help("ingest")
    flat = " ".join(frontend.split())
    assert "largest HTTP request body / ingest message (default: 16 MiB)" in flat
    assert "largest batch-read response (default: 64 MiB)" in flat
    assert "bound on every shard call; past it, 503 (default: 1.0 s)" in flat
    assert "(default: 64 MiB)" in " ".join(shard.split())
    assert "(default: 0.005 s)" in " ".join(ingest.split())
    assert "(default: 1 MiB)" in " ".join(ingest.split())
    for text in (frontend, shard, ingest):
        assert "<<" not in text and "1048576" not in text and "16777216" not in text


def test_help_comes_from_each_fields_metadata_not_from_source_comments():
    assert "getsource" not in Path(config.__file__).read_text()
    for name, f in config.SETTINGS.items():
        assert f.metadata["help"] and f.metadata["roles"], name
        assert set(f.metadata["roles"]) <= set(config.ROLES), name
        assert f.metadata["help"] in " ".join(config.build_parser().format_help().split()), name


def test_every_config_field_is_a_declared_setting():
    """A field added without setting(...) would have no variable, flag or help: refuse it here."""
    import dataclasses
    fields = {f.name for f in dataclasses.fields(config.Config)}
    assert fields - set(config.SETTINGS) == {"views", "feature_services", "aggregations"}  # from FS_CONFIG
