"""``orderhub quarantine list|show|release|fix|override|reject``: ops decide quarantined orders.

The decisions themselves are ``warehouse.quarantine_ops`` functions (one transaction each: state
change, order event, quarantine rows, ops_actions, run); this module parses arguments, checks
the actor's role before anything is opened, re-runs the gate for release and fix, and prints.
Module-level imports stay light (argparse only): ``orderhub --help`` must not load SQLAlchemy,
Prefect or Great Expectations.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only
    from sqlalchemy import Engine

    from checks.suite import CheckSpec
    from flows.config import Settings
    from warehouse.quarantine_ops import ActionResult, OpsConfig, Recheck

VALUE_WIDTH = 48  # offending values longer than this are cut in the list table


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="orderhub.yaml", help="orderhub.yaml (default: %(default)s)")
    common.add_argument("--actor", default=None,
                        help="who decides (default: $ORDERHUB_ACTOR, else ops.default_actor_from, "
                             "i.e. $USER)")
    reason = argparse.ArgumentParser(add_help=False)
    reason.add_argument("--reason", required=True, help="why (recorded with the decision)")

    q = sub.add_parser("quarantine", help="review quarantined orders and release, fix, override "
                                          "or reject them")
    q.set_defaults(func=lambda args: q.print_help() or 0)
    acts = q.add_subparsers(title="actions", metavar="ACTION")

    ls = acts.add_parser("list", parents=[common], help="quarantined orders and their failing checks")
    ls.add_argument("--check", help="only orders failing this check (e.g. customer_known)")
    ls.add_argument("--source", help="only orders from this source")
    ls.add_argument("--status", default="open",
                    help="quarantine rows: open (held now; default), released, overridden, "
                         "rejected or all")
    ls.add_argument("--limit", type=int, default=200, help="at most this many orders (default 200)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)

    show = acts.add_parser("show", parents=[common],
                           help="one order: lines, failing checks, events, ops actions")
    show.add_argument("order", help="order id, SOURCE:EXTERNAL_ID or order number")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    rel = acts.add_parser("release", parents=[common, reason],
                          help="back to captured and re-checked at once (after fixing the cause "
                               "elsewhere, e.g. the customer master)")
    rel.add_argument("orders", nargs="+", metavar="ORDER")
    rel.set_defaults(func=cmd_release)

    fx = acts.add_parser(
        "fix", parents=[common, reason],
        help="edit the staged order and re-check it",
        description="Edit a quarantined order, then re-check it. Order fields: --set FIELD=VALUE "
                    "(customer_code, customer_email, currency, ship_region, order_no, ordered_at, "
                    "total). Line fields: --line N, then --set FIELD=VALUE (sku, qty, unit_price) "
                    "applying to line N. An empty value or 'null' clears a field. Put order "
                    "fields before the first --line.")
    fx.add_argument("order", help="order id, SOURCE:EXTERNAL_ID or order number")
    fx.add_argument("--line", type=int, dest="fix_line", action=_LineAction, default=None,
                    metavar="N", help="the following --set values apply to line N")
    fx.add_argument("--set", dest="fix_sets", action=_SetAction, default=None,
                    metavar="FIELD=VALUE", help="a new value (repeatable)")
    fx.set_defaults(func=cmd_fix)

    rh = acts.add_parser("release-held", parents=[common, reason],
                         help="release orders the gate's batch threshold held (after fixing "
                              "their source), and re-check them one by one")
    rh.add_argument("--source", help="only this source's held orders")
    rh.add_argument("--held-by", metavar="RUN_ID", help="only orders held by this gate run")
    rh.set_defaults(func=cmd_release_held)

    ov = acts.add_parser("override", parents=[common, reason],
                         help="role approver: validate despite failing checks")
    ov.add_argument("orders", nargs="+", metavar="ORDER")
    ov.set_defaults(func=cmd_override)

    rj = acts.add_parser("reject", parents=[common, reason], help="reject for good (final)")
    rj.add_argument("orders", nargs="+", metavar="ORDER")
    rj.set_defaults(func=cmd_reject)


class _LineAction(argparse.Action):
    """``--line N``: the ``--set`` values after it apply to line N (argparse keeps the order)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values < 1:
            parser.error("--line: line numbers start at 1")
        setattr(namespace, self.dest, values)


class _SetAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sets = list(getattr(namespace, self.dest) or [])
        sets.append((getattr(namespace, "fix_line", None), values))
        setattr(namespace, self.dest, sets)


# --- plumbing ----------------------------------------------------------------------------------


def context(args: argparse.Namespace, command: str) -> tuple[Settings, OpsConfig, str]:
    """Settings, roles and the actor, with the role checked: before any engine is opened (and
    before a migration could write), so a refused command writes nothing."""
    from flows.config import ConfigError, load_settings
    from warehouse.quarantine_ops import OpsConfig

    settings = load_settings(args.config)
    try:
        ops = OpsConfig.from_config(settings.raw)
    except ValueError as exc:
        raise ConfigError(f"{settings.path}: {exc}") from None
    actor = ops.actor(args.actor)
    ops.require(actor, command)
    return settings, ops, actor


def engine_for(settings: Settings) -> Engine:
    from warehouse.engine import make_engine, migrate

    engine = make_engine(settings.warehouse_url)
    migrate(engine)
    return engine


def suite(settings: Settings) -> list[CheckSpec]:
    """The declared checks, validated before anything is written."""
    from checks.suite import load_suite
    from flows.config import ConfigError

    try:
        return load_suite(settings.checks)
    except ValueError as exc:
        raise ConfigError(f"{settings.path}: {exc}") from None


def gate_policy(settings: Settings) -> Any:
    """orderhub.yaml's ``gate:`` batch threshold (None when this build has none)."""
    from checks import suite as suite_mod
    from flows.config import ConfigError

    load_gate = getattr(suite_mod, "load_gate", None)
    if load_gate is None:
        return None
    try:
        return load_gate(settings.raw.get("gate"))
    except ValueError as exc:
        raise ConfigError(f"{settings.path}: {exc}") from None


def gate_recheck(specs: Sequence[CheckSpec], policy: Any = None) -> Recheck:
    """The re-check release and fix run: customers resolved, then the quality gate over the
    captured batch (the released orders, and anything else captured and not yet gated: what
    the next gate would judge anyway), with the flow's batch threshold. Great Expectations
    loads only here."""

    def run(engine: Engine, run_id: str) -> dict[str, Any]:
        from checks.gate import run_gate
        from warehouse.load import resolve_customers

        resolve_customers(engine, run_id)
        if policy is None:
            return run_gate(engine, run_id, list(specs)).summary()
        return run_gate(engine, run_id, list(specs), policy).summary()

    return run


# --- commands ----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from warehouse.quarantine_ops import list_quarantine

    settings, _, _ = context(args, "list")
    engine = engine_for(settings)
    rows = list_quarantine(engine, check=args.check, source=args.source, status=args.status,
                           limit=args.limit)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"no orders with {args.status} quarantine rows"
              + (f" for check {args.check}" if args.check else "")
              + (f" from {args.source}" if args.source else ""))
        return 0
    table = [["ORDER", "SOURCE", "NUMBER", "STATUS", "CUSTOMER", "TOTAL", "SINCE", "CHECKS"]]
    for r in rows:
        shown = "" if args.status == "open" else " [{}]"  # other listings say which status
        checks = "; ".join(f"{c['check']}{shown.format(c['status'])}: "
                           f"{_cut(c['value'] or c['reason'])}" for c in r["checks"])
        total = f"{r['total']} {r['currency'] or ''}".strip() if r["total"] is not None else "-"
        table.append([str(r["order_id"]), r["source"], r["order_no"] or r["external_id"],
                      r["order_status"], r["customer"] or "-", total, _day(r["since"]), checks])
    print(render_table(table))
    print(f"{len(rows)} order(s)" + (" (limit reached: --limit)" if len(rows) == args.limit else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from warehouse.quarantine_ops import show_order

    settings, _, _ = context(args, "show")
    data = show_order(engine_for(settings), args.order)
    if args.json:
        _print_json(data)
        return 0
    o = data["order"]
    print(f"order {o['id']}  {o['source']}:{o['external_id']}  {o['order_no'] or ''}  "
          f"[{o['status']}]")
    print(f"  customer  code {o['customer_code'] or '-'}  email {o['customer_email'] or '-'}  "
          f"(resolved id {o['customer_id'] or '-'})")
    print(f"  ordered   {o['ordered_at'] or '-'}  ship_region {o['ship_region'] or '-'}")
    print(f"  total     {o['total'] if o['total'] is not None else '-'} {o['currency'] or ''}")
    print("  lines")
    rows = [["LINE", "SKU", "QTY", "UNIT PRICE", "AMOUNT"]]
    rows += [[str(ln["line_no"]), ln["sku"] or "-", _plain(ln["qty"]), _plain(ln["unit_price"]),
              _plain(ln["amount"])] for ln in data["lines"]]
    print(_indent(render_table(rows)))
    print("  checks")
    if data["checks"]:
        rows = [["CHECK", "STATUS", "REASON", "VALUE"]]
        rows += [[c["check_id"], c["status"], c["reason"], c["value"] or ""] for c in data["checks"]]
        print(_indent(render_table(rows)))
    else:
        print("    (none failed)")
    print("  events")
    rows = [["AT", "FROM", "TO", "REASON"]]
    rows += [[_when(e["at"]), e["from_state"] or "-", e["to_state"], e["reason"] or ""]
             for e in data["events"]]
    print(_indent(render_table(rows)))
    if data["actions"]:
        print("  ops actions")
        rows = [["AT", "ACTION", "ACTOR", "REASON"]]
        rows += [[_when(a["at"]), a["action"], a["actor"], a["reason"]] for a in data["actions"]]
        print(_indent(render_table(rows)))
    if data["pushes"]:
        print("  pushes")
        rows = [["TARGET", "OPERATION", "STATUS", "REMOTE ID"]]
        rows += [[p["target"], p["operation"], p["status"], p["remote_id"] or "-"]
                 for p in data["pushes"]]
        print(_indent(render_table(rows)))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from warehouse.quarantine_ops import release

    settings, ops, actor = context(args, "release")
    recheck = gate_recheck(suite(settings), gate_policy(settings))  # config errors first
    result = release(engine_for(settings), ops, actor, args.orders, args.reason, recheck=recheck)
    return print_result(result)


def release_held_orders(engine: Engine, ops: OpsConfig, actor: str, reason: str | None, *,
                        source: str | None = None, held_by: str | None = None,
                        recheck: Recheck | None = None) -> ActionResult:
    """Held -> captured through ``checks.gate.release_held`` (its ops_actions rows name the
    actor and reason), under a run of its own, then re-checked like a release."""
    from checks.gate import release_held
    from warehouse.quarantine_ops import OpsError, conclude, held_orders, start_ops_run

    ops.require(actor, "release")
    why = " ".join((reason or "").split())
    if not why:
        raise OpsError("release-held: a reason is required (--reason TEXT)")
    ids = held_orders(engine, source, held_by)
    if not ids:
        raise OpsError("release-held: no held orders" + (f" from {source}" if source else "")
                       + (f" held by run {held_by}" if held_by else "") + "; nothing was written")
    run_id = start_ops_run(engine, "quarantine", None, {"action": "release-held", "actor": actor})
    release_held(engine, run_id, actor, why, source=source, held_by=held_by)
    return conclude(engine, run_id, "release-held", actor, ids, recheck)


def cmd_release_held(args: argparse.Namespace) -> int:
    settings, ops, actor = context(args, "release")
    recheck = gate_recheck(suite(settings), gate_policy(settings))
    result = release_held_orders(engine_for(settings), ops, actor, args.reason,
                                 source=args.source, held_by=args.held_by, recheck=recheck)
    return print_result(result)


def cmd_fix(args: argparse.Namespace) -> int:
    from warehouse.quarantine_ops import FixSpec, fix

    settings, ops, actor = context(args, "fix")
    spec = FixSpec.parse(args.fix_sets or [])
    recheck = gate_recheck(suite(settings), gate_policy(settings))
    result = fix(engine_for(settings), ops, actor, args.order, spec, args.reason, recheck=recheck)
    return print_result(result)


def cmd_override(args: argparse.Namespace) -> int:
    from warehouse.quarantine_ops import override

    settings, ops, actor = context(args, "override")
    return print_result(override(engine_for(settings), ops, actor, args.orders, args.reason))


def cmd_reject(args: argparse.Namespace) -> int:
    from warehouse.quarantine_ops import reject

    settings, ops, actor = context(args, "reject")
    return print_result(reject(engine_for(settings), ops, actor, args.orders, args.reason))


# --- output ------------------------------------------------------------------------------------

_DONE = {"release": "released", "release-held": "released from hold", "fix": "fixed",
         "override": "overrode", "reject": "rejected", "repush": "queued again"}
_NEXT = {
    "validated": "validated: the next allocate stage takes it on",
    "captured": "captured: the next gate judges it",
    "rejected": "rejected",
}


def print_result(result: ActionResult) -> int:
    """One line for the decision, one per order with where it is now; 1 if the re-check failed."""
    print(f"{_DONE.get(result.action, result.action)} {len(result.orders)} order(s) as "
          f"{result.actor} (run {result.run_id})")
    for o in result.orders:
        if o["status"] == "quarantined" and o["open_checks"]:
            failing = "; ".join(f"{c['check']}: {c['reason']}" + (f" ({c['value']})" if c["value"] else "")
                                for c in o["open_checks"])
            state = f"quarantined again: {failing}"
        else:
            state = _NEXT.get(o["status"], o["status"])
        print(f"  {o['label']}: {state}")
    if result.recheck_error:
        print(f"  re-check failed: {result.recheck_error}")
        return 1
    return 0


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _cut(text: Any) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 1] + "…"


def _plain(value: Any) -> str:
    return "-" if value is None else str(value)


def _day(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))
