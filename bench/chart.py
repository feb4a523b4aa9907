"""The figures of `make bench` as one PNG chart, beside the JSON they come from.

    python -m bench.chart bench/results.json bench/results.png

Top panel: every figure that has a baseline, as a bar of its ratio against that
baseline (log scale), with its target drawn as a black tick. Bottom panel: every
figure that has a limit instead (memory, start-up, latency, idle CPU), as a bar
of its value over the limit. Green: target met; red: missed; grey: reference
only (e.g. the root-filesystem figures) or no verdict. A figure without a value
("missing: ...") is listed with its reason instead of a bar.

Exits 2 with one line on stderr when the results file is missing or not a
results document.
"""

from __future__ import annotations

import json
import math
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

MET, MISSED, NEUTRAL, TARGET = "#2e8b3d", "#c8102e", "#9a9a9a", "#111111"

_RATIO = re.compile(r"^\s*(>=|>|<=|<)\s*([0-9.]+)\s*x\s*$")
_LIMIT = re.compile(r"^\s*(>=|>|<=|<)\s*([0-9.eE+-]+)\s*(.*?)\s*$")


class ResultsError(ValueError):
    """The results file cannot be charted (missing, not JSON, no figures)."""


@dataclass
class Row:
    label: str
    bar: float | None  # ratio (top) or value / limit (bottom)
    target: float
    ok: bool | None
    text: str  # printed at the end of the bar


def load(path: str | Path) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file (run `make bench` first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a JSON results file ({e})") from None
    figures = doc.get("figures") if isinstance(doc, dict) else None
    if not isinstance(figures, list) or not all(isinstance(f, dict) for f in figures):
        raise ResultsError(f"{path}: no 'figures' list (not written by bench.run)")
    return doc


def _wrap(text: str, width: int = 64) -> str:
    return textwrap.fill(" ".join(text.split()), width)


def _num(x) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def rows(figures: list[dict]) -> tuple[list[Row], list[Row]]:
    """Split the figures into ratio rows (against a baseline) and limit rows."""
    ratios, limits = [], []
    for f in figures:
        name, target = str(f.get("name", "?")), str(f.get("target") or "")
        value, ok = _num(f.get("value")), f.get("ok")
        ok = ok if isinstance(ok, bool) else None
        if m := _RATIO.match(target):
            base = _num(f.get("baseline"))
            ratio = _num(f.get("ratio"))
            if ratio is None and value is not None and base:
                ratio = value / base
            label = _wrap(name) + (f"\n{_wrap('vs ' + str(f['baseline_name']))}"
                                   if f.get("baseline_name") else "")
            if ratio is None or ratio <= 0:
                why = str(f.get("note") or "no value")[:70]
                ratios.append(Row(label, None, float(m[2]), None, why))
            else:
                what = (f"{_fmt(value)} vs {_fmt(base)} {f.get('unit', '')}; "
                        if value and base else "")
                ratios.append(Row(label, ratio, float(m[2]), ok,
                                  f"{ratio:.2f}x  ({what}target {m[1]} {m[2]}x)"))
        elif (m := _LIMIT.match(target)) and float(m[2]) > 0:
            limit, unit = float(m[2]), m[3]
            if value is None:
                why = str(f.get("note") or "no value")[:70]
                limits.append(Row(_wrap(name), None, 1.0, None, why))
            else:
                limits.append(Row(_wrap(name), value / limit, 1.0, ok,
                                  f"{_fmt(value)} {unit}  (target {m[1]} {m[2]} {unit})"))
    return ratios, limits


def _colour(ok: bool | None) -> str:
    return {True: MET, False: MISSED}.get(ok, NEUTRAL)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _panel(ax, rows_: list[Row], *, xlabel: str, title: str) -> None:
    shown = [r.bar for r in rows_ if r.bar is not None and r.bar > 0]
    lo = min([*shown, *(r.target for r in rows_)]) / 2
    hi = max([*shown, *(r.target for r in rows_)])
    lo = min(lo, 0.25)
    ys = list(range(len(rows_)))
    # log scale: a bar starts at the left edge; a zero value (e.g. 0 % CPU) is drawn as lo
    bars = [max(r.bar, lo * 1.01) if r.bar is not None else lo for r in rows_]
    ax.set_xscale("log")
    ax.barh(ys, [b - lo for b in bars], left=lo, color=[_colour(r.ok) for r in rows_],
            height=0.6, zorder=2)
    ax.scatter([r.target for r in rows_], ys, marker="|", s=500, linewidths=2.5,
               color=TARGET, zorder=3)
    ax.axvline(1.0, color="#555555", linewidth=0.8, linestyle="--", zorder=1)
    ax.set_xlim(lo, hi * 12)
    ticks = [t for t in (0.001, 0.01, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 50, 100)
             if lo <= t <= hi * 12]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    for y, r, b in zip(ys, rows_, bars, strict=True):
        x = max(b, r.target) * 1.12
        ax.text(x, y, r.text, va="center", fontsize=8,
                color="#222222" if r.bar is not None else MISSED)
    ax.set_yticks(ys, [r.label for r in rows_], fontsize=8)
    ax.set_ylim(len(rows_) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", color="#dddddd", zorder=0)


def render(doc: dict, out: str | Path) -> Path:
    """Write the chart of a results document (as bench.run writes it) to `out` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ratios, limits = rows(doc.get("figures") or [])
    if not ratios and not limits:
        raise ResultsError("no figure with a target to chart")
    panels = [p for p in ((ratios, "ratio against the baseline measured in the same run "
                           "(log scale; higher is better)", "Figures against their baselines"),
                          (limits, "value / limit (log scale; '<' targets: lower is better)",
                           "Figures against their limits")) if p[0]]
    heights = [max(2.0, 0.55 * len(p[0]) + 1.2) for p in panels]
    fig = Figure(figsize=(12, sum(heights) + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (rs, xlabel, title) in zip(axes, panels, strict=True):
        _panel(ax, rs, xlabel=xlabel, title=title)
    stamp = " ".join(str(x) for x in (doc.get("when", ""), doc.get("git", ""),
                                      "quick" if doc.get("quick") else "",
                                      doc.get("filesystem", "")) if x)
    fig.suptitle(f"Pipers `make bench`  {stamp}", fontsize=11)
    fig.legend(handles=[Patch(color=MET, label="target met"),
                        Patch(color=MISSED, label="target missed"),
                        Patch(color=NEUTRAL, label="reference only / no verdict"),
                        Line2D([], [], color=TARGET, marker="|", linestyle="", markersize=12,
                               markeredgewidth=2.5, label="target")],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0].startswith("-"):
        print("usage: python -m bench.chart RESULTS.json OUT.png", file=sys.stderr)
        return 2
    try:
        out = render(load(argv[0]), argv[1])
    except (ResultsError, OSError) as e:
        print(f"bench.chart: error: {e}", file=sys.stderr)
        return 2
    print(f"chart: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
