"""The run summary as people read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _rel(path: str | Path) -> str:
    """Paths under the working folder are shown relative to it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(summary: dict[str, Any]) -> str:
    lines = [f"orderhub order_to_cash — run {summary['run_id']}"]
    seeded = summary.get("seeded")
    if seeded:
        lines.append("  seeded    " + str(seeded).replace("\n", "\n            "))
    lines.append("")
    streams = summary.get("streams", [])
    for i, st in enumerate(streams):
        lines.append(("  ingest    " if i == 0 else "            ")
                     + f"{st['source'] + '/' + st['stream']:<22} {_n(st['received']):>7} in: "
                     f"{_n(st['new'])} new, {_n(st['changed'])} changed, "
                     f"{_n(st['rejected'])} rejected")
    bad_files = [b for st in streams for b in st.get("bad_files", [])]
    if bad_files:
        lines.append(f"            {len(bad_files)} file(s) quarantined: "
                     + "; ".join(b["reason"] for b in bad_files[:3])
                     + (" ..." if len(bad_files) > 3 else ""))
    stages = summary.get("stages", {})
    v = stages.get("validate", {})
    failing = ", ".join(f"{c['check_id']} {_n(c['failed'])}" for c in v.get("checks", [])
                        if c.get("failed"))
    lines.append(f"  validate  {_n(v.get('validated', 0))} passed, "
                 f"{_n(v.get('quarantined', 0))} quarantined" + (f" ({failing})" if failing else ""))
    a = stages.get("allocate", {})
    rules = ", ".join(f"{k} {_n(n)}" for k, n in (a.get("lines_by_rule") or {}).items())
    if a.get("owners_assigned"):
        rules += f"; owners assigned {_n(a['owners_assigned'])}"
    lines.append(f"  allocate  {_n(a.get('allocated', 0))} allocated, "
                 f"{_n(a.get('backordered', 0))} backordered" + (f" (lines: {rules})" if rules else ""))
    pushes = stages.get("push", [])
    lines.append("  push      " + (", ".join(
        f"{p['operation']} -> {p['target']} {_n(p['done'])}"
        + (f" ({_n(p['failed'])} failed)" if p.get("failed") else "") for p in pushes) or "nothing"))
    i = stages.get("invoice", {})
    lines.append(f"  invoice   {_n(i.get('created', 0))} created, {_n(i.get('sent', 0))} sent")
    r = stages.get("reconcile", {})
    by_status = r.get("invoices_by_status") or {k: r[k] for k in
                                                ("paid", "part_paid", "over_paid", "open") if k in r}
    lines.append("  reconcile " + ", ".join(f"{k} {_n(n)}" for k, n in by_status.items())
                 + f"; unmatched payments {_n(r.get('unmatched_payments', 0))}")
    lines.append("")
    rec = summary["records"]
    mark = "balanced" if rec["balanced"] else "NOT BALANCED"
    lines.append(f"  records   in {_n(rec['in'])} = loaded {_n(rec['loaded'])} + quarantined "
                 f"{_n(rec['quarantined'])} + rejected {_n(rec['rejected'])} + already held "
                 f"{_n(rec['already_held'])}  [{mark}]")
    if rec["in"] and rec["in"] == rec["already_held"]:
        lines.append("            nothing new: every record was already in the warehouse; "
                     "nothing loaded, pushed or invoiced twice")
    for stage, ct in summary.get("cycle_time", {}).items():
        if ct.get("count"):
            lines.append(f"  cycle     captured -> {stage}: p50 {ct['p50_s']} s, p95 {ct['p95_s']} s "
                         f"({_n(ct['count'])} orders)")
    k = summary.get("kpis")
    if k:
        def pct(x: Any) -> str:
            return "n/a" if x is None else f"{float(x) * 100:.1f}%"  # display only, never money

        acc = k.get("accuracy") or {}
        missed = k.get("missed") or {}
        lines.append(f"  kpis      automation {pct(k['automation'].get('rate'))}, quarantine "
                     f"{pct(k['quarantine'].get('rate'))}, accuracy {pct(acc.get('rate'))}, "
                     f"missed orders {missed.get('missed', 'n/a')} of "
                     f"{_n(missed.get('source_count', 0))} at the sources")
    for key in ("report", "lineage"):
        if summary.get(key):
            lines.append(f"  {key:<9} {_rel(summary[key])}")
    exports = r.get("exports") or []
    if exports:
        lines.append(f"  exports   {len(exports)} Parquet files in {_rel(Path(exports[0]).parent)}")
    if summary.get("seconds") is not None:
        lines.append(f"  took      {summary['seconds']} s")
    return "\n".join(lines)
