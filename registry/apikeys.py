"""API keys: each belongs to a tenant; only a SHA-256 hash of the key is stored."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry.db import Base, Database, UTCDateTime, new_id, utcnow

KEY_PREFIX = "iq_"


class ApiKey(Base):
    """A tenant's key. The key itself is shown once, at creation; the row keeps its hash."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Requests allowed to this key, e.g. "1000/minute"; None: the platform default (INFERQ_RATE_LIMIT).
    rate_limit: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant of a valid key, and whether it may change the registry."""

    tenant: str
    admin: bool
    key_id: str
    rate_limit: str | None = None


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def check_rate_limit(text: str) -> str:
    """A rate such as ``100/minute`` or ``10/second`` (the ``limits`` notation), or ValueError."""
    from limits import parse_many

    try:
        parse_many(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate such as 100/minute") from None
    return text


def create_key(
    session: Session, tenant: str, admin: bool = False, rate_limit: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant``; returns the row and the key, which is not stored."""
    if not tenant or len(tenant) > 128:
        raise ValueError("a tenant name of 1 to 128 characters is required")
    if rate_limit is not None:
        check_rate_limit(rate_limit)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=tenant, key_hash=hash_key(key), prefix=key[:8], admin=admin, rate_limit=rate_limit)
    session.add(row)
    session.flush()
    return row, key


def _principal(row: ApiKey | None) -> Principal | None:
    if row is None or row.revoked_at is not None:
        return None
    return Principal(tenant=row.tenant, admin=row.admin, key_id=row.id, rate_limit=row.rate_limit)


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal for a presented key, or None if it is unknown or revoked."""
    return _principal(session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))))


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Keys (never the secrets), oldest first, of one tenant or all."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Revoke a key by id (it stops authenticating at once); None when there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def key_is_valid(session: Session, key: str) -> bool:
    return authenticate(session, key) is not None


class KeyCache:
    """Keys presented recently -> their principal (or None: unknown), reused for ``ttl`` seconds.

    Saves a database query on nearly every request; the price is that a revoked
    key keeps working in each API process for at most ``ttl`` seconds (0: no cache).
    """

    def __init__(self, ttl: float, maxsize: int = 10_000) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    def authenticate(self, db: Database, key: str) -> Principal | None:
        """The principal of ``key``, from this cache or (opening a short session) the database."""
        digest = hash_key(key)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            return entry[1]
        with db.session() as session:
            principal = _principal(session.scalar(select(ApiKey).where(ApiKey.key_hash == digest)))
        if self.ttl > 0:
            if len(self._entries) >= self.maxsize:
                self._entries.clear()  # bounded: unknown keys sent in bulk cannot grow it
            self._entries[digest] = (now + self.ttl, principal)
        return principal
