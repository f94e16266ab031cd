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
FX_RATE = Numeric(18, 8)
TAX_RATE = Numeric(9, 6)  # a fraction: 0.13 is 13 % (0005c)
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
    # 0005t: an order's own total as the connector's mapping read it from this payload when it
    # landed (null: not an order, or landed before 0005t): the accuracy KPI compares with it
    # instead of parsing and mapping every payload again
    Column("source_total", MONEY),
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

# Price rules (0005a): a price and/or a discount for a sku and currency, optionally for one
# customer group and a date window. price_matches_list takes the most specific active rule
# over the plain list price above (docs/checks.md).
price_rules = Table(
    "price_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("customer_group", String(32)),  # null: every customer
    Column("valid_from", Date),  # null: since always
    Column("valid_to", Date),  # inclusive; null: open-ended
    Column("price", PRICE),  # null: the list price, less the discount
    Column("discount_pct", Numeric(9, 4)),  # percent off, 5 = 5 %; null: none
    Column("content_hash", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("source", "external_id", name="uq_price_rules_key"),
)
# the check looks rules up by (sku, currency) for every line of the batch
Index("ix_price_rules_sku_currency", price_rules.c.sku, price_rules.c.currency)

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
    # 0005c: the channel's own fulfilment status as last pulled (Shopify fulfillment_status:
    # unfulfilled, partial, fulfilled, restocked); null when the channel reports none
    Column("fulfilment_status", String(32)),
    # 0005b: the sales owner (warehouse/owners.py: territory -> team -> round-robin), set once
    # by allocation and kept; owner_rule/owner_inputs say why (territory | default_team)
    Column("owner", String(128)),
    Column("team", String(64)),
    Column("owner_rule", String(32)),
    Column("owner_inputs", JSON),
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

# Warn-severity failures (0005a): the order passed the gate, flagged with the check, reason and
# value. Kept apart from quarantine so that every quarantine row is an order held back.
check_warnings = Table(
    "check_warnings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, index=True),
    Column("check_id", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("value", Text),
    _ts("created_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False, index=True),  # the report reads a run's warnings
    UniqueConstraint("order_id", "check_id", name="uq_check_warnings_key"),
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

# 0005b: round-robin position per sales team: the team's n-th owner assignment ever goes to
# members[n % len(members)], so reruns and restarts continue where the last run stopped.
owner_counters = Table(
    "owner_counters",
    metadata,
    Column("team", String(64), primary_key=True),
    Column("assigned", Integer, nullable=False),  # owner assignments made in this team so far
    Column("run_id", RUN_ID, nullable=False),
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

# --- ops --------------------------------------------------------------------------------------

# Every human decision on an order (release, fix, override, reject, rollback): who, why, when.
# Orders with no row here went through untouched: the automation-rate KPI counts them.
ops_actions = Table(
    "ops_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", Integer, ForeignKey("orders.id"), index=True),  # null for run-level acts
    Column("action", String(32), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", JSON),
    _ts("at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

# Alerts to ops (flows/alerts.py, migration 0005o): one row per (kind, key, UTC day), so a
# condition seen by a schedule every 5 minutes is posted once a day; `raised` counts the repeats.
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # gate_failed, batch_held, source_unreachable, payment_unmatched
    Column("kind", String(32), nullable=False),
    Column("alert_key", String(255), nullable=False),  # what it is about: a check, a source, ...
    Column("day", Date, nullable=False),
    Column("message", Text, nullable=False),
    Column("details", JSON),
    Column("raised", Integer, nullable=False, default=1),
    # sent | failed (sent again by the next raise) | recorded (no webhook configured)
    Column("status", String(16), nullable=False),
    Column("error", Text),
    _ts("first_at", nullable=False),
    _ts("last_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("kind", "alert_key", "day", name="uq_alerts_key"),
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
    Column("amount", MONEY, nullable=False),  # gross: net_amount + tax_amount
    _ts("issued_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    # 0005c: the numbering company (null: deterministic INV-{source}-{order_no}), the totals of
    # the taxed lines (null on invoices issued before 0005c), and why it was issued
    Column("company", String(32)),
    Column("net_amount", MONEY),
    Column("tax_amount", MONEY),
    Column("policy", String(16)),  # on_order | on_shipment
    Column("prices_include_tax", Boolean),  # whether the order's unit prices were gross
    Column("reason", Text),
)

# One row per invoiced order line (0005c): the rate, the rule that chose it, and the rounded
# amounts; the invoice's totals are their sums.
invoice_lines = Table(
    "invoice_lines",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("sku", String(64)),
    Column("qty", QTY),
    Column("unit_price", PRICE),
    Column("net_amount", MONEY, nullable=False),
    Column("tax_rate", TAX_RATE, nullable=False),
    Column("tax_amount", MONEY, nullable=False),
    Column("amount", MONEY, nullable=False),  # gross
    Column("tax_rule", String(64), nullable=False),  # default | by_currency X | by_sku_prefix P
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("invoice_id", "line_no", name="uq_invoice_lines_key"),
)

# A credit note reverses one invoice in full (0005c) when its order is cancelled or returned
# after invoicing. Amounts are negative; numbered in the company's own credit series.
credit_notes = Table(
    "credit_notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("credit_note_no", String(64), nullable=False, unique=True),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False, unique=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False),
    Column("company", String(32)),
    Column("currency", String(3), nullable=False),
    Column("net_amount", MONEY, nullable=False),
    Column("tax_amount", MONEY, nullable=False),
    Column("amount", MONEY, nullable=False),  # gross, negative
    Column("cause", String(16), nullable=False),  # cancelled | returned
    Column("reason", Text, nullable=False),
    _ts("issued_at", nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

# Gap-free document numbers (0005c): one row per series ("invoice:cn", "credit_note:cn"), the
# last number issued. Moved only inside the transaction that inserts the documents.
document_sequences = Table(
    "document_sequences",
    metadata,
    Column("series", String(64), primary_key=True),
    Column("last_value", Integer, nullable=False),
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
    # settlement inputs (0003): the bank fee the source says it deducted (null: not stated), and
    # the kind: payment (null too) | refund. A negative amount is a refund whatever the kind.
    Column("fee", MONEY),
    Column("kind", String(16)),
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

# One row per (payment, invoice) decision of warehouse/reconcile_rules.py, recomputed by every
# reconcile run from the whole book; a row is rewritten only when its values change.
payment_matches = Table(
    "payment_matches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("payment_id", Integer, ForeignKey("payments.id"), nullable=False),
    Column("invoice_id", Integer, ForeignKey("invoices.id"), nullable=False),
    Column("amount", MONEY, nullable=False),  # the payment's cash, payment currency (refund < 0)
    # by_reference, by_customer_amount, by_amount_window, refund
    Column("rule", String(32), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    # 0003: what the invoice is credited (its currency; differs from amount only across FX),
    # the bank fee settling it, the rate used, and why: a sentence and the inputs it rests on
    Column("applied", MONEY, nullable=False, default=0, server_default="0"),
    Column("fee", MONEY, nullable=False, default=0, server_default="0"),
    Column("fx_rate", FX_RATE),
    Column("reason", Text, nullable=False, default="", server_default=""),
    Column("inputs", JSON),
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
    Column("applied", MONEY, nullable=False),  # cash, net of refunds; never above invoiced
    Column("outstanding", MONEY, nullable=False),  # invoiced - applied - fees (>= 0)
    Column("status", String(16), nullable=False),  # open, part_paid, paid, over_paid
    Column("run_id", RUN_ID, nullable=False),
    Column("fees", MONEY, nullable=False, default=0, server_default="0"),  # bank fees (0003)
    # over-payment quoting this invoice, held unapplied on the payments (0003)
    Column("excess", MONEY, nullable=False, default=0, server_default="0"),
)

# One row per payment (0003): how much of it is applied, what is left and why; the payment side
# of `reconciliation`. Decisions live here, not on `payments`, which only the loader writes.
payment_reconciliation = Table(
    "payment_reconciliation",
    metadata,
    Column("payment_id", Integer, ForeignKey("payments.id"), primary_key=True),
    Column("currency", String(3), nullable=False),
    Column("received", MONEY, nullable=False),  # signed: a refund is negative
    Column("applied", MONEY, nullable=False),
    Column("unapplied", MONEY, nullable=False),  # received - applied
    Column("status", String(16), nullable=False),  # applied, part_applied, unapplied, duplicate
    Column("reason", Text, nullable=False),
    Column("duplicate_of", Integer, ForeignKey("payments.id")),
    Column("on_account_invoice_id", Integer, ForeignKey("invoices.id")),  # excess held against
    Column("run_id", RUN_ID, nullable=False),
)

# Exchange rates for matching payments in another currency (0003): 1 base = rate quote, from
# rate_date on. orderhub.yaml's reconciliation.fx_rates are the fallback when none applies.
fx_rates = Table(
    "fx_rates",
    metadata,
    Column("base", String(3), primary_key=True),
    Column("quote", String(3), primary_key=True),
    Column("rate_date", Date, primary_key=True),
    Column("rate", FX_RATE, nullable=False),
    Column("source", String(64), nullable=False),
    Column("run_id", RUN_ID, nullable=False),
)

# --- KPIs -------------------------------------------------------------------------------------

# The daily KPI table (warehouse/kpis.py, docs/kpis.md): one figure per (UTC day, source, metric);
# source "*" is all sources together. value is a ratio (0..1, 6 places) or seconds; numerator
# and denominator are the order counts behind it (numerator null for a percentile). Rewritten
# only when a figure changes, by the run named in run_id.
kpi_daily = Table(
    "kpi_daily",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("day", Date, nullable=False),
    Column("source", String(64), nullable=False),
    Column("metric", String(128), nullable=False),
    Column("value", Numeric(18, 6), nullable=False),
    Column("numerator", Integer),
    Column("denominator", Integer, nullable=False),
    Column("run_id", RUN_ID, nullable=False),
    UniqueConstraint("day", "source", "metric", name="uq_kpi_daily_key"),
)

# 0005k: a run's events by run_id (warehouse/kpis.py, metrics.py)
Index("ix_order_events_run_id", order_events.c.run_id)
Index("ix_payments_reference", payments.c.reference)
Index("ix_payment_matches_invoice", payment_matches.c.invoice_id)
# "are this order's pushes all done?" is asked per order: without it that is a scan per order
Index("ix_outbox_order_operation", outbox.c.order_id, outbox.c.operation)

# --- stage marks: what a whole-book stage last saw (warehouse/freshness.py) ------------------

stage_marks = Table(
    "stage_marks",
    metadata,
    Column("stage", String(64), primary_key=True),
    Column("run_id", RUN_ID, nullable=False),  # the run that ran the stage
    _ts("marked_at", nullable=False),  # taken before the stage read its inputs
    Column("key", String(128), nullable=False),  # what else the result depends on (config, day)
    Column("result", JSON),  # the stage's figures, shown again when it is skipped
)

# Whole-book stages ask "did any run since my last pass write here?": one index probe per run.
FRESHNESS_TABLES = ("orders", "order_lines", "allocations", "quarantine", "invoices",
                    "payments", "fx_rates", "payment_matches", "reconciliation",
                    "payment_reconciliation")
for _name in FRESHNESS_TABLES:
    Index(f"ix_{_name}_run_id", metadata.tables[_name].c.run_id)
