"""Run figures read back from the warehouse: order states, events per run, cycle times."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from warehouse.schema import order_events, orders, outbox, rejected_records


def orders_by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
        return {status: n for status, n in rows}


def events_in_run(engine: Engine, run_id: str) -> dict[str, int]:
    """How many orders entered each state during this run."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(order_events.c.to_state, func.count(func.distinct(order_events.c.order_id)))
            .where(order_events.c.run_id == run_id)
            .group_by(order_events.c.to_state)
        )
        return {state: n for state, n in rows}


def rejected_in_run(engine: Engine, run_id: str, stream: str | None = None) -> int:
    q = select(func.count()).select_from(rejected_records).where(
        rejected_records.c.run_id == run_id)
    if stream:
        q = q.where(rejected_records.c.stream == stream)
    with engine.connect() as conn:
        return conn.execute(q).scalar_one()


def outbox_by_status(engine: Engine) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.operation, outbox.c.status, func.count())
                            .group_by(outbox.c.operation, outbox.c.status))
        out: dict[str, dict[str, int]] = {}
        for op, status, n in rows:
            out.setdefault(op, {})[status] = n
        return out


def cycle_times(engine: Engine, run_id: str, to_state: str = "invoiced") -> dict[str, Any]:
    """Seconds from an order's capture to reaching ``to_state`` in this run: count, p50, p95."""
    captured = (select(order_events.c.order_id, func.min(order_events.c.at).label("at"))
                .where(order_events.c.to_state == "captured")
                .group_by(order_events.c.order_id).subquery())
    reached = (select(order_events.c.order_id, func.min(order_events.c.at).label("at"))
               .where(order_events.c.to_state == to_state, order_events.c.run_id == run_id)
               .group_by(order_events.c.order_id).subquery())
    q = select(captured.c.at, reached.c.at).join(reached, reached.c.order_id == captured.c.order_id)
    with engine.connect() as conn:
        spans = sorted(_seconds(a, b) for a, b in conn.execute(q))
    return {"to": to_state, "count": len(spans), "p50_s": _pct(spans, 0.50),
            "p95_s": _pct(spans, 0.95)}


def _seconds(start: datetime, end: datetime) -> float:
    # SQLite hands back naive datetimes; both ends come from the same column, so compare as is.
    if (start.tzinfo is None) != (end.tzinfo is None):
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return (end - start).total_seconds()


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[idx], 3)
