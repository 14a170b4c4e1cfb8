"""schemathesis over the served OpenAPI description, with its checks on, against a real cluster.

Every generated request, valid or not by the description, must get an answer the description
allows: no 5xx, a documented status and body shape, a 405 with ``Allow``; what the description
calls valid is accepted and what it calls invalid is refused.

One documented gap (docs/SECURITY.md, "Fuzzing"): the Feast bodies have rules JSON Schema cannot
state (every column of one length, the join keys of the view named), so for the three Feast
operations a schema-valid body may be refused with 400; their other checks stay on.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.support import Cluster, request

CONFIG = """
[views.driver_hourly_stats]
join_keys = ["driver_id"]
push_source = "driver_push"
"""
FEAST_BODIES = {"/get-online-features", "/write-to-online-store", "/push"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    (tmp / "store.toml").write_text(CONFIG)
    with Cluster(tmp, config_file=tmp / "store.toml") as c:
        schema = schemathesis.openapi.from_dict(request("GET", c.url + "/openapi.json")[2])
        schema.config.update(base_url=c.url)
        schema.config.generation.update(no_shrink=True)
        # a limit (body, batch, request line, headers) refuses invalid data as rightly as a 400 does
        refusals = schema.config.checks.negative_data_rejection
        refusals.expected_statuses = [*refusals.expected_statuses, "413", "414", "431"]
        yield schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_described(case):
    excluded = [checks.positive_data_acceptance] if case.operation.path in FEAST_BODIES else []
    case.call_and_validate(excluded_checks=excluded)
