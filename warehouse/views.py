"""SQL views finance reads, the same on SQLite and PostgreSQL.

- ``v_invoice_status``: every invoice with what was applied (cash net of refunds), bank fees,
  over-payment held against it (``excess``), what is outstanding and its status (an invoice
  reconcile has not seen yet shows as open, nothing applied).
- ``v_open_receivables``: invoices still owed money (open or part-paid).
- ``v_open_receivables_aging``: the same with its age in days as of a date (today, UTC, unless
  ``reconciliation.as_of`` fixes one) and its bucket: 0-30, 31-60, 61-90, 90+ days since issue,
  the outstanding amount also spread over one column per bucket for summing.
- ``v_unmatched_payments``: every payment with unapplied cash: nothing matched, a duplicate, an
  over-payment held on account (``on_account_of``), with the reason the matcher recorded.
- ``v_cash_per_day``: per UTC day and currency: received, refunded, net, applied, unapplied;
  duplicates counted apart (they are not cash until a person confirms them).

The SQL is plain and shared; the only dialect differences (a timestamp's UTC date, today's date,
days between two dates) are three fragments in ``_SQL`` — the one place to look.

``ensure_views`` (re)creates a view only when it is missing or its definition changed: each view
carries a hash of its SQL (a comment on SQLite, COMMENT ON VIEW on PostgreSQL), so a reconcile
run normally issues no DDL at all. ``VIEW_TABLES`` describes their columns for the Parquet export.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date

from sqlalchemy import (
    Column,
    Connection,
    Date,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)

from warehouse.engine import begin_write
from warehouse.schema import MONEY, RUN_ID, UtcDateTime

# dialect -> fragment templates: UTC calendar date of a timestamp, today's UTC date, whole days
_SQL: dict[str, dict[str, str]] = {
    "sqlite": {  # timestamps are stored as UTC text; CURRENT_DATE is UTC
        "day": "date({0})",
        "today": "CURRENT_DATE",
        "date": "'{0}'",
        "days": "CAST(julianday({0}) - julianday({1}) AS INTEGER)",
    },
    "postgresql": {  # timestamptz: take the UTC date, whatever the session's time zone
        "day": "CAST(({0} AT TIME ZONE 'UTC') AS DATE)",
        "today": "CAST((CURRENT_TIMESTAMP AT TIME ZONE 'UTC') AS DATE)",
        "date": "DATE '{0}'",
        "days": "({0} - {1})",
    },
}
# a payment's signed cash before reconcile has seen it: refunds are money out
_SIGNED = "CASE WHEN p.kind = 'refund' OR p.amount < 0 THEN -ABS(p.amount) ELSE p.amount END"
_MARK = re.compile(r"orderhub:([0-9a-f]{16})")


def view_sql(dialect: str, as_of: date | None = None) -> dict[str, str]:
    """The SELECT of every view for ``dialect``; aging as of ``as_of`` (None: today, UTC)."""
    f = _SQL[dialect]
    today = f["today"] if as_of is None else f["date"].format(as_of.isoformat())
    issued_day = f["day"].format("i.issued_at")
    age = f["days"].format(today, issued_day)
    return {
        "v_invoice_status": """
            SELECT i.id AS invoice_id, i.invoice_no, i.order_ref, o.source, o.status AS order_status,
                   i.customer_code, i.currency, i.issued_at,
                   i.amount AS invoiced,
                   COALESCE(r.applied, 0) AS applied,
                   COALESCE(r.fees, 0) AS fees,
                   COALESCE(r.excess, 0) AS excess,
                   COALESCE(r.outstanding, i.amount) AS outstanding,
                   COALESCE(r.status, 'open') AS status,
                   r.run_id AS reconciled_by_run
            FROM invoices i
            JOIN orders o ON o.id = i.order_id
            LEFT JOIN reconciliation r ON r.invoice_id = i.id
        """,
        "v_open_receivables": """
            SELECT i.id AS invoice_id, i.invoice_no, i.order_ref, i.customer_code, i.currency,
                   i.issued_at,
                   i.amount AS invoiced,
                   COALESCE(r.applied, 0) AS applied,
                   COALESCE(r.fees, 0) AS fees,
                   COALESCE(r.outstanding, i.amount) AS outstanding,
                   COALESCE(r.status, 'open') AS status
            FROM invoices i
            LEFT JOIN reconciliation r ON r.invoice_id = i.id
            WHERE COALESCE(r.status, 'open') IN ('open', 'part_paid')
        """,
        "v_open_receivables_aging": f"""
            SELECT a.invoice_id, a.invoice_no, a.order_ref, a.customer_code, a.currency,
                   a.issued_at, a.as_of, a.age_days,
                   CASE WHEN a.age_days <= 30 THEN '0-30' WHEN a.age_days <= 60 THEN '31-60'
                        WHEN a.age_days <= 90 THEN '61-90' ELSE '90+' END AS bucket,
                   a.outstanding,
                   CASE WHEN a.age_days <= 30 THEN a.outstanding ELSE 0 END AS days_0_30,
                   CASE WHEN a.age_days > 30 AND a.age_days <= 60 THEN a.outstanding ELSE 0 END
                       AS days_31_60,
                   CASE WHEN a.age_days > 60 AND a.age_days <= 90 THEN a.outstanding ELSE 0 END
                       AS days_61_90,
                   CASE WHEN a.age_days > 90 THEN a.outstanding ELSE 0 END AS days_90_plus
            FROM (
                SELECT i.id AS invoice_id, i.invoice_no, i.order_ref, i.customer_code, i.currency,
                       i.issued_at, {today} AS as_of, {age} AS age_days,
                       COALESCE(r.outstanding, i.amount) AS outstanding
                FROM invoices i
                LEFT JOIN reconciliation r ON r.invoice_id = i.id
                WHERE COALESCE(r.status, 'open') IN ('open', 'part_paid')
            ) a
        """,
        "v_unmatched_payments": f"""
            SELECT p.id AS payment_id, p.source, p.external_id, p.reference, p.customer_code,
                   p.currency, p.amount, p.received_at,
                   COALESCE(pr.received, {_SIGNED}) AS received,
                   COALESCE(pr.applied, 0) AS applied,
                   COALESCE(pr.unapplied, {_SIGNED}) AS unapplied,
                   COALESCE(pr.status, 'unreconciled') AS status,
                   COALESCE(pr.reason, 'not reconciled yet') AS reason,
                   pr.duplicate_of,
                   inv.invoice_no AS on_account_of
            FROM payments p
            LEFT JOIN payment_reconciliation pr ON pr.payment_id = p.id
            LEFT JOIN invoices inv ON inv.id = pr.on_account_invoice_id
            WHERE COALESCE(pr.unapplied, {_SIGNED}) <> 0
        """,
        "v_cash_per_day": f"""
            SELECT c.day, c.currency,
                   SUM(CASE WHEN c.dup = 0 THEN 1 ELSE 0 END) AS payments,
                   SUM(CASE WHEN c.dup = 0 AND c.received > 0 THEN c.received ELSE 0 END) AS received,
                   SUM(CASE WHEN c.dup = 0 AND c.received < 0 THEN -c.received ELSE 0 END)
                       AS refunded,
                   SUM(CASE WHEN c.dup = 0 THEN c.received ELSE 0 END) AS net,
                   SUM(c.applied) AS applied,
                   SUM(CASE WHEN c.dup = 0 THEN c.unapplied ELSE 0 END) AS unapplied,
                   SUM(c.dup) AS duplicates,
                   SUM(CASE WHEN c.dup = 1 THEN c.received ELSE 0 END) AS duplicate_amount
            FROM (
                SELECT {f["day"].format("p.received_at")} AS day, p.currency,
                       COALESCE(pr.received, {_SIGNED}) AS received,
                       COALESCE(pr.applied, 0) AS applied,
                       COALESCE(pr.unapplied, {_SIGNED}) AS unapplied,
                       CASE WHEN pr.status = 'duplicate' THEN 1 ELSE 0 END AS dup
                FROM payments p
                LEFT JOIN payment_reconciliation pr ON pr.payment_id = p.id
                WHERE p.received_at IS NOT NULL
            ) c
            GROUP BY c.day, c.currency
        """,
    }


VIEWS = tuple(view_sql("sqlite"))

# The views' columns, typed, for the Parquet export (their own MetaData: Alembic must never
# take them for tables). The primary key is the export's sort order.
view_metadata = MetaData()


def _invoice_head() -> list[Column]:
    return [Column("invoice_id", Integer, primary_key=True), Column("invoice_no", String(64)),
            Column("order_ref", String(128))]


VIEW_TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "v_invoice_status", view_metadata, *_invoice_head(),
            Column("source", String(64)), Column("order_status", String(16)),
            Column("customer_code", String(64)), Column("currency", String(3)),
            Column("issued_at", UtcDateTime()), Column("invoiced", MONEY), Column("applied", MONEY),
            Column("fees", MONEY), Column("excess", MONEY), Column("outstanding", MONEY),
            Column("status", String(16)), Column("reconciled_by_run", RUN_ID),
        ),
        Table(
            "v_open_receivables", view_metadata, *_invoice_head(),
            Column("customer_code", String(64)), Column("currency", String(3)),
            Column("issued_at", UtcDateTime()), Column("invoiced", MONEY), Column("applied", MONEY),
            Column("fees", MONEY), Column("outstanding", MONEY), Column("status", String(16)),
        ),
        Table(
            "v_open_receivables_aging", view_metadata, *_invoice_head(),
            Column("customer_code", String(64)), Column("currency", String(3)),
            Column("issued_at", UtcDateTime()), Column("as_of", Date), Column("age_days", Integer),
            Column("bucket", String(8)), Column("outstanding", MONEY),
            Column("days_0_30", MONEY), Column("days_31_60", MONEY), Column("days_61_90", MONEY),
            Column("days_90_plus", MONEY),
        ),
        Table(
            "v_unmatched_payments", view_metadata,
            Column("payment_id", Integer, primary_key=True), Column("source", String(64)),
            Column("external_id", String(128)), Column("reference", String(128)),
            Column("customer_code", String(64)), Column("currency", String(3)),
            Column("amount", MONEY), Column("received_at", UtcDateTime()),
            Column("received", MONEY), Column("applied", MONEY), Column("unapplied", MONEY),
            Column("status", String(16)), Column("reason", Text), Column("duplicate_of", Integer),
            Column("on_account_of", String(64)),
        ),
        Table(
            "v_cash_per_day", view_metadata,
            Column("day", Date, primary_key=True), Column("currency", String(3), primary_key=True),
            Column("payments", Integer), Column("received", MONEY), Column("refunded", MONEY),
            Column("net", MONEY), Column("applied", MONEY), Column("unapplied", MONEY),
            Column("duplicates", Integer), Column("duplicate_amount", Numeric(18, 2)),
        ),
    )
}
assert set(VIEW_TABLES) == set(VIEWS)


def _digest(body: str) -> str:
    return hashlib.sha256(" ".join(body.split()).encode()).hexdigest()[:16]


def _current(conn: Connection) -> dict[str, str | None]:
    """view name -> the hash it was created with (None: a view we did not mark)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'v' AND n.nspname = current_schema()")).all()
    else:
        rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).all()
    out: dict[str, str | None] = {}
    for name, marked in rows:
        found = _MARK.search(marked or "")
        out[name] = found.group(1) if found else None
    return out


def ensure_views(conn: Connection, as_of: date | None = None, only_missing: bool = False) -> list[str]:
    """Create missing views and (unless ``only_missing``) replace changed ones, in the caller's
    transaction. Returns the names it (re)created; [] when all were current (no DDL at all)."""
    dialect = conn.dialect.name
    wanted = view_sql(dialect, as_of)
    current = _current(conn)
    todo = [name for name, body in wanted.items()
            if name not in current or (not only_missing and current[name] != _digest(body))]
    for name in todo:
        digest = _digest(wanted[name])
        # driver SQL: no bind-parameter parsing of the view text
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        if dialect == "postgresql":
            conn.exec_driver_sql(f"CREATE VIEW {name} AS {wanted[name].strip()}")
            conn.exec_driver_sql(f"COMMENT ON VIEW {name} IS 'orderhub:{digest}'")
        else:  # SQLite keeps the statement's text, comment included
            conn.exec_driver_sql(f"CREATE VIEW {name} AS /* orderhub:{digest} */ {wanted[name].strip()}")
    return todo


def create_views(engine: Engine, as_of: date | None = None) -> list[str]:
    """(Re)create every finance view whose definition differs; returns all their names."""
    with begin_write(engine) as conn:
        ensure_views(conn, as_of)
    return list(VIEWS)
