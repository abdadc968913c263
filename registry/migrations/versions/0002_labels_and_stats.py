"""Labels as rows (filterable in SQL on any database); inference statistics per model and GPU.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_labels",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "key"),
    )
    op.create_index("ix_model_labels_value", "model_labels", ["value"])
    connection = op.get_bind()
    models = sa.table("models", sa.column("id", sa.String), sa.column("labels", sa.JSON))
    labels = sa.table("model_labels", sa.column("model_id"), sa.column("key"), sa.column("value"))
    rows = []
    for model_id, raw in connection.execute(sa.select(models.c.id, models.c.labels)):
        value = json.loads(raw) if isinstance(raw, str) else (raw or {})
        rows += [{"model_id": model_id, "key": k, "value": str(v)} for k, v in value.items()]
    if rows:
        op.bulk_insert(labels, rows)
    with op.batch_alter_table("models") as batch_op:
        batch_op.drop_column("labels")

    op.create_table(
        "inference_stats",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("gpu", sa.Integer(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "gpu"),
    )
    op.create_table(
        "inference_latency",
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("gpu", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "gpu", "bucket"),
    )


def downgrade() -> None:
    op.drop_table("inference_latency")
    op.drop_table("inference_stats")
    with op.batch_alter_table("models") as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"))
    connection = op.get_bind()
    labels = sa.table("model_labels", sa.column("model_id"), sa.column("key"), sa.column("value"))
    models = sa.table("models", sa.column("id", sa.String), sa.column("labels", sa.JSON))
    by_model: dict[str, dict[str, str]] = {}
    for model_id, key, value in connection.execute(sa.select(labels.c.model_id, labels.c.key, labels.c.value)):
        by_model.setdefault(model_id, {})[key] = value
    for model_id, value in by_model.items():
        connection.execute(sa.update(models).where(models.c.id == model_id).values(labels=value))
    op.drop_index("ix_model_labels_value", table_name="model_labels")
    op.drop_table("model_labels")
