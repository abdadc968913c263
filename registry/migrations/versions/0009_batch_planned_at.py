"""Batches record when their planning ended: chunks may now run while the file is still planned,
and finalize waits for ``planned_at``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("planned_at", sa.DateTime(timezone=True), nullable=True))
    # Batches past validating were planned in one go before this revision.
    op.execute(
        "UPDATE batches SET planned_at = COALESCE(started_at, created_at) WHERE status <> 'validating'"
    )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("planned_at")
