"""Batches and their chunks: the database is the source of truth for what exists and what is done.

A batch's input file is cut into chunks (byte ranges of whole lines). Each chunk
goes through ``pending -> queued -> done`` (``queued`` again when the reaper
re-sends a lost message; ``cancelled`` when the batch is cancelled before it
ran). A chunk done twice (a redelivered message, a re-send racing the original)
is counted once: :func:`complete_chunk` flips the chunk and adds its counts to
the batch in one transaction, and only the call that flipped it adds.

Status changes are conditional UPDATEs (``WHERE status IN (...)``): of two
processes racing to, say, start finalizing, exactly one is told it did.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    CursorResult,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.orm.util import identity_key

from registry.batch_input import ChunkSpec
from registry.db import Base, UTCDateTime, new_id, utcnow
from registry.files import tenant_prefix
from registry.pagination import Page, newest_first
from registry.signatures import Problem

BATCH_STATUSES = (
    "validating",
    "queued",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
)
FINAL_STATUSES = ("completed", "failed", "cancelled")
CHUNK_STATUSES = ("pending", "queued", "done", "cancelled")
CHUNKS_LEFT = ("pending", "queued")
# A chunk's results count only while its batch can still use them.
COUNTING_STATUSES = ("in_progress", "finalizing", "cancelling")
# Chunks are sent only for a batch whose chunks are (being) recorded and that is not cancelled.
SENDING_STATUSES = ("queued", "in_progress")
# A planner may record chunks while the batch is in one of these and ``planned_at`` is not set:
# chunks run while the rest of the file is planned. A batch cancelled meanwhile is planned to the
# end too, its remaining chunks recorded as cancelled: every line ends in one of its files.
PLANNING_STATUSES = ("validating", "queued", "in_progress", "cancelling")

# Status -> the statuses a batch may reach it from.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("validating",),
    "in_progress": ("queued",),
    "finalizing": ("in_progress",),
    "completed": ("finalizing",),
    "cancelling": ("validating", "queued", "in_progress"),
    "cancelled": ("cancelling",),
    "failed": ("validating", "queued", "in_progress", "finalizing", "cancelling"),
}

MAX_IDEMPOTENCY_KEY = 255
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
CHUNK_INSERT_BATCH = 1000


class BatchStateError(Exception):
    """The batch is in a status that does not allow the operation (e.g. cancelling a completed batch)."""

    def __init__(self, batch: Batch, operation: str) -> None:
        super().__init__(f"batch {batch.id} is {batch.status}; it cannot be {operation}")
        self.batch = batch


class Batch(Base):
    """A batch job of a tenant: one model version over one input file."""

    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_batches_tenant_idempotency_key"),
        Index("ix_batches_tenant_created_at_id", "tenant", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(128))
    # SET NULL: deleting a model keeps the history of its batches (name and version are copied).
    model_id: Mapped[str | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True, index=True
    )
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    # Files are deleted softly; SET NULL only matters if a file row is ever purged.
    input_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True
    )
    output_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True, default=None
    )
    error_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True, default=None
    )
    status: Mapped[str] = mapped_column(String(16), default="validating", index=True)
    total_count: Mapped[int] = mapped_column(BigInteger, default=0)
    completed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    # Why the batch itself failed (not its items: those are in the error file).
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    meta: Mapped[dict[str, str]] = mapped_column("metadata", JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(
        String(MAX_IDEMPOTENCY_KEY), nullable=True, default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    # When planning recorded the last chunk and the final total; until then chunks may already run
    # (their tasks are sent as they are planned), ``total_count`` grows, and finalize waits.
    planned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)

    @property
    def progress(self) -> int:
        """Percent of the requests with a result (output or error), 0 to 100; 0 while the file is
        still being planned (the total is not known yet), unless the batch already ended."""
        if self.planned_at is None and self.status not in (*FINAL_STATUSES, "cancelling"):
            return 0
        if not self.total_count:
            return 100 if self.status == "completed" else 0
        return min(100, 100 * (self.completed_count + self.failed_count) // self.total_count)

    def as_dict(self) -> dict[str, Any]:
        """The batch object of the API."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        value: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "model": self.model_name,
            "version": self.model_version,
            "status": self.status,
            "input_file_id": self.input_file_id,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "request_counts": {
                "total": self.total_count,
                "completed": self.completed_count,
                "failed": self.failed_count,
            },
            "progress": self.progress,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finalizing_at": iso(self.finalizing_at),
            "completed_at": iso(self.completed_at),
            "failed_at": iso(self.failed_at),
            "cancelled_at": iso(self.cancelled_at),
            "metadata": dict(self.meta or {}),
        }
        if self.status == "failed":
            value["errors"] = [{"code": self.error_code, "message": self.error_message}]
        return value


class Chunk(Base):
    """A byte range of whole lines of a batch's input file, sent to a GPU queue as one task."""

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("batch_id", "index", name="uq_chunks_batch_id_index"),
        Index("ix_chunks_status_sent_at", "status", "sent_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    start_byte: Mapped[int] = mapped_column(BigInteger)
    end_byte: Mapped[int] = mapped_column(BigInteger)
    first_line: Mapped[int] = mapped_column(BigInteger)
    line_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, default=None)
    # The chunk's parts of the output and error files (None when it wrote no such lines).
    output_part_key: Mapped[str | None] = mapped_column(String(512), nullable=True, default=None)
    error_part_key: Mapped[str | None] = mapped_column(String(512), nullable=True, default=None)
    ok_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    # Line numbers in this chunk whose custom_id an earlier line of the file has (found by the
    # planner, which reads the whole file; the chunk, reading only its own lines, cannot tell).
    duplicate_lines: Mapped[list[int] | None] = mapped_column(JSON, nullable=True, default=None)


@dataclass(frozen=True)
class Cancellation:
    """What :func:`cancel_batch` did: the batch, whether this call cancelled it, tasks to revoke."""

    batch: Batch
    changed: bool
    revoke_task_ids: list[str]


# --- object keys ----------------------------------------------------------------------


def batch_prefix(tenant: str, batch_id: str) -> str:
    """The object-store prefix of a batch's working objects (chunk parts); removable once it is final."""
    return f"{tenant_prefix(tenant)}batches/{batch_id}/"


def chunk_part_keys(tenant: str, batch_id: str, index: int, run: str = "") -> tuple[str, str]:
    """The keys of chunk ``index``'s output part and error part.

    Without ``run`` they are fixed, so a re-run overwrites. With ``run`` (one name per
    execution of the chunk) two executions never write over each other's parts, and the
    pair that :func:`complete_chunk` records is always one execution's own.
    """
    base = f"{batch_prefix(tenant, batch_id)}parts/{index:08d}"
    if run:
        base = f"{base}.{run}"
    return f"{base}.output.jsonl", f"{base}.error.jsonl"


# --- validation -----------------------------------------------------------------------


def check_metadata(raw: Any, pointer: str = "/metadata") -> tuple[dict[str, str], list[Problem]]:
    """Validate batch metadata: at most 16 string keys (64 chars) with string values (512 chars)."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, [Problem(pointer, "must be an object of string keys and values")]
    problems = []
    if len(raw) > MAX_METADATA_KEYS:
        problems.append(Problem(pointer, f"at most {MAX_METADATA_KEYS} keys"))
    for key, value in raw.items():
        if not key or len(key) > MAX_METADATA_KEY:
            problems.append(Problem(f"{pointer}/{key}", f"keys are 1 to {MAX_METADATA_KEY} characters"))
        elif not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            problems.append(
                Problem(f"{pointer}/{key}", f"values are strings of at most {MAX_METADATA_VALUE} characters")
            )
    return (dict(raw) if not problems else {}), problems


def check_idempotency_key(key: str) -> str:
    """An idempotency key as given (1-255 printable ASCII characters), or ValueError."""
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise ValueError(f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


# --- batches --------------------------------------------------------------------------


def create_batch(
    session: Session,
    *,
    tenant: str,
    model_id: str,
    model_name: str,
    model_version: str,
    input_file_id: str,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> tuple[Batch, bool]:
    """Create a batch (status ``validating``); returns it and whether this call created it.

    With an ``idempotency_key``, the first batch of the tenant with that key is
    returned instead of a new one, also when two requests race: the insert is
    ``ON CONFLICT DO NOTHING`` on the (tenant, key) unique constraint, so the
    loser waits for the winner's commit and then reads its row, and the caller's
    session is never rolled back. The caller compares parameters if it cares.
    """
    values: dict[str, Any] = {
        "tenant": tenant,
        "model_id": model_id,
        "model_name": model_name,
        "model_version": model_version,
        "input_file_id": input_file_id,
        "meta": dict(metadata or {}),
    }
    if idempotency_key is None:
        batch = Batch(**values)
        session.add(batch)
        session.flush()
        return batch, True
    check_idempotency_key(idempotency_key)
    statement: Any
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        statement = postgresql.insert(Batch)
    elif dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        statement = sqlite.insert(Batch)
    else:  # pragma: no cover - the registry runs on PostgreSQL or SQLite
        raise NotImplementedError(f"idempotent batch creation on {dialect}")
    statement = statement.values(**values, idempotency_key=idempotency_key).on_conflict_do_nothing(
        index_elements=["tenant", "idempotency_key"]
    )
    created = _rowcount(session.execute(statement)) == 1
    existing = session.scalar(
        select(Batch).where(Batch.tenant == tenant, Batch.idempotency_key == idempotency_key)
    )
    if existing is None:  # pragma: no cover - the row exists: inserted here or by the winner
        raise RuntimeError(f"batch with idempotency key {idempotency_key!r} vanished")
    return existing, created


def batch_by_idempotency_key(session: Session, tenant: str, idempotency_key: str) -> Batch | None:
    """The tenant's batch created with ``idempotency_key``, if any."""
    return session.scalar(
        select(Batch).where(Batch.tenant == tenant, Batch.idempotency_key == idempotency_key)
    )


def get_batch(session: Session, tenant: str, batch_id: str) -> Batch | None:
    """The batch ``batch_id`` of ``tenant``; None when it does not exist or is another tenant's."""
    return session.scalar(select(Batch).where(Batch.id == batch_id, Batch.tenant == tenant))


def batch_by_id(session: Session, batch_id: str) -> Batch | None:
    """A batch whatever its tenant (for tasks, which carry only the id)."""
    return session.get(Batch, batch_id, populate_existing=True)


def list_batches(
    session: Session,
    tenant: str,
    *,
    status: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Page[Batch]:
    """One page of the tenant's batches, newest first, after batch ``after`` (raises UnknownCursor)."""
    if status is not None and status not in BATCH_STATUSES:
        raise ValueError(f"status must be one of {', '.join(BATCH_STATUSES)}")
    filters = [Batch.status == status] if status is not None else []
    return newest_first(session, Batch, [Batch.tenant == tenant], filters, after, limit)


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def _expire(session: Session, entity: Any, ident: str) -> None:
    # Conditional UPDATEs bypass the ORM; a copy already loaded must be read again.
    loaded = session.identity_map.get(identity_key(entity, ident))
    if loaded is not None:
        session.expire(loaded)


def _transition(
    session: Session, batch_id: str, status: str, *conditions: ColumnElement[bool], **values: Any
) -> bool:
    """Move the batch to ``status`` if it is in one of the statuses allowed before it (and ``conditions``)."""
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(TRANSITIONS[status]), *conditions)
        .values(status=status, **values)
        .execution_options(synchronize_session=False)
    )
    _expire(session, Batch, batch_id)
    return _rowcount(result) == 1


def mark_queued(session: Session, batch_id: str, total: int) -> bool:
    """Planning is done in one go: ``validating -> queued`` with the number of requests, planned.
    False if not validating."""
    return _transition(session, batch_id, "queued", total_count=total, planned_at=utcnow())


def claim_planning(session: Session, batch_id: str) -> str | None:
    """The batch's status if it is still being planned (validating, queued, in progress or
    cancelling, ``planned_at`` not set), else None; if so its row is now locked until the
    transaction ends.

    A write, so that it takes the lock on SQLite too (reads there take none): two planners
    recording chunks, or a planner and a cancel, go one after the other.
    """
    status: str | None = session.scalar(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(PLANNING_STATUSES), Batch.planned_at.is_(None))
        .values(status=Batch.status)
        .returning(Batch.status)
        .execution_options(synchronize_session=False)
    )
    return status


@dataclass(frozen=True)
class PlannedSoFar:
    """What earlier planning recorded of a batch: the next chunk index, and the byte the recorded
    chunks end at (lines before it are in a chunk already)."""

    next_index: int
    end_byte: int


def planned_so_far(session: Session, batch_id: str) -> PlannedSoFar:
    row = session.execute(
        select(func.max(Chunk.index), func.max(Chunk.end_byte)).where(Chunk.batch_id == batch_id)
    ).one()
    return PlannedSoFar(0 if row[0] is None else row[0] + 1, row[1] or 0)


def record_planned_chunks(
    session: Session,
    batch_id: str,
    specs: Sequence[ChunkSpec],
    *,
    duplicates: Mapping[int, Sequence[int]],
    sends: Mapping[int, tuple[str, str]],
    cancelled: bool = False,
) -> list[ChunkSpec] | None:
    """Record chunks as planning finds them (after :func:`claim_planning`, same transaction): those
    not yet recorded are inserted as sent, their lines added to ``total_count``, and a batch still
    ``validating`` becomes ``queued``. Returns the chunks this call recorded (send those, after
    the commit); None when other chunks cover these bytes (another planner cut the file
    otherwise): stop planning.

    Chunk boundaries are deterministic for a file and settings, so a planner run again after a
    crash, or racing another, skips the chunks already recorded instead of making them twice.
    ``cancelled``: the batch was cancelled while planned; the chunks are recorded ``cancelled``
    (never sent), and finalize writes their lines as cancelled.
    """
    so_far = planned_so_far(session, batch_id)
    new = [spec for spec in specs if spec.index >= so_far.next_index]
    if new and new[0].start < so_far.end_byte:
        return None
    if not new:
        return []
    add_chunks(
        session, batch_id, new, duplicates=duplicates, sends=None if cancelled else sends, cancelled=cancelled
    )
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            total_count=Batch.total_count + sum(spec.line_count for spec in new),
            status=case((Batch.status == "validating", "queued"), else_=Batch.status),
        )
        .execution_options(synchronize_session=False)
    )
    _expire(session, Batch, batch_id)
    return new


def mark_planned(session: Session, batch_id: str, total: int) -> bool:
    """Planning ended (after :func:`claim_planning`, same transaction): ``planned_at`` and the final
    ``total_count`` set; ``validating -> queued`` if no chunk was recorded before. Then, when every
    chunk already finished (they run while the file is planned), the batch moves to
    ``finalizing``: True, and the caller queues finalize."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            total_count=total,
            planned_at=utcnow(),
            status=case((Batch.status == "validating", "queued"), else_=Batch.status),
        )
        .execution_options(synchronize_session=False)
    )
    _expire(session, Batch, batch_id)
    return all_counted(session, batch_id) and mark_finalizing(session, batch_id)


def mark_started(session: Session, batch_id: str) -> bool:
    """Chunks are being sent: ``queued -> in_progress``, ``started_at`` set."""
    return _transition(session, batch_id, "in_progress", started_at=utcnow())


def mark_finalizing(session: Session, batch_id: str) -> bool:
    """Every chunk is done and planning ended: ``in_progress -> finalizing``; False while a chunk is
    left or the file is still being planned, or for the second of racing callers."""
    unfinished = select(Chunk.id).where(Chunk.batch_id == batch_id, Chunk.status.in_(CHUNKS_LEFT)).exists()
    return _transition(
        session, batch_id, "finalizing", ~unfinished, Batch.planned_at.is_not(None), finalizing_at=utcnow()
    )


def mark_completed(
    session: Session, batch_id: str, output_file_id: str | None, error_file_id: str | None
) -> bool:
    """The result files are written: ``finalizing -> completed``."""
    return _transition(
        session,
        batch_id,
        "completed",
        completed_at=utcnow(),
        output_file_id=output_file_id,
        error_file_id=error_file_id,
    )


def mark_failed(session: Session, batch_id: str, code: str, message: str) -> bool:
    """The batch itself failed (unreadable input, model gone...): any unfinished status -> ``failed``."""
    return _transition(
        session, batch_id, "failed", failed_at=utcnow(), error_code=code, error_message=message
    )


def mark_cancelled(
    session: Session, batch_id: str, output_file_id: str | None = None, error_file_id: str | None = None
) -> bool:
    """A cancelled batch's finished part is written: ``cancelling -> cancelled``.

    ``cancelled_at`` stays the time the cancel was asked for (:func:`cancel_batch` sets it).
    """
    return _transition(
        session,
        batch_id,
        "cancelled",
        cancelled_at=func.coalesce(Batch.cancelled_at, utcnow()),
        output_file_id=output_file_id,
        error_file_id=error_file_id,
    )


def cancel_batch(session: Session, tenant: str, batch_id: str) -> Cancellation | None:
    """Cancel the tenant's batch: it becomes ``cancelling`` and its unfinished chunks ``cancelled``.

    Returns None when there is no such batch; the task ids of chunks that were
    queued (to revoke) come back in the result. Cancelling a batch already
    cancelling or cancelled changes nothing; a batch that is finalizing or
    final raises :class:`BatchStateError`. Chunks already running may still
    finish and count (see :func:`complete_chunk`).
    """
    batch = get_batch(session, tenant, batch_id)
    if batch is None:
        return None
    if not _transition(session, batch_id, "cancelling", cancelled_at=utcnow()):
        session.refresh(batch)
        if batch.status in ("cancelling", "cancelled"):
            return Cancellation(batch, False, [])
        raise BatchStateError(batch, "cancelled")
    task_ids = session.scalars(
        update(Chunk)
        .where(Chunk.batch_id == batch_id, Chunk.status.in_(CHUNKS_LEFT))
        .values(status="cancelled")
        .returning(Chunk.task_id)
        .execution_options(synchronize_session=False)
    ).all()
    for loaded in list(session.identity_map.values()):
        if isinstance(loaded, Chunk) and loaded.batch_id == batch_id:
            session.expire(loaded)
    session.refresh(batch)
    return Cancellation(batch, True, [task_id for task_id in task_ids if task_id])


# --- chunks ---------------------------------------------------------------------------


def add_chunks(
    session: Session,
    batch_id: str,
    specs: Iterable[ChunkSpec],
    *,
    duplicates: Mapping[int, Sequence[int]] | None = None,
    sends: Mapping[int, tuple[str, str]] | None = None,
    cancelled: bool = False,
) -> int:
    """Record the planned chunks of a batch (status ``pending``); returns how many.

    ``specs`` may be a generator (:func:`registry.batch_input.plan_chunks`): rows
    are inserted a thousand at a time. ``duplicates`` (chunk index -> line numbers)
    records the lines of a chunk whose custom_id an earlier line has. ``sends``
    (chunk index -> (queue, task id)) records chunks as sent at once (status
    ``queued``, one attempt), as :func:`mark_chunk_sent` would, in the same insert:
    commit, then send the tasks. ``cancelled``: recorded ``cancelled``, never to be sent.
    """
    count = 0
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for spec in specs:
        send = sends.get(spec.index) if sends is not None else None
        duplicate_lines = duplicates.get(spec.index) if duplicates is not None else None
        rows.append(
            {
                "id": new_id(),
                "batch_id": batch_id,
                "index": spec.index,
                "start_byte": spec.start,
                "end_byte": spec.end,
                "first_line": spec.first_line,
                "line_count": spec.line_count,
                "status": "cancelled" if cancelled else "pending" if send is None else "queued",
                "queue": None if send is None else send[0],
                "task_id": None if send is None else send[1],
                "sent_at": None if send is None else now,
                "attempts": 0 if send is None else 1,
                "ok_count": 0,
                "error_count": 0,
                "duplicate_lines": list(duplicate_lines) if duplicate_lines else None,
            }
        )
        if len(rows) == CHUNK_INSERT_BATCH:
            session.execute(insert(Chunk), rows)
            count, rows = count + len(rows), []
    if rows:
        session.execute(insert(Chunk), rows)
        count += len(rows)
    return count


def get_chunk(session: Session, chunk_id: str) -> Chunk | None:
    return session.get(Chunk, chunk_id, populate_existing=True)


def get_chunk_at(session: Session, batch_id: str, index: int) -> Chunk | None:
    """Chunk number ``index`` of a batch (what a chunk task's message names)."""
    return session.scalar(
        select(Chunk)
        .where(Chunk.batch_id == batch_id, Chunk.index == index)
        .execution_options(populate_existing=True)
    )


def list_chunks(session: Session, batch_id: str, status: str | None = None) -> list[Chunk]:
    """A batch's chunks in index order, optionally of one status."""
    query = select(Chunk).where(Chunk.batch_id == batch_id).order_by(Chunk.index)
    if status is not None:
        query = query.where(Chunk.status == status)
    return list(session.scalars(query))


def mark_chunk_sent(session: Session, chunk_id: str, queue: str, task_id: str) -> bool:
    """Record that the chunk is (about to be) sent to ``queue`` as task ``task_id``; False: do not send.

    Allowed for a pending chunk, and for a queued one (a re-send by the reaper),
    while the batch is queued or in progress; each send counts an attempt.
    Commit before sending the task, so that a lost send is found by
    :func:`lost_chunks` instead of a chunk that was never recorded.
    """
    result = session.execute(
        update(Chunk)
        .where(
            Chunk.id == chunk_id,
            Chunk.status.in_(CHUNKS_LEFT),
            Chunk.batch_id.in_(select(Batch.id).where(Batch.status.in_(SENDING_STATUSES))),
        )
        .values(status="queued", queue=queue, task_id=task_id, sent_at=utcnow(), attempts=Chunk.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    _expire(session, Chunk, chunk_id)
    return _rowcount(result) == 1


def complete_chunk(
    session: Session,
    chunk_id: str,
    *,
    ok: int,
    errors: int,
    output_part_key: str | None,
    error_part_key: str | None,
) -> bool:
    """Mark the chunk done and add its counts to its batch, once; True for the call that did it.

    The chunk row is flipped by ``UPDATE ... WHERE status != 'done'``: when the
    same chunk completes twice, even concurrently, the database lets one UPDATE
    match (PostgreSQL re-checks the condition after the first commits; SQLite
    serializes writers) and only that call adds to the batch counters, with an
    ``UPDATE ... SET completed_count = completed_count + :ok`` in the same
    transaction. A chunk of a batch that is no longer counting (completed,
    failed, cancelled) is left as it is and False returned. A cancelled chunk
    whose task was already running still counts: what finished stays.
    """
    if ok < 0 or errors < 0:
        raise ValueError("counts cannot be negative")
    batch_id = session.scalar(select(Chunk.batch_id).where(Chunk.id == chunk_id))
    if batch_id is None:
        return False
    # The batch row first (PostgreSQL; SQLite locks the whole database anyway), as cancel_batch
    # does: a chunk completing while its batch is cancelled must not hold the chunk's row while
    # waiting for the batch's, the order that deadlocks against the cancel.
    session.execute(select(Batch.id).where(Batch.id == batch_id).with_for_update())
    flipped = session.execute(
        update(Chunk)
        .where(
            Chunk.id == chunk_id,
            Chunk.status != "done",
            Chunk.batch_id.in_(select(Batch.id).where(Batch.status.in_(COUNTING_STATUSES))),
        )
        .values(
            status="done",
            done_at=utcnow(),
            ok_count=ok,
            error_count=errors,
            output_part_key=output_part_key,
            error_part_key=error_part_key,
        )
        .execution_options(synchronize_session=False)
    )
    _expire(session, Chunk, chunk_id)
    if _rowcount(flipped) != 1:
        return False
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(completed_count=Batch.completed_count + ok, failed_count=Batch.failed_count + errors)
        .execution_options(synchronize_session=False)
    )
    _expire(session, Batch, batch_id)
    return True


def all_counted(session: Session, batch_id: str) -> bool:
    """Whether planning ended and the batch's counters add up to its total: every request line has
    its result, so no
    chunk is left (each chunk adds exactly its lines, once). A cheap read of one row, for the chunk
    that just counted to tell whether it may be the last before trying :func:`mark_finalizing`."""
    row = session.execute(
        select(Batch.total_count, Batch.completed_count + Batch.failed_count).where(
            Batch.id == batch_id, Batch.planned_at.is_not(None)
        )
    ).first()
    return row is not None and row[0] > 0 and row[1] >= row[0]


def chunks_left(session: Session, batch_id: str) -> int:
    """How many chunks of the batch are still to be done (pending or queued)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Chunk)
            .where(Chunk.batch_id == batch_id, Chunk.status.in_(CHUNKS_LEFT))
        )
        or 0
    )


def lost_chunks(
    session: Session,
    older_than: datetime,
    limit: int = 100,
    *,
    queues: Collection[str] | None = None,
    overdue: datetime | None = None,
) -> list[Chunk]:
    """Chunks of planned batches (queued or in progress) that may need sending again.

    Queued chunks sent before ``older_than`` and not done: their message may be lost
    (a Redis restart, a worker killed with ``-9``); re-sending one that was merely slow
    is harmless, as completion counts once. With ``queues``, only those sent to one of
    these queues (the empty ones: a message waiting in a busy queue is not lost), or
    sent before ``overdue``. And pending chunks, never sent, of batches created before
    ``older_than`` (a planner that died between its commit and its sends).
    Oldest sends first, never-sent ones last.
    """
    sent = and_(Chunk.status == "queued", Chunk.sent_at < older_than)
    if queues is not None:
        where = Chunk.queue.in_(list(queues))
        sent = and_(sent, or_(where, Chunk.sent_at < overdue) if overdue is not None else where)
    return list(
        session.scalars(
            select(Chunk)
            .join(Batch, Batch.id == Chunk.batch_id)
            .where(
                Batch.status.in_(SENDING_STATUSES),
                or_(sent, and_(Chunk.status == "pending", Batch.created_at < older_than)),
            )
            .order_by(Chunk.sent_at.is_(None), Chunk.sent_at, Chunk.id)
            .limit(limit)
        )
    )


# Status -> the timestamp a batch entered it by, for stale_batches.
_ENTERED = {
    "validating": Batch.created_at,
    "finalizing": Batch.finalizing_at,
    "cancelling": Batch.cancelled_at,
}


def stale_batches(session: Session, status: str, older_than: datetime, limit: int = 100) -> list[Batch]:
    """Batches in ``status`` (validating, finalizing or cancelling) since before ``older_than``:
    the task that should move them on was lost, or is far past its time limit."""
    entered = _ENTERED[status]
    return list(
        session.scalars(
            select(Batch)
            .where(Batch.status == status, entered < older_than)
            .order_by(entered, Batch.id)
            .limit(limit)
        )
    )


def unplanned_batches(session: Session, older_than: datetime, limit: int = 100) -> list[Batch]:
    """Batches created before ``older_than`` whose planning has not ended (validating, or queued
    or in progress with chunks of the file's start already running): the planner was lost."""
    return list(
        session.scalars(
            select(Batch)
            .where(
                Batch.status.in_(PLANNING_STATUSES),
                Batch.planned_at.is_(None),
                Batch.created_at < older_than,
            )
            .order_by(Batch.created_at, Batch.id)
            .limit(limit)
        )
    )


def batches_done_running(session: Session, limit: int = 100) -> list[str]:
    """Ids of in-progress batches with no chunk left to do: ready to finalize (if whoever finished the
    last chunk did not get to it)."""
    unfinished = select(Chunk.id).where(Chunk.batch_id == Batch.id, Chunk.status.in_(CHUNKS_LEFT)).exists()
    return list(
        session.scalars(
            select(Batch.id)
            .where(Batch.status == "in_progress", Batch.planned_at.is_not(None), ~unfinished)
            .order_by(Batch.id)
            .limit(limit)
        )
    )


def batch_reading(session: Session, file_id: str) -> Batch | None:
    """A batch not yet final whose input is file ``file_id`` (such a file cannot be deleted)."""
    return session.scalar(
        select(Batch).where(Batch.input_file_id == file_id, Batch.status.not_in(FINAL_STATUSES)).limit(1)
    )
