"""pytest fixtures for a real local OpenSearch node.

In ``tests/conftest.py``::

    from search.fixture import search_node, search_node_factory  # noqa: F401

``search_node`` (session): the shared node. With ``PIPERS_ES_URL`` set (comma
separated URLs allowed) that cluster is used as is, never started nor stopped,
and the handle is a :class:`search.node.SearchClient` (helpers only). Otherwise
one private node is started on a free port base under
``build/search/test-<pid>/session`` and removed at the end.

``search_node_factory`` (function): ``factory(nodes=1, **SearchNode kwargs)``
starts a fresh private node/cluster (own ports, own data dir) for destructive
tests (stop, pause, kill); all are stopped and removed at teardown.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from search.node import (
    SEARCH_BUILD,
    PortInUse,
    SearchClient,
    SearchNode,
    find_free_port_base,
)

_counter = itertools.count(1)


def _test_root() -> Path:
    return SEARCH_BUILD / f"test-{os.getpid()}"


def start_private_node(name: str, nodes: int = 1, timeout: float = 180.0, **kwargs) -> SearchNode:
    """Start a node/cluster on a free port base under build/search/test-<pid>/<name>."""
    base = _test_root() / name
    shutil.rmtree(base, ignore_errors=True)
    kwargs.setdefault("cluster_name", f"pipers-test-{os.getpid()}-{name}")
    last: Exception | None = None
    for _ in range(5):  # another process may grab the ports between check and bind
        node = SearchNode(base, find_free_port_base(nodes), nodes, **kwargs)
        try:
            return node.start(timeout=timeout)
        except PortInUse as e:
            last = e
    raise last or RuntimeError("unreachable")


def _dispose(node: SearchNode) -> None:
    try:
        node.stop(timeout=20)
    except Exception:
        node.kill()
    shutil.rmtree(node.base, ignore_errors=True)


def _cleanup_root() -> None:
    root = _test_root()
    if root.exists() and not any(root.iterdir()):
        root.rmdir()


@pytest.fixture(scope="session")
def search_node() -> Iterator[SearchClient]:
    """The shared search node for the test session (see module doc)."""
    external = os.environ.get("PIPERS_ES_URL")
    if external:
        client = SearchClient(external)
        if not client.healthy(timeout=10):
            pytest.fail(f"PIPERS_ES_URL={external} does not answer a yellow/green health check")
        yield client
        return
    node = start_private_node("session")
    try:
        yield node
    finally:
        _dispose(node)
        _cleanup_root()


@pytest.fixture
def search_node_factory() -> Iterator[Callable[..., SearchNode]]:
    """``factory(nodes=1, **kwargs) -> started SearchNode``; all disposed at teardown."""
    made: list[SearchNode] = []

    def factory(nodes: int = 1, **kwargs) -> SearchNode:
        node = start_private_node(f"f{next(_counter)}", nodes=nodes, **kwargs)
        made.append(node)
        return node

    try:
        yield factory
    finally:
        for node in made:
            _dispose(node)
        _cleanup_root()
