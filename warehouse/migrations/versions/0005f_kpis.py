"""kpi_daily: the daily KPI table

Revision ID: 0005f
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005f"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kpi_daily",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("numerator", sa.Integer(), nullable=True),
        sa.Column("denominator", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kpi_daily")),
        sa.UniqueConstraint("day", "source", "metric", name="uq_kpi_daily_key"),
    )


def downgrade() -> None:
    op.drop_table("kpi_daily")
