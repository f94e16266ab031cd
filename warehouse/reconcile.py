"""Reconciliation: match payments to invoices, keep one status row per invoice for finance.

Matching is set-based SQL (two INSERT ... SELECT), by the reference the payer quoted, in the
invoice's currency, a payment going to at most one invoice:
1. ``reference = invoice_no`` (unique: at most one invoice);
2. otherwise ``reference = order_ref``, only when exactly one invoice in that currency carries
   that order number; an ambiguous reference stays unmatched for a person to look at, rather
   than being applied to a guess.
A match is never moved or repeated (unique on (payment_id, invoice_id), and a matched payment
is not considered again), so a rerun adds nothing.

The per-invoice status is one pure function, ``invoice_status``; ``reconcile`` reads the sums
in one query, applies it, and upserts only the rows whose values changed, so an unchanged row
keeps the run id that last really changed it (DESIGN invariant 6).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, literal, select

from warehouse.engine import begin_write
from warehouse.orders import transition
from warehouse.outbox import dialect_insert
from warehouse.schema import invoices, orders, payment_matches, payments, reconciliation

STATUSES = ("paid", "part_paid", "over_paid", "open")
MATCH_RULE = "by_reference"
# Invoice statuses that settle the order (invoiced -> paid). Over-paid counts: the invoice is
# paid in full (the surplus is finance's to refund), and an invoice that was `paid` and then
# received one more payment would otherwise leave its order's state depending on the order the
# payments arrived in (an order never goes back from paid).
SETTLING = ("paid", "over_paid")
ZERO = Decimal("0.00")


def invoice_status(invoiced: Decimal, applied: Decimal, tolerance: Decimal) -> str:
    """paid | part_paid | over_paid | open, for an invoice and the sum applied to it.

    paid: |invoiced - applied| <= tolerance (also a zero invoice with nothing applied);
    over_paid: applied > invoiced + tolerance; part_paid: something applied, but less than
    invoiced - tolerance; open: nothing (or a net negative) applied.
    """
    if abs(invoiced - applied) <= tolerance:
        return "paid"
    if applied > invoiced + tolerance:
        return "over_paid"
    if applied > 0:
        return "part_paid"
    return "open"


def reconciliation_row(
    invoice: Mapping[str, Any], applied: Decimal, tolerance: Decimal
) -> dict[str, Any]:
    """The reconciliation values of one invoice (without run id): pure."""
    invoiced: Decimal = invoice["amount"]
    return {
        "invoice_id": invoice["id"],
        "invoice_no": invoice["invoice_no"],
        "customer_code": invoice["customer_code"],
        "currency": invoice["currency"],
        "invoiced": invoiced,
        "applied": applied,
        "outstanding": invoiced - applied,
        "status": invoice_status(invoiced, applied, tolerance),
    }


COMPARED = ("invoice_no", "customer_code", "currency", "invoiced", "applied", "outstanding",
            "status")


def _match(conn: Connection, run_id: str) -> int:
    """Insert the new matches, by invoice number first, then by unambiguous order number."""
    unmatched = ~exists().where(payment_matches.c.payment_id == payments.c.id)
    cols = ["payment_id", "invoice_id", "amount", "rule", "run_id"]
    consts = (literal(MATCH_RULE, payment_matches.c.rule.type),
              literal(run_id, payment_matches.c.run_id.type))
    by_no = (
        select(payments.c.id, invoices.c.id, payments.c.amount, *consts)
        .join(invoices, and_(invoices.c.invoice_no == payments.c.reference,
                             invoices.c.currency == payments.c.currency))
        .where(unmatched)
    )
    # order numbers that name exactly one invoice in a currency: a derived table, not a
    # correlated subquery per payment
    single_ref = (
        select(invoices.c.order_ref, invoices.c.currency,
               func.min(invoices.c.id).label("invoice_id"))
        .where(invoices.c.order_ref.is_not(None))
        .group_by(invoices.c.order_ref, invoices.c.currency)
        .having(func.count() == 1)
        .subquery()
    )
    by_ref = (
        select(payments.c.id, single_ref.c.invoice_id, payments.c.amount, *consts)
        .join(single_ref, and_(single_ref.c.order_ref == payments.c.reference,
                               single_ref.c.currency == payments.c.currency))
        .where(unmatched)  # sees the by_no rows just inserted: same transaction
    )
    created = 0
    for source in (by_no, by_ref):
        stmt = dialect_insert(conn, payment_matches).from_select(cols, source)
        stmt = stmt.on_conflict_do_nothing().returning(payment_matches.c.id)
        created += len(conn.execute(stmt).all())  # psycopg: rowcount is -1 for INSERT ... SELECT
    return created


def _refresh(conn: Connection, run_id: str, tolerance: Decimal) -> tuple[int, dict[str, int]]:
    """Recompute every invoice's row; write only new or changed ones. -> (written, by status)."""
    applied = (
        select(payment_matches.c.invoice_id, func.sum(payment_matches.c.amount).label("applied"))
        .group_by(payment_matches.c.invoice_id)
        .subquery()
    )
    q = (
        select(
            invoices.c.id, invoices.c.invoice_no, invoices.c.customer_code, invoices.c.currency,
            invoices.c.amount, applied.c.applied,
            *(reconciliation.c[c].label(f"old_{c}") for c in COMPARED),
            reconciliation.c.invoice_id.label("old_id"),
        )
        .outerjoin(applied, applied.c.invoice_id == invoices.c.id)
        .outerjoin(reconciliation, reconciliation.c.invoice_id == invoices.c.id)
        .order_by(invoices.c.id)
    )
    counts = dict.fromkeys(STATUSES, 0)
    changed: list[dict[str, Any]] = []
    for r in conn.execute(q).mappings():
        row = reconciliation_row(r, r["applied"] if r["applied"] is not None else ZERO, tolerance)
        counts[row["status"]] += 1
        if r["old_id"] is None or any(row[c] != r[f"old_{c}"] for c in COMPARED):
            changed.append({**row, "run_id": run_id})
    if changed:
        stmt = dialect_insert(conn, reconciliation)
        stmt = stmt.on_conflict_do_update(
            index_elements=[reconciliation.c.invoice_id],
            set_={c: stmt.excluded[c] for c in (*COMPARED, "run_id")},
        )
        conn.execute(stmt, changed)
    return len(changed), counts


def reconcile(engine: Engine, run_id: str, tolerance: Decimal) -> dict[str, Any]:
    """Match new payments, refresh the reconciliation table, settle paid orders. One transaction.

    Returns {paid, part_paid, over_paid, open: invoices by status (all invoices, after this run),
    matched: new matches, changed: reconciliation rows written, orders_paid: orders moved to
    paid, unmatched_payments: count, unmatched_amount: {currency: Decimal}}.
    """
    if not isinstance(tolerance, Decimal):
        # money is Decimal end to end (invariant 5); a float tolerance is a caller bug
        raise TypeError(f"reconcile: tolerance must be a Decimal, got {type(tolerance).__name__}")
    with begin_write(engine) as conn:
        matched = _match(conn, run_id)
        changed, counts = _refresh(conn, run_id, tolerance)
        settled = select(invoices.c.order_id).join(
            reconciliation, reconciliation.c.invoice_id == invoices.c.id
        ).where(reconciliation.c.status.in_(SETTLING))
        ready = select(orders.c.id).where(orders.c.status == "invoiced", orders.c.id.in_(settled))
        orders_paid = transition(conn, ready, "paid", run_id, "invoice paid")
        unmatched_q = (
            select(payments.c.currency, func.count(), func.sum(payments.c.amount))
            .where(~exists().where(payment_matches.c.payment_id == payments.c.id))
            .group_by(payments.c.currency)
            .order_by(payments.c.currency)
        )
        unmatched = conn.execute(unmatched_q).all()
    return {
        **counts,
        "matched": matched,
        "changed": changed,
        "orders_paid": orders_paid,
        "unmatched_payments": sum(n for _, n, _ in unmatched),
        "unmatched_amount": {cur: amount for cur, _, amount in unmatched},
    }
