"""Run figures read back from the warehouse: order states, events per run, cycle times.

The business KPIs (cycle-time percentiles, automation, quarantine, accuracy, missed orders)
are in ``warehouse.kpis``; ``cycle_times`` here is the run summary's view of one of them
(``summary_cycle_times``: the same view, read from the run's KPIs once they are computed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, func, or_, select

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
    """Outbox rows per operation and status, by operation then status.

    Read off indexes, not the table (whose rows carry the payloads: a scan of millions): the
    rows per operation (covered by ix_outbox_order_operation), less those not ``done`` (few,
    found on ix_outbox_status), are the done ones."""
    done, t = "done", outbox
    with engine.connect() as conn:
        per_operation = conn.execute(select(t.c.operation, func.count())
                                     .group_by(t.c.operation)).all()
        # two ranges, not "!=": an index serves a range
        rest = conn.execute(select(t.c.operation, t.c.status, func.count())
                            .where(or_(t.c.status < done, t.c.status > done))
                            .group_by(t.c.operation, t.c.status)).all()
    counts = {(op, status): n for op, status, n in rest}
    for op, n in per_operation:
        n -= sum(m for (o, _), m in counts.items() if o == op)
        if n:
            counts[(op, done)] = n
    out: dict[str, dict[str, int]] = {}
    for (op, status), n in sorted(counts.items()):
        out.setdefault(op, {})[status] = n
    return out


def cycle_times(engine: Engine, run_id: str, to_state: str = "invoiced") -> dict[str, Any]:
    """Seconds from an order's capture to reaching ``to_state`` in this run: count, p50, p95.

    The one definition lives in ``warehouse.kpis`` (nearest-rank percentiles); the seconds are
    floats here, as the run summary has always shown them."""
    return _summary_cycle(to_state, kpis.cycle_time(engine, run_id, to_state))


def summary_cycle_times(figures: Mapping[str, Any],
                        stages: Sequence[str] = kpis.STAGES) -> dict[str, dict[str, Any]]:
    """The run summary's cycle times, ``{stage: cycle_times(engine, run_id, stage)}``, read
    from the run's KPIs (``kpis.run_kpis`` or ``refresh_and_run_kpis``) instead of the
    warehouse: the same figures, not computed again."""
    return {s: _summary_cycle(s, figures["cycle_time"].get(s) or {}) for s in stages}


def _summary_cycle(to_state: str, ct: Mapping[str, Any]) -> dict[str, Any]:
    p50, p95 = ct.get("p50_s"), ct.get("p95_s")
    return {"to": to_state, "count": ct.get("count", 0),  # seconds: a timing, not money
            "p50_s": None if p50 is None else float(p50),
            "p95_s": None if p95 is None else float(p95)}
