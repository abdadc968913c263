"""Inference statistics count attempts (Triton calls, failed ones included) apart from requests.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inference_stats") as batch:
        batch.add_column(sa.Column("attempts", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("failed_attempts", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("inference_stats") as batch:
        batch.drop_column("failed_attempts")
        batch.drop_column("attempts")
