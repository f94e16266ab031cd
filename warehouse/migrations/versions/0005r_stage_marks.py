"""stage_marks and run_id indexes: whole-book stages (reconcile, exports) skip unchanged inputs

Revision ID: 0005r
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005r"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("orders", "order_lines", "allocations", "quarantine", "invoices", "payments",
          "fx_rates", "payment_matches", "reconciliation", "payment_reconciliation")


def upgrade() -> None:
    op.create_table(
        "stage_marks",
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("stage", name=op.f("pk_stage_marks")),
    )
    for name in TABLES:
        op.create_index(f"ix_{name}_run_id", name, ["run_id"])


def downgrade() -> None:
    for name in TABLES:
        op.drop_index(f"ix_{name}_run_id", table_name=name)
    op.drop_table("stage_marks")
