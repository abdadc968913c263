"""Finalizing a batch (control queue): the parts merged in chunk order into one output file and
one error file; for a cancelled batch, the lines that did not run first written as `cancelled`."""

from __future__ import annotations

import logging
import uuid
from functools import partial

from sqlalchemy.exc import IntegrityError

from inferq.retries import call_retrying
from registry import batches as registry
from registry.batches import Batch
from registry.files import create_file, file_object_key
from tasks.batch_chunks import (
    PartWriter,
    cancelled_runner,
    chunk_lines,
    classifier,
    complete,
    input_key_of,
    model_of,
    work_of,
    write_lines,
)
from tasks.batches import (
    INPUT_FILE_NOT_FOUND,
    db_retrying,
    fail_batch,
    remove_parts,
    transaction,
)
from tasks.runtime import Services
from workers.storage import ObjectNotFound, StorageUnavailable

log = logging.getLogger(__name__)

# Chunk parts read ahead, in threads, while the merged file is written: a part is one chunk's
# lines (at most INFERQ_BATCH_CHUNK_MAX_BYTES of input's worth), so a few fit in memory.
PARTS_READ_AHEAD = 4


def result_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output or error file: fixed, so that a finalize run twice writes one file."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"inferq:batch:{batch_id}:{kind}").hex


def settle_cancelled(services: Services, batch: Batch) -> bool:
    """Write the lines of a cancelled batch's chunks that did not run, as errors (``cancelled``),
    and mark those chunks done. False if the input cannot be read (the batch is failed)."""
    with transaction(services) as session:
        chunks = registry.list_chunks(session, batch.id, status="cancelled")
        key = input_key_of(session, batch)
        works = [work_of(batch, chunk, key or "") for chunk in chunks]
    if not works:
        return True
    if key is None:
        fail_batch(services, batch.id, INPUT_FILE_NOT_FOUND, "the input file was deleted")
        return False
    model = model_of(services, works[0])
    for work in works:
        writer = PartWriter()
        try:
            write_lines(
                chunk_lines(services, work),
                classifier(services, work, model),
                cancelled_runner,
                writer,
                services.settings.batch_micro_batch,
            )
            # Same content whoever writes it: a fixed key.
            keys = registry.chunk_part_keys(work.tenant, work.batch_id, work.index, "cancelled")
            output_key, error_key = writer.upload(services, keys)
        except ObjectNotFound:
            fail_batch(services, batch.id, INPUT_FILE_NOT_FOUND, "the input file's object is missing")
            return False
        finally:
            writer.close()
        complete(services, work, writer.ok, writer.failed, output_key, error_key)
    return True


def finalize_batch(services: Services, batch_id: str) -> str:
    """Merge a ``finalizing`` (or ``cancelling``) batch's parts, in chunk order, into its output
    file and error file; record them and end the batch ``completed`` (or ``cancelled``).

    Safe to run twice, even at once: the files have fixed ids and keys, and the status
    update that records them lets one run through. A file with no line is not made
    (its id stays null). Returns what happened, for the log.
    """
    with transaction(services) as session:
        batch = registry.batch_by_id(session, batch_id)
        if batch is None:
            return "missing"
        status, tenant = batch.status, batch.tenant
        planning = batch.planned_at is None
    if status == "cancelling" and planning:
        return "planning"  # cancelled while planned: the planner queues finalize when it ends
    if status == "cancelling":
        if not settle_cancelled(services, batch):
            return "failed"
    elif status != "finalizing":
        return f"nothing to do: {status}"
    with transaction(services) as session:
        chunks = registry.list_chunks(session, batch_id)
    if any(chunk.status != "done" for chunk in chunks):
        return "chunks left"  # a cancelled chunk settled by another run, not yet committed
    output_keys = [c.output_part_key for c in chunks if c.output_part_key]
    error_keys = [c.error_part_key for c in chunks if c.error_part_key]
    ids = {"output": result_file_id(batch_id, "output"), "error": result_file_id(batch_id, "error")}
    sizes: dict[str, int] = {}

    def merge(dest: str, keys: list[str]) -> int:
        return services.store.concat(
            dest, keys, content_type="application/jsonl", read_ahead=PARTS_READ_AHEAD
        )

    for kind, keys in (("output", output_keys), ("error", error_keys)):
        if keys:
            dest = file_object_key(tenant, ids[kind])
            sizes[kind] = call_retrying(partial(merge, dest, keys), StorageUnavailable, seconds=60)

    def record() -> bool:
        with transaction(services) as session:
            batch = registry.batch_by_id(session, batch_id)
            if batch is None or batch.status not in ("finalizing", "cancelling"):
                return False
            counts = {"output": batch.completed_count, "error": batch.failed_count}
            purposes = {"output": "batch_output", "error": "batch_error"}
            for kind, size in sizes.items():
                create_file(
                    session,
                    tenant,
                    purposes[kind],
                    f"batch_{batch_id}_{kind}.jsonl",
                    size,
                    file_id=ids[kind],
                    line_count=counts[kind],
                )
            output_id, error_id = (
                ids["output"] if "output" in sizes else None,
                ids["error"] if "error" in sizes else None,
            )
            if batch.status == "finalizing":
                moved = registry.mark_completed(session, batch_id, output_id, error_id)
            else:
                moved = registry.mark_cancelled(session, batch_id, output_id, error_id)
            if not moved:
                session.rollback()
            return moved

    try:
        moved = db_retrying(record)
    except IntegrityError:  # another run recorded the same files first
        return "finalized elsewhere"
    if not moved:
        return "finalized elsewhere"
    remove_parts(services, tenant, batch_id)
    log.info("batch %s %s", batch_id, "completed" if status == "finalizing" else "cancelled")
    return "completed" if status == "finalizing" else "cancelled"
