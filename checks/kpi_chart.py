"""The KPI section of the HTML report: inline SVG bar charts and the KPI tables.

``kpi_section_html(engine, run_id)`` returns one self-contained ``<section>`` (its own scoped
CSS, inline SVG, no script, no external asset, every value escaped) to drop into a page:

- bars: cycle time p50/p95 from capture to allocated, invoiced and paid (this run);
- bars: quarantine rate by check (this run);
- a table of this run's KPIs, and the stored daily table of the last days up to the run's day.

Data accuracy and missed orders need the sources (their mappings, their listings): pass the
run's ``kpis`` (``warehouse.kpis.run_kpis`` with readers and audit) to show this run's figures;
without it they are taken from the daily table (``kpi_daily``) and labelled as such.
Sizes are whole pixels computed with Decimal: no float anywhere near the figures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Engine

from warehouse import kpis as kpi_mod
from warehouse.kpis import format_rate as _pct
from warehouse.kpis import format_seconds as _duration

STAGES = ("allocated", "invoiced", "paid")
DAYS = 7
BAR_W = 360  # px of the longest bar
ROW_H = 22
LABEL_W = 170
P50, P95, QUAR = "#4c78a8", "#9ecae9", "#e45756"

_CSS = """
.ohk{margin-top:2em}.ohk h2{font-size:1.15em}.ohk h3{font-size:1em;margin:1.2em 0 .3em}
.ohk .charts{display:flex;flex-wrap:wrap;gap:2em}.ohk figure{margin:0}
.ohk figcaption{font-weight:600;margin-bottom:.3em}.ohk svg text{font:12px system-ui,sans-serif}
.ohk table{border-collapse:collapse;margin:.5em 0}
.ohk th,.ohk td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.ohk th{background:#f4f4f4}.ohk td.num{text-align:right;font-variant-numeric:tabular-nums}
.ohk .note{color:#666}.ohk .bad{color:#b00020;font-weight:600}
"""


def kpi_section_html(engine: Engine, run_id: str, kpis: Mapping[str, Any] | None = None,
                     days: int = DAYS) -> str:
    """The KPI section of run ``run_id`` as an HTML fragment."""
    k = kpis if kpis is not None else kpi_mod.run_kpis(engine, run_id)
    started = k.get("started_at")
    last = started.astimezone(UTC).date() if isinstance(started, datetime) else datetime.now(UTC).date()
    daily = kpi_mod.daily_kpis(engine, last - timedelta(days=days - 1), last)
    parts = [
        '<section class="ohk" id="kpis">',
        f"<style>{_CSS}</style>",
        "<h2>KPIs</h2>",
        '<div class="charts">',
        _figure("Cycle time from capture (this run)", _cycle_svg(k["cycle_time"])),
        _figure("Quarantine rate by check (this run; the longest bar is the highest rate)",
                _quarantine_svg(k["quarantine"])),
        "</div>",
        "<h3>This run</h3>",
        _run_table(k, daily),
        f"<h3>Daily, {_e(last - timedelta(days=days - 1))} to {_e(last)} (all sources)</h3>",
        _daily_table(daily),
        "</section>",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ charts


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{_e(caption)}</figcaption>{svg}</figure>"


def _cycle_svg(cycle: Mapping[str, Mapping[str, Any]]) -> str:
    """Two bars per stage (p50 dark, p95 light), one linear scale, each labelled."""
    values = [v for s in STAGES for v in (cycle.get(s, {}).get("p50_s"), cycle.get(s, {}).get("p95_s"))
              if v is not None]
    if not values:
        return '<p class="note">No order reached these stages in this run.</p>'
    top = max(Decimal(str(v)) for v in values)
    rows: list[str] = []
    y = 4
    for stage in STAGES:
        ct = cycle.get(stage) or {}
        rows.append(f'<text x="0" y="{y + 15}">to {_e(stage)} ({ct.get("count", 0):,})</text>')
        for key, colour in (("p50_s", P50), ("p95_s", P95)):
            rows.append(_bar(LABEL_W, y, ct.get(key), top, colour,
                             f"{key[:3]} {_duration(ct.get(key))}"))
            y += ROW_H
        y += 6
    legend = (f'<rect x="{LABEL_W}" y="{y + 2}" width="10" height="10" fill="{P50}"/>'
              f'<text x="{LABEL_W + 14}" y="{y + 11}">p50</text>'
              f'<rect x="{LABEL_W + 50}" y="{y + 2}" width="10" height="10" fill="{P95}"/>'
              f'<text x="{LABEL_W + 64}" y="{y + 11}">p95</text>')
    return _svg(y + 18, "".join(rows) + legend, "cycle time p50 and p95 per stage")


def _quarantine_svg(q: Mapping[str, Any]) -> str:
    checks = q.get("by_check") or {}
    if not checks:
        gated = q.get("gated") or 0
        return (f'<p class="note">No order quarantined ({gated} gated).</p>' if gated else
                '<p class="note">No order was gated in this run.</p>')
    top = max(Decimal(str(v["rate"])) for v in checks.values())
    rows, y = [], 4
    for check, v in checks.items():
        rows.append(f'<text x="0" y="{y + 15}">{_e(check)}</text>')
        rows.append(_bar(LABEL_W, y, v["rate"], top, QUAR,
                         f"{_pct(v['rate'])} ({v['quarantined']:,} of {q['gated']:,})"))
        y += ROW_H
    return _svg(y + 4, "".join(rows), "quarantine rate by check")


def _bar(x: int, y: int, value: Any, top: Decimal, colour: str, label: str) -> str:
    if value is None:
        return f'<text x="{x}" y="{y + 15}" fill="#666">-</text>'
    width = _px(Decimal(str(value)), top)
    return (f'<rect x="{x}" y="{y + 3}" width="{width}" height="{ROW_H - 6}" fill="{colour}">'
            f"<title>{_e(label)}</title></rect>"
            f'<text x="{x + width + 4}" y="{y + 15}">{_e(label)}</text>')


def _px(value: Decimal, top: Decimal) -> int:
    """Bar length in whole pixels: at least 1 for a non-zero value, so it stays visible."""
    if top <= 0 or value <= 0:
        return 0
    return max(1, int((value * BAR_W / top).to_integral_value(ROUND_HALF_UP)))


def _svg(height: int, body: str, label: str) -> str:
    width = LABEL_W + BAR_W + 150
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">{body}</svg>')


# ------------------------------------------------------------------------------------ tables


def _run_table(k: Mapping[str, Any], daily: Sequence[Mapping[str, Any]]) -> str:
    rows: list[tuple[str, str, str]] = []
    for stage in STAGES:
        ct = k["cycle_time"].get(stage) or {}
        rows.append((f"Cycle time, capture to {stage} (p50 / p95)",
                     f"{_duration(ct.get('p50_s'))} / {_duration(ct.get('p95_s'))}",
                     f"{ct.get('count', 0):,} orders reached {stage} in this run"))
    a = k["automation"]
    rows.append(("Automation rate", _pct(a["rate"]),
                 f"{a['automated']:,} of {a['captured']:,} orders captured in this run went through "
                 "with no human touch"))
    q = k["quarantine"]
    rows.append(("Quarantine rate", _pct(q["rate"]), f"{q['quarantined']:,} of {q['gated']:,} gated"))
    for check, v in (q.get("by_check") or {}).items():
        rows.append((f"&nbsp;&nbsp;{_e(check)}", _pct(v["rate"]), f"{v['quarantined']:,} orders"))
    acc = k.get("accuracy")
    if acc is not None:
        rows.append(("Data accuracy", _pct(acc["rate"]),
                     f"{acc['accurate']:,} of {acc['orders']:,} orders: stored total = lines = source"))
    else:
        rows.append(_from_daily("Data accuracy", "accuracy_rate", daily, "accurate"))
    m = k.get("missed")
    if m:
        cls = "" if m.get("ok") else ' class="bad"'
        rows.append(("Missed orders", f"<span{cls}>{_e(m.get('missed'))}</span>",
                     f"{m.get('missed') or 0:,} of {m.get('source_count') or 0:,} orders at the sources "
                     f"({_pct(m.get('rate'))})"))
    else:
        rows.append(_from_daily("Missed orders", "missed_rate", daily, "missed"))
    body = "".join(f'<tr><td>{name}</td><td class="num">{value}</td><td>{_e(basis)}</td></tr>'
                   for name, value, basis in rows)
    return ("<table><thead><tr><th>KPI</th><th>Value</th><th>Basis</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _from_daily(name: str, metric: str, daily: Sequence[Mapping[str, Any]],
                what: str) -> tuple[str, str, str]:
    """The latest stored daily figure (all sources), when this run's own is not at hand."""
    found = [r for r in daily if r["source"] == kpi_mod.ALL and r["metric"] == metric]
    if not found:
        return (name, "-", "not measured")
    r = found[-1]
    return (name, _pct(r["value"]),
            f"{r['numerator']:,} {what} of {r['denominator']:,} (daily figure of {r['day']})")


def _daily_table(daily: Sequence[Mapping[str, Any]]) -> str:
    every = [r for r in daily if r["source"] == kpi_mod.ALL]
    if not every:
        return '<p class="note">No daily figures stored for these days.</p>'
    by_day: dict[date, dict[str, Any]] = {}
    for r in every:
        by_day.setdefault(r["day"], {})[r["metric"]] = r["value"]
    head = ("<tr><th>Day</th><th>Automation</th><th>Quarantine</th><th>Accuracy</th>"
            "<th>Missed</th>" + "".join(f"<th>p50 / p95 to {s}</th>" for s in STAGES) + "</tr>")
    body = []
    for day, m in sorted(by_day.items()):
        cells = [_pct(m.get(x)) for x in ("automation_rate", "quarantine_rate", "accuracy_rate",
                                          "missed_rate")]
        cells += [f"{_duration(m.get(f'cycle_p50_s.{s}'))} / {_duration(m.get(f'cycle_p95_s.{s}'))}"
                  for s in STAGES]
        body.append(f"<tr><td>{_e(day)}</td>"
                    + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


# ----------------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)
