import signal
import threading

import pytest

from tests.helpers import Daemons

# The tests send SIGINT to processes they start, as a user's Ctrl-C. A run started in the
# background by a shell without job control (a CI script, `nohup ... &`) has SIGINT
# ignored, and an ignored signal stays ignored across fork and exec: Python then installs
# no KeyboardInterrupt handler, and `pipers status --watch` would never see the Ctrl-C
# (found on a CI run: the child sat in time.sleep 30 s after SIGINT). A handler of ours is
# reset to the default in every child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
