"""invoicing: channel fulfilment status, taxed invoice lines, companies, credit notes, numbering

Revision ID: 0005c
Revises: 0004

Only additions: new nullable columns on ``orders`` and ``invoices`` (invoices issued before this
revision keep null company, net, tax, policy and reason; their amount stays what it was) and
three new tables. SQLite adds columns without rebuilding a table, so the finance views that
read ``invoices`` need not be dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005c"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=18, scale=2)
PRICE = sa.Numeric(precision=18, scale=4)
QTY = sa.Numeric(precision=18, scale=3)
TAX_RATE = sa.Numeric(precision=9, scale=6)
RUN_ID = sa.String(length=36)


def upgrade() -> None:
    op.add_column("orders", sa.Column("fulfilment_status", sa.String(length=32), nullable=True))

    op.add_column("invoices", sa.Column("company", sa.String(length=32), nullable=True))
    op.add_column("invoices", sa.Column("net_amount", MONEY, nullable=True))
    op.add_column("invoices", sa.Column("tax_amount", MONEY, nullable=True))
    op.add_column("invoices", sa.Column("policy", sa.String(length=16), nullable=True))
    op.add_column("invoices", sa.Column("prices_include_tax", sa.Boolean(), nullable=True))
    op.add_column("invoices", sa.Column("reason", sa.Text(), nullable=True))

    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("qty", QTY, nullable=True),
        sa.Column("unit_price", PRICE, nullable=True),
        sa.Column("net_amount", MONEY, nullable=False),
        sa.Column("tax_rate", TAX_RATE, nullable=False),
        sa.Column("tax_amount", MONEY, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("tax_rule", sa.String(length=64), nullable=False),
        sa.Column("run_id", RUN_ID, nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"],
                                name=op.f("fk_invoice_lines_invoice_id_invoices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint("invoice_id", "line_no", name="uq_invoice_lines_key"),
    )

    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("credit_note_no", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("company", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("net_amount", MONEY, nullable=False),
        sa.Column("tax_amount", MONEY, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("cause", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", RUN_ID, nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"],
                                name=op.f("fk_credit_notes_invoice_id_invoices")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_credit_notes_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_notes")),
        sa.UniqueConstraint("credit_note_no", name=op.f("uq_credit_notes_credit_note_no")),
        sa.UniqueConstraint("invoice_id", name=op.f("uq_credit_notes_invoice_id")),
    )

    op.create_table(
        "document_sequences",
        sa.Column("series", sa.String(length=64), nullable=False),
        sa.Column("last_value", sa.Integer(), nullable=False),
        sa.Column("run_id", RUN_ID, nullable=False),
        sa.PrimaryKeyConstraint("series", name=op.f("pk_document_sequences")),
    )


def downgrade() -> None:
    op.drop_table("document_sequences")
    op.drop_table("credit_notes")
    op.drop_table("invoice_lines")
    with op.batch_alter_table("invoices") as batch:
        for name in ("reason", "prices_include_tax", "policy", "tax_amount", "net_amount", "company"):
            batch.drop_column(name)
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("fulfilment_status")
