"""Feast feature-server compatible endpoints, for Feast's SDK (``online_store: {type: remote}``)
and for clients written against ``feast serve``.

| method, path                  | request                                               | reply     |
|-------------------------------|-------------------------------------------------------|-----------|
| ``POST /get-online-features`` | ``{entities: {join_key: [..]}, features: [view:feature] | feature_service, full_feature_names?}`` | column-major ``{results, metadata}`` |
| ``POST /write-to-online-store`` | ``{feature_view_name, df: {column: [..]}}``         | ``null``  |
| ``POST /push``                | ``{push_source_name, df, to?: "online"}``             | empty     |
| ``GET /health``               | -                                                     | empty 200, or 503 |

Values are stored under ``view:feature``. A row of join keys maps to one entity id: a single
join key's value as a string (``1001`` -> ``"1001"``); a compound key's ``name=value`` pairs
joined by ``&`` in join-key order, with ``%``, ``&`` and ``=`` percent-encoded inside names and
values, so two different rows never share an id. See docs/FEAST.md.

Errors: those Feast's server raises as ``FeastError`` carry Feast's body, a JSON *string*
holding ``{"module", "class", "message"}`` that the SDK turns back into that exception; a body
of the wrong shape is a 422 in FastAPI's form ``{"detail": [{"type","loc","msg","input"}]}``.

Modules: ``errors`` (Feast's error forms), ``catalog`` (views, services, entity ids), ``plan``
(request checks and planning), ``render`` (the response columns), ``handlers`` (the endpoints).
Shard calls go through ``frontend/fanout.py``, as the native endpoints' do.
"""
from frontend.feast.handlers import routes

__all__ = ["routes"]
