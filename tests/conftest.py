import pytest

from tests.ingest_support import Broker
from tests.support import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two real shards and one real front end, shared by a test module."""
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One real Kafka-protocol broker (Tansu) for the session; tests use topics of their own."""
    b = Broker(tmp_path_factory.mktemp("kafka"))
    yield b
    b.stop()
