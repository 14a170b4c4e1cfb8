import pytest

from tests.support import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two real shards and one real front end, shared by a test module."""
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c
