"""Cursor pagination, newest first, for per-tenant lists (files, batches).

A page is asked for with ``after`` (the id of the last item already seen) and
``limit``; rows are ordered by ``(created_at, id)`` descending, so an insert
while a client pages never shifts or repeats an item (offsets would).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

T = TypeVar("T")


class UnknownCursor(LookupError):
    """``after`` names no item of this list (another tenant's id included)."""


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page: the items, the total number matching the filters, and whether more follow."""

    items: list[T]
    total: int
    has_more: bool


def clamp_limit(limit: int | None) -> int:
    """A page size between 1 and :data:`MAX_LIMIT` (None: the default)."""
    if limit is None:
        return DEFAULT_LIMIT
    return max(1, min(int(limit), MAX_LIMIT))


def newest_first(
    session: Session,
    entity: Any,
    scope: Sequence[ColumnElement[bool]],
    filters: Sequence[ColumnElement[bool]],
    after: str | None,
    limit: int | None,
) -> Page[Any]:
    """A page of ``entity`` rows matching ``scope`` and ``filters``, newest first, after the cursor.

    The cursor is looked up within ``scope`` only (the tenant), not ``filters``: an
    item that stopped matching a status filter while a client paged still works as
    a cursor.
    """
    size = clamp_limit(limit)
    conditions = [*scope, *filters]
    total = session.scalar(select(func.count()).select_from(entity).where(*conditions)) or 0
    query = select(entity).where(*conditions)
    if after is not None:
        cursor = session.execute(
            select(entity.created_at, entity.id).where(entity.id == after, *scope)
        ).first()
        if cursor is None:
            raise UnknownCursor(after)
        created_at, cursor_id = cursor
        query = query.where(
            or_(
                entity.created_at < created_at,
                and_(entity.created_at == created_at, entity.id < cursor_id),
            )
        )
    rows = list(session.scalars(query.order_by(entity.created_at.desc(), entity.id.desc()).limit(size + 1)))
    return Page(items=rows[:size], total=total, has_more=len(rows) > size)
