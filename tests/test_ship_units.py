"""The shipper's parts without a cluster: back-off, index names, bulk lines, answers, flags."""

from __future__ import annotations

import base64
import os
import subprocess

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipers.backoff import Backoff
from pipers.ship.bulk import (
    Auth,
    BadAnswer,
    BulkClient,
    Outcome,
    classify,
    node_config,
    read_items,
)
from pipers.ship.bundle import MAX_ID_BYTES, body, doc_id, make_item, source_line, take
from pipers.ship.index import IndexNamer, TemplateError, parse_time
from queues import BadMessage, Queue, Reason
from tests.helpers import PIPERS, ROOT

# -- back-off ---------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets():
    b = Backoff(0.5, 8.0, rng=lambda: 1.0)
    assert [b.fail(0.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = Backoff(0.5, 8.0, rng=lambda: 0.0)
    assert [low.fail(0.0) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    b.reset()
    assert b.fail(100.0) == 0.5 and b.remaining(100.2) == pytest.approx(0.3)
    assert b.remaining(101.0) == 0.0


@given(st.lists(st.floats(0, 1), min_size=1, max_size=80))
def test_backoff_never_exceeds_the_cap_nor_drops_below_half_the_delay(draws):
    it = iter(draws)
    b = Backoff(0.1, 30.0, rng=lambda: next(it))
    for n in range(len(draws)):
        wait = b.fail(0.0)
        assert b.delay(n) / 2 <= wait <= 30.0


# -- index names -------------------------------------------------------------------------

DAY = 1_700_000_000.0  # 2023-11-14 UTC


@pytest.mark.parametrize("message, expected", [
    ({"type": "Probe"}, "monitoring-probe-2023.11.14"),
    ({"type": 7}, "monitoring-7-2023.11.14"),
    ({}, "fallback"),  # field missing
    ({"type": {"a": 1}}, "fallback"),  # not a scalar
    ({"type": True}, "fallback"),
    ({"type": None}, "fallback"),
])
def test_index_from_message_fields_and_date(message, expected):
    namer = IndexNamer("monitoring-{type}-{date:%Y.%m.%d}", "Fallback")
    assert namer(message, DAY) == expected


def test_index_from_nested_field_and_time_field():
    namer = IndexNamer("m-{meta.kind}-{date:%Y.%m}", "d", time_field="when")
    assert namer({"meta": {"kind": "X"}, "when": "2021-03-04T05:06:07+00:00"}, DAY) == "m-x-2021.03"
    assert namer({"meta": {"kind": "X"}, "when": 1_600_000_000_000}, DAY) == "m-x-2020.09"
    assert namer({"meta": {"kind": "X"}, "when": 1_600_000_000}, DAY) == "m-x-2020.09"
    assert namer({"meta": {"kind": "X"}, "when": "not a time"}, DAY) == "m-x-2023.11"
    assert namer({"meta": {"kind": "X"}}, DAY) == "m-x-2023.11"  # message name time


def test_monitoring_type_as_in_dirac():
    namer = IndexNamer("lhcb-{monitoringType}-{date:%Y-%m-%d}", "lhcb-default")
    assert namer({"monitoringType": "WMSHistory"}, DAY) == "lhcb-wmshistory-2023-11-14"


def test_no_template_means_the_default_index():
    assert IndexNamer(None, "Pipers")({"type": "x"}, DAY) == "pipers"


@pytest.mark.parametrize("template", ["m-{", "m-{0}", "m-{}", "m-{a[b]}", "m-{a!r}"])
def test_bad_templates_are_refused_at_start(template):
    with pytest.raises(TemplateError):
        IndexNamer(template, "d")


def test_parse_time():
    assert parse_time("1970-01-01T00:00:10Z") == 10.0
    assert parse_time("1970-01-01T00:00:10") == 10.0  # naive is UTC
    assert parse_time(True) is None and parse_time([1]) is None


# -- bulk lines -------------------------------------------------------------------------


def test_doc_id_is_the_message_id_or_its_hash_when_too_long():
    assert doc_id("1700000000000000.12_3.host") == "1700000000000000.12_3.host"
    long = "x" * (MAX_ID_BYTES + 1)
    assert doc_id(long).startswith("sha256-") and len(doc_id(long).encode()) <= MAX_ID_BYTES
    assert doc_id(long) == doc_id(long) != doc_id(long + "y")
    assert doc_id("é" * 256) == "é" * 256  # 512 bytes in UTF-8: allowed as it is
    assert doc_id("é" * 257).startswith("sha256-")  # 514 bytes: counted in bytes, not chars


def test_source_line_keeps_the_file_bytes_and_rejoins_pretty_json():
    raw = b'{"b": 1,  "a": "x"}\n'
    line, message = source_line(raw)
    assert line == b'{"b": 1,  "a": "x"}\n' and message == {"b": 1, "a": "x"}
    pretty = orjson.dumps({"a": 1, "b": [1, 2]}, option=orjson.OPT_INDENT_2)
    line, _ = source_line(pretty)
    assert line.count(b"\n") == 1 and orjson.loads(line) == {"a": 1, "b": [1, 2]}


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", Reason.INVALID_JSON),
    (b"[1, 2]", Reason.INVALID),
    (b'"text"', Reason.INVALID),
    (b"\xff\xfe", Reason.INVALID_JSON),
])
def test_bad_messages_are_refused_before_sending(raw, reason):
    with pytest.raises(BadMessage) as e:
        source_line(raw)
    assert e.value.reason == reason


def test_items_make_ndjson_with_create_actions(tmp_path):
    q = Queue(tmp_path / "q")
    names = q.put_many([b'{"type":"a","i":1}', b'{\n "type": "b",\n "i": 2\n}'])
    claims = q.claim(10)
    namer = IndexNamer("t-{type}", "d")
    items = [make_item(c, q.read(c), namer) for c in claims]
    lines = body(items).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
    actions = [orjson.loads(lines[0]), orjson.loads(lines[2])]
    assert actions == [{"create": {"_index": "t-a", "_id": names[0]}},
                       {"create": {"_index": "t-b", "_id": names[1]}}]
    assert orjson.loads(lines[3]) == {"type": "b", "i": 2}


def test_take_respects_count_and_bytes_but_always_takes_one(tmp_path):
    q = Queue(tmp_path / "q")
    q.put_many([orjson.dumps({"pad": "x" * 100})] * 10)
    namer = IndexNamer(None, "d")
    items = [make_item(c, q.read(c), namer) for c in q.claim(10)]
    size = items[0].size
    assert len(take(items, 4, 10**9)) == 4
    assert len(take(items, 100, size * 3)) == 3
    assert len(take(items, 100, size * 3 - 1)) == 2
    assert len(take(items, 100, 1)) == 1


# -- reading answers --------------------------------------------------------------------


@pytest.mark.parametrize("status, error, outcome", [
    (201, None, Outcome.DONE),
    (200, None, Outcome.DONE),
    (409, {"type": "version_conflict_engine_exception"}, Outcome.DONE),
    (400, {"type": "mapper_parsing_exception"}, Outcome.FAILED),
    (400, {"type": "index_closed_exception"}, Outcome.FAILED),
    (400, {"type": "invalid_index_name_exception"}, Outcome.FAILED),
    (404, {"type": "index_not_found_exception"}, Outcome.FAILED),
    (413, None, Outcome.FAILED),
    (429, {"type": "es_rejected_execution_exception"}, Outcome.RETRY),
    (400, {"type": "es_rejected_execution_exception"}, Outcome.RETRY),
    (500, {"type": "rejected_execution_exception"}, Outcome.RETRY),
    (503, {"type": "unavailable_shards_exception"}, Outcome.RETRY),
    (403, {"type": "cluster_block_exception"}, Outcome.RETRY),
    (429, {"type": "cluster_block_exception"}, Outcome.RETRY),
    (403, {"type": "security_exception"}, Outcome.RETRY),
])
def test_classify(status, error, outcome):
    assert classify(status, error) is outcome


def _answer(*items) -> bytes:
    return orjson.dumps({"errors": True, "items": [{"create": i} for i in items]})


def test_read_items_one_result_per_document():
    raw = _answer({"_id": "a", "status": 201},
                  {"_id": "b", "status": 400, "error": {"type": "mapper_parsing_exception",
                                                        "reason": "failed to parse"}})
    a, b = read_items(raw, ["a", "b"])
    assert a.outcome is Outcome.DONE and b.outcome is Outcome.FAILED
    assert "mapper_parsing_exception" in b.summary()


@pytest.mark.parametrize("raw", [
    b"",
    b"<html>bad gateway</html>",
    b'{"took": 1}',
    b'{"items": {}}',
    _answer({"_id": "a", "status": 201}),  # one item for two documents
    _answer({"_id": "a", "status": 201}, {"_id": "b", "status": 201}, {"_id": "c", "status": 201}),
    _answer({"_id": "a", "status": 201}, {"_id": "x", "status": 201}),  # not our document
    _answer({"_id": "a", "status": 201}, {"_id": "b"}),  # no status
    _answer({"_id": "a", "status": 201}, {"_id": "b", "status": "201"}),
    orjson.dumps({"items": [{"create": {"_id": "a", "status": 201}}, []]}),
])
def test_an_answer_that_does_not_match_is_never_success(raw):
    with pytest.raises(BadAnswer):
        read_items(raw, ["a", "b"])


# -- connection settings ------------------------------------------------------------------


def test_auth_headers():
    assert Auth().headers() == {}
    basic = Auth(user="u", password="p:w").headers()["authorization"]
    assert base64.b64decode(basic.split()[1]) == b"u:p:w"
    assert Auth(api_key="id:key").headers() == {
        "authorization": "ApiKey " + base64.b64encode(b"id:key").decode()}
    assert Auth(api_key="ZW5jb2RlZA==").headers() == {"authorization": "ApiKey ZW5jb2RlZA=="}


def test_node_configs_from_urls():
    c = node_config("https://es.example:9243/prefix/", auth=Auth(), ca_file="/ca.pem",
                    verify=True, timeout=5, compress=False)
    assert (c.scheme, c.host, c.port, c.path_prefix, c.ca_certs, c.verify_certs) == (
        "https", "es.example", 9243, "/prefix", "/ca.pem", True)
    c = node_config("127.0.0.1", auth=Auth(), ca_file=None, verify=True, timeout=5,
                    compress=False)
    assert (c.scheme, c.port) == ("http", 9200)
    with pytest.raises(ValueError, match="no credentials in URLs"):
        node_config("http://u:secret@h:9200", auth=Auth(), ca_file=None, verify=True,
                    timeout=5, compress=False)
    with pytest.raises(ValueError):
        BulkClient(["ftp://h"])


# -- the command line ---------------------------------------------------------------------


def _ship(tmp_path, *args, env=None):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full.pop("PIPERS_ES_URL", None)
    return subprocess.run([*PIPERS, "ship", "--queue-in-dir", str(tmp_path / "q"), *args],
                          capture_output=True, timeout=60, env=full, cwd=ROOT)


@pytest.mark.parametrize("args, env, says", [
    (["--es-url", "http://u:pw@127.0.0.1:1"], {}, "no credentials in URLs"),
    (["--index-template", "m-{"], {}, "index template"),
    (["--bundle-bytes", "lots"], {}, "is not a size"),
    (["--es-password-file", "/nonexistent/pw"], {"PIPERS_ES_USER": "u"}, "cannot read"),
    ([], {"PIPERS_ES_PASSWORD": "pw"}, "a password needs a user"),
    (["--es-user", "u"], {"PIPERS_ES_API_KEY": "k"}, "not both"),
])
def test_bad_settings_are_one_line_usage_errors(tmp_path, args, env, says):
    r = _ship(tmp_path, *args, env=env)
    assert r.returncode == 2, r.stderr
    err = r.stderr.decode()
    assert says in err and err.startswith("pipers ship: error:") and err.count("\n") == 1


# -- the sample configuration ----------------------------------------------------------

SAMPLE_CONFIG = ROOT / "etc" / "pipers.toml"


def test_every_section_of_the_sample_config_names_real_flags():
    import tomllib

    sections = [k for k, v in tomllib.loads(SAMPLE_CONFIG.read_text()).items()
                if isinstance(v, dict)]
    assert {"enrich", "ship"} <= set(sections)
    for command in sections:  # an unknown key in a section is a usage error (exit 2)
        r = subprocess.run([*PIPERS, command, "--config", str(SAMPLE_CONFIG), "--help"],
                           capture_output=True, timeout=60, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, (command, r.stderr)


def test_the_sample_ship_config_loads_its_values(tmp_path):
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "ca.pem").write_text("")
    import tomllib

    urls = tomllib.loads(SAMPLE_CONFIG.read_text())["ship"]["es-url"]
    r = _ship(tmp_path, "--config", str(SAMPLE_CONFIG), "--es-user", "pipers",
              "--es-password-file", str(tmp_path / "pw"), "--ca-file", str(tmp_path / "ca.pem"),
              "--log-file", str(tmp_path / "ship.log"), "--once")
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "ship.log").read_text()
    assert urls and f"shipping to {', '.join(urls)}" in log
