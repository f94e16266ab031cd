"""Receivables (open items from an ERP/CRM) land like every other kind: upsert, hash, run id."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import select

from connectors.base import Cursor, RawRecord
from warehouse.load import land_batch
from warehouse.schema import receivables, sync_state

RUN1 = "11111111-1111-4111-8111-111111111111"
RUN2 = "22222222-2222-4222-8222-222222222222"


def _rec(ext: str, amount: str, open_amount: str) -> tuple[RawRecord, dict]:
    at = datetime(2026, 11, 1, 10, tzinfo=UTC)
    raw = RawRecord(ext, at, {"id": ext, "amount": amount})
    canon = {"external_id": ext, "invoice_no": f"INV-{ext}", "order_ref": f"SO-{ext}",
             "customer_code": "C00001", "currency": "CNY", "amount": Decimal(amount),
             "open_amount": Decimal(open_amount), "issued_at": at, "due_date": date(2026, 12, 1),
             "updated_at": at}
    return raw, canon


def test_receivables_land_idempotently_with_their_cursor(engine):
    batch = [_rec("90001", "120.50", "20.50"), _rec("90002", "80.00", "0")]
    cursor = Cursor("2026-11-01T10:00:00Z", "90002")
    first = land_batch(engine, RUN1, "sap", "receivables", "receivables", [r for r, _ in batch],
                       batch, [], cursor)
    assert (first.new, first.unchanged) == (2, 0)
    again = land_batch(engine, RUN2, "sap", "receivables", "receivables", [r for r, _ in batch],
                       batch, [], cursor)
    assert (again.new, again.changed, again.unchanged) == (0, 0, 2)
    with engine.connect() as conn:
        rows = conn.execute(select(receivables.c.external_id, receivables.c.amount,
                                   receivables.c.open_amount, receivables.c.run_id)
                            .order_by(receivables.c.external_id)).all()
        saved = conn.execute(select(sync_state.c.cursor_id)).scalar_one()
    assert [(r[0], r[1], r[2]) for r in rows] == [("90001", Decimal("120.50"), Decimal("20.50")),
                                                  ("90002", Decimal("80.00"), Decimal("0.00"))]
    assert {r[3] for r in rows} == {RUN1}  # the unchanged rerun rewrote nothing
    assert saved == "90002"
