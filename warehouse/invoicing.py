"""Invoicing: pushed orders get one invoice each, set-based, with a deterministic number.

``invoice_no = INV-{source}-{order_no without '#'}``: the same order always gets the same
number, so a rerun (or a lost response from the finance system) can never issue a second one;
``invoices.order_id`` is unique as well. Sending the invoice goes through the outbox
(operation ``invoice``); ``complete_invoices`` moves an order to ``invoiced`` once that push
is confirmed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Engine, and_, exists, func, literal, select

from warehouse.engine import begin_write
from warehouse.orders import transition
from warehouse.outbox import dialect_insert, order_doc_no
from warehouse.schema import customers, invoices, orders, outbox

log = logging.getLogger(__name__)

POLICIES = ("on_order",)


class InvoicingPolicyError(ValueError):
    """An invoicing policy this build does not implement (orderhub.yaml invoicing.policy)."""


def create_invoices(engine: Engine, run_id: str, policy: str = "on_order") -> int:
    """Invoice every pushed order that has no invoice yet; return how many were created.

    One INSERT ... SELECT: number, order ref, customer code, currency and amount all come from
    the order row in the database, never through Python.
    """
    if policy not in POLICIES:
        raise InvoicingPolicyError(
            f"invoicing.policy: {policy!r} is not supported yet (supported: {', '.join(POLICIES)})"
        )
    invoice_no = order_doc_no("INV")
    pending = select(orders.c.id).where(
        orders.c.status == "pushed",
        ~exists().where(invoices.c.order_id == orders.c.id),
    )
    source = (
        select(
            invoice_no,
            orders.c.id,
            orders.c.order_no,
            # the resolved customer's code; the channel's own code only when unresolved
            func.coalesce(customers.c.code, orders.c.customer_code),
            orders.c.currency,
            orders.c.total,
            literal(datetime.now(UTC), invoices.c.issued_at.type),
            literal(run_id, invoices.c.run_id.type),
        )
        .select_from(orders)
        .outerjoin(customers, customers.c.id == orders.c.customer_id)
        .where(orders.c.id.in_(pending))
    )
    cols = ["invoice_no", "order_id", "order_ref", "customer_code", "currency", "amount",
            "issued_at", "run_id"]
    with begin_write(engine) as conn:
        wanted = conn.execute(select(func.count()).select_from(pending.subquery())).scalar_one()
        stmt = dialect_insert(conn, invoices).from_select(cols, source).on_conflict_do_nothing()
        # count what RETURNING gives back: psycopg reports rowcount -1 for INSERT ... SELECT
        created = len(conn.execute(stmt.returning(invoices.c.id)).all())
    if created < wanted:
        # an invoice number clash (two orders of one source with the same number once '#' is
        # dropped): never silent, those orders wait in `pushed` until someone looks
        log.warning("invoicing: %d pushed order(s) not invoiced: invoice number already taken",
                    wanted - created)
    return created


def complete_invoices(engine: Engine, run_id: str) -> int:
    """Pushed orders whose invoice push is confirmed (outbox row done) -> invoiced."""
    ready = select(orders.c.id).where(
        orders.c.status == "pushed",
        exists().where(and_(outbox.c.order_id == orders.c.id, outbox.c.operation == "invoice",
                            outbox.c.status == "done")),
    )
    with begin_write(engine) as conn:
        return transition(conn, ready, "invoiced", run_id, "invoice sent")
