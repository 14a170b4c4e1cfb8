"""Feature definitions of the test repository, as a Feast user writes them."""
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)

source = FileSource(name="driver_hourly_stats_source", path="data/driver_stats.parquet",
                    timestamp_field="event_timestamp", created_timestamp_column="created")

driver_hourly_stats = FeatureView(
    name="driver_hourly_stats",
    entities=[driver],
    ttl=timedelta(days=1),
    schema=[Field(name="conv_rate", dtype=Float64), Field(name="acc_rate", dtype=Float64),
            Field(name="avg_daily_trips", dtype=Int64), Field(name="city", dtype=String)],
    online=True,
    source=source,
)

driver_activity = FeatureService(name="driver_activity", features=[driver_hourly_stats])


# windowed aggregates of clicks, computed by the shards ([[aggregations]] in store.toml)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)

user_clicks = FeatureView(
    name="user_clicks",
    entities=[user],
    ttl=timedelta(days=7),
    schema=[Field(name="clicks", dtype=Int64), Field(name="clicks_sum_1h", dtype=Int64),
            Field(name="clicks_count_24h", dtype=Int64), Field(name="clicks_max_24h", dtype=Int64)],
    online=True,
    source=source,
)
