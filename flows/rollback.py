"""Roll back what a run pushed: ``orderhub rollback RUN_ID``.

What a run pushed is its ``done`` outbox rows (``warehouse.outbox.done_in_run``). They are undone
newest first - an invoice before the sales order it rests on - in groups of one target and one
operation, through the target's connector (``Connector.compensate``: Kingdee UnAudit then Delete,
Shopify fulfilment cancel). After each confirmed chunk, one transaction marks its rows
``compensated``, moves its orders back and writes their ops_actions
(``warehouse.quarantine_ops.record_compensation``), so what was undone at the target is on
record before the next chunk leaves.

Decisions (docs/ops.md):
- Orders left alone, listed in the plan: paid ones (a payment is applied to the invoice), and
  ones whose invoice a *later* run sent (roll that run back first).
- The rollback stops at the first chunk with a failure, an unsupported compensation included,
  for every target: later groups may rest on what could not be undone, and a partial undo is
  easier to reason about when it is a prefix of the reverse order. What was undone before the
  failure stays recorded; running the rollback again continues with what is still ``done``.
- Idempotent: compensated rows are no longer ``done``, so a second rollback finds nothing; and
  the connectors treat an already-undone document as undone (a crash between the target's
  answer and our commit).
- It is a run of its own: ``runs.flow = 'rollback'``, ``parent_id`` = the rolled-back run, plus
  a run-level ops_actions row saying who rolled back what, and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from connectors.base import Connector
from connectors.http import SourceError
from connectors.registry import build_connector
from flows.config import Settings
from flows.console import progress
from warehouse import outbox, runs
from warehouse.quarantine_ops import (
    OpsConfig,
    OpsError,
    record_compensation,
    record_run_action,
    rollback_holds,
    start_ops_run,
    status_counts,
)

CHUNK = 200  # documents per compensate call (and per bookkeeping transaction)
HOW = {  # what compensation means per operation, for the plan people confirm
    "fulfilment": "cancel the fulfilment",
    "sales_order": "UnAudit, then Delete the bill",
    "invoice": "UnAudit, then Delete the receivable",
}

ConnectorFor = Callable[[str], Connector]


@dataclass
class Group:
    """Consecutive rows (in reverse completion order) of one target and operation."""

    target: str
    operation: str
    rows: list[dict[str, Any]]

    @property
    def orders(self) -> int:
        return len({r["order_id"] for r in self.rows if r["order_id"] is not None})


@dataclass
class RollbackPlan:
    run: dict[str, Any]
    groups: list[Group]
    held: dict[int, str] = field(default_factory=dict)  # order id -> why it is left alone
    held_documents: int = 0

    @property
    def documents(self) -> int:
        return sum(len(g.rows) for g in self.groups)

    @property
    def orders(self) -> int:
        return len({r["order_id"] for g in self.groups for r in g.rows
                    if r["order_id"] is not None})

    def lines(self) -> list[str]:
        """The plan as people read it before confirming."""
        run = self.run
        out = [f"run {run['id']} ({run['flow']}, {run['status']}, started "
               f"{run['started_at']:%Y-%m-%d %H:%M:%S}) pushed {self.documents} document(s) "
               f"for {self.orders} order(s); undone in this order:"]
        for g in self.groups:
            out.append(f"  {g.target:<12} {g.operation:<12} {len(g.rows):>6}  "
                       f"({HOW.get(g.operation, 'compensate')})")
        if self.held:
            out.append(f"  left alone: {self.held_documents} document(s) of {len(self.held)} "
                       "order(s):")
            for oid, why in sorted(self.held.items())[:10]:
                out.append(f"    order {oid}: {why}")
            if len(self.held) > 10:
                out.append(f"    ... and {len(self.held) - 10} more")
        return out


@dataclass
class RollbackResult:
    run_id: str | None  # the rollback's own run (None: nothing to do, nothing recorded)
    rolled_back: str
    compensated: int = 0
    to_allocated: int = 0  # transitions made (an order may move invoiced -> pushed -> allocated)
    to_pushed: int = 0
    orders: dict[str, int] = field(default_factory=dict)  # state -> orders touched, at the end
    groups: list[dict[str, Any]] = field(default_factory=list)
    held: dict[int, str] = field(default_factory=dict)
    error: str | None = None  # why it stopped
    remaining: int = 0  # documents still done after a stop

    def summary(self) -> dict[str, Any]:
        return {"rolled_back": self.rolled_back, "compensated": self.compensated,
                "to_allocated": self.to_allocated, "to_pushed": self.to_pushed,
                "orders": self.orders,
                "groups": self.groups, "held": self.held, "error": self.error,
                "remaining": self.remaining}


class RollbackStopped(OpsError):
    """A compensation failed; ``result`` says what was undone before it."""

    def __init__(self, message: str, result: RollbackResult) -> None:
        super().__init__(message)
        self.result = result


def plan_rollback(engine: Engine, run_id: str, *, force: bool = False) -> RollbackPlan:
    """What rolling back ``run_id`` would undo, in order; nothing is written."""
    run = runs.get_run(engine, run_id)
    if run is None:
        raise OpsError(f"rollback: no run {run_id!r} (see the runs table)")
    if run["flow"] == "rollback":
        raise OpsError(f"rollback: run {run_id} is itself a rollback; re-push its orders with "
                       "`orderhub repush` instead")
    if run["status"] == runs.RUNNING and not force:
        raise OpsError(f"rollback: run {run_id} is still running; wait for it to finish "
                       "(or pass --force if it crashed)")
    rows = outbox.done_in_run(engine, run_id)
    held = rollback_holds(engine, rows)
    kept = [r for r in rows if r["order_id"] not in held]
    groups: list[Group] = []
    for row in kept:
        if groups and (groups[-1].target, groups[-1].operation) == (row["target"], row["operation"]):
            groups[-1].rows.append(row)
        else:
            groups.append(Group(row["target"], row["operation"], [row]))
    return RollbackPlan(run, groups, held, held_documents=len(rows) - len(kept))


def execute_rollback(settings: Settings, engine: Engine, plan: RollbackPlan, actor: str,
                     reason: str, connector_for: ConnectorFor | None = None) -> RollbackResult:
    """Undo the plan, newest first; raise RollbackStopped at the first failure."""
    rolled_back = plan.run["id"]
    result = RollbackResult(None, rolled_back, held=dict(plan.held))
    if not plan.groups:
        return result
    built: dict[str, Connector] = {}
    touched: set[int] = set()

    def connector(target: str) -> Connector:
        if target not in built:
            built[target] = (connector_for(target) if connector_for
                             else build_connector(target, settings.connector_config(target)))
        return built[target]

    rid = start_ops_run(engine, "rollback", rolled_back,
                        {"action": "rollback", "actor": actor, "rolled_back": rolled_back})
    result.run_id = rid
    try:
        for group in plan.groups:
            done = _undo_group(engine, connector(group.target), group, rid, rolled_back, actor,
                               reason, result, touched)
            result.groups.append({"target": group.target, "operation": group.operation,
                                  "documents": len(group.rows), "compensated": done})
            if result.error:
                break
    except Exception as exc:  # noqa: BLE001 - recorded on the run, then raised as it was
        result.error = result.error or _first_line(exc)
        _finish(engine, result, actor, reason, plan, touched)
        raise
    _finish(engine, result, actor, reason, plan, touched)
    if result.error:
        raise RollbackStopped(
            f"rollback of run {rolled_back} stopped: {result.error}; {result.compensated} "
            f"document(s) undone and recorded, {result.remaining} still in place; fix the cause "
            f"and run `orderhub rollback {rolled_back}` again to continue", result)
    return result


def _undo_group(engine: Engine, connector: Connector, group: Group, rid: str, rolled_back: str,
                actor: str, reason: str, result: RollbackResult, touched: set[int]) -> int:
    done = 0
    for start in range(0, len(group.rows), CHUNK):
        chunk = group.rows[start:start + CHUNK]
        docs = [{**(r["payload"] or {}), "key": r["idempotency_key"], "remote_id": r["remote_id"]}
                for r in chunk]
        try:
            answers = {a.key: a for a in connector.compensate(group.operation, docs)}
        except SourceError as exc:  # e.g. credentials refused: nothing of this chunk undone
            result.error = f"{group.target}/{group.operation}: {_first_line(exc)}"
            return done
        ok = [r for r in chunk if (a := answers.get(r["idempotency_key"])) is not None and a.ok]
        for r in ok:
            r["remote_id"] = answers[r["idempotency_key"]].remote_id or r["remote_id"]
        moved = record_compensation(engine, rid, rolled_back, actor, reason, ok)
        touched.update(r["order_id"] for r in ok if r["order_id"] is not None)
        done += moved["compensated"]
        result.compensated += moved["compensated"]
        result.to_allocated += moved["to_allocated"]
        result.to_pushed += moved["to_pushed"]
        undone = {r["id"] for r in ok}
        failed = [r for r in chunk if r["id"] not in undone]
        if failed:
            answer = answers.get(failed[0]["idempotency_key"])
            why = answer.error if answer is not None and answer.error else "no answer for it"
            result.error = (f"{group.target}/{group.operation}: {len(failed)} of {len(chunk)} "
                            f"could not be undone (first, {failed[0]['business_key']}: {why})")
            return done
        progress("rollback %s/%s: %s undone", group.target, group.operation, f"{done:,}")
    return done


def _finish(engine: Engine, result: RollbackResult, actor: str, reason: str,
            plan: RollbackPlan, touched: set[int]) -> None:
    assert result.run_id is not None
    result.orders = status_counts(engine, touched)
    result.remaining = len(outbox.done_in_run(engine, result.rolled_back)) - plan.held_documents
    record_run_action(engine, result.run_id, actor, "rollback", reason,
                      {"run": result.rolled_back, **result.summary()})
    runs.finish_run(engine, result.run_id, "failed" if result.error else "completed",
                    result.summary())


def rollback(settings: Settings, engine: Engine, ops: OpsConfig, actor: str, run_id: str,
             reason: str | None = None, *, confirm: Callable[[RollbackPlan], bool] | None = None,
             force: bool = False, connector_for: ConnectorFor | None = None) -> RollbackResult:
    """Role approver; plan, confirm (``confirm(plan)`` -> bool; None: yes), undo.

    Nothing to do (a second rollback of the same run): returns a result with ``run_id`` None
    and records nothing. Declined: raises OpsError, nothing written."""
    ops.require(actor, "rollback")
    why = " ".join((reason or "").split()) or f"rollback of run {run_id}"
    plan = plan_rollback(engine, run_id, force=force)
    if not plan.groups:
        return RollbackResult(None, run_id, held=dict(plan.held))
    if confirm is not None and not confirm(plan):
        raise OpsError(f"rollback of run {run_id} not confirmed; nothing was done")
    return execute_rollback(settings, engine, plan, actor, why, connector_for)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
