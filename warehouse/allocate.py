"""Allocation: reserve stock for validated (and backordered) orders by the declared rules.

Orders are served in the declared priority order (``allocation.priority``; ties by ordered_at,
then id), and each line takes the stock the earlier lines left, so this is the one stage that
genuinely needs sequence. The database sorts the open orders by that priority once, into a
temporary queue (``engine.id_queue``); they are then decided ``CHUNK_ORDERS`` at a time, so
memory follows the chunk size, not the number of open orders. Per chunk a fixed number of
statements: the work (the orders, taking their locks; their lines; the allocation rows of
those lines that can hold some), the stock of the skus no earlier chunk met (kept in memory,
net of what earlier chunks reserved), the pure rules (``allocation_rules.plan_orders``) over
plain values, then the allocation rows in bulk (COPY on PostgreSQL, the driver's executemany
on SQLite; each row's ``rule_inputs`` encoded once) and a mark per placed order in the queue.
The stock rows' ``reserved`` is written once, after the last chunk (one update per stock row
in play, not one per chunk that took from it). A second pass over the marked orders, in order
id order, moves their states (set-based ``transition``, with the order_events) and gives them
owners (``owners.assign_owners``, round-robin in order id order): in id order, each of its
chunks updates neighbouring order rows, not rows spread over the whole table. All of it is ONE
transaction. The cyclic GC's automatic full collections are paused meanwhile (``paused_gc``):
they cost a third of the stage.

- An order is all-or-nothing within a run: if no rule can place one of its lines, nothing of it
  is written (it stays where it was, counted as ``unallocated``).
- A line's rows: one per warehouse it takes from (``allocated``) plus at most one
  ``backordered`` row for what waits. Every run re-decides only the waiting quantity, so stock
  already reserved is never reserved twice: the backordered row becomes ``allocated`` in place
  (or shrinks to what still waits), and a quantity placed in a warehouse the line already holds
  is added to that row, whose ``rule_inputs.earlier`` keeps the earlier decisions. Once no line
  waits the order moves ``backordered -> allocated``. A rerun with unchanged stock writes nothing.
- On PostgreSQL the orders taken are locked with SKIP LOCKED (a concurrent allocator takes
  others), chunk by chunk; the stock rows in play all up front with FOR UPDATE (in sku order:
  no deadlock), and the owner counters
  FOR UPDATE, so two allocators never reserve the same units nor hand out the same turn. On
  SQLite the transaction holds the write lock from the start.

``dry_run`` replays the open orders under two configurations without writing anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Select, case, delete, func, select

from connectors.base import paused_gc
from warehouse.allocation_rules import (
    AllocationConfig,
    Decision,
    LineIn,
    OrderIn,
    OrderPlan,
    PriorityKey,
    Steps,
    Warehouses,
    plan_orders,
    steps_label,
)
from warehouse.engine import (
    IdQueue,
    begin_write,
    connection_worker,
    id_queue,
    in_values,
    insert_rows,
    json_text,
    update_rows,
)
from warehouse.orders import transition
from warehouse.owners import (
    OwnerNeed,
    OwnersConfig,
    assign_owners,
    lock_counters,
    read_counters,
    teams_needed,
    write_owners,
)
from warehouse.schema import allocations, customers, order_lines, orders, stock, warehouses

TAKES = ("validated", "backordered")
# A dry run also replays what is allocated but not yet pushed: that is where new rules would
# still change something.
REPLAYS = ("validated", "backordered", "allocated")
PLACED = ("allocated", "backordered")
# Orders decided per chunk: memory follows this, not the number of open orders.
CHUNK_ORDERS = 5000
# allocations columns of an insert row (``_Writes.inserts``), in this order
INSERT_COLUMNS = ("order_line_id", "warehouse", "qty", "status", "rule_id", "rule_inputs", "run_id")
# ... and of an update row (``_Writes.updates``: the status read, id, then these)
UPDATE_COLUMNS = ("warehouse", "qty", "status", "rule_id", "rule_inputs", "run_id")
# marks of a placed order in the queue (bits): what the second pass does for it
OWNER, TO_ALLOCATED, TO_BACKORDERED = 1, 2, 4


@dataclass
class _Row:
    """One existing allocations row."""

    id: int
    warehouse: str | None
    qty: Decimal
    rule_id: str
    run_id: str


@dataclass
class _Held:
    """A line's existing rows: allocated ones by warehouse, and what waits."""

    sku: str | None
    allocated: dict[str, _Row] = field(default_factory=dict)
    backordered: _Row | None = None


@dataclass
class _Writes:
    inserts: list[tuple[Any, ...]] = field(default_factory=list)  # INSERT_COLUMNS values
    updates: list[tuple[Any, ...]] = field(default_factory=list)  # status read, id, UPDATE_COLUMNS
    deletes: list[int] = field(default_factory=list)
    merges: list[tuple[_Row, Decision, Decimal]] = field(default_factory=list)  # (row, step, added)
    to_allocated: list[int] = field(default_factory=list)
    to_backordered: list[int] = field(default_factory=list)
    lines_by_rule: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    unallocated: int = 0
    owners_assigned: int = 0
    n_allocated: int = 0  # counts taken over from chunks already written
    n_backordered: int = 0

    def add_counts(self, other: _Writes) -> None:
        """Take over another chunk's counts (its rows are written already)."""
        self.n_allocated += len(other.to_allocated) + other.n_allocated
        self.n_backordered += len(other.to_backordered) + other.n_backordered
        self.lines_by_rule += other.lines_by_rule
        self.skipped += other.skipped
        self.unallocated += other.unallocated


def allocate(
    engine: Engine,
    run_id: str,
    config: AllocationConfig | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    chunk_size: int = CHUNK_ORDERS,
) -> dict[str, Any]:
    """Allocate validated and backordered orders; return the counts of this run.

    ``config``: orderhub.yaml's whole ``allocation`` mapping (rules, priority, owners), an
    ``AllocationConfig``, or a bare rules list (no priority, no owners).

    {allocated: orders that became allocated, backordered: orders that became backordered,
     lines_by_rule: {rule id: lines it decided in this run}, skipped: orders with a line lacking
     a sku or a positive qty, unallocated: orders no rule could place, owners_assigned: orders
     that got their owner}
    """
    cfg = AllocationConfig.from_config(config)  # a config error surfaces before any lock is taken
    writes = _Writes()
    with paused_gc(), begin_write(engine) as conn:
        queue_ids = (select(orders.c.id)
                     .outerjoin(customers, customers.c.id == orders.c.customer_id)
                     .where(orders.c.status.in_(TAKES)))
        with id_queue(conn, queue_ids, priority_order(cfg.priority)) as queue:
            if conn.dialect.name == "postgresql":
                _lock_stock(conn, TAKES)
            # available stock of the skus met so far, kept net of what earlier chunks took:
            # each stock row is read once, whatever the number of chunks
            stock_left: dict[str, dict[str, Decimal]] = {}
            stock_read: dict[str, dict[str, Decimal]] = {}  # as read: what the run took is the
            # difference (what its rows hold: the planner takes exactly the placed quantities)
            regions: dict[str, str | None] = {}
            views = Warehouses()  # per sku, worked out once for all chunks
            # The database work runs on a worker thread, the planning here: chunk N+1 is read
            # while chunk N is planned, and chunk N is written while N+1 is planned. The read
            # of N+1 goes before the write of N: it reads other orders' rows, and stock, which
            # no chunk writes (the reservations are written once, at the end).
            # (on SQLite the jobs run in turn: its driver gains nothing from a thread, see
            # connection_worker)
            with connection_worker(conn, threaded=conn.dialect.name == "postgresql") as db:
                chunks = queue.chunks(chunk_size)
                met: set[str] = set()  # skus whose stock a read already asked for
                reading = db.submit(_read_chunk, chunks, met)
                while (got := reading.result()) is not None:
                    reading = db.submit(_read_chunk, chunks, met)
                    work, held, new, (more, more_regions) = got
                    if not work:
                        continue
                    for sku in new:
                        stock_read[sku] = by_wh = more.get(sku, {})
                        stock_left[sku] = dict(by_wh)
                    regions.update(more_regions)
                    # the placed orders take what they reserved from stock_left itself (in the
                    # stock table below)
                    plans = plan_orders(work, stock_left, regions, cfg, views, consume=True)
                    chunk = _Writes()
                    for plan in plans:
                        _plan_writes(chunk, plan, held, run_id)
                    owned = plans if cfg.owners is not None else ()
                    db.submit(_write_chunk, chunk, queue, owned, run_id)
                    writes.add_counts(chunk)
                    # no collection per chunk: the TPC-H SF 0.1 chunks left ~1,100 objects in
                    # cycles all told, and on PostgreSQL the 30 collections of the young
                    # generations (the read-ahead chunk among them) took 2.5 s
                    del work, held, plans, chunk, owned, got
            # once for the whole run, not per chunk: a stock row in play is updated once, however
            # many chunks took from it. Safe: a later chunk reads from the table only the stock
            # of skus no earlier chunk met (what it reserved is in stock_left already)
            _reserve(conn, stock_read, stock_left, run_id)
            # a second pass over the placed orders, in order id order: their state moves (with
            # the order_events) and owners (round-robin goes in order id order, not priority
            # order). In id order, each chunk updates neighbouring order rows, not rows spread
            # over the whole table
            for marked in queue.flagged(chunk_size):
                writes.owners_assigned += _settle(conn, marked, cfg.owners, run_id)
    return _counts(writes)


def priority_order(priority: Sequence[PriorityKey]) -> list[Any]:
    """SQL ORDER BY terms that sort orders exactly as ``allocation_rules.priority_key`` does:
    the declared keys in turn (listed values first, in their order), then the oldest
    ordered_at (none: last), then the lowest id."""
    terms: list[Any] = []
    for key in priority:
        if key.by == "ordered_at":
            terms += [orders.c.ordered_at.is_(None), orders.c.ordered_at]
        elif key.order:
            col = customers.c.customer_group if key.by == "customer_group" else orders.c[key.by]
            terms.append(case(*((col == v, i) for i, v in enumerate(key.order)),
                              else_=len(key.order)))
    return [*terms, orders.c.ordered_at.is_(None), orders.c.ordered_at, orders.c.id]


def _counts(w: _Writes) -> dict[str, Any]:
    return {
        "allocated": len(w.to_allocated) + w.n_allocated,
        "backordered": len(w.to_backordered) + w.n_backordered,
        "lines_by_rule": dict(sorted(w.lines_by_rule.items())),
        "skipped": w.skipped,
        "unallocated": w.unallocated,
        "owners_assigned": w.owners_assigned,
    }


# --- read ---------------------------------------------------------------------------------------


def _read_chunk(conn: Connection, chunks: Iterator[list[int]], met: set[str]
                ) -> tuple[list[OrderIn], dict[int, _Held], list[str],
                           tuple[dict[str, dict[str, Decimal]], dict[str, str | None]]] | None:
    """The next chunk of the queue: its work, and the stock of its skus no earlier chunk met
    (added to ``met``); None at the end of the queue."""
    ids = next(chunks, None)
    if ids is None:
        return None
    work, held = _fetch_work(conn, TAKES, lock=True, ids=ids)
    new = sorted({ln.sku for o in work for ln in o.lines if ln.sku is not None} - met)
    met.update(new)
    stock_rows = _fetch_stock(conn, TAKES, lock=False, skus=new) if new else ({}, {})
    return work, held, new, stock_rows


def _write_chunk(conn: Connection, chunk: _Writes, queue: IdQueue,
                 plans: Sequence[OrderPlan], run_id: str) -> None:
    """A planned chunk's rows, and its orders' marks for the second pass."""
    _resolve_merges(conn, chunk, run_id)
    _write(conn, chunk)
    _mark(queue, chunk, plans)


def _fetch_work(
    conn: Connection, statuses: Sequence[str], lock: bool, ids: Sequence[int] | None = None
) -> tuple[list[OrderIn], dict[int, _Held]]:
    """The orders in ``statuses`` (of ``ids``, when given) with their lines and allocation rows
    (order id order: the rules sort by priority themselves). Three queries: the orders (taking
    the locks), their lines (so the order columns are not repeated on every line row), and the
    allocation rows of the lines of orders that can hold some.

    Only orders past ``validated`` can hold allocation rows: rows are written together with
    the move to allocated or backordered, and no state leads back to validated. So a validated
    order's lines are not looked up in allocations (most lines of a run): as the table grows
    within the run's transaction, PostgreSQL would answer that join with a scan of the whole
    table for every chunk."""
    dialect = conn.dialect.name
    chosen = [orders.c.status.in_(statuses)]
    if ids is not None:
        chosen.append(in_values(orders.c.id, ids, dialect))
    q = (
        select(orders.c.id, orders.c.status, orders.c.order_no, orders.c.source,
               orders.c.ordered_at, orders.c.ship_region, orders.c.owner, orders.c.team,
               customers.c.region, customers.c.customer_group)
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
        .where(*chosen)
        .order_by(orders.c.id)
    )
    if lock:
        q = q.with_for_update(of=orders, skip_locked=True)
    heads = {row[0]: row for row in conn.execute(q)}
    if not heads:
        return [], {}
    lines_q = (select(order_lines.c.order_id, order_lines.c.id, order_lines.c.line_no,
                      order_lines.c.sku, order_lines.c.qty)
               .order_by(order_lines.c.order_id, order_lines.c.line_no))
    if ids is not None:
        # found by their order ids (the index on order_lines.order_id), not through a join
        # that PostgreSQL answers by scanning every line
        lines_q = lines_q.where(in_values(order_lines.c.order_id, list(heads), dialect))
    else:
        lines_q = lines_q.join(orders, orders.c.id == order_lines.c.order_id).where(*chosen)
    lines: dict[int, list[LineIn]] = {oid: [] for oid in heads}
    past_validated = {oid for oid, head in heads.items() if head[1] != "validated"}
    may_hold: dict[int, LineIn] = {}  # their lines, by line id
    for oid, lid, line_no, sku, qty in conn.execute(lines_q):
        of_order = lines.get(oid)
        if of_order is None:
            continue  # another allocator holds it (SKIP LOCKED), or it moved on meanwhile
        ln = LineIn(lid, line_no, sku, qty, qty)  # waiting: all of it, unless rows say less
        of_order.append(ln)
        if past_validated and oid in past_validated:
            may_hold[lid] = ln
    # only lines that have allocation rows get a _Held (most lines have none yet)
    held: dict[int, _Held] = {}
    if may_hold:
        rows_q = (select(allocations.c.order_line_id, allocations.c.id, allocations.c.warehouse,
                         allocations.c.qty, allocations.c.status, allocations.c.rule_id,
                         allocations.c.run_id)
                  .order_by(allocations.c.order_line_id, allocations.c.id))
        if ids is not None:
            rows_q = rows_q.where(in_values(allocations.c.order_line_id, list(may_hold), dialect))
        else:
            rows_q = (rows_q.join(order_lines, order_lines.c.id == allocations.c.order_line_id)
                      .join(orders, orders.c.id == order_lines.c.order_id)
                      .where(*chosen, orders.c.status != "validated"))
        for lid, aid, wh, aqty, astatus, rule_id, arun in conn.execute(rows_q):
            ln = may_hold.get(lid)
            if ln is None:
                continue
            h = held.get(lid)
            if h is None:
                h = held[lid] = _Held(ln.sku)
            row = _Row(aid, wh, aqty, rule_id, arun)  # rule_inputs: read only when merging
            if astatus == "allocated" and wh is not None:
                h.allocated[wh] = row
            elif astatus == "backordered":
                h.backordered = row
            ln.waiting = _waiting(h, ln.qty)
    work = []
    for oid, (_, status, order_no, source, ordered_at, ship, owner, team, cust_region,
              group) in heads.items():
        work.append(OrderIn(
            oid, status, tuple(lines[oid]),
            ordered_at=ordered_at, ship_region=ship, customer_region=cust_region,
            customer_group=group, source=source, order_no=order_no, owner=owner, team=team))
    return work, held


def _waiting(h: _Held, qty: Decimal | None) -> Decimal | None:
    """What the line still needs placed: its backordered row, or all of it if it has no row."""
    if h.backordered is not None:
        return h.backordered.qty
    return None if h.allocated else qty


def _wanted_skus(statuses: Sequence[str]) -> Select:
    return (
        select(order_lines.c.sku)
        .join(orders, orders.c.id == order_lines.c.order_id)
        .where(orders.c.status.in_(statuses))
    )


def _fetch_stock(
    conn: Connection, statuses: Sequence[str], lock: bool, skus: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, Decimal]], dict[str, str | None]]:
    """Available stock (on_hand - reserved) per sku and warehouse, for the skus in play (or
    for ``skus``, when given)."""
    wanted = (in_values(stock.c.sku, skus, conn.dialect.name) if skus is not None
              else stock.c.sku.in_(_wanted_skus(statuses)))
    q = (
        select(stock.c.sku, stock.c.warehouse, stock.c.on_hand, stock.c.reserved,
               warehouses.c.region)
        .outerjoin(warehouses, warehouses.c.code == stock.c.warehouse)
        .where(wanted)
        .order_by(stock.c.sku, stock.c.warehouse)  # one lock order for every allocator
    )
    if lock:
        q = q.with_for_update(of=stock)
    available: dict[str, dict[str, Decimal]] = {}
    regions: dict[str, str | None] = {}
    for sku, wh, on_hand, reserved, region in conn.execute(q):
        # subtract in Python: Decimal exact on SQLite too (its Numeric is a REAL underneath)
        available.setdefault(sku, {})[wh] = on_hand - (reserved or 0)
        regions[wh] = region
    return available, regions


def _lock_stock(conn: Connection, statuses: Sequence[str]) -> None:
    """PostgreSQL: lock every stock row in play up front, in one (sku, warehouse) order, so two
    allocators never deadlock whatever chunks they read later; nothing comes back to Python."""
    locked = (select(stock.c.sku)
              .where(stock.c.sku.in_(_wanted_skus(statuses)))
              .order_by(stock.c.sku, stock.c.warehouse)
              .with_for_update(of=stock))
    conn.execute(select(func.count()).select_from(locked.subquery()))


def _fetch_needs(conn: Connection, ids: Sequence[int]) -> list[OwnerNeed]:
    """Owner needs of these (placed, ownerless) orders, in id order."""
    q = (select(orders.c.id, orders.c.ship_region, customers.c.region)
         .outerjoin(customers, customers.c.id == orders.c.customer_id)
         .where(in_values(orders.c.id, ids, conn.dialect.name), orders.c.owner.is_(None))
         .order_by(orders.c.id))
    return [OwnerNeed(oid, ship, region) for oid, ship, region in conn.execute(q)]


# --- decisions -> rows --------------------------------------------------------------------------


def _plan_writes(w: _Writes, plan: OrderPlan, held: dict[int, _Held], run_id: str) -> None:
    """Turn one order's decisions into row writes against the line's existing rows."""
    order = plan.order
    if plan.outcome == "skipped":
        w.skipped += 1
        return
    if plan.outcome == "unallocated":
        w.unallocated += 1
        return
    # (what the rows hold is taken from the stock rows at the end: allocate's _reserve)
    lines_by_rule, inserts = w.lines_by_rule, w.inserts
    for ln, steps in plan.decisions:
        h = held.get(ln.line_id) if held else None
        if h is None and len(steps) == 1:
            # nearly every line of a new order: no rows yet, one decision; rows to insert
            d = steps[0]
            rule_id = d.rule_id
            lines_by_rule[rule_id] += 1
            text = json_text(d.inputs)
            for p in d.allocated:
                inserts.append((ln.line_id, p.warehouse, p.qty, "allocated", rule_id, text, run_id))
            if d.backordered:
                inserts.append((ln.line_id, None, d.waiting, "backordered", rule_id, text, run_id))
            continue
        if h is None:
            h = _Held(ln.sku)
        bo = h.backordered
        if (len(steps) == 1 and not steps[0].allocated and bo is not None
                and bo.qty == steps[0].waiting):
            continue  # still no stock: the existing backorder row says so already
        # the backorder row keeps what still waits; if nothing does, it becomes an allocation
        free = None if any(d.backordered for d in steps) else bo
        for d in steps:
            w.lines_by_rule[d.rule_id] += 1
            for p in d.allocated:
                assert p.warehouse is not None
                old = h.allocated.get(p.warehouse)
                if old is not None:
                    # one row per (line, warehouse, status): add to it, keeping the earlier why
                    w.merges.append((old, d, p.qty))
                elif free is not None:
                    w.updates.append(_update(free, "allocated", p.warehouse, p.qty, d, run_id))
                    free = None
                else:
                    w.inserts.append(_insert(ln, "allocated", p.warehouse, p.qty, d, run_id))
            if d.backordered:  # only a line's last step can leave something waiting
                if bo is not None:
                    w.updates.append(_update(bo, "backordered", None, d.waiting, d, run_id))
                else:
                    w.inserts.append(_insert(ln, "backordered", None, d.waiting, d, run_id))
        if free is not None:
            w.deletes.append(free.id)  # everything that waited went into rows the line held
    if plan.outcome == "allocated" and order.status != "allocated":
        w.to_allocated.append(order.order_id)
    elif plan.outcome == "backordered" and order.status == "validated":
        w.to_backordered.append(order.order_id)


def _resolve_merges(conn: Connection, w: _Writes, run_id: str) -> None:
    """Top-ups of rows a line already holds: their earlier inputs are read (one query, only
    for these rows) so the row keeps every decision that filled it."""
    if not w.merges:
        return
    ids = [row.id for row, _, _ in w.merges]
    earlier_inputs = dict(conn.execute(
        select(allocations.c.id, allocations.c.rule_inputs)
        .where(in_values(allocations.c.id, ids, conn.dialect.name))).all())
    for old, d, added in w.merges:
        before = earlier_inputs.get(old.id) or {}
        earlier = [*before.get("earlier", []),
                   {"rule_id": old.rule_id, "qty": str(old.qty), "run_id": old.run_id,
                    "inputs": {k: v for k, v in before.items() if k != "earlier"}}]
        inputs = {**d.inputs, "added": str(added), "earlier": earlier}
        w.updates.append(_update(old, "allocated", old.warehouse, old.qty + added, d, run_id,
                                 inputs=inputs))


def _insert(ln: LineIn, status: str, warehouse: str | None, qty: Decimal, d: Decision,
            run_id: str) -> tuple[Any, ...]:
    """An allocations row in INSERT_COLUMNS order, its inputs as JSON text (encoded once)."""
    return (ln.line_id, warehouse, qty, status, d.rule_id, json_text(d.inputs), run_id)


def _update(row: _Row, status: str, warehouse: str | None, qty: Decimal, d: Decision, run_id: str,
            inputs: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """An update of an allocations row: the status it was read with, its id, then the
    UPDATE_COLUMNS values."""
    was = "allocated" if row.warehouse is not None else "backordered"
    return (was, row.id, warehouse, qty, status, d.rule_id,
            json_text(d.inputs if inputs is None else inputs), run_id)


def _write(conn: Connection, w: _Writes) -> None:
    """A chunk's allocations rows (its orders' state moves come in the second pass)."""
    if w.deletes:
        conn.execute(delete(allocations).where(
            in_values(allocations.c.id, w.deletes, conn.dialect.name),
            allocations.c.status == "backordered"))
    for was in ("allocated", "backordered"):
        # guarded by the status we read: a row changed under us is not overwritten blindly
        rows = [u[1:] for u in w.updates if u[0] == was]
        update_rows(conn, allocations, "id", UPDATE_COLUMNS, rows, only_where={"status": was})
    if w.inserts:
        # COPY on PostgreSQL (~10x an executemany), the driver's executemany on SQLite
        insert_rows(conn, allocations, INSERT_COLUMNS, w.inserts)


def _mark(queue: IdQueue, w: _Writes, plans: Sequence[OrderPlan]) -> None:
    """Mark the chunk's placed orders in the queue with what the second pass does for them:
    move to allocated or backordered, and give an owner to those of ``plans`` that need one."""
    marks = dict.fromkeys(w.to_allocated, TO_ALLOCATED)
    marks.update(dict.fromkeys(w.to_backordered, TO_BACKORDERED))
    for plan in plans:
        if plan.outcome in PLACED and plan.order.owner is None:  # as _owner_needs
            oid = plan.order.order_id
            marks[oid] = marks.get(oid, 0) | OWNER
    by_mark: dict[int, list[int]] = {}
    for oid, mark in marks.items():
        by_mark.setdefault(mark, []).append(oid)
    for mark, ids in sorted(by_mark.items()):
        queue.flag(ids, mark)


def _settle(conn: Connection, marked: Sequence[tuple[int, int]], owners: OwnersConfig | None,
            run_id: str) -> int:
    """The second pass over a chunk of marked orders (in id order): their state moves, each
    with its order_events row, then their owners. Returns the owners assigned."""
    for bit, state, reason in (
        (TO_ALLOCATED, "allocated", "every line allocated"),
        (TO_BACKORDERED, "backordered", "a line waits for stock"),
    ):
        ids = [oid for oid, mark in marked if mark & bit]
        if ids:
            transition(conn, ids, state, run_id, reason)  # one statement set, any number of ids
    if owners is None:
        return 0
    ids = [oid for oid, mark in marked if mark & OWNER]
    return _assign_owners(conn, _fetch_needs(conn, ids), owners, run_id) if ids else 0


def _reserve(conn: Connection, read: Mapping[str, Mapping[str, Decimal]],
             left: Mapping[str, Mapping[str, Decimal]], run_id: str) -> None:
    """Add what this run placed to the stock rows' ``reserved`` (in (sku, warehouse) order):
    per stock row, what was available when read less what is left (exactly the sum of the
    quantities placed there: Decimal subtraction is exact)."""
    reserve = {(sku, wh): q - left[sku][wh]
               for sku, by_wh in read.items() for wh, q in by_wh.items() if left[sku][wh] != q}
    # added in the database (reserved + qty): on SQLite in its REAL arithmetic, as always.
    # PostgreSQL: one COPY and one UPDATE ... FROM; SQLite: the driver's executemany
    update_rows(conn, stock, ("sku", "warehouse"), ("reserved", "run_id"),
                [(s, wh, q, run_id) for (s, wh), q in sorted(reserve.items())], add=("reserved",))


def _owner_needs(plans: Sequence[OrderPlan]) -> list[OwnerNeed]:
    """Placed orders without an owner (an owner, once set, is kept)."""
    return [OwnerNeed(p.order.order_id, p.order.ship_region, p.order.customer_region)
            for p in plans if p.outcome in PLACED and p.order.owner is None]


def _assign_owners(conn: Connection, needs: Sequence[OwnerNeed], config: OwnersConfig,
                   run_id: str) -> int:
    if not needs:
        return 0
    before = lock_counters(conn, teams_needed(needs, config), run_id)
    decisions, after = assign_owners(needs, config, before)
    return write_owners(conn, decisions, before, after, run_id)


# --- dry run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between the current and the new rules, for people to read."""

    order_id: int
    order_no: str | None
    what: str  # "line 1 SKU-A x 10" | "status" | "owner"
    current: str
    new: str


@dataclass
class DryRun:
    """Open orders decided under two configurations, from the same stock; nothing written."""

    orders: list[OrderIn]  # in order id order
    current: dict[int, OrderPlan]
    new: dict[int, OrderPlan]
    current_owners: dict[int, str | None]  # "alice (team_east)"
    new_owners: dict[int, str | None]

    @property
    def by_status(self) -> dict[str, int]:
        counts = Counter(o.status for o in self.orders)
        return {s: counts[s] for s in REPLAYS if counts[s]}

    def changes(self) -> list[Change]:
        out: list[Change] = []
        for order in self.orders:
            cur, new = self.current[order.order_id], self.new[order.order_id]
            cur_lines, new_lines = _line_decisions(cur), _line_decisions(new)
            for ln in order.lines:
                a, b = cur_lines.get(ln.line_id), new_lines.get(ln.line_id)
                if a != b:  # rules and picks (Decision equality ignores the inputs)
                    what = f"line {ln.line_no} {ln.sku} x {_q(ln.qty)}"
                    out.append(Change(order.order_id, order.order_no, what, steps_label(a),
                                      steps_label(b)))
            if cur.outcome != new.outcome:
                out.append(Change(order.order_id, order.order_no, "status", cur.outcome,
                                  new.outcome))
            a_owner = self.current_owners.get(order.order_id)
            b_owner = self.new_owners.get(order.order_id)
            if a_owner != b_owner:
                out.append(Change(order.order_id, order.order_no, "owner", a_owner or "-",
                                  b_owner or "-"))
        return out

    def summary(self) -> list[tuple[str, int, int]]:
        """(what, under the current rules, under the new rules), rows where either is nonzero."""
        rows: list[tuple[str, int, int]] = []
        cur_rules, new_rules = _rule_counts(self.current), _rule_counts(self.new)
        for rule in sorted(set(cur_rules) | set(new_rules)):
            rows.append((f"lines {rule}", cur_rules[rule], new_rules[rule]))
        cur_out = Counter(p.outcome for p in self.current.values())
        new_out = Counter(p.outcome for p in self.new.values())
        for outcome in ("allocated", "backordered", "unallocated", "skipped"):
            if cur_out[outcome] or new_out[outcome]:
                rows.append((f"orders {outcome}", cur_out[outcome], new_out[outcome]))
        owners = (sum(1 for v in self.current_owners.values() if v),
                  sum(1 for v in self.new_owners.values() if v))
        if any(owners):
            rows.append(("orders with an owner", *owners))
        return rows


def _line_decisions(plan: OrderPlan) -> dict[int, Steps]:
    return {ln.line_id: steps for ln, steps in plan.decisions}


def _q(q: Decimal | None) -> str:
    return "?" if q is None else format(q.normalize(), "f")


def _rule_counts(plans: Mapping[int, OrderPlan]) -> Counter[str]:
    return Counter(d.rule_id for p in plans.values() for _, steps in p.decisions for d in steps)


@contextmanager
def _read_only(engine: Engine) -> Iterator[Connection]:
    """One consistent snapshot in which writing is impossible, not merely avoided.

    PostgreSQL: a REPEATABLE READ, READ ONLY transaction (set on the connection before it
    begins; SQLAlchemy resets both when the connection goes back to the pool). SQLite: a
    deferred transaction (one WAL snapshot) with ``query_only`` on, given back afterwards."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="REPEATABLE READ",
                                                postgresql_readonly=True) as conn:
            try:
                yield conn
            finally:
                conn.rollback()
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA query_only = ON")
        try:
            yield conn
        finally:
            conn.rollback()
            conn.exec_driver_sql("PRAGMA query_only = OFF")  # a connection setting: give it back
            conn.rollback()


def dry_run(
    engine: Engine,
    current: AllocationConfig | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    new: AllocationConfig | Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> DryRun:
    """Replay the open orders (validated, backordered, allocated but not pushed) under both
    configurations, writing nothing.

    Both replays start from the same point: every line of those orders waits for its whole
    quantity, and the stock their rows hold is free again (on_hand minus what other orders hold).
    So the difference is the rules' alone. Owners are sticky as in a real run: an order that has
    one keeps it; the others are assigned from the stored counters under each configuration.
    """
    cur_cfg, new_cfg = AllocationConfig.from_config(current), AllocationConfig.from_config(new)
    with _read_only(engine) as conn:
        work, held = _fetch_work(conn, REPLAYS, lock=False)
        available, regions = _fetch_stock(conn, REPLAYS, lock=False)
        counters = read_counters(conn)
    for h in held.values():
        for wh, row in h.allocated.items():
            if h.sku is not None:
                by_wh = available.setdefault(h.sku, {})
                by_wh[wh] = by_wh.get(wh, Decimal(0)) + row.qty
    fresh = [replace(o, lines=tuple(replace(ln, waiting=ln.qty) for ln in o.lines)) for o in work]
    plans = {}
    owners = {}
    for name, cfg in (("current", cur_cfg), ("new", new_cfg)):
        decided = plan_orders(fresh, available, regions, cfg)
        plans[name] = {p.order.order_id: p for p in decided}
        owners[name] = _replay_owners(decided, cfg.owners, counters)
    return DryRun(fresh, plans["current"], plans["new"], owners["current"], owners["new"])


def _replay_owners(plans: Sequence[OrderPlan], config: OwnersConfig | None,
                   counters: Mapping[str, int]) -> dict[int, str | None]:
    out: dict[int, str | None] = {
        p.order.order_id: f"{p.order.owner} ({p.order.team})" if p.order.owner else None
        for p in plans}
    if config is not None:
        decisions, _ = assign_owners(_owner_needs(plans), config, counters)
        out |= {d.order_id: f"{d.owner} ({d.team})" for d in decisions}
    return out
