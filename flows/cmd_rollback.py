"""``orderhub rollback RUN_ID`` (undo what a run pushed) and ``orderhub repush ORDER...`` (send
again what a rollback undid). The work is in ``flows/rollback.py`` and
``warehouse.quarantine_ops``; module-level imports stay light (argparse, sys only).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.rollback import RollbackPlan


def add_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="orderhub.yaml", help="orderhub.yaml (default: %(default)s)")
    common.add_argument("--actor", default=None,
                        help="who decides (default: $ORDERHUB_ACTOR, else ops.default_actor_from, "
                             "i.e. $USER)")

    rb = sub.add_parser(
        "rollback", parents=[common],
        help="role approver: undo what a run pushed (Kingdee UnAudit+Delete, Shopify "
             "fulfilment cancel), newest first",
        description="List what RUN_ID pushed, ask for confirmation, then compensate it in reverse "
                    "order through each target's connector. The orders go back to allocated "
                    "(or pushed when only the invoice was undone) and stay there until "
                    "`orderhub repush`. Recorded as a run of its own (flow rollback).")
    rb.add_argument("run_id", metavar="RUN_ID", help="the run to roll back (runs.id)")
    rb.add_argument("--yes", action="store_true",
                    help="do not ask (needed when stdin is not a terminal)")
    rb.add_argument("--reason", default=None, help="why (recorded; default: 'rollback of run ...')")
    rb.add_argument("--force", action="store_true",
                    help="roll back a run still marked running (it crashed)")
    rb.set_defaults(func=cmd_rollback)

    rp = sub.add_parser("repush", parents=[common],
                        help="send again what a rollback undid for these orders (next push run)")
    rp.add_argument("orders", nargs="+", metavar="ORDER",
                    help="order id, SOURCE:EXTERNAL_ID or order number")
    rp.add_argument("--reason", required=True, help="why (recorded with the decision)")
    rp.set_defaults(func=cmd_repush)


def cmd_rollback(args: argparse.Namespace) -> int:
    from flows.cmd_quarantine import context, engine_for
    from flows.rollback import rollback

    settings, ops, actor = context(args, "rollback")
    engine = engine_for(settings)
    result = rollback(settings, engine, ops, actor, args.run_id, args.reason,
                      confirm=lambda plan: _confirm(plan, args.yes), force=args.force)
    if result.run_id is None:
        held = f" ({len(result.held)} order(s) left alone)" if result.held else ""
        print(f"run {args.run_id}: nothing to roll back: no pushed document of it is still in "
              f"place{held}")
        return 0
    now = ", ".join(f"{state} {n}" for state, n in result.orders.items()) or "none"
    print(f"rolled back run {result.rolled_back} as {actor} (run {result.run_id}): "
          f"{result.compensated} document(s) undone for {sum(result.orders.values())} order(s), "
          f"now {now}; they wait there until `orderhub repush ORDER...`")
    return 0


def _confirm(plan: RollbackPlan, yes: bool) -> bool:
    """Print the plan; ask y/N on a terminal. Without a terminal, only --yes confirms."""
    print("\n".join(plan.lines()))
    if yes:
        return True
    if not sys.stdin.isatty():
        from warehouse.quarantine_ops import OpsError

        raise OpsError("rollback: stdin is not a terminal, so nobody can confirm; pass --yes "
                       "(nothing was done)")
    answer = input("Undo these documents at their targets? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def cmd_repush(args: argparse.Namespace) -> int:
    from flows.cmd_quarantine import context, engine_for, print_result
    from warehouse.quarantine_ops import repush

    settings, ops, actor = context(args, "repush")
    result = repush(engine_for(settings), ops, actor, args.orders, args.reason)
    code = print_result(result)
    print("  the next push (and invoice) stage sends them again")
    return code
