"""Engine, sessions and schema migrations for the registry database (PostgreSQL or SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseUnavailable(RuntimeError):
    """The registry database cannot be reached."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh primary key: 32 hex characters."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of every registry table."""


def make_engine(url: str, *, sqlite_foreign_keys: bool = True, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get WAL and a busy timeout so that API and workers share them.

    Migrations turn SQLite's foreign keys off: Alembic's batch mode recreates a
    table to alter it, and dropping the old copy would cascade to its children.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if sqlite_foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    cooperative_postgres_waits()
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; inferq ships psycopg2.
        url = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


def cooperative_postgres_waits() -> None:
    """Under gevent (the API's gunicorn workers), make psycopg2 wait on its socket cooperatively,
    so a slow query blocks its own request, not every request of the process."""
    import sys

    if "gevent" not in sys.modules:
        return
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        return
    import psycopg2.extensions
    from gevent.socket import wait_read, wait_write

    def wait(connection: Any, timeout: float | None = None) -> None:
        while True:
            state = connection.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                wait_read(connection.fileno(), timeout=timeout)
            elif state == psycopg2.extensions.POLL_WRITE:
                wait_write(connection.fileno(), timeout=timeout)
            else:
                raise psycopg2.OperationalError(f"unexpected psycopg2 poll state {state}")

    psycopg2.extensions.set_wait_callback(wait)


class Database:
    """One engine and its session factory; ``session()`` is a unit of work."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on an error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Raise :class:`DatabaseUnavailable` unless ``SELECT 1`` answers."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    """An Alembic config pointing at the packaged migrations and ``url``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision`` (Alembic)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)
