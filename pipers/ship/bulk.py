"""Talking to the search cluster: `_bulk` over elastic-transport, and reading the answer.

elastic-transport (Elastic's own HTTP layer) gives the node pool, dead-node
back-off, TLS and auth; it does not check for Elastic's product header, so
OpenSearch and older Elasticsearch work too. Bodies go out as the bytes we
built and answers come back as bytes, parsed here with orjson.

Per document, the answer decides (`classify`):

========================================  =======  =====================================
status / error type                       outcome  why
========================================  =======  =====================================
2xx, 409 (already exists: op_type=create) DONE     the document is in the index
400, 404, 413 (mapping, parse, invalid    FAILED   will never succeed as it is: errors/
index name, closed index, ...)                     with the engine's error in the sidecar
429, 5xx, ``*rejected_execution*``        RETRY    the cluster is busy or degraded
403 ``cluster_block_exception`` (read-    RETRY    an operator or the disk watermark set
only index), any other status                      it; lifting it must not need a replay
========================================  =======  =====================================

An answer that does not parse, is not a bulk answer, or whose items do not
match the documents sent one for one (count and ``_id``) is never taken as
success: the whole bundle is tried again later.
"""

from __future__ import annotations

import base64
import enum
import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson
from elastic_transport import (
    NodeConfig,
    Serializer,
    Transport,
    TransportError,
)

BULK_PATH = "/_bulk?filter_path=errors,items.*._id,items.*.status,items.*.error"
DEFAULT_PORT = 9200
RETRY_ERROR_TYPES = {"es_rejected_execution_exception", "rejected_execution_exception"}
BLOCK_ERROR_TYPES = {"cluster_block_exception"}

# elastic-transport logs every request (INFO) and retries with tracebacks
# (WARNING); the shipper says what matters itself, once per change of state.
logging.getLogger("elastic_transport").setLevel(logging.ERROR)


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"


class Unavailable(Exception):
    """The request got no usable answer: keep everything, wait, try again."""


@dataclass
class Answer:
    status: int
    body: bytes


@dataclass
class ItemResult:
    outcome: Outcome
    status: int
    error: Any = None  # the engine's error object for this document

    def summary(self) -> str:
        return describe_error(self.status, self.error)


def describe_error(status: int, error: Any) -> str:
    if isinstance(error, dict):
        text = f"{status} {error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict) and cause.get("reason"):
            text += f" ({cause.get('type', '')}: {cause['reason']})"
        return text
    if error:
        return f"{status} {str(error)[:300]}"
    return f"HTTP {status}"


def classify(status: int, error: Any) -> Outcome:
    """What one document's bulk item status and error mean for its message."""
    if 200 <= status < 300 or status == 409:
        return Outcome.DONE
    etype = error.get("type") if isinstance(error, dict) else None
    if status == 429 or status >= 500 or etype in RETRY_ERROR_TYPES:
        return Outcome.RETRY
    if etype in BLOCK_ERROR_TYPES:
        return Outcome.RETRY
    if status in (400, 404, 413):
        return Outcome.FAILED
    return Outcome.RETRY


class BadAnswer(Exception):
    """A bulk answer that cannot be trusted (never taken as success)."""


def read_items(raw: bytes, ids: list[str]) -> list[ItemResult]:
    """One result per document sent, in order; BadAnswer if the answer does not match."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadAnswer(f"the bulk answer is not JSON ({e}): {raw[:200]!r}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
        raise BadAnswer(f"not a bulk answer: {raw[:200]!r}")
    items = answer["items"]
    if len(items) != len(ids):
        raise BadAnswer(f"the bulk answer has {len(items)} items for {len(ids)} documents")
    results = []
    for n, (item, expected) in enumerate(zip(items, ids, strict=True)):
        if not isinstance(item, dict) or len(item) != 1:
            raise BadAnswer(f"bulk answer item {n} is malformed: {str(item)[:200]}")
        (result,) = item.values()
        if not isinstance(result, dict):
            raise BadAnswer(f"bulk answer item {n} is malformed: {str(item)[:200]}")
        status = result.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise BadAnswer(f"bulk answer item {n} has no status: {str(item)[:200]}")
        if "_id" in result and result["_id"] != expected:
            raise BadAnswer(
                f"bulk answer item {n} is for _id {result['_id']!r}, expected {expected!r}"
            )
        error = result.get("error")
        results.append(ItemResult(classify(status, error), status, error))
    return results


def error_summary(status: int, raw: bytes) -> str:
    """One line for a whole-request error answer."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw[:200].decode(errors="replace").strip()
        return f"HTTP {status}" + (f": {text}" if text else "")
    error = answer.get("error") if isinstance(answer, dict) else None
    return describe_error(status, error if error is not None else answer)


def error_json(raw: bytes) -> Any:
    """A whole-request error answer as JSON when it is JSON, else its text."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:2000].decode(errors="replace")


# -- HTTP ---------------------------------------------------------------------------------


class _Raw(Serializer):
    """Bodies pass as bytes both ways; the shipper parses answers itself."""

    mimetype = "application/json"

    def loads(self, data: bytes) -> bytes:
        return data

    def dumps(self, data: Any) -> bytes:
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data) if not isinstance(data, bytes) else data
        raise TypeError("the shipper sends bytes only")


_RAW = _Raw()
_SERIALIZERS = {m: _RAW for m in (
    "application/json", "application/x-ndjson", "application/vnd.elasticsearch+json",
    "application/*", "text/*",
)}


@dataclass
class Auth:
    user: str | None = None
    password: str | None = None
    api_key: str | None = None

    def headers(self) -> dict[str, str]:
        if self.api_key:
            key = self.api_key.strip()
            if ":" in key:  # id:key as printed by the create-API-key call
                key = base64.b64encode(key.encode()).decode()
            return {"authorization": f"ApiKey {key}"}
        if self.user is not None:
            token = base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()
            return {"authorization": f"Basic {token}"}
        return {}


def node_config(url: str, *, auth: Auth, ca_file: str | None, verify: bool, timeout: float,
                compress: bool) -> NodeConfig:
    """A NodeConfig for one ``http(s)://host[:port][/prefix]`` URL (no credentials in it)."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"--es-url {url!r}: only http and https are supported")
    if parts.username or parts.password:
        raise ValueError(
            f"--es-url {parts.hostname}: no credentials in URLs (they show in `ps`); use "
            "PIPERS_ES_USER/PIPERS_ES_PASSWORD, PIPERS_ES_API_KEY or the *-file options"
        )
    if not parts.hostname:
        raise ValueError(f"--es-url {url!r}: no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"--es-url {url!r}: bad port") from None
    tls: dict[str, Any] = {}
    if parts.scheme == "https":
        tls = {"verify_certs": verify, "ssl_show_warn": False}
        if ca_file and verify:
            tls["ca_certs"] = ca_file
        if not verify:
            tls["ssl_assert_hostname"] = False
    return NodeConfig(
        parts.scheme, parts.hostname, port, path_prefix=parts.path.rstrip("/"),
        headers=auth.headers(), request_timeout=timeout, http_compress=compress, **tls,
    )


def describe_failure(e: TransportError) -> str:
    """One line for a request that got no answer (refused, reset, timed out, TLS...)."""
    cause = e.__cause__
    text = str(cause) if cause is not None else str(e.message)
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>: ", "", text)  # urllib3's object reprs
    return f"{type(e).__name__}: {text}"[:500]


class BulkClient:
    """`_bulk` over an elastic-transport node pool."""

    def __init__(self, urls: list[str], *, auth: Auth | None = None, ca_file: str | None = None,
                 verify: bool = True, timeout: float = 60.0, compress: bool = False):
        if not urls:
            raise ValueError("at least one --es-url is needed")
        configs = [
            node_config(u, auth=auth or Auth(), ca_file=ca_file, verify=verify,
                        timeout=timeout, compress=compress)
            for u in urls
        ]
        self.urls = [f"{c.scheme}://{c.host}:{c.port}{c.path_prefix}" for c in configs]
        self.transport = Transport(
            configs,
            serializers=_SERIALIZERS,
            max_retries=len(configs) - 1,  # another node at once; waits are the shipper's
            retry_on_status=(),
            retry_on_timeout=len(configs) > 1,
            meta_header=False,
        )

    def bulk(self, body: bytes) -> Answer:
        """POST the NDJSON body; Unavailable when no node gave an answer."""
        try:
            response = self.transport.perform_request(
                "POST", BULK_PATH, body=body,
                headers={"content-type": "application/x-ndjson", "accept": "application/json"},
            )
        except TransportError as e:
            raise Unavailable(describe_failure(e)) from None
        raw = response.body if isinstance(response.body, bytes) else b""
        return Answer(response.meta.status, raw)

    def close(self) -> None:
        self.transport.close()
