"""order_events.run_id index: a run's events without scanning every run's

The KPIs of a run (cycle time, automation, quarantine, accuracy), ``days_touched`` and the run
summary pick order events by ``run_id``; without an index each of them scanned the whole event
table, however small the run (a rerun that finds nothing new).

Revision ID: 0005k
Revises: 0004
"""

from alembic import op

revision = "0005k"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_order_events_run_id", "order_events", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_order_events_run_id", table_name="order_events")
