"""Allocation: reserve stock for validated (and backordered) orders by the declared rules.

Orders are served in priority order (ordered_at, id), and each line takes stock the earlier
lines left, so this is the one stage that genuinely needs sequence. It still costs a fixed
number of statements whatever the volume: one query for the work (orders, lines, current
allocations), one for the stock, the pure rules (``allocation_rules.choose``) over plain tuples,
then bulk writes (COPY on PostgreSQL, executemany on SQLite) and set-based transitions, all in
ONE transaction.

- An order is all-or-nothing within a run: if no rule can place one of its lines, nothing of
  it is written (it stays where it was, counted as ``unallocated``).
- A backordered line is re-evaluated on every run: when stock has arrived its allocation row
  becomes ``allocated`` in place (one allocation row per line), and once every line is
  allocated the order moves ``backordered -> allocated``. Lines already allocated are never
  touched again, so a rerun with unchanged stock writes nothing.
- On PostgreSQL the orders taken are locked with SKIP LOCKED (a concurrent allocator takes
  others) and the stock rows with FOR UPDATE (in sku order: no deadlock), so two allocators
  never reserve the same units. On SQLite the transaction holds the write lock from the start.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, select, update

from warehouse.allocation_rules import Decision, LineNeed, Rule, choose, validate_rules
from warehouse.engine import begin_write
from warehouse.load import _bulk_insert as bulk_insert  # lead: worth a public home in engine.py
from warehouse.orders import transition
from warehouse.schema import allocations, customers, order_lines, orders, stock, warehouses

TAKES = ("validated", "backordered")


@dataclass
class _Line:
    line_id: int
    sku: str | None
    qty: Decimal | None
    state: str | None = None  # None (new), "backordered" or "allocated"
    allocation_id: int | None = None


@dataclass
class _Order:
    order_id: int
    status: str
    ship_region: str | None
    customer_region: str | None
    lines: list[_Line] = field(default_factory=list)


@dataclass
class _Plan:
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    reserve: Counter[tuple[str, str]] = field(default_factory=Counter)
    to_allocated: list[int] = field(default_factory=list)
    to_backordered: list[int] = field(default_factory=list)
    lines_by_rule: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    unallocated: int = 0


def allocate(engine: Engine, run_id: str, rules: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Allocate validated and backordered orders; return the counts of this run.

    {allocated: orders that became allocated, backordered: orders that became backordered,
     lines_by_rule: {rule id: allocation rows written}, skipped: orders with a line lacking a
     sku or a positive qty, unallocated: orders no rule could place}
    """
    parsed = validate_rules(rules)  # a config error surfaces before any lock is taken
    with begin_write(engine) as conn:
        work = _fetch_work(conn)
        if not work:
            return _counts(_Plan())
        available, regions = _fetch_stock(conn)
        plan = _plan(work, available, regions, parsed, run_id)
        _write(conn, plan, run_id)
    return _counts(plan)


def _counts(plan: _Plan) -> dict[str, Any]:
    return {
        "allocated": len(plan.to_allocated),
        "backordered": len(plan.to_backordered),
        "lines_by_rule": dict(sorted(plan.lines_by_rule.items())),
        "skipped": plan.skipped,
        "unallocated": plan.unallocated,
    }


def _fetch_work(conn: Connection) -> list[_Order]:
    """Every order to look at, in priority order, with its lines and their allocation state."""
    q = (
        select(
            orders.c.id, orders.c.status, orders.c.ship_region, customers.c.region,
            order_lines.c.id, order_lines.c.sku, order_lines.c.qty,
            allocations.c.id, allocations.c.status,
        )
        .select_from(orders)
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
        .outerjoin(order_lines, order_lines.c.order_id == orders.c.id)
        .outerjoin(allocations, allocations.c.order_line_id == order_lines.c.id)
        .where(orders.c.status.in_(TAKES))
        # explicit NULLS LAST: SQLite and PostgreSQL disagree on the default
        .order_by(orders.c.ordered_at.asc().nulls_last(), orders.c.id, order_lines.c.line_no,
                  allocations.c.id)
        .with_for_update(of=orders, skip_locked=True)
    )
    work: list[_Order] = []
    line: _Line | None = None
    for oid, status, ship_region, cust_region, lid, sku, qty, aid, astatus in conn.execute(q):
        if not work or work[-1].order_id != oid:
            work.append(_Order(oid, status, ship_region, cust_region))
            line = None
        if lid is None:
            continue  # an order without lines: caught as skipped in _plan
        if line is None or line.line_id != lid:
            line = _Line(lid, sku, qty)
            work[-1].lines.append(line)
        # a line with an allocated row is done; a backordered row is the one to re-evaluate
        if astatus == "allocated" or (astatus == "backordered" and line.state is None):
            line.state, line.allocation_id = astatus, aid
    return work


def _fetch_stock(
    conn: Connection,
) -> tuple[dict[str, dict[str, Decimal]], dict[str, str | None]]:
    """Available stock (on_hand - reserved) per sku and warehouse, for the skus in play."""
    wanted = (
        select(order_lines.c.sku)
        .join(orders, orders.c.id == order_lines.c.order_id)
        .where(orders.c.status.in_(TAKES))
    )
    q = (
        select(stock.c.sku, stock.c.warehouse, stock.c.on_hand, stock.c.reserved,
               warehouses.c.region)
        .outerjoin(warehouses, warehouses.c.code == stock.c.warehouse)
        .where(stock.c.sku.in_(wanted))
        .order_by(stock.c.sku, stock.c.warehouse)  # one lock order for every allocator
        .with_for_update(of=stock)
    )
    available: dict[str, dict[str, Decimal]] = defaultdict(dict)
    regions: dict[str, str | None] = {}
    for sku, wh, on_hand, reserved, region in conn.execute(q):
        # subtract in Python: Decimal exact on SQLite too (its Numeric is a REAL underneath)
        available[sku][wh] = on_hand - (reserved or 0)
        regions[wh] = region
    return available, regions


def _plan(
    work: Iterable[_Order],
    available: dict[str, dict[str, Decimal]],
    regions: dict[str, str | None],
    rules: Sequence[Rule],
    run_id: str,
) -> _Plan:
    plan = _Plan()
    for order in work:
        if not order.lines or any(
            ln.sku is None or ln.qty is None or ln.qty <= 0 for ln in order.lines
        ):
            plan.skipped += 1  # checks should never let this through: count it, touch nothing
            continue
        taken: Counter[tuple[str, str]] = Counter()
        decided: list[tuple[_Line, Decision]] = []
        for ln in order.lines:
            if ln.state == "allocated":
                continue
            sku, qty = ln.sku, ln.qty
            assert sku is not None and qty is not None  # checked above; for the type checker
            left = {w: q - taken[(sku, w)] for w, q in available.get(sku, {}).items()}
            need = LineNeed(sku, qty, order.ship_region, order.customer_region)
            decision = choose(need, left, regions, rules)
            if decision is None:
                break
            if decision.warehouse is not None:
                taken[(sku, decision.warehouse)] += qty
            decided.append((ln, decision))
        else:
            _commit_order(plan, order, decided, taken, available, run_id)
            continue
        plan.unallocated += 1  # no rule could place a line: the order is left as it was
    return plan


def _commit_order(
    plan: _Plan,
    order: _Order,
    decided: list[tuple[_Line, Decision]],
    taken: Counter[tuple[str, str]],
    available: dict[str, dict[str, Decimal]],
    run_id: str,
) -> None:
    """Turn one order's decisions into planned writes and take its stock for later orders."""
    for (sku, wh), qty in taken.items():
        available[sku][wh] -= qty
        plan.reserve[(sku, wh)] += qty
    backordered = False
    for ln, d in decided:
        if d.warehouse is None:
            backordered = True
            if ln.state == "backordered":
                continue  # still no stock: the existing backorder row says so already
            plan.inserts.append(_row(ln, d, "backordered", run_id))
        elif ln.state == "backordered":
            # stock arrived: the line's one allocation row becomes allocated in place
            plan.updates.append({"b_id": ln.allocation_id, **_values(d, "allocated", run_id)})
        else:
            plan.inserts.append(_row(ln, d, "allocated", run_id))
        plan.lines_by_rule[d.rule_id] += 1
    if not backordered:
        plan.to_allocated.append(order.order_id)
    elif order.status == "validated":
        plan.to_backordered.append(order.order_id)


def _values(d: Decision, status: str, run_id: str) -> dict[str, Any]:
    return {"warehouse": d.warehouse, "qty": d.qty, "status": status, "rule_id": d.rule_id,
            "rule_inputs": d.inputs, "run_id": run_id}


def _row(ln: _Line, d: Decision, status: str, run_id: str) -> dict[str, Any]:
    return {"order_line_id": ln.line_id, **_values(d, status, run_id)}


def _write(conn: Connection, plan: _Plan, run_id: str) -> None:
    if plan.inserts:
        rows = plan.inserts
        if conn.dialect.name == "postgresql":
            # COPY takes the JSON column as text (no SQLAlchemy type processing on that path)
            rows = [{**r, "rule_inputs": json.dumps(r["rule_inputs"])} for r in rows]
        bulk_insert(conn, allocations, rows)  # COPY on PostgreSQL: ~10x a pipelined executemany
    if plan.updates:
        conn.execute(
            update(allocations)
            .where(allocations.c.id == bindparam("b_id"), allocations.c.status == "backordered")
            .values({c: bindparam(c) for c in ("warehouse", "qty", "status", "rule_id",
                                                "rule_inputs", "run_id")}),
            plan.updates,
        )
    if plan.reserve:
        conn.execute(
            update(stock)
            .where(and_(stock.c.sku == bindparam("b_sku"), stock.c.warehouse == bindparam("b_wh")))
            .values(reserved=stock.c.reserved + bindparam("b_qty", type_=stock.c.reserved.type),
                    run_id=run_id),
            [{"b_sku": s, "b_wh": w, "b_qty": q} for (s, w), q in sorted(plan.reserve.items())],
        )
    for ids, state, reason in (
        (plan.to_allocated, "allocated", "every line allocated"),
        (plan.to_backordered, "backordered", "a line waits for stock"),
    ):
        if ids:
            transition(conn, ids, state, run_id, reason)  # one statement set, any number of ids
