"""Alembic migrations on SQLite and PostgreSQL: up from empty, the labels data move, down and up again."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from launcher.cli import main
from registry.db import make_engine, upgrade

pytestmark = pytest.mark.integration


def test_labels_move_from_json_to_rows_and_back(empty_database: str) -> None:
    upgrade(empty_database, "0001")
    engine = make_engine(empty_database)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO models (id, name, version, framework, triton_name, inputs, outputs,"
                    " description, labels, status, status_message, created_at, updated_at)"
                    " VALUES ('m1', 'a', '1', 'onnx', 'a', '[]', '[]', '', :labels, 'registered', '',"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"labels": json.dumps({"team": "vision", "tier": "gold"})},
            )
        upgrade(empty_database)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT key, value FROM model_labels WHERE model_id = 'm1'")).all()
            assert sorted(map(tuple, rows)) == [("team", "vision"), ("tier", "gold")]
            columns = {c["name"] for c in inspect(connection).get_columns("models")}
            assert "labels" not in columns
        from alembic import command

        from registry.db import alembic_config

        command.downgrade(alembic_config(empty_database), "0001")  # and back: labels return to JSON
        with engine.connect() as connection:
            raw = connection.execute(text("SELECT labels FROM models WHERE id = 'm1'")).scalar_one()
            assert (json.loads(raw) if isinstance(raw, str) else raw) == {"team": "vision", "tier": "gold"}
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(empty_database: str) -> None:
    from alembic import command

    from registry.db import alembic_config

    upgrade(empty_database)
    command.downgrade(alembic_config(empty_database), "base")
    engine = make_engine(empty_database)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"INFERQ_DATABASE_URL": empty_database})
    assert result.exit_code == 0, result.output
    engine = make_engine(empty_database)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            assert {"models", "deployments", "model_labels", "api_keys", "inference_stats"} <= tables
    finally:
        engine.dispose()
