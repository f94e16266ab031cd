"""The warehouse side of ops alerts (flows/alerts.py): deduplication per (kind, key, UTC day),
and the one alert condition computed from the warehouse (payments unmatched for N days).

Deduplication is a row per (kind, key, day) with a unique constraint: ``claim`` upserts them in
one statement, so two workers raising the same alert at once agree on who sends it, and a
schedule every 5 minutes posts a condition once a day (``raised`` counts the repeats).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from warehouse.engine import begin_write, dialect_insert
from warehouse.runs import json_safe
from warehouse.schema import alerts, payment_reconciliation, payments

SENDING, SENT, FAILED, RECORDED = "sending", "sent", "failed", "recorded"


def claim(engine: Engine, kind: str, keys: Sequence[str], day: date, message: str,
          details: Mapping[str, Any] | None, run_id: str, now: datetime) -> list[str]:
    """Record the alert under each key for ``day``; return the keys to send now: first seen
    today (the insert decides: exactly one raiser gets a key), or seen before and ``failed``
    (the webhook was down: try again; two raisers retrying at once may both send)."""
    if not keys:
        return []
    rows = [{"kind": kind, "alert_key": k[:255], "day": day, "message": message,
             "details": json_safe(dict(details or {})), "raised": 1, "status": SENDING,
             "error": None, "first_at": now, "last_at": now, "run_id": run_id}
            for k in dict.fromkeys(keys)]
    with begin_write(engine) as conn:
        stmt = dialect_insert(conn, alerts)
        stmt = stmt.on_conflict_do_update(
            index_elements=[alerts.c.kind, alerts.c.alert_key, alerts.c.day],
            set_={"raised": alerts.c.raised + 1, "last_at": stmt.excluded.last_at},
        ).returning(alerts.c.alert_key, alerts.c.raised, alerts.c.status)
        answers = [conn.execute(stmt, row).one() for row in rows]
    return [a.alert_key for a in answers if a.raised == 1 or a.status == FAILED]


def mark(engine: Engine, kind: str, keys: Sequence[str], day: date, status: str,
         error: str | None = None) -> None:
    """The outcome of sending: sent, failed (with the error, redacted) or recorded."""
    if not keys:
        return
    with begin_write(engine) as conn:
        conn.execute(update(alerts).where(alerts.c.kind == kind, alerts.c.day == day,
                                          alerts.c.alert_key.in_([k[:255] for k in keys]))
                     .values(status=status, error=error))


def unmatched_payments(engine: Engine, days: int, now: datetime | None = None
                       ) -> list[dict[str, Any]]:
    """Payments reconcile could apply nothing of (status ``unapplied``) that were received more
    than ``days`` days ago. Duplicates are not listed: they have their own status and reason."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    q = (
        select(payments.c.id, payments.c.source, payments.c.external_id, payments.c.reference,
               payments.c.customer_code, payments.c.currency, payments.c.amount,
               payments.c.received_at, payment_reconciliation.c.reason)
        .join(payment_reconciliation, payment_reconciliation.c.payment_id == payments.c.id)
        .where(payment_reconciliation.c.status == "unapplied",
               payments.c.received_at.is_not(None), payments.c.received_at < cutoff)
        .order_by(payments.c.received_at, payments.c.id)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]
