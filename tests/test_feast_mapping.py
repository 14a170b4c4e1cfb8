"""Feast request -> store mapping and store rows -> Feast response, without sockets."""
import json
from pathlib import Path

import orjson
import pytest

from common import protocol as P
from common.config import Config, FeatureView
from common.events import Limits
from frontend.feast.catalog import Catalog, entity_ids
from frontend.feast.errors import FeastFailure, ShapeError
from frontend.feast.plan import df_writes, plan_read
from frontend.feast.render import key_column, view_columns

RECORDED = Path(__file__).parent / "data" / "feast"  # traffic of Feast 0.67's own server and SDK
LIMITS = Limits()
CFG = Config(max_batch_entities=5)
DRIVER = FeatureView("driver_hourly_stats", ("driver_id",), 86400, ("conv_rate", "acc_rate"))
CATALOG = Catalog({"driver_hourly_stats": DRIVER}, {"driver_activity": ("driver_hourly_stats:acc_rate",)})


def feast_error(exc: FeastFailure) -> dict:
    """What Feast's SDK does with the body: response.json() is a string, parsed again."""
    detail = json.loads(exc.body)
    assert isinstance(detail, str)
    return json.loads(detail)


def test_one_join_key_value_is_the_entity_id():
    assert entity_ids(["driver_id"], [[1001, "1001", "a b", -3]], LIMITS) == ["1001", "1001", "a b", "-3"]
    ints = [0, 7, -3, 2**63 - 1, -2**63]  # integers only: rendered in one pass, as str() renders each
    assert entity_ids(["driver_id"], [ints], LIMITS) == list(map(str, ints))
    assert entity_ids(["driver_id"], [[1, 2**64]], LIMITS) == ["1", str(2**64)]  # beyond 64 bits too


def test_compound_keys_join_escaped_pairs_in_join_key_order():
    eids = entity_ids(["a", "b"], [[1, "x&b=2"], ["2", "%"]], LIMITS)
    assert eids == ["a=1&b=2", "a=x%26b%3D2&b=%25"]
    assert len(set(entity_ids(["a", "b"], [["1&b=2", "1"], ["3", "2&b=3"]], LIMITS))) == 2  # no collision


@pytest.mark.parametrize("values, words", [([1.5], "row 0 is 1.5"), ([None], "row 0 is null"),
                                           ([True], "row 0 is true"), ([""], "must not be empty"),
                                           (["x" * 600], "longer than 512 bytes")])
def test_bad_join_key_values_are_400_naming_the_row(values, words):
    with pytest.raises(FeastFailure) as err:
        entity_ids(["driver_id"], [values], LIMITS)
    assert err.value.status_code == 400 and words in feast_error(err.value)["message"]


def test_plan_resolves_references_views_and_names():
    body = {"entities": {"driver_id": [1, 2]}, "features": ["driver_hourly_stats:acc_rate", "driver_hourly_stats:conv_rate"]}
    plan = plan_read(body, CATALOG, CFG, LIMITS)
    assert plan.views == [("driver_hourly_stats", ["1", "2"], ["driver_hourly_stats:acc_rate", "driver_hourly_stats:conv_rate"])]
    assert plan.names == ["acc_rate", "conv_rate"] and plan.refs == [(0, 0), (0, 1)]
    plan = plan_read({**body, "full_feature_names": True}, CATALOG, CFG, LIMITS)
    assert plan.names == ["driver_hourly_stats__acc_rate", "driver_hourly_stats__conv_rate"]
    plan = plan_read({"entities": {"driver_id": [1]}, "feature_service": "driver_activity"}, CATALOG, CFG, LIMITS)
    assert plan.names == ["acc_rate"]


def test_undeclared_views_use_the_id_columns_sorted():
    body = {"entities": {"z_id": [1], "a_id": ["x"], "note": [0]}, "features": ["v:f", "w:g"]}
    plan = plan_read(body, Catalog(), CFG, LIMITS)
    assert [ids for _, ids, _ in plan.views] == [["a_id=x&z_id=1"], ["a_id=x&z_id=1"]]


@pytest.mark.parametrize("body, status, cls, words", [
    ({"entities": {"driver_id": [1]}, "features": ["nope_fv:conv_rate"]}, 404, "FeatureViewNotFoundException",
     "Feature view nope_fv does not exist"),
    ({"entities": {"driver_id": [1]}, "features": ["driver_hourly_stats:nope"]}, 404, "FeastObjectNotFoundException",
     "Feature nope not found in projection driver_hourly_stats"),
    ({"entities": {"customer_id": [1]}, "features": ["driver_hourly_stats:conv_rate"]}, 400, "FeastError",
     "Missing join key values for keys: ['driver_id']"),
    ({"entities": {"driver_id": [1]}, "feature_service": "nope"}, 404, "FeatureServiceNotFoundException",
     "Feature service nope does not exist"),
    ({"entities": {"driver_id": [1, 2, 3, 4, 5, 6]}, "features": ["driver_hourly_stats:conv_rate"]}, 413,
     "FeastError", "the limit is 5 (FS_MAX_BATCH_ENTITIES)"),
    ({"entities": {"driver_id": [1], "x": [1, 2]}, "features": ["driver_hourly_stats:conv_rate"]}, 400,
     "FeastError", "x has 2"),
    ({"entities": {"driver_id": [1]}, "features": []}, 400, "FeastError", "no features requested"),
    ({"entities": {"driver_id": [1]}, "features": ["conv_rate"]}, 400, "FeastError", "must be view:feature"),
    ({"entities": {"driver_id": [1]}, "features": ["driver_hourly_stats:conv_rate", "driver_hourly_stats:conv_rate"]},
     400, "FeatureNameCollisionError", "conv_rate"),
])
def test_read_errors_use_feasts_error_body(body, status, cls, words):
    with pytest.raises(FeastFailure) as err:
        plan_read(body, CATALOG, CFG, LIMITS)
    detail = feast_error(err.value)
    assert (err.value.status_code, detail["module"], detail["class"]) == (status, "feast.errors", cls)
    assert words in detail["message"]


@pytest.mark.parametrize("body, loc, kind", [
    ({"features": ["v:f"]}, ["body", "entities"], "missing"),
    ({"entities": [{"driver_id": 1}], "features": ["v:f"]}, ["body", "entities"], "dict_type"),
    ({"entities": {"driver_id": 1}, "features": ["v:f"]}, ["body", "entities", "driver_id"], "list_type"),
    ({"entities": {"driver_id": [1]}, "features": "v:f"}, ["body", "features"], "list_type"),
    ({"entities": {"driver_id": [1]}, "features": [1]}, ["body", "features", 0], "string_type"),
    ({"entities": {"driver_id": [1]}, "features": ["v:f"], "full_feature_names": "yes"},
     ["body", "full_feature_names"], "bool_type"),
])
def test_shape_errors_are_422_in_fastapi_form(body, loc, kind):
    with pytest.raises(ShapeError) as err:
        plan_read(body, Catalog(), CFG, LIMITS)
    assert err.value.status_code == 422
    (item,) = orjson.loads(err.value.body)["detail"]
    assert (item["loc"], item["type"]) == (loc, kind)


def test_recorded_bad_shape_body_is_byte_identical():
    cases = {c["name"]: c for c in json.loads((RECORDED / "curl_other_cases.json").read_text())["cases"]}
    exchange = cases["curl_error_bad_json_shape"]["exchanges"][0]
    with pytest.raises(ShapeError) as err:
        plan_read(orjson.loads(exchange["request"]["body_raw"]), CATALOG, CFG, LIMITS)
    assert err.value.body.decode() == exchange["response"]["body_raw"]


def test_df_writes_map_columns_to_view_features_with_naive_utc_times():
    df = {"driver_id": [1, 2], "conv_rate": [0.5, None], "acc_rate": [1, 2], "other": [9, 9],
          "event_timestamp": ["2026-11-25T12:42:35", None], "created": ["2026-11-25T12:42:35", None]}
    writes = df_writes(DRIVER, df, 2, LIMITS, now_us=7)
    assert writes == [("1", "driver_hourly_stats:conv_rate", 0.5, 1795610555000000),
                      ("2", "driver_hourly_stats:conv_rate", None, 7),
                      ("1", "driver_hourly_stats:acc_rate", 1, 1795610555000000),
                      ("2", "driver_hourly_stats:acc_rate", 2, 7)]
    undeclared = df_writes(FeatureView("v"), {"b_id": ["x"], "a_id": [1], "f": [[1.5, 2]]}, 1, LIMITS, 5)
    assert undeclared == [("a_id=1&b_id=x", "v:f", [1.5, 2], 5)]


@pytest.mark.parametrize("df, words", [
    ({"conv_rate": [1]}, "Missing join key values for keys: ['driver_id']"),
    ({"driver_id": [1], "event_timestamp": ["yesterday"]}, "no feature columns"),
    ({"driver_id": [1], "conv_rate": [1], "event_timestamp": ["yesterday"]}, "df.event_timestamp"),
    ({"driver_id": [1], "conv_rate": [float("inf")]}, "df.conv_rate[0] must be a finite number"),
])
def test_bad_df_is_400(df, words):
    with pytest.raises(FeastFailure) as err:
        df_writes(DRIVER, df, 1, LIMITS, 0)
    assert err.value.status_code == 400 and words in feast_error(err.value)["message"]


def test_push_sources_map_to_views():
    views = {"a": FeatureView("a", push_source="src"), "b": FeatureView("b", push_source="src"), "c": FeatureView("c")}
    assert [v.name for v in Catalog(views).push_views("src")] == ["a", "b"]
    assert [v.name for v in Catalog(views).push_views("c")] == ["c"]
    assert [v.name for v in Catalog().push_views("anything")] == ["anything"]
    with pytest.raises(FeastFailure) as err:
        Catalog(views).push_views("nope")
    assert err.value.status_code == 422 and feast_error(err.value)["class"] == "PushSourceNotFoundException"


def columns(rows, m):
    return [orjson.loads(b"".join(c)) for c in view_columns(rows, m)]


def test_rows_become_columns_in_request_order():
    ts1, ts2 = b'"2026-01-01T00:00:00Z"', b'"2026-01-02T00:00:00Z"'
    rows = ([b"1\x1f\"a\"", b"null\x1fnull", b"2\x1fnull"], [b"PP", b"NN", b"PU"], [ts1, P.EPOCH_TS, ts2 + P.SEP + ts1])
    assert columns(rows, 2) == [
        {"values": [1, None, 2], "statuses": ["PRESENT", "NOT_FOUND", "PRESENT"],
         "event_timestamps": ["2026-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]},
        {"values": ["a", None, None], "statuses": ["PRESENT", "NOT_FOUND", "NULL_VALUE"],
         "event_timestamps": ["2026-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2026-01-01T00:00:00Z"]}]
    assert columns(([b"[1,2]"], [b"O"], [ts1]), 1) == [
        {"values": [[1, 2]], "statuses": ["OUTSIDE_MAX_AGE"], "event_timestamps": ["2026-01-01T00:00:00Z"]}]


def test_join_key_column_echoes_the_request():
    assert orjson.loads(b"".join(key_column([1, "x"]))) == {"values": [1, "x"], "statuses": ["PRESENT", "PRESENT"],
                                                  "event_timestamps": ["1970-01-01T00:00:00Z"] * 2}


def test_views_with_push_sources_and_ttls_load_from_the_file(tmp_path):
    from common import config
    path = tmp_path / "store.toml"
    path.write_text('[views.v]\njoin_keys = ["a_id", "b_id"]\nttl_s = 0\npush_source = "src"\n'
                    '[views.w]\nttl_s = 60\n')
    cfg = config.load(["--config-file", str(path)], environ={"FS_TTL_S": "30", "FS_TTL_GRACE_S": "5"})
    assert cfg.views[0] == FeatureView("v", ("a_id", "b_id"), 0, (), "src")
    assert cfg.view_ttls() == {"v:": 0, "w:": 60} and (cfg.ttl_s, cfg.ttl_grace_s) == (30, 5)
    assert [v.name for v in Catalog.from_config(cfg).push_views("src")] == ["v"]


@pytest.mark.parametrize("text, words", [('[views.v]\nttl_s = "1d"\n', "views.v.ttl_s"),
                                         ('[views.v]\nttl_s = -1\n', "views.v.ttl_s"),
                                         ('[views.v]\njoin_keys = "driver_id"\n', "views.v.join_keys"),
                                         ('[views.v]\npush_source = 3\n', "views.v.push_source")])
def test_bad_views_are_refused_naming_the_setting(tmp_path, text, words):
    from common import config
    path = tmp_path / "store.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(["--config-file", str(path)], environ={})
    assert words in str(err.value)


@pytest.mark.parametrize("env", [{"FS_TTL_S": "0"}, {"FS_TTL_S": "-5"}, {"FS_TTL_GRACE_S": "-1"},
                                 {"FS_RENDER_CACHE_ENTITIES": "-1"}, {"FS_MAX_BATCH_ENTITIES": "0"}])
def test_bad_ttl_and_limit_settings_are_refused(env):
    from common import config
    with pytest.raises(config.ConfigError) as err:
        config.load([], environ=env)
    assert next(iter(env)) in str(err.value)


@pytest.mark.parametrize("eids, words", [([], None), (["a", "ü", "日本"], None), (["a", 1], "x[1] must be a string"),
                                         (["a", ""], "x[1] must not be empty"), (["\ud800"], "x[0] is not valid Unicode"),
                                         (["a", "é" * 257], "x[1] is longer than 512 bytes"), (["é" * 256], None)])
def test_check_entity_ids_names_the_first_bad_item(eids, words):
    from common.events import EventError, check_entity_ids
    if words is None:
        assert check_entity_ids(eids, LIMITS, "x") is eids
    else:
        with pytest.raises(EventError) as err:
            check_entity_ids(eids, LIMITS, "x")
        assert err.value.detail == words
