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
    "422": _json({"type": "object"}, "a body of the wrong shape, in FastAPI's validation form; an unknown push "
                                     "source (Feast's error string)"),
}

_ENTITY = {"name": "entity_id", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "percent-encoded: user%2F1 is the entity user/1"}
_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]+$"}}
_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
_ANY = {"description": "any JSON value: null, boolean, 64-bit integer, finite number, string, array, object"}
_TS = {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
       "description": "RFC 3339 with a zone, or seconds since the epoch; absent = time received"}
_READ_ERRORS = (400, 401, 403, 404, 503)
_WRITE_ERRORS = (400, 401, 403, 413, 503, 507)

SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "shardstore feature store", "version": "0.1.0",
             "description": "A sharded, in-memory online feature store. Last write wins by event time."},
    "paths": {
        "/features": {
            "post": {"summary": "Write features (seed form, grouped form, or an array of either)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                         {"$ref": "#/components/schemas/Write"},
                         {"type": "array", "items": {"$ref": "#/components/schemas/Write"}}]}}}},
                     "responses": {"200": _json({"$ref": "#/components/schemas/Saved"}, "applied"),
                                   **_errors(*_WRITE_ERRORS)}},
            "get": {"summary": "Read one feature (query form)",
                    "parameters": [{"name": "entity_id", "in": "query", "required": True, "schema": {"type": "string"}},
                                   {"name": "name", "in": "query", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json({"$ref": "#/components/schemas/Feature"}, "the feature"),
                                  **_errors(*_READ_ERRORS)}},
        },
        "/features/{entity_id}": {
            "parameters": [_ENTITY],
            "get": {"summary": "All live features of an entity",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Entity"}, "the entity"),
                                  **_errors(*_READ_ERRORS)}},
            "delete": {"summary": "Delete an entity", "responses": {"200": _json({"type": "object"}, "deleted"),
                                                                    **_errors(400, 401, 403, 404, 503, 507)}},
        },
        "/features/{entity_id}/{name}": {
            "parameters": [_ENTITY, _NAME],
            "get": {"summary": "One feature", "responses": {
                "200": _json({"$ref": "#/components/schemas/Feature"}, "the feature"), **_errors(*_READ_ERRORS)}},
            "delete": {"summary": "Delete one feature", "responses": {
                "200": _json({"type": "object"}, "deleted"), **_errors(400, 401, 403, 404, 503, 507)}},
        },
        "/features/batch": {
            "post": {"summary": "Many entities in one call, results in request order",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["entity_ids"], "properties": {
                             "entity_ids": {"type": "array", "items": {"type": "string"}},
                             "features": {"type": "array", "items": {"type": "string"}}}}}}},
                     "responses": {"200": _json({"type": "object", "properties": {"results": {
                         "type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/Entity"},
                                                              {"$ref": "#/components/schemas/Missing"}]}}}},
                         "one result per requested id"), **_errors(400, 401, 403, 413, 503)}},
        },
        "/get-online-features": {"post": {
            "summary": "Feast feature-server compatible read (docs/FEAST.md)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["entities"], "properties": {
                    "entities": {"type": "object", "additionalProperties": {"type": "array"}},
                    "features": {"type": "array", "items": {"type": "string"}},
                    "feature_service": {"type": "string"}, "full_feature_names": {"type": "boolean"},
                    "include_feature_view_version_metadata": {"type": "boolean"}}}}}},
            "responses": {"200": _json({"type": "object", "properties": {
                "results": {"type": "array", "items": {"type": "object", "properties": {
                    "values": {"type": "array"}, "statuses": {"type": "array", "items": {
                        "type": "string", "enum": ["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"]}},
                    "event_timestamps": {"type": "array", "items": {"type": "string"}}}}},
                "metadata": {"type": "object", "properties": {"feature_names": {
                    "type": "array", "items": {"type": "string"}}}}}}, "column-major results, join keys first"),
                **_FEAST_ERRORS, **_errors(401, 403, 503)}}},
        "/write-to-online-store": {"post": {"summary": "Feast compatible write (columnar df, naive times are UTC)",
                                            "responses": {"200": _json({}, "null"), **_FEAST_ERRORS,
                                                          **_errors(401, 403, 503, 507)}}},
        "/push": {"post": {"summary": "Feast compatible push (columnar df) to the views of a push source",
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
                "ingest": {"type": "object", "nullable": True}}}, "counts since the processes started"),
            **_errors(401, 403)}}},
        "/": {"get": {"summary": "The status page (HTML)", "responses": {"200": _html("the page")}}},
        "/docs": {"get": {"summary": "These docs in Swagger UI (HTML)", "responses": {"200": _html("the page")}}},
        "/static/{path}": {"get": {"summary": "The status page's CSS and JavaScript", "parameters": [_PATH],
                                   "responses": {"200": {"description": "the file"}, **_errors(404)}}},
        "/docs/assets/{path}": {"get": {"summary": "Swagger UI's files", "parameters": [_PATH],
                                        "responses": {"200": {"description": "the file"}, **_errors(404)}}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
        "Write": {"type": "object", "required": ["entity_id"], "properties": {
            "entity_id": {"type": "string", "minLength": 1}, "name": {"type": "string"}, "value": _ANY,
            "features": {"type": "object", "additionalProperties": _ANY}, "event_timestamp": _TS,
            "event_id": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 256}, {"type": "integer"}],
                         "description": "counted once by aggregations when repeated"}}},
        "Saved": {"type": "object", "properties": {"message": {"type": "string"}, "written": {"type": "integer"},
                                                   "stale": {"type": "integer"}}},
        "Feature": {"type": "object", "properties": {"entity_id": {"type": "string"}, "name": {"type": "string"},
                                                     "value": _ANY, "event_timestamp": {"type": "string"}}},
        "Entity": {"type": "object", "properties": {"entity_id": {"type": "string"},
                                                    "features": {"type": "object", "additionalProperties": _ANY},
                                                    "last_updated": {"type": "string", "format": "date-time"}}},
        "Missing": {"type": "object", "properties": {"entity_id": {"type": "string"}, "detail": {"type": "string"}}},
    }},
}
