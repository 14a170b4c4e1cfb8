"""A Python client and the ``featurestore`` command for the sharded feature store."""
from featurestore.client import AsyncClient, Client
from featurestore.errors import (BadRequest, DiskFull, FeatureStoreError, Forbidden, NotFound, PayloadTooLarge,
                                 ServerError, Unauthorized, Unavailable, Unreachable)
from featurestore.models import Entity, Feature, OnlineFeatures, Readiness, WriteResult

__all__ = ["AsyncClient", "BadRequest", "Client", "DiskFull", "Entity", "Feature", "FeatureStoreError",
           "Forbidden", "NotFound", "OnlineFeatures", "PayloadTooLarge", "Readiness", "ServerError",
           "Unauthorized", "Unavailable", "Unreachable", "WriteResult"]
