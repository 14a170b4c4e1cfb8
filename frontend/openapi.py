"""The OpenAPI 3 description served at ``GET /openapi.json``."""
from __future__ import annotations

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _html(description: str) -> dict:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _errors(*codes: int) -> dict:
    words = {400: "bad input, the detail names the field", 401: "a bearer token is required",
             403: "the token may not do this, or the store is read-only", 404: "not found",
             413: "body, batch or response over its limit", 503: "a shard did not answer in time "
             "(Retry-After)", 507: "a shard cannot write its log (disk full)"}
    return {str(c): _json(_ERROR, words[c]) for c in codes}


_FEAST_ERROR = {"type": "string", "description": 'Feast\'s error: a JSON string holding {"module", "class", '
                                                '"message"}, rebuilt by the Feast SDK into that exception'}
_FEAST_ERRORS = {
    "400": _json(_FEAST_ERROR, "bad input (FeastError)"),
    "404": _json(_FEAST_ERROR, "unknown feature view, feature or feature service"),
    "413": _json(_FEAST_ERROR, "more entity rows or a larger answer than the limits"),
    "422": _json({"anyOf": [{"type": "object"}, _FEAST_ERROR]}, "a body of the wrong shape, in FastAPI's validation form; an unknown push "
                                     "source (Feast's error string)"),
}

_ID = {"type": "string", "minLength": 1, "maxLength": 512,
       "description": "any Unicode, at most FS_MAX_ENTITY_ID_BYTES (512) bytes of UTF-8"}
_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9_.:-]+$",
                "description": "ASCII letters, digits and _ . : -, at most FS_MAX_NAME_BYTES (256) bytes"}
_ENTITY = {"name": "entity_id", "in": "path", "required": True, "schema": _ID,
           "description": "percent-encoded: user%2F1 is the entity user/1"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": _NAME_SCHEMA}
_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_ANY = {"$ref": "#/components/schemas/Value"}
_VALUE = {"description": "any JSON value: null, boolean, 64-bit integer, finite number, string, array, object; "
                         "nested at most 64 deep and at most FS_MAX_VALUE_BYTES (64 KiB) encoded (413 past it): "
                         "two limits JSON Schema cannot state",
          # one schema for every type (not anyOf, whose branches a fuzzer mutates into one another);
          # so the 64-bit bounds hold for every number here, though the server takes larger floats
          "type": ["null", "boolean", "integer", "number", "string", "array", "object"],
          "minimum": _INT64["minimum"], "maximum": _INT64["maximum"], "items": _ANY, "additionalProperties": _ANY}
_RFC3339 = ("^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:"
            "[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")  # 1970-9999, with a zone
_TS = {"anyOf": [{"type": "null"}, {"type": "string", "pattern": _RFC3339},
                 {"type": "number", "minimum": 0, "maximum": 253402300799}],
       "description": "RFC 3339 with a zone, or seconds since the epoch, 1970 to 9999; absent or null = time received"}
_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
_EVENT_ID = {"type": ["string", "integer"], "minLength": 1, "maxLength": 256,
             "minimum": _INT64["minimum"], "maximum": _INT64["maximum"],
             "description": "a string of 1 to 256 characters or a 64-bit integer (1.0 is 1; past 2**53 without a "
                            "fraction or exponent); counted once by aggregations when repeated"}
_READ_ERRORS = (400, 401, 403, 404, 503)
_WRITE_ERRORS = (400, 401, 403, 413, 503, 507)
_NAMES = {"type": "array", "minItems": 1, "items": _NAME_SCHEMA}
_COLUMNS = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "array", "minItems": 1},
            "description": "columns of one length: {column: [values]}"}


_READ_AFTER = {"name": "X-Read-After", "in": "header", "required": False,
               "schema": {"type": "string"},
               "description": "cluster mode: a write's X-Read-After (partition:offset pairs) sent back; the read "
                              "is answered only by replicas that applied those positions (503 when none did in "
                              "time, 400 for another value); embedded mode ignores it"}
_POSITIONS = {"X-Read-After": {"description": "cluster mode: partition:offset of each record of the write",
                               "schema": {"type": "string"}}}


def _body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "shardstore feature store", "version": "0.1.0",
             "description": "A sharded, in-memory online feature store. Last write wins by event time."},
    "paths": {
        "/features": {
            "post": {"summary": "Write features (seed form, grouped form, or an array of either)",
                     "requestBody": _body({"oneOf": [
                         {"$ref": "#/components/schemas/Write"},
                         {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Write"}}]}),
                     "responses": {"200": {**_json({"$ref": "#/components/schemas/Saved"}, "applied"),
                                           "headers": _POSITIONS},
                                   **_errors(*_WRITE_ERRORS)}},
            "get": {"summary": "Read one feature (query form)",
                    "parameters": [{"name": "entity_id", "in": "query", "required": True, "schema": _ID},
                                   {"name": "name", "in": "query", "required": True, "schema": _NAME_SCHEMA}],
                    "responses": {"200": _json({"$ref": "#/components/schemas/Feature"}, "the feature"),
                                  **_errors(*_READ_ERRORS)}},
        },
        "/features/{entity_id}": {
            "parameters": [_ENTITY],
            "get": {"summary": "All live features of an entity", "parameters": [_READ_AFTER],
                    "responses": {"200": _json({"$ref": "#/components/schemas/Entity"}, "the entity"),
                                  **_errors(*_READ_ERRORS)}},
            "delete": {"summary": "Delete an entity", "responses": {"200": _json({"type": "object"}, "deleted"),
                                                                    **_errors(400, 401, 403, 404, 503, 507)}},
        },
        "/features/{entity_id}/{name}": {
            "parameters": [_ENTITY, _NAME],
            "get": {"summary": "One feature", "parameters": [_READ_AFTER], "responses": {
                "200": _json({"$ref": "#/components/schemas/Feature"}, "the feature"), **_errors(*_READ_ERRORS)}},
            "delete": {"summary": "Delete one feature", "responses": {
                "200": _json({"type": "object"}, "deleted"), **_errors(400, 401, 403, 404, 503, 507)}},
        },
        "/features/batch": {
            "get": {"summary": "The entity named batch (as /features/{entity_id})", "responses": {
                "200": _json({"$ref": "#/components/schemas/Entity"}, "the entity"), **_errors(*_READ_ERRORS)}},
            "delete": {"summary": "Delete the entity named batch", "responses": {
                "200": _json({"type": "object"}, "deleted"), **_errors(400, 401, 403, 404, 503, 507)}},
            "post": {"summary": "Many entities in one call, results in request order",
                     "parameters": [_READ_AFTER],
                     "requestBody": _body({
                         "type": "object", "required": ["entity_ids"], "additionalProperties": False, "properties": {
                             "entity_ids": {"type": "array", "minItems": 1, "maxItems": 1000, "items": _ID},
                             "features": {"anyOf": [_NAMES, {"type": "null"}]}}}),
                     "responses": {"200": _json({"type": "object", "properties": {"results": {
                         "type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/Entity"},
                                                              {"$ref": "#/components/schemas/Missing"}]}}}},
                         "one result per requested id"), **_errors(400, 401, 403, 413, 503)}},
        },
        "/get-online-features": {"post": {
            "summary": "Feast feature-server compatible read (docs/FEAST.md)",
            "parameters": [_READ_AFTER],
            "requestBody": _body({
                "type": "object", "required": ["entities"], "properties": {
                    "entities": _COLUMNS,
                    "features": {"type": "array", "minItems": 1, "items": {**_NAME_SCHEMA, "pattern": "^[A-Za-z0-9_.-]+:[A-Za-z0-9_.:-]+$"}},
                    "feature_service": {"type": "string", "minLength": 1}, "full_feature_names": {"type": "boolean"},
                    "include_feature_view_version_metadata": {"type": "boolean"}},
                "anyOf": [{"required": ["features"]}, {"required": ["feature_service"]}]}),
            "responses": {"200": _json({"type": "object", "properties": {
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "values": {"type": "array"}, "statuses": {"type": "array", "items": {
                        "type": "string", "enum": ["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"]}},
                    "event_timestamps": {"type": "array", "items": {"type": "string"}}}}},
                "metadata": {"type": "object", "properties": {"feature_names": {
                    "type": "array", "items": {"type": "string"}}}}}}, "column-major results, join keys first"),
                **_FEAST_ERRORS, **_errors(401, 403, 503)}}},
        "/write-to-online-store": {"post": {"summary": "Feast compatible write (columnar df, naive times are UTC)",
                                            "requestBody": _body({
                                                "type": "object", "required": ["feature_view_name", "df"],
                                                "properties": {"feature_view_name": {"type": "string", "minLength": 1},
                                                               "df": _COLUMNS}}),
                                            "responses": {"200": _json({}, "null"), **_FEAST_ERRORS,
                                                          **_errors(401, 403, 503, 507)}}},
        "/push": {"post": {"summary": "Feast compatible push (columnar df) to the views of a push source",
                           "requestBody": _body({
                               "type": "object", "required": ["push_source_name", "df"],
                               "properties": {"push_source_name": {"type": "string", "minLength": 1}, "df": _COLUMNS,
                                              "to": {"type": ["string", "null"]}}}),
                           "responses": {"200": {"description": "written; empty body"}, **_FEAST_ERRORS,
                                         **_errors(401, 403, 503, 507)}}},
        "/health": {"get": {"summary": "Feast's health check", "responses": {
            "200": {"description": "every shard answers; empty body"},
            "503": _json(_ERROR, "names the shards that did not answer")}}},
        "/healthz": {"get": {"summary": "This process is up", "responses": {
            "200": _json({"type": "object", "properties": {"status": {"type": "string"}}}, "up")}}},
        "/readyz": {"get": {"summary": "Every shard answers", "responses": {
            "200": _json({"type": "object"}, "ready"), "503": _json(_ERROR, "names the shards that did not answer")}}},
        "/stats": {"get": {"summary": "Counters of every shard", "responses": {"200": _json({"type": "object"}, "")}}},
        "/metrics": {"get": {"summary": "Prometheus text format", "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "")}}},
        "/status": {"get": {"summary": "What the status page shows: shards, requests per route, ingest", "responses": {
            "200": _json({"type": "object", "properties": {
                "time": {"type": "number", "description": "seconds since the epoch"},
                "shards": {"type": "array", "items": {"type": "object"}},
                "routes": {"type": "array", "items": {"type": "object", "properties": {
                    "route": {"type": "string"}, "count": {"type": "number"},
                    "buckets": {"type": "array", "items": {"type": "number"},
                                "description": "cumulative counts at each of bounds, then +Inf"}}}},
                "bounds": {"type": "array", "items": {"type": "number"}},
                "ingest": {"type": ["object", "null"]}}}, "counts since the processes started"),
            **_errors(401, 403)}}},
        "/": {"get": {"summary": "The status page (HTML)", "responses": {"200": _html("the page")}}},
        "/docs": {"get": {"summary": "These docs in Swagger UI (HTML)", "responses": {"200": _html("the page")}}},
        "/static/{path}": {"get": {"summary": "The status page's CSS and JavaScript", "parameters": [_PATH],
                                   "responses": {"200": {"description": "the file"}, **_errors(404)}}},
        "/docs/assets/{path}": {"get": {"summary": "Swagger UI's files", "parameters": [_PATH],
                                        "responses": {"200": {"description": "the file"}, **_errors(404)}}},
    },
    "components": {"schemas": {
        "Value": _VALUE,
        "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
        "Write": {"oneOf": [
            {"type": "object", "required": ["entity_id", "name", "value"], "additionalProperties": False,
             "properties": {"entity_id": _ID, "name": _NAME_SCHEMA, "value": _ANY, "event_timestamp": _TS,
                            "event_id": _EVENT_ID}},
            {"type": "object", "required": ["entity_id", "features"], "additionalProperties": False,
             "properties": {"entity_id": _ID, "event_timestamp": _TS, "event_id": _EVENT_ID,
                            "features": {"type": "object", "minProperties": 1, "maxProperties": 16,
                                         "propertyNames": _NAME_SCHEMA, "additionalProperties": _ANY}}}]},
        "Saved": {"type": "object", "properties": {"message": {"type": "string"}, "written": {"type": "integer"},
                                                   "stale": {"type": "integer"}}},
        "Feature": {"type": "object", "properties": {"entity_id": {"type": "string"}, "name": {"type": "string"},
                                                     "value": _ANY, "event_timestamp": {"type": "string"}}},
        "Entity": {"type": "object", "required": ["entity_id", "features", "last_updated"],
                   "additionalProperties": False, "properties": {"entity_id": {"type": "string"},
                                                    "features": {"type": "object", "additionalProperties": _ANY},
                                                    "last_updated": {"type": "string", "format": "date-time"}}},
        "Missing": {"type": "object", "required": ["entity_id", "detail"], "additionalProperties": False,
                    "properties": {"entity_id": {"type": "string"}, "detail": {"type": "string"}}},
    }},
}
