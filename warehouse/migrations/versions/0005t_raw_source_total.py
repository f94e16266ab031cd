"""raw_records.source_total: an order's own total as its connector mapped it at landing

The accuracy KPI compares each order's stored total with the source's total. It read that by
parsing the order's raw payload and running the connector's mapping again, for every order in
scope (150,000 at TPC-H SF 0.1: about 4 s, and every payload's text read out). Landing already
holds the mapped record, so it keeps the total beside the payload it came from; a payload that
changes rewrites both. Rows landed before this revision have none: the KPI maps their payload
as before.

Revision ID: 0005t
Revises: 0005s
"""

import sqlalchemy as sa
from alembic import op

revision = "0005t"
down_revision = "0005s"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("raw_records", sa.Column("source_total", sa.Numeric(18, 2), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("raw_records") as batch:
        batch.drop_column("source_total")
