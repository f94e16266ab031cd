"""Drop ix_allocations_line: uq_allocations_key's index starts with the same column

Every lookup by ``order_line_id`` can use the unique key's index (order_line_id, warehouse,
status); the second index only cost time on every allocation row written (and space).

Revision ID: 0005s
Revises: 0004
"""

from alembic import op

revision = "0005s"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_allocations_line", table_name="allocations")


def downgrade() -> None:
    op.create_index("ix_allocations_line", "allocations", ["order_line_id"], unique=False)
