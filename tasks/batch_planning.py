"""Planning a batch (control queue): read the input file as a stream, claim every line's custom_id,
cut the file into chunks, and record and send them group by group as they are found."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
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
from tasks.batch_chunks import queue_finalize
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
from tasks.pipeline import PipelineError, resolve_model
from tasks.runtime import Services
from workers.storage import ObjectNotFound, StorageError, StorageUnavailable

log = logging.getLogger(__name__)


# Chunks are recorded and sent as planning finds them, so that they run while the rest of the file
# is read: the first one alone (at once), then groups of up to PLAN_GROUP_CHUNKS chunks, or what
# PLAN_GROUP_SECONDS of reading found (one transaction and one round of sends per group).
PLAN_GROUP_CHUNKS = 8
PLAN_GROUP_SECONDS = 0.2


class TooManyRequests(Exception):
    pass


class PlanStopped(Exception):
    """The batch is no longer being planned by this planner (failed, or planned elsewhere)."""


@dataclass
class Scan:
    """What planning learnt of an input file: request lines, lines, and the chunks it recorded."""

    total: int = 0
    lines: int = 0
    recorded: int = 0


def take_duplicates(pending: deque[tuple[int, int]], end: int) -> list[int]:
    """The line numbers of ``pending`` duplicates ((start byte, line number), file order) that lie
    before byte ``end``: those of the chunk ending there, taken off ``pending``."""
    taken = []
    while pending and pending[0][0] < end:
        taken.append(pending.popleft()[1])
    return taken


@dataclass
class Planner:
    """Streams a batch's input file into chunks, recorded and sent group by group (see
    :func:`plan_batch`)."""

    services: Services
    dispatch: Dispatch
    batch_id: str
    candidates: list[int]
    scan: Scan = field(default_factory=Scan)

    def run(self, key: str, size: int, max_requests: int | None = None) -> Scan:
        """Read the file, record and send its chunks; the planning is not marked ended here.

        Memory is bounded but for the set of custom_ids, which a duplicate check needs (about
        100 MB for a million ids). Chunks an earlier planner recorded (a crash, a re-run, a
        planner racing this one) are not recorded or sent again: their lines are only read
        for their custom_ids and counts.
        """
        settings = self.services.settings
        max_line = settings.batch_max_line_bytes
        limit = max_requests or settings.batch_max_requests
        self.scan = scan = Scan()
        so_far = db_retrying(self._planned_so_far)
        seen: set[str] = set()
        duplicates: deque[tuple[int, int]] = deque()

        def spans() -> Iterator[tuple[int, int, int]]:
            for start, end, raw in self.services.store.iter_line_spans(key, max_line=reader_limit(max_line)):
                scan.lines += 1
                # The custom_id only (duplicates need the whole file); each chunk checks its lines' inputs.
                parsed = claim_line(raw, scan.lines, seen, max_line)
                if parsed is None:
                    continue
                scan.total += 1
                if scan.total > limit:
                    raise TooManyRequests(f"the file has more than {limit} request lines")
                if start < so_far.end_byte:
                    continue  # in a chunk recorded (and sent) by an earlier planner
                if isinstance(parsed, LineError) and parsed.code == DUPLICATE_CUSTOM_ID:
                    duplicates.append((start, scan.lines))
                yield scan.lines, start, end

        # Chunks of at most a tenth of the file, so that progress moves at least every 10%.
        max_bytes = max(1, min(settings.batch_chunk_max_bytes, size // 10))
        group: list[ChunkSpec] = []
        found: dict[int, list[int]] = {}
        flushed_at = None
        chunks = plan_chunks(spans(), settings.batch_chunk_lines, max_bytes, first_index=so_far.next_index)
        for chunk in chunks:
            group.append(chunk)
            dups = take_duplicates(duplicates, chunk.end)
            if dups:
                found[chunk.index] = dups
            now = time.monotonic()
            if (
                flushed_at is None
                or len(group) >= PLAN_GROUP_CHUNKS
                or now - flushed_at >= PLAN_GROUP_SECONDS
            ):
                self.record(group, found)
                group, found, flushed_at = [], {}, now
        if group:
            self.record(group, found)
        return scan

    def _planned_so_far(self) -> registry.PlannedSoFar:
        with transaction(self.services) as session:
            return registry.planned_so_far(session, self.batch_id)

    def record(self, group: list[ChunkSpec], duplicates: dict[int, list[int]]) -> None:
        """Record a group of chunks as sent, then send them (a batch cancelled meanwhile: recorded as
        cancelled, not sent); PlanStopped when the batch is no longer being planned (failed, or
        another planner recorded other chunks here)."""
        gpus = assign_gpus(self.services, self.candidates, len(group))
        sends = {chunk.index: (gpu_queue(gpu), new_task_id()) for chunk, gpu in zip(group, gpus, strict=True)}

        cancelled = False

        def insert() -> list[ChunkSpec] | None:
            nonlocal cancelled
            with transaction(self.services) as session:
                status = registry.claim_planning(session, self.batch_id)
                if status is None:
                    return None
                cancelled = status == "cancelling"  # recorded cancelled, never sent
                recorded = registry.record_planned_chunks(
                    session, self.batch_id, group, duplicates=duplicates, sends=sends, cancelled=cancelled
                )
                if recorded is None:
                    session.rollback()
                return recorded

        recorded: list[ChunkSpec] | None = db_retrying(insert)
        if recorded is None:
            raise PlanStopped
        self.scan.recorded += len(recorded)
        if cancelled:
            return
        for sent, chunk in enumerate(recorded):
            queue, task_id = sends[chunk.index]
            try:
                send_chunk(self.dispatch, self.batch_id, chunk.index, queue, task_id)
            except PipelineError as exc:  # recorded as sent: the reaper sends them once the broker is back
                log.warning(
                    "batch %s: %s chunks not sent (%s)", self.batch_id, len(recorded) - sent, exc.detail
                )
                break

    def finish(self) -> str:
        """Planning ended: the final total recorded (and the file's line count); finalize queued if
        every chunk already finished. Returns what happened, for the log."""
        scan = self.scan

        def mark() -> tuple[bool, bool]:
            with transaction(self.services) as session:
                status = registry.claim_planning(session, self.batch_id)
                if status is None:
                    return False, False
                last = registry.mark_planned(session, self.batch_id, scan.total)
                # A batch cancelled while planned waits for this end to be finalized.
                last = last or status == "cancelling"
                batch = registry.batch_by_id(session, self.batch_id)
                if batch is not None and batch.input_file_id:
                    input_file = file_by_id(session, batch.input_file_id)
                    if input_file is not None:
                        set_line_count(session, input_file, scan.lines)
                return True, last

        marked, last = db_retrying(mark)
        if not marked:  # failed meanwhile, or another planner ended it first
            return "stopped"
        if last:
            queue_finalize(self.dispatch, self.batch_id)
        log.info("batch %s: %s requests, %s chunks recorded here", self.batch_id, scan.total, scan.recorded)
        return "queued"


def _model_failure(exc: PipelineError) -> tuple[str, str]:
    code = MODEL_NOT_FOUND if exc.status == 404 else MODEL_NOT_READY
    return code, exc.detail or exc.title


def plan_batch(services: Services, dispatch: Dispatch, batch_id: str) -> str:
    """Plan a batch: read its file as a stream and cut it into chunks, each group of chunks recorded
    as sent (the batch ``queued`` from the first) and then sent, so that chunks run while the rest
    is read; at the end, the final total and ``planned_at``. Returns what happened, for the log.

    Safe to run again after a crash midway, and twice at once: chunk boundaries are the same
    on each run, and a chunk already recorded is neither recorded nor sent again (each group is
    recorded under the batch row's lock). A failure stops planning at its next group; after a
    cancel nothing more is sent, and the rest of the file is recorded as cancelled chunks.
    Finalize waits for ``planned_at``; if every chunk finished before, the planner queues it.
    """
    with transaction(services) as session:
        batch = registry.batch_by_id(session, batch_id)
        if batch is None or batch.status not in registry.PLANNING_STATUSES or batch.planned_at is not None:
            return "not planning"
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
    planner = Planner(services, dispatch, batch_id, candidates)
    try:
        # A retry reads the file again from its start; the chunks already recorded are skipped.
        scan = call_retrying(lambda: planner.run(*source), StorageUnavailable, seconds=60)
    except PlanStopped:
        return "stopped"
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
    return planner.finish()
