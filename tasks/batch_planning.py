"""Planning a batch (control queue): read the input file as a stream, check every line, cut it into
chunks recorded in the database, then send one task per chunk to the GPU queues."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from inferq.retries import call_retrying
from inferq.settings import gpu_queue
from registry import batches as registry
from registry.batch_input import (
    DUPLICATE_CUSTOM_ID,
    ChunkSpec,
    LineError,
    claim_line,
    plan_chunks,
    reader_limit,
)
from registry.files import file_by_id, set_line_count
from tasks.batches import (
    EMPTY_INPUT,
    INPUT_FILE_NOT_FOUND,
    INPUT_UNREADABLE,
    MODEL_NOT_FOUND,
    MODEL_NOT_READY,
    TOO_MANY_REQUESTS,
    Dispatch,
    assign_gpus,
    db_retrying,
    fail_batch,
    new_task_id,
    ready_gpus,
    send_chunk,
    transaction,
)
from tasks.pipeline import PipelineError, ResolvedModel, resolve_model
from tasks.runtime import Services
from workers.storage import ObjectNotFound, StorageError, StorageUnavailable

log = logging.getLogger(__name__)


@dataclass
class Scan:
    """What planning learnt of an input file: request lines, lines, duplicates, chunks."""

    total: int = 0
    lines: int = 0
    duplicates: list[int] = field(default_factory=list)
    chunks: list[ChunkSpec] = field(default_factory=list)


class TooManyRequests(Exception):
    pass


def scan_input(
    services: Services, key: str, size: int, model: ResolvedModel, max_requests: int | None = None
) -> Scan:
    """Read the input file as a stream and cut it into chunks (bounded memory but for the set of
    custom_ids, which a duplicate check needs: about 100 MB for a million ids).

    Every non-blank line, valid or not, belongs to a chunk, which writes its error line in
    input order; what only the whole file tells (a custom_id used twice) is recorded here.
    """
    settings = services.settings
    max_line = settings.batch_max_line_bytes
    limit = max_requests or settings.batch_max_requests
    scan = Scan()
    seen: set[str] = set()

    def spans() -> Iterator[tuple[int, int, int]]:
        for start, end, raw in services.store.iter_line_spans(key, max_line=reader_limit(max_line)):
            scan.lines += 1
            # The custom_id only (duplicates need the whole file); each chunk checks its lines' inputs.
            parsed = claim_line(raw, scan.lines, seen, max_line)
            if parsed is None:
                continue
            scan.total += 1
            if scan.total > limit:
                raise TooManyRequests(f"the file has more than {limit} request lines")
            if isinstance(parsed, LineError) and parsed.code == DUPLICATE_CUSTOM_ID:
                scan.duplicates.append(scan.lines)
            yield scan.lines, start, end

    # Chunks of at most a tenth of the file, so that progress moves at least every 10%.
    max_bytes = max(1, min(settings.batch_chunk_max_bytes, size // 10))
    scan.chunks = list(plan_chunks(spans(), settings.batch_chunk_lines, max_bytes))
    return scan


def duplicates_by_chunk(chunks: Sequence[ChunkSpec], duplicates: Sequence[int]) -> dict[int, list[int]]:
    """Chunk index -> the duplicate line numbers it holds (both lists in file order)."""
    firsts = [chunk.first_line for chunk in chunks]
    found: dict[int, list[int]] = {}
    for line in duplicates:
        position = bisect.bisect_right(firsts, line) - 1
        if position >= 0:
            found.setdefault(chunks[position].index, []).append(line)
    return found


def _model_failure(exc: PipelineError) -> tuple[str, str]:
    code = MODEL_NOT_FOUND if exc.status == 404 else MODEL_NOT_READY
    return code, exc.detail or exc.title


def plan_batch(services: Services, dispatch: Dispatch, batch_id: str) -> str:
    """Plan a ``validating`` batch: check its lines, record its chunks as sent, ``queued``; then
    send the chunk tasks (after the commit). Returns what happened, for the log.

    Safe to run twice, even at once: only the run whose ``validating -> queued`` update
    wins records chunks; the other rolls back.
    """
    with transaction(services) as session:
        batch = registry.batch_by_id(session, batch_id)
        if batch is None or batch.status != "validating":
            return "not validating"
        file = file_by_id(session, batch.input_file_id) if batch.input_file_id else None
        name, version = batch.model_name, batch.model_version
        source = (file.object_key, file.bytes) if file is not None and file.deleted_at is None else None
    if source is None:
        fail_batch(services, batch_id, INPUT_FILE_NOT_FOUND, "the input file was deleted")
        return "failed"
    try:
        model = resolve_model(services, name, version)
    except PipelineError as exc:
        if exc.status >= 500:
            raise
        fail_batch(services, batch_id, *_model_failure(exc))
        return "failed"
    candidates = ready_gpus(services, model)
    if not candidates:
        fail_batch(services, batch_id, MODEL_NOT_READY, f"{name!r} is not ready on any configured GPU")
        return "failed"
    try:
        scan = call_retrying(lambda: scan_input(services, *source, model), StorageUnavailable, seconds=60)
    except ObjectNotFound:
        fail_batch(services, batch_id, INPUT_FILE_NOT_FOUND, "the input file's object is missing")
        return "failed"
    except TooManyRequests as exc:
        fail_batch(services, batch_id, TOO_MANY_REQUESTS, str(exc))
        return "failed"
    except StorageError as exc:
        fail_batch(services, batch_id, INPUT_UNREADABLE, f"the input file cannot be read: {exc}")
        return "failed"
    if scan.total == 0:
        fail_batch(services, batch_id, EMPTY_INPUT, "the input file has no request lines")
        return "failed"

    gpus = assign_gpus(services, candidates, len(scan.chunks))
    sends = {
        chunk.index: (gpu_queue(gpu), new_task_id()) for chunk, gpu in zip(scan.chunks, gpus, strict=True)
    }

    def record() -> bool:
        with transaction(services) as session:
            # First: of two planners, the second waits here for the first's commit, then is told no.
            if not registry.mark_queued(session, batch_id, scan.total):
                session.rollback()
                return False
            registry.add_chunks(
                session,
                batch_id,
                scan.chunks,
                duplicates=duplicates_by_chunk(scan.chunks, scan.duplicates),
                sends=sends,
            )
            batch = registry.batch_by_id(session, batch_id)
            if batch is not None and batch.input_file_id:
                input_file = file_by_id(session, batch.input_file_id)
                if input_file is not None:
                    set_line_count(session, input_file, scan.lines)
            return True

    if not db_retrying(record):
        return "planned elsewhere"
    for sent, chunk in enumerate(scan.chunks):
        queue, task_id = sends[chunk.index]
        try:
            send_chunk(dispatch, batch_id, chunk.index, queue, task_id)
        except PipelineError as exc:  # recorded as sent: the reaper sends them once the broker is back
            log.warning("batch %s: %s chunks not sent (%s)", batch_id, len(scan.chunks) - sent, exc.detail)
            break
    log.info("batch %s: %s requests in %s chunks", batch_id, scan.total, len(scan.chunks))
    return "queued"
