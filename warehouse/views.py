"""SQL views finance reads (SQLite and PostgreSQL alike: plain SQL, no dialect functions).

- ``v_invoice_status``: every invoice with what was applied, what is outstanding and its status
  (an invoice reconcile has not seen yet shows as open, nothing applied).
- ``v_unmatched_payments``: payments no invoice has claimed, for a person to chase.
- ``v_open_receivables``: invoices still owed money (open or part-paid).

``create_views`` drops and recreates them in one transaction, so it is idempotent and picks up
a changed definition (PostgreSQL's CREATE OR REPLACE cannot change a view's columns).
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from warehouse.engine import begin_write

# Each view reads base tables only, so they can be dropped and created in any order.
VIEWS: dict[str, str] = {
    "v_invoice_status": """
        SELECT i.id AS invoice_id, i.invoice_no, i.order_ref, o.source, o.status AS order_status,
               i.customer_code, i.currency, i.issued_at,
               i.amount AS invoiced,
               COALESCE(r.applied, 0) AS applied,
               COALESCE(r.outstanding, i.amount) AS outstanding,
               COALESCE(r.status, 'open') AS status,
               r.run_id AS reconciled_by_run
        FROM invoices i
        JOIN orders o ON o.id = i.order_id
        LEFT JOIN reconciliation r ON r.invoice_id = i.id
    """,
    "v_unmatched_payments": """
        SELECT p.id AS payment_id, p.source, p.external_id, p.reference, p.customer_code,
               p.currency, p.amount, p.received_at
        FROM payments p
        WHERE NOT EXISTS (SELECT 1 FROM payment_matches m WHERE m.payment_id = p.id)
    """,
    "v_open_receivables": """
        SELECT i.id AS invoice_id, i.invoice_no, i.order_ref, i.customer_code, i.currency,
               i.issued_at,
               i.amount AS invoiced,
               COALESCE(r.applied, 0) AS applied,
               COALESCE(r.outstanding, i.amount) AS outstanding,
               COALESCE(r.status, 'open') AS status
        FROM invoices i
        LEFT JOIN reconciliation r ON r.invoice_id = i.id
        WHERE COALESCE(r.status, 'open') IN ('open', 'part_paid')
    """,
}


def create_views(engine: Engine) -> list[str]:
    """(Re)create the finance views; returns their names."""
    with begin_write(engine) as conn:
        for name in VIEWS:
            conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
        for name, body in VIEWS.items():
            conn.execute(text(f"CREATE VIEW {name} AS {body.strip()}"))
    return list(VIEWS)
