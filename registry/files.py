"""Files of a tenant in the object store: uploaded batch inputs and the result and error files of batches.

A row describes one object; the bytes live in the object store under a key
that begins with the tenant's own prefix (:func:`tenant_prefix`). Deleting a
file marks the row (``deleted_at``) so that batches keep their references; the
caller removes the object once the transaction has committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import BigInteger, Index, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from registry.db import Base, UTCDateTime, new_id, utcnow
from registry.pagination import Page, newest_first

FILE_PURPOSES = ("batch_input", "batch_output", "batch_error")
MAX_FILENAME = 255


class File(Base):
    """One object of a tenant: what it is for, its name and size, and where it is stored."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created_at_id", "tenant", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(MAX_FILENAME))
    bytes: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(512))
    # Lines in the file, once known (counted while a batch input is planned, or as results are written).
    line_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "purpose": self.purpose,
            "filename": self.filename,
            "bytes": self.bytes,
            "line_count": self.line_count,
            "created_at": self.created_at.isoformat(),
        }


def tenant_prefix(tenant: str) -> str:
    """The object-store prefix under which every object of ``tenant`` lives.

    The tenant is percent-encoded (``/`` included) so that no tenant name can
    reach into another tenant's prefix.
    """
    return f"tenants/{quote(tenant, safe='')}/"


def file_object_key(tenant: str, file_id: str) -> str:
    """The object key of file ``file_id`` of ``tenant``."""
    return f"{tenant_prefix(tenant)}files/{file_id}"


def clean_filename(filename: str) -> str:
    """The name to keep for an upload: its last path component, at most 255 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:MAX_FILENAME] or "file"


def create_file(
    session: Session,
    tenant: str,
    purpose: str,
    filename: str,
    size: int,
    *,
    file_id: str | None = None,
    line_count: int | None = None,
) -> File:
    """Record a file of ``tenant`` whose object is (or is about to be) at :func:`file_object_key`.

    ``file_id`` lets an upload choose the id first, stream the object to its key,
    and record the row afterwards.
    """
    if purpose not in FILE_PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(FILE_PURPOSES)}, not {purpose!r}")
    if size < 0:
        raise ValueError("a file's size cannot be negative")
    file_id = file_id or new_id()
    row = File(
        id=file_id,
        tenant=tenant,
        purpose=purpose,
        filename=clean_filename(filename),
        bytes=size,
        object_key=file_object_key(tenant, file_id),
        line_count=line_count,
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, tenant: str, file_id: str) -> File | None:
    """The file ``file_id`` of ``tenant``; None when it does not exist, is deleted or is another tenant's."""
    return session.scalar(
        select(File).where(File.id == file_id, File.tenant == tenant, File.deleted_at.is_(None))
    )


def file_by_id(session: Session, file_id: str) -> File | None:
    """A file whatever its tenant, deleted or not (for tasks, which carry only ids)."""
    return session.get(File, file_id, populate_existing=True)


def list_files(
    session: Session,
    tenant: str,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Page[File]:
    """One page of the tenant's files, newest first, after the file ``after`` (raises UnknownCursor)."""
    filters = [File.purpose == purpose] if purpose is not None else []
    return newest_first(
        session, File, [File.tenant == tenant, File.deleted_at.is_(None)], filters, after, limit
    )


def set_line_count(session: Session, file: File, line_count: int) -> None:
    """Record how many lines the file has."""
    file.line_count = line_count
    session.flush()


def delete_file(session: Session, tenant: str, file_id: str) -> File | None:
    """Mark the tenant's file deleted and return it (None when not found).

    The row stays, so that batches naming it still resolve; remove the object at
    ``file.object_key`` after the transaction commits.
    """
    row = get_file(session, tenant, file_id)
    if row is not None:
        row.deleted_at = utcnow()
        session.flush()
    return row
