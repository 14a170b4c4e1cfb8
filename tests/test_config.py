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
    import subprocess
    import sys

    from tests.support import ROOT, base_env
    proc = subprocess.run([sys.executable, "-m", module, "--index", "0"], cwd=ROOT, env=base_env(shards="abc"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "FS_SHARDS: cannot use 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr
