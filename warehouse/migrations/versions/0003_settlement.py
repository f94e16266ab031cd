"""settlement: payment fee and kind, match reasons, per-payment reconciliation, fx rates

Revision ID: 0003
Revises: 0002

The finance views are dropped first: they read these tables, SQLite refuses to rebuild a table
a view names, and ``warehouse.views.ensure_views`` recreates them (the next reconcile or export).
Existing matches keep their amount as the amount applied; the next reconcile recomputes every
decision from the whole book and rewrites only the rows that differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("v_invoice_status", "v_unmatched_payments", "v_open_receivables",
         "v_open_receivables_aging", "v_cash_per_day")
MONEY = sa.Numeric(precision=18, scale=2)
FX_RATE = sa.Numeric(precision=18, scale=8)


def _drop_views() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    _drop_views()
    op.add_column("payments", sa.Column("fee", MONEY, nullable=True))
    op.add_column("payments", sa.Column("kind", sa.String(length=16), nullable=True))

    op.add_column("payment_matches", sa.Column("applied", MONEY, nullable=False, server_default="0"))
    op.add_column("payment_matches", sa.Column("fee", MONEY, nullable=False, server_default="0"))
    op.add_column("payment_matches", sa.Column("fx_rate", FX_RATE, nullable=True))
    op.add_column("payment_matches", sa.Column("reason", sa.Text(), nullable=False, server_default=""))
    op.add_column("payment_matches", sa.Column("inputs", sa.JSON(), nullable=True))
    op.execute("UPDATE payment_matches SET applied = amount")
    op.create_index("ix_payment_matches_invoice", "payment_matches", ["invoice_id"], unique=False)

    op.add_column("reconciliation", sa.Column("fees", MONEY, nullable=False, server_default="0"))
    op.add_column("reconciliation", sa.Column("excess", MONEY, nullable=False, server_default="0"))

    op.create_table(
        "payment_reconciliation",
        sa.Column("payment_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("received", MONEY, nullable=False),
        sa.Column("applied", MONEY, nullable=False),
        sa.Column("unapplied", MONEY, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("duplicate_of", sa.Integer(), nullable=True),
        sa.Column("on_account_invoice_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["duplicate_of"], ["payments.id"],
                                name=op.f("fk_payment_reconciliation_duplicate_of_payments")),
        sa.ForeignKeyConstraint(["on_account_invoice_id"], ["invoices.id"],
                                name=op.f("fk_payment_reconciliation_on_account_invoice_id_invoices")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"],
                                name=op.f("fk_payment_reconciliation_payment_id_payments")),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_payment_reconciliation")),
    )
    op.create_table(
        "fx_rates",
        sa.Column("base", sa.String(length=3), nullable=False),
        sa.Column("quote", sa.String(length=3), nullable=False),
        sa.Column("rate_date", sa.Date(), nullable=False),
        sa.Column("rate", FX_RATE, nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("base", "quote", "rate_date", name=op.f("pk_fx_rates")),
    )


def downgrade() -> None:
    _drop_views()
    op.drop_table("fx_rates")
    op.drop_table("payment_reconciliation")
    with op.batch_alter_table("reconciliation") as batch:
        batch.drop_column("excess")
        batch.drop_column("fees")
    op.drop_index("ix_payment_matches_invoice", table_name="payment_matches")
    with op.batch_alter_table("payment_matches") as batch:
        for name in ("inputs", "reason", "fx_rate", "fee", "applied"):
            batch.drop_column(name)
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("kind")
        batch.drop_column("fee")
