"""bench/chart.py: the PNG chart `make bench` writes beside bench/results.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import chart
from tests.helpers import ROOT

RESULTS = {
    "when": "2026-11-23T18:00:00+0000",
    "git": "abc1234",
    "quick": True,
    "figures": [
        {"name": "pass hop, --durability none", "value": 20000.0, "unit": "msg/s",
         "baseline_name": "bare Python hop loop", "baseline": 10000.0, "target": ">= 0.8x",
         "ratio": 2.0, "ok": True},
        {"name": "pipers ship vs rsyslog omelasticsearch", "value": 9000.0, "unit": "docs/s",
         "baseline_name": "rsyslog", "baseline": 12000.0, "target": ">= 1.0x",
         "ratio": 0.75, "ok": False},
        {"name": "shipper vs helpers.bulk", "value": None, "unit": "docs/s",
         "baseline_name": "helpers.bulk", "baseline": None, "target": ">= 1.0x",
         "ratio": None, "ok": None, "note": "missing: no search node"},
        {"name": "resident memory (peak)", "value": 40.0, "unit": "MB", "target": "< 150 MB",
         "ok": True},
        {"name": "idle CPU of a daemon", "value": 0.0, "unit": "%", "target": "< 1 %",
         "ok": True},
        {"name": "3 pass hops in a row", "value": 9000.0, "unit": "msg/s", "target": "none"},
    ],
}


def run_chart(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.chart", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_rows_split_ratio_and_limit_figures_and_keep_the_verdict():
    ratios, limits = chart.rows(RESULTS["figures"])
    assert [r.ok for r in ratios] == [True, False, None]
    assert [r.bar for r in ratios] == [2.0, 0.75, None]
    assert [r.target for r in ratios] == [0.8, 1.0, 1.0]
    assert "missing: no search node" in ratios[2].text
    assert [r.bar for r in limits] == [pytest.approx(40 / 150), 0.0]
    assert len(ratios) + len(limits) == 5  # the figure without a target is not drawn


def test_chart_from_results_is_a_png(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    out = tmp_path / "sub" / "results.png"
    done = run_chart(str(results), str(out))
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # bars, labels and text, not an empty canvas


@pytest.mark.parametrize("content", [None, "{not json", '{"figures": 3}', "[]", "\xff\xfe"])
def test_missing_or_invalid_results_give_one_line_and_a_nonzero_exit(tmp_path, content):
    results = tmp_path / "results.json"
    if content is not None:
        results.write_bytes(content.encode("latin-1"))
    out = tmp_path / "results.png"
    done = run_chart(str(results), str(out))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.chart: error:"), done.stderr
    assert not out.exists()


def test_usage_error_without_arguments():
    done = run_chart()
    assert done.returncode == 2 and done.stderr.startswith("usage:")
