"""validation rules: price_rules (group / date / discount prices) and check_warnings

Revision ID: 0005a
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005a"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "price_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("customer_group", sa.String(length=32), nullable=True),
        sa.Column("valid_from", sa.Date(), nullable=True),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("price", sa.Numeric(precision=18, scale=4), nullable=True),
        sa.Column("discount_pct", sa.Numeric(precision=9, scale=4), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_rules")),
        sa.UniqueConstraint("source", "external_id", name="uq_price_rules_key"),
    )
    op.create_index("ix_price_rules_sku_currency", "price_rules", ["sku", "currency"],
                    unique=False)
    op.create_table(
        "check_warnings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("check_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_check_warnings_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_check_warnings")),
        sa.UniqueConstraint("order_id", "check_id", name="uq_check_warnings_key"),
    )
    op.create_index(op.f("ix_check_warnings_order_id"), "check_warnings", ["order_id"],
                    unique=False)
    op.create_index(op.f("ix_check_warnings_run_id"), "check_warnings", ["run_id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_check_warnings_run_id"), table_name="check_warnings")
    op.drop_index(op.f("ix_check_warnings_order_id"), table_name="check_warnings")
    op.drop_table("check_warnings")
    op.drop_index("ix_price_rules_sku_currency", table_name="price_rules")
    op.drop_table("price_rules")
