"""ops_actions: every human decision on an order

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ops_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"],
                                name=op.f("fk_ops_actions_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ops_actions")),
    )
    op.create_index(op.f("ix_ops_actions_order_id"), "ops_actions", ["order_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ops_actions_order_id"), table_name="ops_actions")
    op.drop_table("ops_actions")
