"""The warehouse tables, as SQLAlchemy Core metadata.

Core (not ORM objects) because every hot path is set-based: bulk upserts and
INSERT ... SELECT. Unique constraints on natural keys are what make reruns idempotent.
Every table that the pipeline writes has a ``run_id`` column: the run that last wrote the row.
Money is ``Numeric`` beside a ``currency`` column; no Float anywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

MONEY = Numeric(18, 2)
PRICE = Numeric(18, 4)
QTY = Numeric(18, 3)
RUN_ID = String(36)  # a UUID, as OpenLineage wants run ids to be


class UtcDateTime(TypeDecorator):
    """DateTime(timezone=True) that is UTC-aware on every database.

    SQLite has no time zones: SQLAlchemy would drop an aware value's offset on the way in and
    hand back naive values. This stores UTC (a naive value is taken as UTC) and always returns
    aware UTC datetimes, so code and comparisons behave the same on SQLite and PostgreSQL.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


def _ts(name: str, **kw) -> Column:
    return Column(name, UtcDateTime(), **kw)


runs = Table(
    "runs",
    metadata,
    Column("id", RUN_ID, primary_key=True),
    Column("flow", String(64), nullable=False),
    Column("parent_id", RUN_ID),
    _ts("started_at", nullable=False),
    _ts("finished_at"),
    Column("status", String(16), nullable=False),  # running, completed, failed
    Column("summary", JSON),
)

# --- landing -------------------------------------------------------------------------------

raw_records = Table(
    "raw_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("stream", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("payload", Text, nullable=False),  # the record as the API sent it (JSON text)
    _ts("source_updated_at"),
    _ts("received_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("source", "stream", "external_id", name="uq_raw_records_key"),
)

rejected_records = Table(
    "rejected_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("stream", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("error", Text, nullable=False),
    _ts("rejected_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("source", "stream", "external_id", name="uq_rejected_records_key"),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("stream", String(64), primary_key=True),
    Column("cursor_value", String(64)),  # ISO-8601 UTC of the last updated_at covered
    Column("cursor_id", String(128)),  # tie-breaker: last id at that updated_at
    _ts("updated_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

# --- masters ---------------------------------------------------------------------------------

customers = Table(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("name", String(256)),
    Column("email", String(256), index=True),
    Column("region", String(32)),
    Column("customer_group", String(32)),
    Column("credit_limit", MONEY),
    Column("currency", String(3)),
    Column("source", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

products = Table(
    "products",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(256)),
    Column("source", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

prices = Table(
    "prices",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("price", PRICE, nullable=False),
    Column("source", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

warehouses = Table(
    "warehouses",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("region", String(32)),
    Column("run_id", RUN_ID, nullable=False),
)

stock = Table(
    "stock",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("warehouse", String(64), primary_key=True),
    Column("on_hand", QTY, nullable=False),  # as the stock source last reported it
    Column("reserved", QTY, nullable=False, default=0),  # what our allocations hold
    Column("source", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

# --- orders ----------------------------------------------------------------------------------

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("order_no", String(128)),
    Column("customer_code", String(64)),  # as the channel sent it (may be null)
    Column("customer_email", String(256)),
    Column("customer_id", Integer, ForeignKey("customers.id")),  # resolved by code or email
    _ts("ordered_at"),
    _ts("source_updated_at"),
    Column("currency", String(3)),
    Column("total", MONEY),
    Column("ship_region", String(32)),
    Column("order_date", Date),  # ordered_at's calendar date (UTC): part of the duplicate key
    Column("lines_hash", String(64)),  # hash of the sorted (sku, qty, unit_price) lines
    Column("status", String(16), nullable=False, index=True),
    Column("content_hash", String(64), nullable=False),
    _ts("captured_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("source", "external_id", name="uq_orders_key"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("sku", String(64)),
    Column("qty", QTY),
    Column("unit_price", PRICE),
    Column("amount", MONEY),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("order_id", "line_no", name="uq_order_lines_key"),
)

order_events = Table(
    "order_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    _ts("at", nullable=False),
    Column("reason", Text),
    Column("run_id", RUN_ID, nullable=False),
)

# --- checks ----------------------------------------------------------------------------------

check_results = Table(
    "check_results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", RUN_ID, nullable=False, index=True),
    Column("check_id", String(64), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("evaluated", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("error", Text),  # set when the expectation itself errored
    UniqueConstraint("run_id", "check_id", name="uq_check_results_key"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("check_id", String(64), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("reason", Text, nullable=False),
    Column("value", Text),  # the offending value(s), for the report
    Column("status", String(16), nullable=False),  # open, released, overridden, rejected
    _ts("created_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("order_id", "check_id", name="uq_quarantine_key"),
)

# --- allocation ------------------------------------------------------------------------------

allocations = Table(
    "allocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_line_id", Integer, ForeignKey("order_lines.id"), nullable=False),
    Column("warehouse", String(64)),  # null for a backorder
    Column("qty", QTY, nullable=False),
    Column("status", String(16), nullable=False),  # allocated, backordered
    Column("rule_id", String(64), nullable=False),
    Column("rule_inputs", JSON),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("order_line_id", "warehouse", "status", name="uq_allocations_key"),
)

# --- outbox ----------------------------------------------------------------------------------

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("target", String(64), nullable=False),  # a source name from orderhub.yaml
    Column("operation", String(32), nullable=False),  # fulfilment, sales_order, invoice
    Column("business_key", String(128), nullable=False),
    Column("order_id", Integer, ForeignKey("orders.id")),
    Column("payload", JSON, nullable=False),
    # pending -> sending (request may have left) -> done | failed
    Column("status", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("remote_id", String(128)),
    Column("last_error", Text),
    # lease: when a worker last claimed the row; another worker skips it until the lease expires,
    # so an in-flight `sending` row is never taken for crash recovery by a second worker
    _ts("claimed_at"),
    _ts("created_at", nullable=False),
    _ts("done_at"),
    Column("run_id", RUN_ID, nullable=False),
)

# --- invoicing and reconciliation -------------------------------------------------------------

invoices = Table(
    "invoices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("invoice_no", String(64), nullable=False, unique=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, unique=True),
    Column("order_ref", String(128)),  # the order number customers quote when they pay
    Column("customer_code", String(64)),
    Column("currency", String(3), nullable=False),
    Column("amount", MONEY, nullable=False),
    _ts("issued_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

payments = Table(
    "payments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("reference", String(128)),  # what the payer quoted: an invoice number
    Column("customer_code", String(64)),
    Column("currency", String(3), nullable=False),
    Column("amount", MONEY, nullable=False),
    _ts("received_at"),
    Column("content_hash", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("source", "external_id", name="uq_payments_key"),
)

# Open items / billing documents as an ERP or CRM reports them (SAP billing documents, U8
# receivables, Fxiaoke invoice applications): what the source thinks is owed.
receivables = Table(
    "receivables",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("invoice_no", String(128)),
    Column("order_ref", String(128)),
    Column("customer_code", String(64)),
    Column("currency", String(3), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("open_amount", MONEY),
    _ts("issued_at"),
    Column("due_date", Date),
    Column("content_hash", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("source", "external_id", name="uq_receivables_key"),
)

payment_matches = Table(
    "payment_matches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("payment_id", Integer, ForeignKey("payments.id"), nullable=False),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("rule", String(32), nullable=False),  # by_reference, ...
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("payment_id", "invoice_id", name="uq_payment_matches_key"),
)

# One row per invoice, recomputed by each reconcile run: what finance reads.
reconciliation = Table(
    "reconciliation",
    metadata,
    Column("invoice_id", Integer, ForeignKey("invoices.id"), primary_key=True),
    Column("invoice_no", String(64), nullable=False),
    Column("customer_code", String(64)),
    Column("currency", String(3), nullable=False),
    Column("invoiced", MONEY, nullable=False),
    Column("applied", MONEY, nullable=False),
    Column("outstanding", MONEY, nullable=False),  # negative when over-paid
    Column("status", String(16), nullable=False),  # open, part_paid, paid, over_paid
    Column("run_id", RUN_ID, nullable=False),
)

Index("ix_order_lines_order", order_lines.c.order_id)
Index("ix_allocations_line", allocations.c.order_line_id)
Index("ix_payments_reference", payments.c.reference)
# "are this order's pushes all done?" is asked per order: without it that is a scan per order
Index("ix_outbox_order_operation", outbox.c.order_id, outbox.c.operation)
