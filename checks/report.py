"""The failed-check report: one self-contained HTML page per gate run, for ops.

What it shows, top to bottom: a banner per source whose share of the batch the threshold held
(with the numbers), the check results, the quarantined orders with each failing check's reason
and value, and the warnings: orders that passed with a warn-severity flag.

No external assets (inline CSS), every value escaped, written atomically (a reader never sees
half a page). ``quarantine_table``, ``warning_table`` and ``held_table`` give the same rows as
plain dicts for the CLI and Prefect artifacts.
"""

from __future__ import annotations

import html
import os
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, func, select

from warehouse.schema import (
    check_results,
    check_warnings,
    customers,
    order_events,
    orders,
    quarantine,
    runs,
)


def quarantine_table(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """One JSON-safe row per (order, failing check) quarantined by ``run_id``, ordered by order."""
    customer = func.coalesce(customers.c.code, orders.c.customer_code, orders.c.customer_email)
    q = (
        select(
            orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
            customer.label("customer"), orders.c.total, orders.c.currency, orders.c.status,
            quarantine.c.check_id, quarantine.c.severity, quarantine.c.reason,
            quarantine.c.value, quarantine.c.status.label("quarantine_status"),
        )
        .join(orders, orders.c.id == quarantine.c.order_id)
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
        .where(quarantine.c.run_id == run_id)
        .order_by(orders.c.source, orders.c.external_id, quarantine.c.check_id)
    )
    with engine.connect() as conn:
        return [
            {
                "order_id": int(r.id),
                "source": r.source,
                "external_id": r.external_id,
                "order_no": r.order_no,
                "customer": r.customer,
                "total": _money(r.total),
                "currency": r.currency,
                "order_status": r.status,
                "check": r.check_id,
                "severity": r.severity,
                "reason": r.reason,
                "value": r.value,
                "status": r.quarantine_status,
            }
            for r in conn.execute(q)
        ]


def warning_table(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """One JSON-safe row per (order, warn check) flagged by ``run_id``, ordered by order."""
    customer = func.coalesce(customers.c.code, orders.c.customer_code, orders.c.customer_email)
    q = (
        select(
            orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
            customer.label("customer"), orders.c.total, orders.c.currency, orders.c.status,
            check_warnings.c.check_id, check_warnings.c.reason, check_warnings.c.value,
        )
        .join(orders, orders.c.id == check_warnings.c.order_id)
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
        .where(check_warnings.c.run_id == run_id)
        .order_by(orders.c.source, orders.c.external_id, check_warnings.c.check_id)
    )
    with engine.connect() as conn:
        return [
            {
                "order_id": int(r.id),
                "source": r.source,
                "external_id": r.external_id,
                "order_no": r.order_no,
                "customer": r.customer,
                "total": _money(r.total),
                "currency": r.currency,
                "order_status": r.status,
                "check": r.check_id,
                "severity": "warn",
                "reason": r.reason,
                "value": r.value,
                "status": "warned",
            }
            for r in conn.execute(q)
        ]


def held_table(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """The holds ``run_id`` made: one row per source with the reason (the numbers), how many
    orders it held and how many of them are still held."""
    e = order_events
    still = func.sum(case((orders.c.status == "held", 1), else_=0))
    q = (
        select(orders.c.source, e.c.reason, func.count().label("held"), still.label("still"))
        .join(orders, orders.c.id == e.c.order_id)
        .where(e.c.run_id == run_id, e.c.to_state == "held")
        .group_by(orders.c.source, e.c.reason)
        .order_by(orders.c.source)
    )
    with engine.connect() as conn:
        return [{"source": r.source, "reason": r.reason, "held": int(r.held),
                 "still_held": int(r.still or 0)} for r in conn.execute(q)]


def check_summary(engine: Engine, run_id: str) -> list[dict[str, Any]]:
    """check_results of ``run_id`` as JSON-safe rows."""
    q = (select(check_results).where(check_results.c.run_id == run_id)
         .order_by(check_results.c.id))
    with engine.connect() as conn:
        return [
            {"check": r.check_id, "severity": r.severity, "evaluated": int(r.evaluated),
             "failed": int(r.failed), "success": bool(r.success), "error": r.error or ""}
            for r in conn.execute(q)
        ]


def write_report(engine: Engine, run_id: str, path: str | Path,
                 kpis: dict[str, Any] | None = None) -> Path:
    """Write the run's HTML report to ``path`` (a file, or a folder to put
    ``checks-<run_id>.html`` in) and return the file's path. With ``kpis`` (the run's figures)
    the page opens with the KPI section and its chart."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / f"checks-{run_id}.html"
    with engine.connect() as conn:
        started = conn.execute(select(runs.c.started_at).where(runs.c.id == run_id)).scalar()
        if started is None:  # a gate run outside a recorded flow run: when it quarantined
            started = conn.execute(select(func.min(quarantine.c.created_at))
                                   .where(quarantine.c.run_id == run_id)).scalar()
    page = _page(run_id, started, check_summary(engine, run_id), quarantine_table(engine, run_id),
                 warning_table(engine, run_id), held_table(engine, run_id))
    if kpis is not None:
        from checks.kpi_chart import kpi_section_html

        page = page.replace("<h2>Checks</h2>", kpi_section_html(engine, run_id, kpis)
                            + "\n<h2>Checks</h2>", 1)
    _write_atomically(path, page)
    return path


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em}
.meta{color:#666;margin:0 0 1em} table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.fail{color:#b00020;font-weight:600} .ok{color:#1b7f3b} .warn{color:#a15c00}
.order{border:1px solid #ddd;border-radius:4px;padding:.6em 1em;margin:.8em 0}
.order h3{font-size:1em;margin:0 0 .4em} code{background:#f6f6f6;padding:0 .2em}
.banner{border:2px solid #b00020;background:#fdecee;border-radius:4px;padding:.6em 1em;margin:1em 0}
.banner h2{margin:0 0 .3em;color:#b00020} .flag{background:#fff4e0;color:#a15c00;
border-radius:3px;padding:0 .4em;margin-right:.3em;font-size:.9em}
td.value{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(run_id: str, started: datetime | None, checks: list[dict[str, Any]],
          rows: list[dict[str, Any]], warned: list[dict[str, Any]] | None = None,
          holds: list[dict[str, Any]] | None = None) -> str:
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    when = (started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if isinstance(started, datetime) else "unknown")
    by_order = _by_order(rows)
    flagged = _by_order(warned or [])
    held = sum(h["held"] for h in holds or [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>orderhub checks - run {_e(run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Quality gate report</h1>",
        f'<p class="meta">Run <code>{_e(run_id)}</code> &middot; started {_e(when)} '
        f"&middot; generated {_e(generated)} &middot; {len(by_order)} quarantined order(s) "
        f"&middot; {len(flagged)} order(s) with warnings &middot; {held} held order(s)</p>",
    ]
    parts += [_hold_banner(h) for h in holds or []]
    parts += [
        "<h2>Checks</h2>",
        _checks_table(checks),
        "<h2>Quarantined orders</h2>",
    ]
    if not by_order:
        parts.append("<p>No order was quarantined in this run.</p>")
    for failures in by_order.values():
        parts.append(_order_block(failures, flags=flagged.get(failures[0]["order_id"], [])))
    parts.append("<h2>Warnings</h2>")
    if not flagged:
        parts.append("<p>No order passed with a warning in this run.</p>")
    else:
        parts.append("<p>These orders passed the gate (warn-severity checks do not hold an "
                     "order back); each flag names the check.</p>")
    for order_id, flags in flagged.items():
        if order_id not in by_order:  # a quarantined order shows its flags above
            parts.append(_order_block(flags))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _checks_table(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return "<p>No check results recorded for this run.</p>"
    out = ["<table><thead><tr><th>Check</th><th>Severity</th><th>Evaluated</th>"
           "<th>Failed</th><th>Result</th></tr></thead><tbody>"]
    for c in checks:
        if c["error"]:
            verdict = f'<span class="fail">error: {_e(c["error"])}</span>'
        elif not c["evaluated"]:
            verdict = "nothing evaluated"
        elif c["failed"]:
            cls = "warn" if c["severity"] == "warn" else "fail"
            verdict = f'<span class="{cls}">failed</span>'
        else:
            verdict = '<span class="ok">passed</span>'
        out.append(
            f'<tr><td>{_e(c["check"])}</td><td>{_e(c["severity"])}</td>'
            f'<td class="num">{c["evaluated"]}</td><td class="num">{c["failed"]}</td>'
            f"<td>{verdict}</td></tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _lines(value: Any) -> str:
    """A value listing several lines ("line 1 ...; line 2 ...") one per row; split before
    escaping, so an entity like &gt; is never cut."""
    return "<br>".join(_e(part) for part in str(value).split("; ")) if value is not None else ""


def _by_order(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["order_id"], []).append(row)
    return out


def _hold_banner(hold: dict[str, Any]) -> str:
    still = (f'{hold["still_held"]} still held' if hold["still_held"]
             else "all released since")
    return (f'<div class="banner"><h2>Batch held: source {_e(hold["source"])}</h2>'
            f'<p>{_e(hold["reason"])}</p>'
            f'<p>{hold["held"]} order(s) moved to <code>held</code>, none of them quarantined or '
            f"validated ({_e(still)}). Fix the source or its master data, then release them "
            "(<code>checks.gate.release_held</code>): the next gate judges each one on its own."
            "</p></div>")


def _order_block(failures: list[dict[str, Any]],
                 flags: list[dict[str, Any]] | None = None) -> str:
    o = failures[0]
    rows = failures + (flags or [])
    total = f'{o["total"]} {o["currency"] or ""}'.strip() if o["total"] is not None else "-"
    warn_flags = "".join(f'<span class="flag">warn: {_e(f["check"])}</span>'
                         for f in rows if f["severity"] == "warn")
    head = (
        f'<div class="order"><h3>{_e(o["source"])} &middot; {_e(o["order_no"] or "-")} '
        f'<small>(external id {_e(o["external_id"])})</small> {warn_flags}</h3>'
        f'<p>Customer {_e(o["customer"] or "-")} &middot; total {_e(total)} '
        f'&middot; order status {_e(o["order_status"])}</p>'
    )
    body = "".join(
        f'<tr><td>{_e(f["check"])}</td><td>{_e(f["reason"])}</td>'
        f'<td class="value">{_lines(f["value"])}</td><td>{_e(f["status"])}</td></tr>'
        for f in rows
    )
    return (f"{head}<table><thead><tr><th>Check</th><th>Reason</th><th>Value</th>"
            f"<th>Status</th></tr></thead><tbody>{body}</tbody></table></div>")


# --- helpers -----------------------------------------------------------------------------------


def _money(value: Any) -> str | None:
    """Money as a string: JSON-safe and exact (never a float)."""
    if value is None:
        return None
    dec = value if isinstance(value, Decimal) else Decimal(str(value))
    return str(dec.quantize(Decimal("0.01")))


def _write_atomically(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows (same folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
