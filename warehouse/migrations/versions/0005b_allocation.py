"""allocation: order owners (territory -> team -> round-robin) and the per-team counters

Revision ID: 0005b
Revises: 0004

Only additions: four nullable columns on ``orders`` (orders allocated before this revision keep
no owner; the next allocation run leaves them so: an owner is set when allocation places an
order) and the ``owner_counters`` table. Split and partial allocations need no schema change:
they are more ``allocations`` rows per line, which ``uq_allocations_key`` already allows
(one row per warehouse and status).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005b"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER_COLUMNS = ("owner", "team", "owner_rule", "owner_inputs")


def upgrade() -> None:
    op.add_column("orders", sa.Column("owner", sa.String(length=128), nullable=True))
    op.add_column("orders", sa.Column("team", sa.String(length=64), nullable=True))
    op.add_column("orders", sa.Column("owner_rule", sa.String(length=32), nullable=True))
    op.add_column("orders", sa.Column("owner_inputs", sa.JSON(), nullable=True))
    op.create_table(
        "owner_counters",
        sa.Column("team", sa.String(length=64), nullable=False),
        sa.Column("assigned", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("team", name=op.f("pk_owner_counters")),
    )


def downgrade() -> None:
    op.drop_table("owner_counters")
    with op.batch_alter_table("orders") as batch:  # SQLite rebuilds the table to drop columns
        for name in reversed(OWNER_COLUMNS):
            batch.drop_column(name)
