"""The local OpenSearch node used by tests, benchmarks and the demo is real and behaves.

Fixtures ``search_node`` / ``search_node_factory`` come from search.fixture via conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from search.node import (
    ROOT,
    SearchNode,
    SearchTimeout,
    SearchUnavailable,
    find_free_port_base,
)

pytestmark = pytest.mark.search


def _index() -> str:
    return f"pipers-test-node-{uuid.uuid4().hex[:12]}"


def test_node_answers(search_node):
    info = search_node.info()
    assert "version" in info and "number" in info["version"]
    assert search_node.health()["status"] in ("yellow", "green")
    assert search_node.url.startswith("http://")


def test_indexed_doc_is_counted_and_found_by_id(search_node):
    index = _index()
    try:
        assert search_node.count(index) == 0  # absent index counts 0
        search_node.index_doc(index, "msg-42", {"body": "hello", "n": 42})
        search_node.refresh(index)
        assert search_node.count(index) == 1
        assert search_node.search_ids(index) == ["msg-42"]
        assert search_node.get_doc(index, "msg-42") == {"body": "hello", "n": 42}
        # same _id again: still one document (idempotent delivery)
        search_node.index_doc(index, "msg-42", {"body": "hello", "n": 42}, refresh=True)
        assert search_node.count(index) == 1
    finally:
        search_node.delete_index(index)
    assert search_node.count(index) == 0


def test_search_ids_pages_through_everything(search_node):
    index = _index()
    ids = {f"id-{i:05d}" for i in range(2500)}
    try:
        search_node.bulk_index(index, {i: {"i": i} for i in ids})
        search_node.refresh(index)
        got = search_node.search_ids(index, page=1000)
        assert len(got) == 2500 and set(got) == ids
    finally:
        search_node.delete_index(index + "*")


def test_pause_times_out_and_resume_recovers(search_node_factory):
    node = search_node_factory()
    pid = node.pid
    assert node.alive() and pid
    node.pause()
    with pytest.raises(SearchTimeout):
        node.request("GET", "/_cluster/health", timeout=2)
    assert node.alive()  # stopped, not dead
    node.resume()
    assert node.health(timeout=30)["status"] in ("yellow", "green")
    assert node.pid == pid


def test_restart_keeps_data_and_url(search_node_factory):
    node = search_node_factory()
    url, old_pid = node.url, node.pid
    node.bulk_index("pipers-keep", {f"k{i}": {"i": i} for i in range(100)})
    node.restart()
    assert node.url == url and node.pid != old_pid
    node.refresh("pipers-keep")
    assert node.count("pipers-keep") == 100
    # single node: the zero-replicas template makes indices green, not yellow
    assert node.request("GET", "/_cluster/health/pipers-keep")["status"] == "green"
    node.stop()
    assert not node.alive() and node.pid is None
    with pytest.raises(SearchUnavailable):
        node.request("GET", "/", timeout=2)


def test_kill_loses_no_acknowledged_write(search_node_factory):
    node = search_node_factory()
    node.bulk_index("pipers-crash", {f"c{i}": {"i": i} for i in range(50)})  # not refreshed
    node.kill()
    assert not node.alive()
    node.start()
    node.refresh("pipers-crash")
    assert sorted(node.search_ids("pipers-crash")) == sorted(f"c{i}" for i in range(50))


@pytest.mark.slow
def test_three_node_cluster_survives_one_killed_node(search_node_factory):
    cluster = search_node_factory(nodes=3, heap="512m")
    assert len(cluster.urls) == 3 and len(set(cluster.pids)) == 3  # one JVM per node
    assert cluster.health()["number_of_nodes"] == 3
    index = "pipers-three"
    cluster.request(
        "PUT", f"/{index}", {"settings": {"number_of_shards": 3, "number_of_replicas": 1}}
    )
    cluster.request("GET", "/_cluster/health?wait_for_status=green&timeout=60s", timeout=70)
    cluster.bulk_index(index, {f"t{i}": {"i": i} for i in range(300)})
    cluster.kill(node=1)
    assert not cluster.alive(node=1) and cluster.alive(node=2) and cluster.alive(node=3)
    survivor = cluster.urls[1]
    h = cluster.request(
        "GET",
        "/_cluster/health?wait_for_nodes=2&wait_for_status=yellow&timeout=60s",
        url=survivor,
        timeout=70,
    )
    assert h["number_of_nodes"] == 2
    cluster.refresh(index)  # helpers skip the dead node
    assert cluster.count(index) == 300
    assert sorted(cluster.search_ids(index)) == sorted(f"t{i}" for i in range(300))
    cluster.start(node=1)  # rejoins on the same ports and data dir
    assert cluster.health(url=cluster.urls[0])["number_of_nodes"] == 3


def test_cli_start_is_idempotent_and_stop_works(tmp_path):
    base = tmp_path / "cli-node"
    port = find_free_port_base(1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "search.node", *args, "--base", str(base), "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
        )

    try:
        first = cli("start")
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == f"http://127.0.0.1:{port}"
        again = cli("start")
        assert again.returncode == 0 and again.stdout.strip() == first.stdout.strip()
        assert cli("status").returncode == 0
        node = SearchNode.from_state(base)
        assert node is not None and node.alive() and node.healthy()
    finally:
        stop = cli("stop")
    assert stop.returncode == 0, stop.stderr
    assert cli("status").returncode == 1
    assert not node.alive()
