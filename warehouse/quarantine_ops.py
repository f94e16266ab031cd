"""Ops decisions on orders: quarantine (list, show, release, fix, override, reject), the
bookkeeping of a rollback, and re-pushing what a rollback undid. The ``orderhub quarantine`` /
``rollback`` / ``repush`` commands are thin wrappers around these functions.

Every decision is ONE transaction holding: a ``runs`` row of its own (flow ``quarantine``,
``rollback`` or ``repush``), the state change through ``warehouse.orders.transition`` (so an
``order_events`` row with the reason), the quarantine rows' new status, and one ``ops_actions``
row per order (actor, reason, detail). A refused command (wrong role, wrong state, unknown
order) raises ``OpsError`` before anything is written.

Roles (``OpsConfig``, from orderhub.yaml ``ops.roles``) are a guard rail that says who is
*supposed* to decide what; the actor is whoever ``--actor`` / ``$ORDERHUB_ACTOR`` / ``$USER``
names. Who may reach the warehouse at all is the database's own access control.

Release and fix re-run the checks: the order goes back to ``captured`` and the ``recheck``
callable the caller passes (flows: the quality gate, see ``flows.cmd_quarantine``) judges it at
once. The gate lives in ``checks/``, which may import this package but not the reverse, hence
the callable. A validated order then simply continues: the next allocate stage takes it.

Why ``fix`` keeps ``orders.content_hash``: it is the fingerprint of what the *source* sent, which
the loader compares to tell an amendment at the source from a re-read. Recomputing it from the
fixed values would make the next (unchanged) pull look like an amendment and, for an order still
quarantined, overwrite the fix. ``lines_hash`` (the duplicate check's key), ``order_date``, the
line amounts and the total are recomputed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from warehouse.engine import begin_write
from warehouse.load import _line_amount, lines_hash
from warehouse.money import MoneyError, quantize
from warehouse.orders import transition
from warehouse.outbox import mark_compensated, requeue_compensated
from warehouse.runs import finish_run, json_safe
from warehouse.schema import (
    customers,
    ops_actions,
    order_events,
    order_lines,
    orders,
    outbox,
    quarantine,
    runs,
)

ROLES = ("ops", "approver")
# the role each command needs; "approver" does not imply "ops" (give people both)
REQUIRED_ROLE: dict[str, str] = {
    "list": "ops", "show": "ops", "release": "ops", "fix": "ops", "reject": "ops",
    "repush": "ops", "override": "approver", "rollback": "approver",
}
QUARANTINE_STATUSES = ("open", "released", "overridden", "rejected")
PUSH_OPERATIONS = ("fulfilment", "sales_order")  # as warehouse.outbox: allocated -> pushed
INVOICE_OPERATION = "invoice"

# A re-check: runs the gate for the run id over the captured batch; returns its summary.
Recheck = Callable[[Engine, str], Any]


class OpsError(ValueError):
    """A refused ops command; ``str()`` is one line, and nothing was written."""


class RoleError(OpsError):
    """The actor lacks the role the command needs."""


# --- configuration: roles and the actor --------------------------------------------------------


@dataclass(frozen=True)
class OpsConfig:
    """``ops:`` of orderhub.yaml::

        ops:
          roles: {alice: [ops], bob: [ops, approver]}
          default_actor_from: env:USER      # when neither --actor nor $ORDERHUB_ACTOR is given
    """

    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    default_actor_from: str | None = "env:USER"

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> OpsConfig:
        """From the whole orderhub.yaml mapping; ``ValueError`` names the key on one line."""
        section = (raw or {}).get("ops")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError("ops: expected a mapping with roles and default_actor_from")
        unknown = sorted(set(section) - {"roles", "default_actor_from"})
        if unknown:
            raise ValueError(f"ops.{unknown[0]}: unknown key (known: default_actor_from, roles)")
        roles_raw = section.get("roles") or {}
        if not isinstance(roles_raw, Mapping):
            raise ValueError("ops.roles: expected a mapping of person -> list of roles, "
                             "e.g. {alice: [ops], bob: [ops, approver]}")
        roles: dict[str, frozenset[str]] = {}
        for person, given in roles_raw.items():
            where = f"ops.roles.{person}"
            if isinstance(given, str):
                given = [given]
            if not isinstance(given, Sequence) or not given:
                raise ValueError(f"{where}: expected a list of roles ({', '.join(ROLES)})")
            for role in given:
                if role not in ROLES:
                    raise ValueError(f"{where}: unknown role {role!r} (known: {', '.join(ROLES)})")
            roles[str(person)] = frozenset(given)
        source = section.get("default_actor_from", "env:USER")
        if source is not None and not (isinstance(source, str) and source.startswith("env:")
                                       and len(source) > 4):
            raise ValueError("ops.default_actor_from: expected env:NAME (e.g. env:USER) or null")
        return cls(roles=roles, default_actor_from=source)

    def actor(self, given: str | None = None, environ: Mapping[str, str] | None = None) -> str:
        """``--actor``, else $ORDERHUB_ACTOR, else ``default_actor_from``'s variable."""
        env = os.environ if environ is None else environ
        name = (given or env.get("ORDERHUB_ACTOR") or "").strip()
        if not name and self.default_actor_from:
            name = env.get(self.default_actor_from[4:], "").strip()
        if not name:
            raise OpsError("no actor: pass --actor NAME or set ORDERHUB_ACTOR")
        return name

    def require(self, actor: str, command: str) -> None:
        """Raise RoleError unless ``actor`` holds the role ``command`` needs."""
        role = REQUIRED_ROLE[command]
        if not self.roles:
            raise RoleError(f"{command}: no roles are configured; add ops.roles to orderhub.yaml "
                            f"(e.g. ops: {{roles: {{{actor}: [{role}]}}}})")
        held = self.roles.get(actor, frozenset())
        if role not in held:
            has = ", ".join(sorted(held)) or "no role"
            raise RoleError(f"{command}: {actor} needs the role {role!r} (has: {has}); "
                            "nothing was written")


# --- finding orders ----------------------------------------------------------------------------


def label(row: Any) -> str:
    """How an order is named to people: ``17 (shopify #1007)``."""
    return f"{row.id} ({row.source} {row.order_no or row.external_id})"


def find_order(conn: Connection, ref: str | int) -> Any:
    """An order by warehouse id (digits), ``source:external_id``, or order number."""
    text = str(ref).strip()
    base = select(orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
                  orders.c.status)
    if text.isdigit():
        row = conn.execute(base.where(orders.c.id == int(text))).first()
        if row is None:
            raise OpsError(f"no order with id {text} (use an id, SOURCE:EXTERNAL_ID or an "
                           "order number)")
        return row
    if ":" in text:
        source, external_id = text.split(":", 1)
        row = conn.execute(base.where(orders.c.source == source,
                                      orders.c.external_id == external_id)).first()
        if row is not None:
            return row
    found = conn.execute(base.where(orders.c.order_no == text).order_by(orders.c.id).limit(6)).all()
    if not found:
        raise OpsError(f"no order {text!r} (use an id, SOURCE:EXTERNAL_ID or an order number)")
    if len(found) > 1:
        names = ", ".join(f"{r.source}:{r.external_id}" for r in found[:5])
        raise OpsError(f"order number {text!r} is ambiguous ({names}); name one as "
                       "SOURCE:EXTERNAL_ID or by id")
    return found[0]


def _find_all(conn: Connection, refs: Iterable[str | int]) -> list[Any]:
    rows: dict[int, Any] = {}
    for ref in refs:
        row = find_order(conn, ref)
        rows.setdefault(row.id, row)
    if not rows:
        raise OpsError("name at least one order")
    return list(rows.values())


def _require_state(rows: Sequence[Any], state: str, command: str) -> None:
    wrong = [r for r in rows if r.status != state]
    if wrong:
        shown = "; ".join(f"{label(r)} is {r.status}" for r in wrong[:5])
        more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
        raise OpsError(f"{command}: only a {state} order can be {_PAST[command]}: "
                       f"{shown}{more}; nothing was written")


_PAST = {"release": "released", "fix": "fixed", "override": "overridden", "reject": "rejected"}


# --- reading -----------------------------------------------------------------------------------


def list_quarantine(engine: Engine, *, check: str | None = None, source: str | None = None,
                    status: str = "open", limit: int | None = 200) -> list[dict[str, Any]]:
    """One row per order with quarantine rows of ``status`` (``all``: any), oldest first, each
    with its checks (check, reason, value, status). ``open`` lists the orders quarantined now."""
    if status != "all" and status not in QUARANTINE_STATUSES:
        raise OpsError(f"--status: {status!r} is not one of {', '.join(QUARANTINE_STATUSES)}, all")
    q = quarantine.c
    where = []
    if status != "all":
        where.append(q.status == status)
    if status == "open":
        where.append(orders.c.status == "quarantined")
    if source:
        where.append(orders.c.source == source)
    if check:
        where.append(q.order_id.in_(select(quarantine.c.order_id).where(
            quarantine.c.check_id == check,
            *([quarantine.c.status == status] if status != "all" else []))))
    wanted = (select(q.order_id, func.min(q.created_at).label("since"))
              .join(orders, orders.c.id == q.order_id).where(*where)
              .group_by(q.order_id).order_by(func.min(q.created_at), q.order_id))
    if limit:
        wanted = wanted.limit(limit)
    customer = func.coalesce(customers.c.code, orders.c.customer_code, orders.c.customer_email)
    with engine.connect() as conn:
        picked = conn.execute(wanted).all()
        if not picked:
            return []
        since = {r.order_id: r.since for r in picked}
        heads = {r.id: r for r in conn.execute(
            select(orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
                   orders.c.status, orders.c.currency, orders.c.total, customer.label("customer"))
            .outerjoin(customers, customers.c.id == orders.c.customer_id)
            .where(orders.c.id.in_(list(since))))}
        checks: dict[int, list[dict[str, Any]]] = {}
        for r in conn.execute(
            select(q.order_id, q.check_id, q.reason, q.value, q.status)
            .where(q.order_id.in_(list(since)), *([q.status == status] if status != "all" else []))
            .order_by(q.order_id, q.check_id)
        ):
            checks.setdefault(r.order_id, []).append(
                {"check": r.check_id, "reason": r.reason, "value": r.value, "status": r.status})
    return [
        {"order_id": oid, "source": heads[oid].source, "external_id": heads[oid].external_id,
         "order_no": heads[oid].order_no, "order_status": heads[oid].status,
         "customer": heads[oid].customer, "currency": heads[oid].currency,
         "total": heads[oid].total, "since": since[oid], "checks": checks.get(oid, [])}
        for oid in since
    ]


def show_order(engine: Engine, ref: str | int) -> dict[str, Any]:
    """The order, its lines, its quarantine rows (every status), events and ops actions."""
    with engine.connect() as conn:
        oid = find_order(conn, ref).id
        order = dict(conn.execute(select(orders).where(orders.c.id == oid)).mappings().one())
        lines = [dict(r) for r in conn.execute(
            select(order_lines.c.line_no, order_lines.c.sku, order_lines.c.qty,
                   order_lines.c.unit_price, order_lines.c.amount)
            .where(order_lines.c.order_id == oid).order_by(order_lines.c.line_no)).mappings()]
        checks = [dict(r) for r in conn.execute(
            select(quarantine.c.check_id, quarantine.c.severity, quarantine.c.reason,
                   quarantine.c.value, quarantine.c.status, quarantine.c.created_at,
                   quarantine.c.run_id)
            .where(quarantine.c.order_id == oid).order_by(quarantine.c.check_id)).mappings()]
        events = [dict(r) for r in conn.execute(
            select(order_events.c.at, order_events.c.from_state, order_events.c.to_state,
                   order_events.c.reason, order_events.c.run_id)
            .where(order_events.c.order_id == oid)
            .order_by(order_events.c.at, order_events.c.id)).mappings()]
        actions = [dict(r) for r in conn.execute(
            select(ops_actions.c.at, ops_actions.c.action, ops_actions.c.actor,
                   ops_actions.c.reason, ops_actions.c.detail, ops_actions.c.run_id)
            .where(ops_actions.c.order_id == oid)
            .order_by(ops_actions.c.at, ops_actions.c.id)).mappings()]
        pushes = [dict(r) for r in conn.execute(
            select(outbox.c.target, outbox.c.operation, outbox.c.status, outbox.c.remote_id,
                   outbox.c.run_id)
            .where(outbox.c.order_id == oid).order_by(outbox.c.id)).mappings()]
    return {"order": order, "lines": lines, "checks": checks, "events": events,
            "actions": actions, "pushes": pushes}


# --- deciding ----------------------------------------------------------------------------------


@dataclass
class ActionResult:
    """What a command did: its run, and per order where it ended up."""

    run_id: str
    action: str
    actor: str
    orders: list[dict[str, Any]]  # {order_id, label, status, open_checks: [{check, reason, value}]}
    recheck: Any = None  # the gate's summary, when the command re-ran the checks
    recheck_error: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _start_run(conn: Connection, flow: str, summary: dict[str, Any], *,
               finished: bool, parent_id: str | None = None) -> str:
    """The command's run row, in the command's own transaction (a refused command leaves none)."""
    run_id = str(uuid.uuid4())
    now = _now()
    conn.execute(insert(runs).values(
        id=run_id, flow=flow, parent_id=parent_id, started_at=now,
        finished_at=now if finished else None, status="completed" if finished else "running",
        summary=json_safe(summary) if finished else None))
    return run_id


def record_actions(conn: Connection, run_id: str, actor: str, action: str, reason: str,
                   details: Mapping[int | None, Mapping[str, Any] | None]) -> None:
    """One ops_actions row per order (key None: a run-level act), in the caller's transaction."""
    now = _now()
    conn.execute(insert(ops_actions), [
        {"order_id": oid, "action": action, "actor": actor, "reason": reason,
         "detail": json_safe(dict(detail)) if detail is not None else None, "at": now,
         "run_id": run_id}
        for oid, detail in details.items()
    ])


def _close_quarantine(conn: Connection, ids: Sequence[int], status: str,
                      run_id: str) -> dict[int, list[str]]:
    """Open quarantine rows of these orders -> ``status``; returns order -> the checks closed."""
    closed: dict[int, list[str]] = {}
    for oid, check in conn.execute(
        select(quarantine.c.order_id, quarantine.c.check_id)
        .where(quarantine.c.order_id.in_(list(ids)), quarantine.c.status == "open")
        .order_by(quarantine.c.order_id, quarantine.c.check_id)
    ):
        closed.setdefault(oid, []).append(check)
    conn.execute(update(quarantine)
                 .where(quarantine.c.order_id.in_(list(ids)), quarantine.c.status == "open")
                 .values(status=status, run_id=run_id))
    return closed


def _reason(reason: str | None, command: str) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise OpsError(f"{command}: a reason is required (--reason TEXT)")
    return text


def _decide(engine: Engine, ops: OpsConfig, actor: str, command: str, refs: Iterable[str | int],
            reason: str | None, to_state: str, quarantine_status: str,
            recheck: Recheck | None) -> ActionResult:
    """release / override / reject: the shared shape."""
    ops.require(actor, command)
    why = _reason(reason, command)
    with begin_write(engine) as conn:
        rows = _find_all(conn, refs)
        _require_state(rows, "quarantined", command)
        ids = [r.id for r in rows]
        run_id = _start_run(conn, "quarantine", {"action": command, "actor": actor, "orders": ids},
                            finished=recheck is None)
        closed = _close_quarantine(conn, ids, quarantine_status, run_id)
        transition(conn, ids, to_state, run_id, f"{command} by {actor}: {why}")
        record_actions(conn, run_id, actor, command, why,
                       {oid: {"checks": closed.get(oid, []), "from": "quarantined",
                              "to": to_state} for oid in ids})
    return conclude(engine, run_id, command, actor, ids, recheck)


def release(engine: Engine, ops: OpsConfig, actor: str, refs: Iterable[str | int],
            reason: str | None, recheck: Recheck | None = None) -> ActionResult:
    """quarantined -> captured (quarantine rows ``released``), then ``recheck`` judges them."""
    return _decide(engine, ops, actor, "release", refs, reason, "captured", "released", recheck)


def override(engine: Engine, ops: OpsConfig, actor: str, refs: Iterable[str | int],
             reason: str | None) -> ActionResult:
    """Role approver: quarantined -> validated despite its failing checks (rows ``overridden``)."""
    return _decide(engine, ops, actor, "override", refs, reason, "validated", "overridden", None)


def reject(engine: Engine, ops: OpsConfig, actor: str, refs: Iterable[str | int],
           reason: str | None) -> ActionResult:
    """quarantined -> rejected (final; quarantine rows ``rejected``)."""
    return _decide(engine, ops, actor, "reject", refs, reason, "rejected", "rejected", None)


def conclude(engine: Engine, run_id: str, command: str, actor: str, ids: list[int],
             recheck: Recheck | None) -> ActionResult:
    """After a decision's transaction: re-check (when asked), close its run, report."""
    result = ActionResult(run_id, command, actor, [])
    if recheck is not None:
        try:
            result.recheck = recheck(engine, run_id)
        except Exception as exc:  # noqa: BLE001 - the decision is committed; say the rest failed
            lines = str(exc).strip().splitlines()
            result.recheck_error = lines[0] if lines else type(exc).__name__
        summary = {"action": command, "actor": actor, "orders": ids,
                   "recheck": result.recheck, "recheck_error": result.recheck_error}
        finish_run(engine, run_id, "failed" if result.recheck_error else "completed", summary)
    result.orders = outcome(engine, ids)
    return result


def outcome(engine: Engine, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Where these orders are now, with their open quarantine rows."""
    with engine.connect() as conn:
        heads = conn.execute(
            select(orders.c.id, orders.c.source, orders.c.external_id, orders.c.order_no,
                   orders.c.status).where(orders.c.id.in_(list(ids))).order_by(orders.c.id)).all()
        open_rows: dict[int, list[dict[str, Any]]] = {}
        for r in conn.execute(
            select(quarantine.c.order_id, quarantine.c.check_id, quarantine.c.reason,
                   quarantine.c.value)
            .where(quarantine.c.order_id.in_(list(ids)), quarantine.c.status == "open")
            .order_by(quarantine.c.order_id, quarantine.c.check_id)
        ):
            open_rows.setdefault(r.order_id, []).append(
                {"check": r.check_id, "reason": r.reason, "value": r.value})
    return [{"order_id": r.id, "label": label(r), "status": r.status,
             "open_checks": open_rows.get(r.id, []) if r.status == "quarantined" else []}
            for r in heads]


def held_orders(engine: Engine, source: str | None = None,
                held_by: str | None = None) -> list[int]:
    """Orders the gate's batch threshold holds (state ``held``), optionally of one source or
    held by one gate run."""
    q = select(orders.c.id).where(orders.c.status == "held").order_by(orders.c.id)
    if source is not None:
        q = q.where(orders.c.source == source)
    if held_by is not None:
        q = q.where(orders.c.id.in_(select(order_events.c.order_id).where(
            order_events.c.to_state == "held", order_events.c.run_id == held_by)))
    with engine.connect() as conn:
        return list(conn.scalars(q))


# --- fix ---------------------------------------------------------------------------------------


def _text(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "null") else value


def _decimal(value: str) -> Decimal | None:
    text = value.strip()
    if text in ("", "null"):
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _currency(value: str) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if len(text) != 3 or not text.isalpha():
        raise ValueError(f"{value!r} is not a three-letter ISO currency code")
    return text.upper()


def _datetime(value: str) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 datetime") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _sized(limit: int) -> Callable[[str], str | None]:
    def parse(value: str) -> str | None:
        text = _text(value)
        if text is not None and len(text) > limit:
            raise ValueError(f"longer than {limit} characters")
        return text
    return parse


ORDER_FIELDS: dict[str, Callable[[str], Any]] = {
    "customer_code": _sized(64), "customer_email": _sized(256), "currency": _currency,
    "ship_region": _sized(32), "order_no": _sized(128), "ordered_at": _datetime,
    "total": _decimal,
}
LINE_FIELDS: dict[str, Callable[[str], Any]] = {
    "sku": _sized(64), "qty": _decimal, "unit_price": _decimal,
}


@dataclass
class FixSpec:
    """Parsed ``--set`` values: order fields, and line_no -> line fields."""

    order: dict[str, Any] = field(default_factory=dict)
    lines: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, sets: Iterable[tuple[int | None, str]]) -> FixSpec:
        """``(line_no or None, "field=value")`` pairs, as ``--line N --set f=v`` gives them."""
        spec = cls()
        for line_no, expr in sets:
            name, sep, value = expr.partition("=")
            name = name.strip()
            fields = ORDER_FIELDS if line_no is None else LINE_FIELDS
            where = "--set" if line_no is None else f"--line {line_no} --set"
            if not sep or not name:
                raise OpsError(f"{where} {expr!r}: expected FIELD=VALUE")
            if name not in fields:
                hint = ("; line fields need --line N first" if line_no is None and name in LINE_FIELDS
                        else "")
                raise OpsError(f"{where} {name}: not a field that can be fixed "
                               f"(fixable: {', '.join(fields)}){hint}")
            try:
                parsed = fields[name](value)
            except ValueError as exc:
                raise OpsError(f"{where} {name}: {exc}") from None
            target = spec.order if line_no is None else spec.lines.setdefault(line_no, {})
            target[name] = parsed
        if not spec.order and not spec.lines:
            raise OpsError("fix: nothing to change; give --set FIELD=VALUE (and --line N for a line)")
        return spec


def _money_total(value: Decimal | None, currency: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return quantize(value, currency) if currency else value.quantize(Decimal("0.01"))
    except MoneyError:  # an unknown currency is currency_allowed's business, not ours
        return value.quantize(Decimal("0.01"))


def fix(engine: Engine, ops: OpsConfig, actor: str, ref: str | int, spec: FixSpec,
        reason: str | None, recheck: Recheck | None = None) -> ActionResult:
    """Edit a quarantined order's staged values, recompute what derives from them, record the
    before/after, move it quarantined -> captured (rows ``released``) and re-check it."""
    ops.require(actor, "fix")
    why = _reason(reason, "fix")
    with begin_write(engine) as conn:
        head = find_order(conn, ref)
        _require_state([head], "quarantined", "fix")
        oid = head.id
        order = conn.execute(select(orders).where(orders.c.id == oid).with_for_update()).one()
        lines = {r.line_no: r for r in conn.execute(
            select(order_lines).where(order_lines.c.order_id == oid).order_by(order_lines.c.line_no))}
        missing = sorted(set(spec.lines) - set(lines))
        if missing:
            have = ", ".join(map(str, lines)) or "none"
            raise OpsError(f"fix: {label(head)} has no line {missing[0]} (lines: {have}); "
                           "nothing was written")
        currency = spec.order.get("currency", order.currency)
        new_lines = {n: {"sku": r.sku, "qty": r.qty, "unit_price": r.unit_price,
                         **spec.lines.get(n, {})} for n, r in lines.items()}
        line_changes = []
        for n, r in lines.items():
            # every amount is recomputed: a new currency can change its decimals
            after = {**new_lines[n], "amount": _line_amount(new_lines[n], currency)}
            before = {"sku": r.sku, "qty": r.qty, "unit_price": r.unit_price, "amount": r.amount}
            if after != before:
                line_changes.append({"id": r.id, "line_no": n, "before": before, "after": after})
        values: dict[str, Any] = {k: v for k, v in spec.order.items() if getattr(order, k) != v}
        if not values and not line_changes:
            raise OpsError(f"fix: {label(head)} already holds these values; nothing was written")
        if "total" not in spec.order and line_changes and order.total is not None:
            # keep what the total holds beyond its lines (shipping, say): move it by the change
            # of the lines' sum; when a line has no amount, the total is left as it was
            old_sum = _sum(r.amount for r in lines.values())
            new_sum = _sum(_line_amount(line, currency) for line in new_lines.values())
            if old_sum is not None and new_sum is not None and new_sum != old_sum:
                values["total"] = order.total + (new_sum - old_sum)
        if "total" in values:
            values["total"] = _money_total(values["total"], currency)
        if "ordered_at" in values:
            at = values["ordered_at"]
            values["order_date"] = at.astimezone(UTC).date() if at else None
        if line_changes:
            values["lines_hash"] = lines_hash(new_lines.values())
        if {"customer_code", "customer_email"} & set(values):
            values["customer_id"] = None  # resolved again from the fixed code or e-mail

        run_id = _start_run(conn, "quarantine", {"action": "fix", "actor": actor, "orders": [oid]},
                            finished=recheck is None)
        for change in line_changes:
            conn.execute(update(order_lines).where(order_lines.c.id == change.pop("id"))
                         .values(**change["after"], run_id=run_id))
        if values:
            conn.execute(update(orders).where(orders.c.id == oid).values(**values))
        before = {k: getattr(order, k) for k in values}
        closed = _close_quarantine(conn, [oid], "released", run_id)
        transition(conn, [oid], "captured", run_id, f"fix by {actor}: {why}")
        record_actions(conn, run_id, actor, "fix", why, {oid: {
            "before": before, "after": values, "lines": line_changes,
            "checks": closed.get(oid, []), "from": "quarantined", "to": "captured"}})
    return conclude(engine, run_id, "fix", actor, [oid], recheck)


def _sum(values: Iterable[Decimal | None]) -> Decimal | None:
    total = Decimal("0")
    for v in values:
        if v is None:
            return None
        total += v
    return total


# --- rollback bookkeeping ----------------------------------------------------------------------


def rollback_holds(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Orders among a run's done outbox rows that a rollback must leave alone, with why:

    - ``paid``: a payment was applied against the invoice; undoing it would orphan the cash;
    - an invoice of the order sent by *another* run still stands while this run's pushes of
      the order would be undone (roll that run back first).
    """
    ids = sorted({int(r["order_id"]) for r in rows if r["order_id"] is not None})
    if not ids:
        return {}
    own = {int(r["id"]) for r in rows}
    pushed_here = {int(r["order_id"]) for r in rows
                   if r["order_id"] is not None and r["operation"] in PUSH_OPERATIONS}
    holds: dict[int, str] = {}
    with engine.connect() as conn:
        for oid, status in conn.execute(select(orders.c.id, orders.c.status)
                                        .where(orders.c.id.in_(ids))):
            if status == "paid":
                holds[oid] = "paid: a payment is applied to its invoice"
        for oid, oxid, run in conn.execute(
            select(outbox.c.order_id, outbox.c.id, outbox.c.run_id)
            .where(outbox.c.order_id.in_(sorted(pushed_here)),
                   outbox.c.operation == INVOICE_OPERATION, outbox.c.status == "done")
        ):
            if oxid not in own and oid not in holds:
                holds[oid] = f"its invoice was sent by run {run}: roll that run back first"
    return holds


def record_compensation(engine: Engine, rollback_run: str, rolled_back: str, actor: str,
                        reason: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Confirmed compensations of outbox ``rows`` (one target and operation), in one
    transaction: rows -> compensated, orders moved back, an ops_actions row per order.

    Moves: an undone fulfilment or sales order takes a pushed or invoiced order back to
    ``allocated``; an undone invoice takes an invoiced order back to ``pushed``. Nothing else is
    released: allocations and stock reservations, the warehouse invoice row and its number stay,
    so a re-push sends the very same documents. Orders in other states do not move.
    """
    if not rows:
        return {"compensated": 0, "to_allocated": 0, "to_pushed": 0}
    operation = rows[0]["operation"]
    ids = sorted({int(r["order_id"]) for r in rows if r["order_id"] is not None})
    why = f"rollback of run {rolled_back} by {actor}: {reason}"
    with begin_write(engine) as conn:
        before = dict(conn.execute(select(orders.c.id, orders.c.status)
                                   .where(orders.c.id.in_(ids))).all()) if ids else {}
        n = mark_compensated(conn, [int(r["id"]) for r in rows], rollback_run)
        to_allocated = to_pushed = 0
        if operation in PUSH_OPERATIONS and ids:
            to_allocated = transition(conn, select(orders.c.id).where(
                orders.c.id.in_(ids), orders.c.status.in_(("pushed", "invoiced"))),
                "allocated", rollback_run, why)
        elif operation == INVOICE_OPERATION and ids:
            to_pushed = transition(conn, select(orders.c.id).where(
                orders.c.id.in_(ids), orders.c.status == "invoiced"), "pushed", rollback_run, why)
        after = dict(conn.execute(select(orders.c.id, orders.c.status)
                                  .where(orders.c.id.in_(ids))).all()) if ids else {}
        docs: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            if r["order_id"] is not None:
                docs.setdefault(int(r["order_id"]), []).append(
                    {"outbox_id": r["id"], "target": r["target"], "operation": r["operation"],
                     "business_key": r["business_key"], "remote_id": r["remote_id"]})
        record_actions(conn, rollback_run, actor, "rollback", reason, {
            oid: {"run": rolled_back, "documents": docs[oid], "from": before.get(oid),
                  "to": after.get(oid)} for oid in ids})
    return {"compensated": n, "to_allocated": to_allocated, "to_pushed": to_pushed}


def status_counts(engine: Engine, ids: Iterable[int]) -> dict[str, int]:
    """state -> how many of these orders are in it now."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(select(orders.c.status, func.count())
                                 .where(orders.c.id.in_(wanted))
                                 .group_by(orders.c.status).order_by(orders.c.status)).all())


def record_run_action(engine: Engine, run_id: str, actor: str, action: str, reason: str,
                      detail: Mapping[str, Any]) -> None:
    """A run-level ops_actions row (order_id null): e.g. "alice rolled back run X"."""
    with begin_write(engine) as conn:
        record_actions(conn, run_id, actor, action, reason, {None: detail})


def start_ops_run(engine: Engine, flow: str, parent_id: str | None,
                  summary: Mapping[str, Any]) -> str:
    """A running ops run (rollback): finished by ``warehouse.runs.finish_run``."""
    with begin_write(engine) as conn:
        return _start_run(conn, flow, dict(summary), finished=False, parent_id=parent_id)


# --- re-push what a rollback undid --------------------------------------------------------------


def repush(engine: Engine, ops: OpsConfig, actor: str, refs: Iterable[str | int],
           reason: str | None) -> ActionResult:
    """Compensated outbox rows of these orders -> pending: the next push (fulfilment, sales
    order) or invoice stage sends them again and moves the orders on as usual."""
    ops.require(actor, "repush")
    why = _reason(reason, "repush")
    with begin_write(engine) as conn:
        rows = _find_all(conn, refs)
        ids = [r.id for r in rows]
        held = {oid: [] for oid in ids}
        for oid, target, operation in conn.execute(
            select(outbox.c.order_id, outbox.c.target, outbox.c.operation)
            .where(outbox.c.order_id.in_(ids), outbox.c.status == "compensated")
            .order_by(outbox.c.order_id, outbox.c.id)
        ):
            held[oid].append(f"{target}/{operation}")
        none = [r for r in rows if not held[r.id]]
        if none:
            raise OpsError(f"repush: {label(none[0])} has nothing rolled back to push again; "
                           "nothing was written")
        run_id = _start_run(conn, "repush", {"action": "repush", "actor": actor, "orders": ids},
                            finished=True)
        requeue_compensated(conn, ids, run_id)
        record_actions(conn, run_id, actor, "repush", why,
                       {oid: {"documents": held[oid]} for oid in ids})
    return ActionResult(run_id, "repush", actor, outcome(engine, ids))


__all__ = [
    "ActionResult", "FixSpec", "OpsConfig", "OpsError", "Recheck", "RoleError", "conclude",
    "find_order", "fix", "held_orders", "label", "list_quarantine", "outcome", "override",
    "record_actions", "record_compensation", "record_run_action", "reject", "release", "repush",
    "rollback_holds", "show_order", "start_ops_run", "status_counts",
]
