"""Run figures read back from the warehouse: order states, events per run, cycle times.

The business KPIs (cycle-time percentiles, automation, quarantine, accuracy, missed orders)
are in ``warehouse.kpis``; ``cycle_times`` here is the run summary's view of one of them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from warehouse import kpis
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
    """Seconds from an order's capture to reaching ``to_state`` in this run: count, p50, p95.

    The one definition lives in ``warehouse.kpis`` (nearest-rank percentiles, in SQL); the
    seconds are floats here, as the run summary has always shown them."""
    ct = kpis.cycle_time(engine, run_id, to_state)
    for key in ("p50_s", "p95_s"):
        ct[key] = None if ct[key] is None else float(ct[key])  # seconds: a timing, not money
    return ct
