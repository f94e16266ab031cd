"""Set-based order state transitions, each with its ``order_events`` audit row.

``transition`` is the only code that changes ``orders.status`` after capture. It runs inside the
caller's transaction (it takes a Connection), so a stage's data changes and its state changes
commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Connection, Select, func, insert, literal, select, update

from warehouse.engine import in_values
from warehouse.schema import UtcDateTime, order_events, orders
from warehouse.states import OrderState, TransitionError, can_transition

__all__ = ["TransitionError", "transition"]

_SHOW = 10  # offending ids listed per state in an error message
# PostgreSQL: a transition of this many orders or more refreshes the orders table's statistics
# (about 0.3 s for 150,000 orders; the TPC-H SF 0.1 push and invoice stages run 4 s quicker)
ANALYZE_AFTER_MOVES = 10_000


def transition(
    conn: Connection,
    order_ids: Sequence[int] | Select,
    to_state: OrderState | str,
    run_id: str,
    reason: str | None,
) -> int:
    """Move the given orders to ``to_state``; return how many moved.

    ``order_ids`` is a list of ids or a one-column SELECT of ids. Every order's current state is
    checked against the transition table first: if any is refused (or an id does not exist) a
    TransitionError lists the offenders and nothing is written. Otherwise one INSERT ... SELECT
    writes an event per order (from, to, at, reason, run_id) and one UPDATE moves them all.
    """
    target = OrderState(to_state)
    dialect = conn.dialect.name
    # A SELECT is read once: re-running it after the events were written could give another
    # set (e.g. "orders without an event"), and the three statements below must agree.
    given = conn.scalars(order_ids) if isinstance(order_ids, Select) else order_ids
    ids = sorted({int(i) for i in given})
    if not ids:
        return 0
    chosen = in_values(orders.c.id, ids, dialect)

    states = select(orders.c.status).where(chosen)
    if dialect == "postgresql":
        # Lock the rows (in id order, so two concurrent transitions cannot deadlock) as they
        # are counted: the states validated below must still be the states the UPDATE
        # overwrites. One pass, not a locking read and then a counting one.
        states = states.order_by(orders.c.id).with_for_update()
    locked = states.subquery("locked")
    by_state = dict(conn.execute(select(locked.c.status, func.count()).group_by(locked.c.status)).all())
    refused = {state: why for state in by_state if (why := can_transition(state, target))}
    found = sum(by_state.values())
    if refused or found != len(ids):
        raise TransitionError(_refusal(conn, ids, chosen, target, refused, found))

    now = datetime.now(UTC)
    conn.execute(
        insert(order_events).from_select(
            ["order_id", "from_state", "to_state", "at", "reason", "run_id"],
            select(
                orders.c.id,
                orders.c.status,
                literal(target.value),
                literal(now, UtcDateTime()),
                literal(reason),
                literal(run_id),
            ).where(chosen),
        )
    )
    moved = conn.execute(update(orders).where(chosen).values(status=target.value,
                                                             run_id=run_id)).rowcount
    if dialect == "postgresql" and moved >= ANALYZE_AFTER_MOVES:
        # A big move changes what orders.status holds. Planned on the statistics from before
        # it (autovacuum refreshes them a minute or more later), the next stage's queries take
        # the status index for a state they think empty and walk every order in it, window
        # after window. ANALYZE in this transaction samples the moved rows as they now are.
        conn.exec_driver_sql('ANALYZE "orders"')
    return moved


def _refusal(
    conn: Connection,
    ids: list[int],
    chosen: ColumnElement[bool],
    target: OrderState,
    refused: dict[str, str],
    found: int,
) -> str:
    """The error text: which orders, in which state, and why (only built on the error path)."""
    parts: list[str] = []
    for state, why in sorted(refused.items()):
        offenders = conn.scalars(
            select(orders.c.id).where(chosen, orders.c.status == state).order_by(orders.c.id).limit(_SHOW + 1)
        ).all()
        shown = ", ".join(map(str, offenders[:_SHOW])) + (", ..." if len(offenders) > _SHOW else "")
        parts.append(f"{state} ({why}): orders {shown}")
    if found != len(ids):
        existing = set(conn.scalars(select(orders.c.id).where(chosen)))
        missing = [i for i in ids if i not in existing]
        shown = ", ".join(map(str, missing[:_SHOW])) + (", ..." if len(missing) > _SHOW else "")
        parts.append(f"unknown order ids: {shown}")
    return f"refused to move {len(ids)} orders to {target}, nothing written: " + "; ".join(parts)
