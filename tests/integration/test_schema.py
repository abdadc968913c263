"""The migrated schema is the one the ORM declares (SQLite and PostgreSQL); 0005 goes down and up."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from registry.db import Base, alembic_config, make_engine, upgrade

pytestmark = pytest.mark.integration

BATCH_TABLES = {"files", "batches", "chunks"}


def test_the_migrations_build_exactly_the_orm_tables(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from registry import apikeys, batches, files, models, stats  # noqa: F401 - every table on Base

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert set(Base.metadata.tables) <= set(inspect(connection).get_table_names())
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_0005_goes_down_and_up_again(empty_database: str) -> None:
    from alembic import command

    upgrade(empty_database)
    engine = make_engine(empty_database)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) >= BATCH_TABLES
        command.downgrade(alembic_config(empty_database), "0004")
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            assert not BATCH_TABLES & tables and {"models", "api_keys"} <= tables
        upgrade(empty_database)
        engine.dispose()  # a pooled SQLite connection answers PRAGMA index_list from its stale schema
        with engine.connect() as connection:
            indexes = {i["name"] for i in inspect(connection).get_indexes("batches")}
            assert {"ix_batches_tenant_created_at_id", "ix_batches_status"} <= indexes
    finally:
        engine.dispose()
