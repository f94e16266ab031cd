"""``orderhub kpis``: the business KPIs of a run and the daily table, readable or as JSON.

    orderhub kpis                      # the latest order_to_cash run, and the last 7 days
    orderhub kpis --run RUN_ID         # one run only
    orderhub kpis --days 30            # the daily table only, 30 days up to today (UTC)
    orderhub kpis --days 7 --to 2026-11-02
    orderhub kpis --audit              # also ask every order source now (missed orders)
    orderhub kpis --days 7 --refresh   # recompute the daily table first
    orderhub kpis --json

Definitions: warehouse/kpis.py and docs/kpis.md. Module-level imports stay light (argparse
only): ``orderhub --help`` must not load SQLAlchemy or Prefect.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

DEFAULT_DAYS = 7
STAGES = ("allocated", "invoiced", "paid")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("kpis", help="cycle time, automation, quarantine, accuracy and missed-order "
                                    "KPIs: per run and per day")
    p.add_argument("--config", default="orderhub.yaml", help="orderhub.yaml (default: %(default)s)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="RUN_ID",
                       help="this run only (default: the latest order_to_cash run, and the daily "
                            f"table of the last {DEFAULT_DAYS} days)")
    which.add_argument("--days", type=int, metavar="N",
                       help="the daily table only, the N days up to --to")
    p.add_argument("--to", metavar="YYYY-MM-DD", type=_day,
                   help="the daily table's last day (default: today, UTC)")
    p.add_argument("--audit", action="store_true",
                   help="ask every order source for its orders now and compare (missed orders); "
                        "stored as today's missed-order rate")
    p.add_argument("--refresh", action="store_true",
                   help="recompute the daily table for the days shown before printing it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_kpis)


def _day(text: str) -> Any:
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_kpis(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from flows.audit import audit_sources, source_total_readers
    from flows.config import load_settings
    from warehouse import kpis, runs
    from warehouse.engine import make_engine, migrate

    if args.days is not None and args.days < 1:
        raise ValueError("--days must be at least 1")
    settings = load_settings(args.config)
    engine = make_engine(settings.warehouse_url)
    try:
        migrate(engine)  # an older warehouse gains kpi_daily; a current one is untouched
        readers = source_total_readers(settings)
        show_run = args.days is None
        show_daily = args.run is None
        run_id = args.run or (kpis.latest_run(engine) if show_run else None)
        if args.run and runs.get_run(engine, args.run) is None:
            raise ValueError(f"run {args.run} is not in the warehouse "
                             "(`orderhub kpis` without --run takes the latest)")
        today = args.to or datetime.now(UTC).date()
        days = args.days or DEFAULT_DAYS
        day_from = today - timedelta(days=days - 1)

        audit = None
        if args.audit or args.refresh:
            # what kpis writes (today's missed rate, the daily rows) carries a run of its own
            own = runs.start_run(engine, "kpis")
            try:
                if args.audit:
                    audit = audit_sources(settings, engine, own)
                if args.refresh and show_daily:
                    kpis.refresh_daily(engine, own, [day_from + timedelta(days=i)
                                                     for i in range(days)], readers=readers)
            except Exception as exc:
                runs.finish_run(engine, own, "failed", {"error": str(exc)})
                raise
            runs.finish_run(engine, own, "completed", {"audit": audit} if audit else {})

        per_run = (kpis.run_kpis(engine, run_id, readers=readers, audit=audit)
                   if show_run and run_id else None)
        daily = kpis.daily_kpis(engine, day_from, today) if show_daily else None
    finally:
        engine.dispose()

    if args.json:
        import json

        print(json.dumps(runs.json_safe({"run": per_run, "audit": audit,
                                         "daily": {"from": day_from, "to": today, "rows": daily}
                                         if daily is not None else None}), indent=2))
        return 0
    out: list[str] = []
    if show_run:
        out += render_run(per_run) if per_run else [
            "orderhub KPIs — no order_to_cash run in the warehouse yet "
            "(run `orderhub demo` or `orderhub run`)"]
    if audit and not per_run:
        out += ["", *render_missed(audit)]
    if daily is not None:
        out += ["", *render_daily(daily, day_from, today)]
    print("\n".join(out).strip("\n"))
    return 0


# --------------------------------------------------------------------------------- rendering


def render_run(k: Mapping[str, Any]) -> list[str]:
    """The per-run KPIs as lines for people."""
    from warehouse.kpis import format_rate as pct
    from warehouse.kpis import format_seconds as duration

    started = k.get("started_at")
    when = started.strftime("%Y-%m-%d %H:%M UTC") if started else "time unknown"
    lines = [f"orderhub KPIs — run {k['run_id']} ({k.get('flow') or 'unknown flow'}, "
             f"started {when}, {k.get('status') or 'status unknown'})", ""]
    lines.append(f"  {'cycle time':<22}{'orders':>8}{'p50':>12}{'p95':>12}")
    for stage in STAGES:
        ct = k["cycle_time"].get(stage) or {}
        lines.append(f"  {'captured -> ' + stage:<22}{ct.get('count', 0):>8,}"
                     f"{duration(ct.get('p50_s')):>12}{duration(ct.get('p95_s')):>12}")
    lines.append("")
    a = k["automation"]
    if a["captured"]:
        stages = ", ".join(f"to {s} {pct(a['by_stage'][s]['rate'])}"
                           for s in ("allocated", "invoiced"))
        lines.append(f"  automation     {pct(a['rate'])}  {a['automated']:,} of {a['captured']:,} "
                     f"orders captured in the run went through with no human touch ({stages})")
    else:
        lines.append("  automation     -  no order was captured in this run")
    q = k["quarantine"]
    if q["gated"]:
        checks = ", ".join(f"{c} {pct(v['rate'])} ({v['quarantined']:,})"
                           for c, v in q["by_check"].items())
        lines.append(f"  quarantine     {pct(q['rate'])}  {q['quarantined']:,} of {q['gated']:,} "
                     f"gated orders" + (f": {checks}" if checks else ""))
    else:
        lines.append("  quarantine     -  no order was gated in this run")
    acc = k.get("accuracy")
    if acc is None:
        lines.append("  accuracy       -  not computed (needs the sources' mappings)")
    elif acc["orders"]:
        lines.append(f"  accuracy       {pct(acc['rate'])}  {acc['accurate']:,} of {acc['orders']:,} "
                     "orders: stored total = sum of lines = the source's total")
        for bad in acc.get("inaccurate", [])[:5]:
            lines.append(f"                 order {bad['source']}:{bad['external_id']}: {bad['problem']}")
        more = acc["orders"] - acc["accurate"] - min(5, len(acc.get("inaccurate", [])))
        if more > 0:
            lines.append(f"                 ... and {more:,} more (--json lists up to 20)")
    else:
        lines.append("  accuracy       -  no order was captured in this run")
    if acc and acc.get("unchecked"):
        lines.append(f"                 {acc['unchecked']:,} orders of sources no longer "
                     "configured were not checked")
    lines += render_missed(k.get("missed"))
    by = k.get("by_source") or {}
    if by:
        lines += ["", f"  {'by source':<14}{'automation':>12}{'quarantine':>12}{'accuracy':>10}"
                      f"{'p50 -> invoiced':>17}"]
        for source, v in by.items():
            acc_s = v.get("accuracy") or {}
            lines.append(f"  {source:<14}{pct(v['automation']['rate']):>12}"
                         f"{pct(v['quarantine']['rate']):>12}{pct(acc_s.get('rate')):>10}"
                         f"{duration(v['cycle_time']['invoiced'].get('p50_s')):>17}")
    return lines


def render_missed(m: Mapping[str, Any] | None) -> list[str]:
    from warehouse.kpis import format_rate as pct

    if not m:
        return ["  missed orders  -  not measured for this run (`orderhub kpis --audit` asks the "
                "sources now)"]
    by = m.get("by_source") or m.get("sources") or {}
    lines = [f"  missed orders  {m.get('missed', 0):,} of {m.get('source_count', 0):,} orders at "
             f"the sources ({pct(m.get('rate'))})" + ("" if m.get("ok") else "  [CHECK]")]
    for source, r in by.items():
        if r.get("error"):
            lines.append(f"                 {source}: not measured: {r['error']}")
        elif r.get("missed"):
            shown = ", ".join(r.get("missing") or [])
            lines.append(f"                 {source}: {r['missed']:,} missing: {shown}"
                         + (" ..." if r["missed"] > len(r.get("missing") or []) else ""))
    return lines


def render_daily(rows: list[dict[str, Any]], day_from: Any, day_to: Any) -> list[str]:
    """The stored daily table: a line per day and source ("(all)" first)."""
    from warehouse.kpis import format_rate as pct

    head = f"Daily KPIs {day_from} .. {day_to} (UTC days)"
    if not rows:
        return [head, "  no daily figures stored for these days "
                      "(`orderhub kpis --refresh` computes them)"]
    grid: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        grid.setdefault((r["day"], r["source"]), {})[r["metric"]] = r
    lines = [head, f"  {'day':<12}{'source':<14}{'captured':>9}{'automated':>11}{'quarantined':>13}"
                   f"{'accurate':>10}{'missed':>8}"
                   + "".join(f"{'-> ' + stage + ' p50/p95':>22}" for stage in STAGES)]
    last_day = None
    for (day, source), m in grid.items():
        val = {metric: r["value"] for metric, r in m.items()}.get
        captured = (m.get("automation_rate") or {}).get("denominator")
        lines.append(
            f"  {str(day) if day != last_day else '':<12}{'(all)' if source == '*' else source:<14}"
            f"{'-' if captured is None else f'{captured:,}':>9}{pct(val('automation_rate')):>11}"
            f"{pct(val('quarantine_rate')):>13}{pct(val('accuracy_rate')):>10}"
            f"{pct(val('missed_rate')):>8}"
            + "".join(f"{_pair(val(f'cycle_p50_s.{st}'), val(f'cycle_p95_s.{st}')):>22}"
                      for st in STAGES))
        last_day = day
    return lines


def _pair(p50: Any, p95: Any) -> str:
    from warehouse.kpis import format_seconds as duration

    return "-" if p50 is None else f"{duration(p50)} / {duration(p95)}"
