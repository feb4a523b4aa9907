import threading

import pytest

from tests.helpers import Daemons

try:  # the local search node (real OpenSearch from Maven Central)
    from search.fixture import search_node, search_node_factory  # noqa: F401
except ImportError:  # pragma: no cover - only while search/ is being written
    pass


@pytest.fixture
def daemons(tmp_path):
    d = Daemons(tmp_path)
    yield d
    d.stop_all()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """In-process tests must not leave observer or worker threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads leaked: {still}"
