"""Feast's own SDK against a real cluster: ``online_store: {type: remote}`` pointed at our front end.

Needs the ``feast`` extra (``pip install -e '.[test,feast]'``); skipped when Feast is not installed.
"""
import importlib.util
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

feast = pytest.importorskip("feast")
pd = pytest.importorskip("pandas")

from tests.support import Cluster, request  # noqa: E402

REPO = Path(__file__).parent / "feast_repo"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The feature repository, copied and pointed at a fresh cluster, with its registry applied."""
    tmp = tmp_path_factory.mktemp("feast_sdk")
    path = tmp / "repo"
    shutil.copytree(REPO, path)
    (path / "data").mkdir(exist_ok=True)
    # the offline source Feast checks on apply; its rows are never read by these tests
    pd.DataFrame({"driver_id": [1], "conv_rate": [0.0], "acc_rate": [0.0], "avg_daily_trips": [0], "city": [""],
                  "event_timestamp": [pd.Timestamp("2026-01-01", tz="UTC")],
                  "created": [pd.Timestamp("2026-01-01", tz="UTC")]}).to_parquet(path / "data" / "driver_stats.parquet")
    with Cluster(tmp, config_file=path / "store.toml") as cluster:
        yaml = (path / "feature_store.yaml").read_text()
        (path / "feature_store.yaml").write_text(yaml.replace("http://127.0.0.1:8000", cluster.url))
        spec = importlib.util.spec_from_file_location("feast_repo_features", path / "features.py")
        defs = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = defs
        spec.loader.exec_module(defs)
        store = feast.FeatureStore(repo_path=str(path))
        store.apply([defs.driver, defs.source, defs.driver_hourly_stats, defs.driver_activity, defs.user,
                     defs.user_clicks])
        yield store, cluster


def test_sdk_writes_then_reads_back_and_missing_is_none(repo):
    store, cluster = repo
    now = datetime.now(timezone.utc).replace(microsecond=0)
    df = pd.DataFrame({
        "driver_id": [1001, 1002],
        "conv_rate": [0.5, 0.25],
        "acc_rate": [0.75, 0.125],
        "avg_daily_trips": [10, 20],
        "city": ["Paris", "Lyon"],
        "event_timestamp": [now - timedelta(minutes=5), now],
        "created": [now, now],
    })
    store.write_to_online_store("driver_hourly_stats", df)
    # the SDK's write landed under view:feature, entity id = the join key's value
    status, _, body = request("GET", cluster.url + "/features/1002")
    assert status == 200 and body["features"]["driver_hourly_stats:city"] == "Lyon"

    refs = ["driver_hourly_stats:conv_rate", "driver_hourly_stats:acc_rate",
            "driver_hourly_stats:avg_daily_trips", "driver_hourly_stats:city"]
    got = store.get_online_features(features=refs, entity_rows=[{"driver_id": 1001}, {"driver_id": 4242},
                                                                {"driver_id": 1002}]).to_dict()
    assert got == {"driver_id": [1001, 4242, 1002], "conv_rate": [0.5, None, 0.25],
                   "acc_rate": [0.75, None, 0.125], "avg_daily_trips": [10, None, 20],
                   "city": ["Paris", None, "Lyon"]}

    service = store.get_feature_service("driver_activity")
    got = store.get_online_features(features=service, entity_rows=[{"driver_id": 1002}],
                                    full_feature_names=True).to_dict()
    assert got["driver_hourly_stats__conv_rate"] == [0.25] and got["driver_hourly_stats__city"] == ["Lyon"]


def test_sdk_raises_feasts_own_exception_for_an_unknown_view(repo):
    store, _ = repo
    with pytest.raises(feast.errors.FeatureViewNotFoundException):
        store.get_online_features(features=["nope_fv:conv_rate"], entity_rows=[{"driver_id": 1}])


def test_sdk_reads_aggregates_present_and_missing(repo):
    store, cluster = repo
    now = time.time()
    for age_s, value in ((60, 3), (600, 4), (7200, 9)):  # two in the last hour, three in 24 h
        status, _, body = request("POST", cluster.url + "/features", {
            "entity_id": "1001", "name": "user_clicks:clicks", "value": value, "event_timestamp": now - age_s})
        assert status == 200, body
    got = store.get_online_features(
        features=["user_clicks:clicks_sum_1h", "user_clicks:clicks_count_24h", "user_clicks:clicks_max_24h"],
        entity_rows=[{"user_id": 1001}, {"user_id": 4242}]).to_dict()
    assert got == {"user_id": [1001, 4242], "clicks_sum_1h": [7, None], "clicks_count_24h": [3, None],
                   "clicks_max_24h": [9, None]}
