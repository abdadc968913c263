"""Files, batches and chunks on SQLite and PostgreSQL: idempotency, tenants, pages, counting once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from registry.batch_input import ChunkSpec
from registry.batches import (
    Batch,
    BatchStateError,
    Chunk,
    add_chunks,
    batch_by_id,
    cancel_batch,
    chunks_left,
    complete_chunk,
    create_batch,
    get_batch,
    get_chunk,
    list_batches,
    list_chunks,
    lost_chunks,
    mark_cancelled,
    mark_chunk_sent,
    mark_completed,
    mark_failed,
    mark_finalizing,
    mark_queued,
    mark_started,
)
from registry.db import Database, utcnow
from registry.files import create_file, delete_file, file_object_key, get_file, list_files
from registry.models import Model
from registry.pagination import UnknownCursor

pytestmark = pytest.mark.integration


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        database.dispose()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def new_model(db: Database) -> Model:
    with db.session() as session:
        model = Model(name=unique("m"), version="1", triton_name="digits", inputs=[], outputs=[])
        session.add(model)
    return model


def new_batch(db: Database, tenant: str, model: Model | None = None, **kwargs: Any) -> Batch:
    model = model or new_model(db)
    with db.session() as session:
        file = create_file(session, tenant, "batch_input", "input.jsonl", 100)
        batch, _ = create_batch(
            session,
            tenant=tenant,
            model_id=model.id,
            model_name=model.name,
            model_version=model.version,
            input_file_id=file.id,
            **kwargs,
        )
    return batch


def running_batch(db: Database, tenant: str, chunks: int = 3, lines: int = 10) -> tuple[Batch, list[Chunk]]:
    """A batch planned into ``chunks`` chunks of ``lines`` lines, in progress, nothing sent yet."""
    batch = new_batch(db, tenant)
    specs = [ChunkSpec(i, i * 100, (i + 1) * 100, i * lines + 1, lines) for i in range(chunks)]
    with db.session() as session:
        assert add_chunks(session, batch.id, iter(specs)) == chunks
        assert mark_queued(session, batch.id, chunks * lines)
        assert mark_started(session, batch.id)
        found = list_chunks(session, batch.id)
    return batch, found


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads started together; their results (or exceptions raised)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


# --- files ------------------------------------------------------------------------------


def test_files_are_per_tenant_with_their_own_object_keys(db: Database) -> None:
    tenant, other = unique(), unique()
    with db.session() as session:
        file = create_file(session, tenant, "batch_input", "C:\\data\\in put.jsonl", 1234, line_count=7)
        assert file.object_key == file_object_key(tenant, file.id) == f"tenants/{tenant}/files/{file.id}"
        assert len(file.id) == 32
    with db.session() as session:
        found = get_file(session, tenant, file.id)
        assert found is not None and found.as_dict() == {
            "id": file.id,
            "object": "file",
            "purpose": "batch_input",
            "filename": "in put.jsonl",
            "bytes": 1234,
            "line_count": 7,
            "created_at": file.created_at.isoformat(),
        }
        assert get_file(session, other, file.id) is None
        assert list_files(session, other).total == 0


def test_file_purpose_is_checked(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError, match="purpose"):
        create_file(session, unique(), "fine-tune", "x", 1)


def test_deleted_files_are_gone_for_the_tenant_but_keep_their_row(db: Database) -> None:
    tenant = unique()
    with db.session() as session:
        kept = create_file(session, tenant, "batch_input", "a.jsonl", 1)
        gone = create_file(session, tenant, "batch_input", "b.jsonl", 1)
    with db.session() as session:
        assert delete_file(session, unique(), gone.id) is None  # another tenant's
        deleted = delete_file(session, tenant, gone.id)
        assert deleted is not None and deleted.deleted_at is not None
    with db.session() as session:
        assert get_file(session, tenant, gone.id) is None
        assert delete_file(session, tenant, gone.id) is None
        assert [f.id for f in list_files(session, tenant).items] == [kept.id]
        assert session.get(type(kept), gone.id) is not None


def test_files_page_newest_first_with_a_cursor(db: Database) -> None:
    tenant = unique()
    with db.session() as session:
        ids = [create_file(session, tenant, "batch_input", f"{i}.jsonl", i).id for i in range(5)]
        create_file(session, tenant, "batch_output", "out.jsonl", 1)
    with db.session() as session:
        first = list_files(session, tenant, purpose="batch_input", limit=2)
        assert [f.id for f in first.items] == ids[::-1][:2] and first.total == 5 and first.has_more
        rest = list_files(session, tenant, purpose="batch_input", after=first.items[-1].id, limit=10)
        assert [f.id for f in rest.items] == ids[::-1][2:] and not rest.has_more
        with pytest.raises(UnknownCursor):
            list_files(session, unique(), after=ids[0])


# --- batches ------------------------------------------------------------------------------


def test_a_new_batch_as_the_api_shows_it(db: Database) -> None:
    tenant = unique()
    batch = new_batch(db, tenant, metadata={"team": "vision"})
    with db.session() as session:
        found = get_batch(session, tenant, batch.id)
        assert found is not None
        value = found.as_dict()
    assert value == {
        "id": batch.id,
        "object": "batch",
        "model": batch.model_name,
        "version": "1",
        "status": "validating",
        "input_file_id": batch.input_file_id,
        "output_file_id": None,
        "error_file_id": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "progress": 0,
        "created_at": batch.created_at.isoformat(),
        "started_at": None,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "cancelled_at": None,
        "metadata": {"team": "vision"},
    }


def test_the_same_idempotency_key_gives_the_first_batch(db: Database) -> None:
    tenant, other = unique(), unique()
    model = new_model(db)
    first = new_batch(db, tenant, model, idempotency_key="key-1")
    with db.session() as session:
        again, created = create_batch(
            session,
            tenant=tenant,
            model_id=model.id,
            model_name=model.name,
            model_version="1",
            input_file_id=first.input_file_id or "",
            idempotency_key="key-1",
        )
        assert (again.id, created) == (first.id, False)
    assert new_batch(db, other, model, idempotency_key="key-1").id != first.id  # keys are per tenant
    assert new_batch(db, tenant, model).id != new_batch(db, tenant, model).id  # no key: always new
    with pytest.raises(ValueError):
        new_batch(db, tenant, model, idempotency_key="x" * 256)


def test_racing_creates_with_one_key_make_one_batch(db: Database) -> None:
    tenant = unique()
    model = new_model(db)
    with db.session() as session:
        file = create_file(session, tenant, "batch_input", "in.jsonl", 1)

    def create(_: int) -> tuple[str, bool]:
        with db.session() as session:
            batch, created = create_batch(
                session,
                tenant=tenant,
                model_id=model.id,
                model_name=model.name,
                model_version="1",
                input_file_id=file.id,
                idempotency_key="same",
            )
            time.sleep(0.2)  # hold the transaction open while the others insert
            return batch.id, created

    results = in_threads(4, create)
    assert len({batch_id for batch_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    with db.session() as session:
        assert list_batches(session, tenant).total == 1


def test_batches_are_per_tenant(db: Database) -> None:
    tenant, other = unique(), unique()
    batch = new_batch(db, tenant)
    with db.session() as session:
        assert get_batch(session, other, batch.id) is None
        assert cancel_batch(session, other, batch.id) is None
        assert list_batches(session, other).items == []
        with pytest.raises(UnknownCursor):
            list_batches(session, other, after=batch.id)
        assert get_batch(session, tenant, batch.id) is not None


def test_batches_page_newest_first_with_a_cursor_and_a_status_filter(db: Database) -> None:
    tenant = unique()
    model = new_model(db)
    ids = [new_batch(db, tenant, model).id for _ in range(7)]
    with db.session() as session:
        # Two share a creation time: the id breaks the tie.
        same = session.scalar(select(Batch.created_at).where(Batch.id == ids[2]))
        session.execute(update(Batch).where(Batch.id == ids[3]).values(created_at=same))
        for batch_id in ids[:3]:
            mark_failed(session, batch_id, "input_unreadable", "no")
    newest_first = ids[4:][::-1] + sorted(ids[2:4], reverse=True) + ids[:2][::-1]
    with db.session() as session:
        seen, after, pages = [], None, 0
        while True:
            page = list_batches(session, tenant, after=after, limit=3)
            assert page.total == 7
            seen += [b.id for b in page.items]
            pages += 1
            if not page.has_more:
                break
            after = page.items[-1].id
        assert seen == newest_first and pages == 3
        failed = list_batches(session, tenant, status="failed", limit=2)
        assert (
            failed.total == 3
            and [b.id for b in failed.items] == [i for i in newest_first if i in ids[:3]][:2]
        )
        # A cursor that no longer matches the filter still works.
        after_running = list_batches(session, tenant, status="failed", after=ids[5])
        assert [b.id for b in after_running.items] == [i for i in newest_first if i in ids[:3]]
        with pytest.raises(ValueError):
            list_batches(session, tenant, status="done")


def test_page_size_is_capped_at_100(db: Database) -> None:
    tenant = unique()
    with db.session() as session:
        for i in range(101):
            create_file(session, tenant, "batch_input", f"{i}", 1)
    with db.session() as session:
        page = list_files(session, tenant, limit=1000)
        assert len(page.items) == 100 and page.has_more and page.total == 101
        assert len(list_files(session, tenant, limit=0).items) == 1


def test_a_batch_goes_through_its_statuses_with_timestamps(db: Database) -> None:
    tenant = unique()
    batch, chunks = running_batch(db, tenant, chunks=2, lines=5)
    with db.session() as session:
        for chunk in chunks:
            assert mark_chunk_sent(session, chunk.id, "gpu.0", unique("task"))
    with db.session() as session:
        assert complete_chunk(
            session, chunks[0].id, ok=5, errors=0, output_part_key="o0", error_part_key=None
        )
        assert not mark_finalizing(session, batch.id)  # a chunk is still queued
    with db.session() as session:
        assert chunks_left(session, batch.id) == 1
        assert complete_chunk(
            session, chunks[1].id, ok=3, errors=2, output_part_key="o1", error_part_key="e1"
        )
        assert chunks_left(session, batch.id) == 0
        assert mark_finalizing(session, batch.id)
        assert not mark_finalizing(session, batch.id)  # the second finalizer is told no
    with db.session() as session:
        output = create_file(session, tenant, "batch_output", "output.jsonl", 10)
        errors = create_file(session, tenant, "batch_error", "errors.jsonl", 2)
        assert mark_completed(session, batch.id, output.id, errors.id)
        assert not mark_failed(session, batch.id, "late", "too late")
    with db.session() as session:
        done = get_batch(session, tenant, batch.id)
        assert done is not None
        value = done.as_dict()
    assert value["status"] == "completed" and "errors" not in value
    assert value["request_counts"] == {"total": 10, "completed": 8, "failed": 2} and value["progress"] == 100
    assert (value["output_file_id"], value["error_file_id"]) == (output.id, errors.id)
    stamps = [value[k] for k in ("created_at", "started_at", "finalizing_at", "completed_at")]
    assert all(stamps) and stamps == sorted(stamps)


def test_progress_is_a_whole_percentage(db: Database) -> None:
    batch, chunks = running_batch(db, unique(), chunks=3, lines=1)
    with db.session() as session:
        assert mark_chunk_sent(session, chunks[0].id, "gpu.0", "t")
        assert complete_chunk(session, chunks[0].id, ok=1, errors=0, output_part_key="o", error_part_key=None)
        found = batch_by_id(session, batch.id)
        assert found is not None and found.progress == 33


def test_a_failed_batch_says_why(db: Database) -> None:
    tenant = unique()
    batch = new_batch(db, tenant)
    with db.session() as session:
        assert mark_failed(session, batch.id, "model_not_found", "model m was deleted")
        assert not mark_queued(session, batch.id, 3)
        found = get_batch(session, tenant, batch.id)
        assert found is not None
        value = found.as_dict()
    assert value["status"] == "failed" and value["failed_at"] is not None
    assert value["errors"] == [{"code": "model_not_found", "message": "model m was deleted"}]


def test_a_chunk_completed_twice_counts_once(db: Database) -> None:
    batch, chunks = running_batch(db, unique())
    with db.session() as session:
        assert mark_chunk_sent(session, chunks[0].id, "gpu.1", "task-1")
    for expected in (True, False):
        with db.session() as session:
            assert (
                complete_chunk(session, chunks[0].id, ok=7, errors=3, output_part_key="o", error_part_key="e")
                is expected
            )
    with db.session() as session:
        found = batch_by_id(session, batch.id)
        chunk = get_chunk(session, chunks[0].id)
        assert found is not None and (found.completed_count, found.failed_count) == (7, 3)
        assert chunk is not None and chunk.status == "done" and chunk.done_at is not None
        assert (chunk.ok_count, chunk.error_count, chunk.output_part_key, chunk.error_part_key) == (
            7,
            3,
            "o",
            "e",
        )
        assert (chunk.queue, chunk.task_id, chunk.attempts) == ("gpu.1", "task-1", 1)
        assert not complete_chunk(
            session, "no-such-chunk", ok=1, errors=0, output_part_key=None, error_part_key=None
        )


def test_the_same_chunk_completing_concurrently_counts_once(db: Database) -> None:
    batch, chunks = running_batch(db, unique())
    with db.session() as session:
        assert mark_chunk_sent(session, chunks[0].id, "gpu.0", "t")

    def complete(_: int) -> bool:
        with db.session() as session:
            flipped = complete_chunk(
                session, chunks[0].id, ok=9, errors=1, output_part_key="o", error_part_key="e"
            )
            time.sleep(0.2)  # commit late: the others' UPDATEs wait on this one's row lock
            return flipped

    assert sorted(in_threads(4, complete)) == [False, False, False, True]
    with db.session() as session:
        found = batch_by_id(session, batch.id)
        assert found is not None and (found.completed_count, found.failed_count) == (9, 1)


def test_different_chunks_completing_concurrently_all_count(db: Database) -> None:
    batch, chunks = running_batch(db, unique(), chunks=6)
    with db.session() as session:
        for chunk in chunks:
            assert mark_chunk_sent(session, chunk.id, "gpu.0", "t")

    def complete(i: int) -> bool:
        with db.session() as session:
            return complete_chunk(
                session, chunks[i].id, ok=i, errors=1, output_part_key="o", error_part_key=None
            )

    assert all(in_threads(6, complete))
    with db.session() as session:
        found = batch_by_id(session, batch.id)
        assert found is not None and (found.completed_count, found.failed_count) == (15, 6)
        assert chunks_left(session, batch.id) == 0


def test_lost_chunks_are_queued_ones_sent_long_ago_of_running_batches(db: Database) -> None:
    batch, chunks = running_batch(db, unique(), chunks=4)
    cancelled_batch, other_chunks = running_batch(db, unique(), chunks=1)
    long_ago = utcnow() - timedelta(hours=2)
    with db.session() as session:
        for chunk in [*chunks[:3], *other_chunks]:
            assert mark_chunk_sent(session, chunk.id, "gpu.0", f"task-{chunk.index}")
        session.execute(
            update(Chunk)
            .where(Chunk.id.in_([chunks[0].id, chunks[1].id, other_chunks[0].id]))
            .values(sent_at=long_ago)
        )
        assert complete_chunk(session, chunks[1].id, ok=1, errors=0, output_part_key="o", error_part_key=None)
        session.execute(update(Batch).where(Batch.id == cancelled_batch.id).values(status="cancelling"))
    cutoff = utcnow() - timedelta(hours=1)
    with db.session() as session:
        lost = [c.id for c in lost_chunks(session, cutoff) if c.batch_id in (batch.id, cancelled_batch.id)]
        assert lost == [chunks[0].id]  # not done, not recent, not pending, not of a cancelling batch
        assert mark_chunk_sent(session, chunks[0].id, "gpu.1", "task-0-again")  # the reaper re-sends it
    with db.session() as session:
        assert chunks[0].id not in [c.id for c in lost_chunks(session, cutoff)]
        resent = get_chunk(session, chunks[0].id)
        assert resent is not None and (resent.attempts, resent.queue, resent.task_id) == (
            2,
            "gpu.1",
            "task-0-again",
        )


def test_cancel_stops_unfinished_chunks_and_keeps_finished_ones(db: Database) -> None:
    tenant = unique()
    batch, chunks = running_batch(db, tenant, chunks=4)
    with db.session() as session:
        for chunk in chunks[:3]:
            assert mark_chunk_sent(session, chunk.id, "gpu.0", f"task-{chunk.index}")
        assert complete_chunk(
            session, chunks[0].id, ok=10, errors=0, output_part_key="o", error_part_key=None
        )
    with db.session() as session:
        cancellation = cancel_batch(session, tenant, batch.id)
        assert cancellation is not None and cancellation.changed
        assert sorted(cancellation.revoke_task_ids) == ["task-1", "task-2"]
        assert cancellation.batch.status == "cancelling"
        assert [c.status for c in list_chunks(session, batch.id)] == [
            "done",
            "cancelled",
            "cancelled",
            "cancelled",
        ]
        assert chunks_left(session, batch.id) == 0
        assert not mark_chunk_sent(session, chunks[3].id, "gpu.0", "late")  # nothing more is sent
        assert all(c.batch_id != batch.id for c in lost_chunks(session, utcnow() + timedelta(hours=1)))
    with db.session() as session:
        again = cancel_batch(session, tenant, batch.id)
        assert again is not None and not again.changed and again.revoke_task_ids == []
        # A chunk that was already running when the batch was cancelled still counts.
        assert complete_chunk(
            session, chunks[1].id, ok=10, errors=0, output_part_key="o", error_part_key=None
        )
        assert mark_cancelled(session, batch.id, None, None)
        # Once cancelled, the counts are final.
        assert not complete_chunk(
            session, chunks[2].id, ok=10, errors=0, output_part_key="o", error_part_key=None
        )
        found = get_batch(session, tenant, batch.id)
        assert found is not None
        value = found.as_dict()
    assert value["status"] == "cancelled" and value["cancelled_at"] is not None
    assert value["request_counts"] == {"total": 40, "completed": 20, "failed": 0} and value["progress"] == 50


def test_a_finished_batch_cannot_be_cancelled(db: Database) -> None:
    tenant = unique()
    batch = new_batch(db, tenant)
    with db.session() as session:
        assert mark_failed(session, batch.id, "x", "y")
    with db.session() as session, pytest.raises(BatchStateError, match="failed"):
        cancel_batch(session, tenant, batch.id)


def test_chunks_are_sent_only_for_a_planned_batch(db: Database) -> None:
    batch = new_batch(db, unique())
    with db.session() as session:
        add_chunks(session, batch.id, [ChunkSpec(0, 0, 10, 1, 1)])
        [chunk] = list_chunks(session, batch.id)
        assert not mark_chunk_sent(session, chunk.id, "gpu.0", "t")  # still validating
        assert mark_queued(session, batch.id, 1)
        assert mark_chunk_sent(session, chunk.id, "gpu.0", "t")
        # Not counted before the batch is in progress either.
        assert not complete_chunk(
            session, chunk.id, ok=1, errors=0, output_part_key=None, error_part_key=None
        )


def test_chunk_index_is_unique_per_batch(db: Database) -> None:
    from sqlalchemy.exc import IntegrityError

    batch = new_batch(db, unique())
    with pytest.raises(IntegrityError), db.session() as session:
        add_chunks(session, batch.id, [ChunkSpec(0, 0, 10, 1, 1), ChunkSpec(0, 10, 20, 2, 1)])


def test_many_chunks_are_inserted_in_batches(db: Database) -> None:
    batch = new_batch(db, unique())
    specs = (ChunkSpec(i, i * 10, i * 10 + 10, i + 1, 1) for i in range(2500))
    with db.session() as session:
        assert add_chunks(session, batch.id, specs) == 2500
    with db.session() as session:
        assert chunks_left(session, batch.id) == 2500
        assert [c.index for c in list_chunks(session, batch.id)[-2:]] == [2498, 2499]


def test_deleting_a_model_keeps_its_batches(db: Database) -> None:
    from registry.models import Model as ModelRow

    tenant = unique()
    model = new_model(db)
    batch = new_batch(db, tenant, model)
    with db.session() as session:
        session.execute(delete(ModelRow).where(ModelRow.id == model.id))
    with db.session() as session:
        found = get_batch(session, tenant, batch.id)
        assert found is not None and found.model_id is None
        assert (found.as_dict()["model"], found.as_dict()["version"]) == (model.name, "1")


def test_deleting_a_batch_deletes_its_chunks(db: Database) -> None:
    batch, _ = running_batch(db, unique())
    with db.session() as session:
        session.execute(delete(Batch).where(Batch.id == batch.id))
    with db.session() as session:
        assert session.scalars(select(Chunk).where(Chunk.batch_id == batch.id)).all() == []


def test_chunks_can_be_recorded_sent_with_their_duplicate_lines(db: Database) -> None:
    from registry.batches import get_chunk_at

    batch = new_batch(db, unique())
    specs = [ChunkSpec(0, 0, 100, 1, 10), ChunkSpec(1, 100, 200, 12, 10)]
    with db.session() as session:
        assert mark_queued(session, batch.id, 20)
        add_chunks(
            session, batch.id, specs, duplicates={1: [13, 20]}, sends={0: ("gpu.1", "t0"), 1: ("gpu.0", "t1")}
        )
    with db.session() as session:
        first, second = get_chunk_at(session, batch.id, 0), get_chunk_at(session, batch.id, 1)
        assert first is not None and second is not None and get_chunk_at(session, batch.id, 2) is None
        assert (first.status, first.queue, first.task_id, first.attempts) == ("queued", "gpu.1", "t0", 1)
        assert first.sent_at is not None and first.duplicate_lines is None
        assert second.duplicate_lines == [13, 20] and second.queue == "gpu.0"


def test_lost_chunks_can_be_limited_to_empty_queues_unless_overdue(db: Database) -> None:
    batch, chunks = running_batch(db, unique(), chunks=3)
    now = utcnow()
    with db.session() as session:
        for chunk, queue in zip(chunks, ("gpu.0", "gpu.1", "gpu.0"), strict=True):
            assert mark_chunk_sent(session, chunk.id, queue, f"t{chunk.index}")
        session.execute(
            update(Chunk).where(Chunk.id == chunks[0].id).values(sent_at=now - timedelta(hours=3))
        )
        session.execute(
            update(Chunk)
            .where(Chunk.id.in_([chunks[1].id, chunks[2].id]))
            .values(sent_at=now - timedelta(hours=1))
        )
    cutoff = now - timedelta(minutes=10)
    with db.session() as session:

        def lost(**kwargs: Any) -> list[int]:
            return sorted(
                c.index for c in lost_chunks(session, cutoff, 1000, **kwargs) if c.batch_id == batch.id
            )

        assert lost() == [0, 1, 2]
        assert lost(queues=["gpu.1"]) == [1]  # gpu.0 is busy: its messages are waiting, not lost
        assert lost(queues=["gpu.1"], overdue=now - timedelta(hours=2)) == [0, 1]
        assert lost(queues=[]) == []


def test_batches_left_behind_are_found(db: Database) -> None:
    from registry.batches import batch_reading, batches_done_running, stale_batches

    tenant = unique()
    validating = new_batch(db, tenant)
    running, chunks = running_batch(db, tenant, chunks=1)
    later = utcnow() + timedelta(hours=1)
    with db.session() as session:
        assert validating.id in [b.id for b in stale_batches(session, "validating", later)]
        assert validating.id not in [
            b.id for b in stale_batches(session, "validating", utcnow() - timedelta(hours=1))
        ]
        assert running.id not in batches_done_running(session)
        assert batch_reading(session, validating.input_file_id or "") is not None
        assert mark_chunk_sent(session, chunks[0].id, "gpu.0", "t")
        assert complete_chunk(
            session, chunks[0].id, ok=10, errors=0, output_part_key="o", error_part_key=None
        )
    with db.session() as session:
        assert running.id in batches_done_running(session)  # every chunk done, still in progress
        assert mark_finalizing(session, running.id)
        assert running.id in [b.id for b in stale_batches(session, "finalizing", later)]
        assert mark_failed(session, validating.id, "x", "y")
        assert batch_reading(session, validating.input_file_id or "") is None  # final: no longer read


def test_cancelled_at_is_when_the_cancel_was_asked(db: Database) -> None:
    tenant = unique()
    batch, _ = running_batch(db, tenant, chunks=1)
    with db.session() as session:
        cancellation = cancel_batch(session, tenant, batch.id)
        assert cancellation is not None
        asked = cancellation.batch.cancelled_at
        assert asked is not None
    with db.session() as session:
        assert mark_cancelled(session, batch.id)
        found = get_batch(session, tenant, batch.id)
        assert found is not None and found.status == "cancelled" and found.cancelled_at == asked


def test_a_batch_planned_in_groups_finalizes_only_once_planned(db: Database) -> None:
    """Chunks recorded group by group run while the file is planned: the total grows with them,
    the reaper sees the planning as unfinished, and no chunk can finalize the batch before the
    planner records the end."""
    from registry.batches import (
        all_counted,
        batches_done_running,
        claim_planning,
        mark_planned,
        record_planned_chunks,
        unplanned_batches,
    )

    batch = new_batch(db, unique())
    specs = [ChunkSpec(i, i * 100, (i + 1) * 100, i * 10 + 1, 10) for i in range(3)]
    later = utcnow() + timedelta(hours=1)

    def record(group: list[ChunkSpec]) -> list[ChunkSpec] | None:
        with db.session() as session:
            assert claim_planning(session, batch.id)
            sends = {spec.index: ("gpu.0", f"t{spec.index}") for spec in group}
            return record_planned_chunks(session, batch.id, group, duplicates={}, sends=sends)

    assert record(specs[:1]) == specs[:1]
    with db.session() as session:
        assert batch_by_id(session, batch.id).status == "queued"  # type: ignore[union-attr]
        assert batch_by_id(session, batch.id).total_count == 10  # type: ignore[union-attr]
        assert mark_started(session, batch.id)
        chunk = list_chunks(session, batch.id)[0]
        assert chunk.status == "queued" and chunk.attempts == 1
        assert complete_chunk(session, chunk.id, ok=10, errors=0, output_part_key="o", error_part_key=None)
        assert not all_counted(session, batch.id) and not mark_finalizing(session, batch.id)
    with db.session() as session:
        assert batch.id in [b.id for b in unplanned_batches(session, later)]
        assert batch.id not in batches_done_running(session)
    assert record(specs[:2]) == specs[1:2], "a chunk already recorded is skipped"
    assert record([ChunkSpec(2, 150, 300, 16, 15)]) is None, "cut otherwise: stop"
    assert record(specs[2:]) == specs[2:]
    with db.session() as session:
        for chunk in list_chunks(session, batch.id)[1:]:
            complete_chunk(session, chunk.id, ok=10, errors=0, output_part_key="o", error_part_key=None)
    with db.session() as session:
        assert claim_planning(session, batch.id)
        assert mark_planned(session, batch.id, 30), "every chunk done: the planner finalizes"
    with db.session() as session:
        done = batch_by_id(session, batch.id)
        assert done is not None and done.status == "finalizing" and done.planned_at is not None
        assert not claim_planning(session, batch.id)
        assert batch.id not in [b.id for b in unplanned_batches(session, later)]
