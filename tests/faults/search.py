"""Reading back what reached the search node: counts and the `seq` of every document."""

from __future__ import annotations

import contextlib

from search.node import SearchError
from tests.helpers import indexed, unique_index  # noqa: F401 (used by the fault tests)


def create_index(node, index: str) -> None:
    """One shard (exact counts), `value` a number: a message with text there is refused."""
    node.request("PUT", f"/{index}", {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"seq": {"type": "long"}, "value": {"type": "long"}}},
    })


def seqs(node, index: str, page: int = 10_000) -> list[tuple[str, int]]:
    """(``_id``, ``seq``) of every document in `index`, one entry per document (scroll)."""
    node.refresh(index)
    ans = node.request("POST", f"/{index}/_search?scroll=2m", {
        "size": page, "sort": ["_doc"], "_source": ["seq"],
    })
    out: list[tuple[str, int]] = []
    scroll_id = ans.get("_scroll_id")
    try:
        while ans["hits"]["hits"]:
            out += [(h["_id"], h["_source"]["seq"]) for h in ans["hits"]["hits"]]
            ans = node.request("POST", "/_search/scroll", {"scroll": "2m",
                                                           "scroll_id": scroll_id})
            scroll_id = ans.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            with contextlib.suppress(SearchError):
                node.request("DELETE", "/_search/scroll", {"scroll_id": scroll_id}, ok=(404,))
    return out
