"""Running a chunk (gpu.N queues): its lines re-read by byte range, micro-batches to Triton, one
output part and one error part, the chunk counted done once; the last one moves the batch on."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from inferq.retries import call_retrying
from inferq.services import RedisError
from inferq.settings import gpu_queue
from registry import batches as registry
from registry.batch_input import (
    INVALID_INPUT,
    BatchRequest,
    LineError,
    checked_values,
    confirm_values,
    error_line,
    line_error_line,
    output_line,
    quick_line,
    reader_limit,
    recheck_line,
)
from registry.batches import Batch, Chunk
from registry.catalog import model_by_version
from registry.files import file_by_id
from registry.signatures import TensorSpec
from tasks import sidecar
from tasks.batches import (
    CANCELLED,
    INPUT_FILE_NOT_FOUND,
    INVALID_OUTPUT,
    MODEL_NOT_FOUND,
    SPOOL_BYTES,
    Dispatch,
    assign_gpus,
    db_retrying,
    fail_batch,
    new_task_id,
    ready_gpus,
    send_chunk,
    send_finalize,
    transaction,
)
from tasks.pipeline import PipelineError, ResolvedModel
from tasks.runtime import Services
from workers.batch_inference import LineResult, TritonModel, infer_lines, merge_key, rows
from workers.storage import ObjectNotFound, StorageError, StorageUnavailable, split_lines
from workers.triton import TritonModelNotFound, TritonUnavailable

log = logging.getLogger(__name__)

# Chunks one worker process runs at once, whatever its pool's size (threads also serve sync
# requests): a chunk is mostly Python work under the GIL, and more of them at once than the
# cores can run only adds switching and database lock waits (2 cores: 2 per GPU worker).
CHUNKS_AT_ONCE = 2
_running = threading.BoundedSemaphore(CHUNKS_AT_ONCE)


@dataclass(frozen=True)
class ChunkWork:
    """One chunk to run (or to settle as cancelled), as its row said when it was picked up."""

    chunk_id: str
    batch_id: str
    tenant: str
    index: int
    input_key: str
    start: int
    end: int
    first_line: int
    duplicates: frozenset[int]
    attempts: int
    model_name: str
    model_version: str


def work_of(batch: Batch, chunk: Chunk, input_key: str) -> ChunkWork:
    return ChunkWork(
        chunk.id,
        batch.id,
        batch.tenant,
        chunk.index,
        input_key,
        chunk.start_byte,
        chunk.end_byte,
        chunk.first_line,
        frozenset(chunk.duplicate_lines or ()),
        chunk.attempts,
        batch.model_name,
        batch.model_version,
    )


def input_key_of(session: Any, batch: Batch) -> str | None:
    file = file_by_id(session, batch.input_file_id) if batch.input_file_id else None
    return file.object_key if file is not None else None


def start_chunk(services: Services, batch_id: str, index: int) -> ChunkWork | None:
    """The chunk to run, or None when there is nothing to do (done, cancelled, batch not running).

    The first chunk to start moves its batch from ``queued`` to ``in_progress``.
    """

    def pick() -> ChunkWork | None:
        with transaction(services) as session:
            chunk = registry.get_chunk_at(session, batch_id, index)
            batch = registry.batch_by_id(session, batch_id)
            if chunk is None or batch is None or chunk.status != "queued":
                return None
            if batch.status not in registry.SENDING_STATUSES:
                return None
            key = input_key_of(session, batch)
            if key is None:
                return None
            if batch.status == "queued":
                registry.mark_started(session, batch_id)
            return work_of(batch, chunk, key)

    work: ChunkWork | None = db_retrying(pick)
    return work


class PartWriter:
    """The output and error lines of one execution of a chunk, spooled (memory, then a temporary
    file), then uploaded as two part objects."""

    def __init__(self) -> None:
        # Closed by close(), which run_chunk and settle_cancelled call in a finally.
        self.output: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        self.errors: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        self.ok = 0
        self.failed = 0

    def add_output(self, line: bytes) -> None:
        self.output.write(line)
        self.ok += 1

    def add_error(self, line: bytes) -> None:
        self.errors.write(line)
        self.failed += 1

    def upload(self, services: Services, keys: tuple[str, str]) -> tuple[str | None, str | None]:
        """Upload the non-empty parts (retried while the store is briefly unreachable)."""
        written: list[str | None] = []
        for spool, count, key in ((self.output, self.ok, keys[0]), (self.errors, self.failed, keys[1])):
            if not count:
                written.append(None)
                continue

            def put(spool: IO[bytes] = spool, key: str = key) -> None:
                spool.seek(0)
                services.store.put_stream(key, spool, content_type="application/jsonl")

            # Any store error, not only an unreachable store: a part has keys of its own, so writing
            # it again is harmless, and an S3 server's passing 500 must not leave the chunk to the
            # reaper (rclone's local backend once answered 500, "file does not exist", to a part
            # written as a batch's chunks all started at once).
            call_retrying(put, StorageError, seconds=30)
            written.append(key)
        return written[0], written[1]

    def close(self) -> None:
        self.output.close()
        self.errors.close()


def chunk_lines(services: Services, work: ChunkWork) -> Iterator[tuple[int, bytes]]:
    """The chunk's lines with their line numbers (blank ones included: they count as lines)."""
    data = call_retrying(
        lambda: services.store.get_range(work.input_key, work.start, work.end), StorageUnavailable, seconds=30
    )
    limit = reader_limit(services.settings.batch_max_line_bytes)
    for number, (_, _, raw) in enumerate(split_lines([data], work.start, limit), work.first_line):
        yield number, raw


# Runs a micro-batch of valid requests: one result per request, in order. The second argument,
# when not None, holds the requests' input values already checked together (checked_values):
# one array per input, a row per request, which the call may send as they are.
Runner = Callable[[Sequence[BatchRequest], Sequence[np.ndarray] | None], list[LineResult]]


def write_lines(
    lines: Iterator[tuple[int, bytes]],
    classify: Callable[[int, bytes], BatchRequest | LineError | None],
    run: Runner,
    writer: PartWriter,
    micro_batch: int,
    recheck: Callable[[int, bytes], BatchRequest | LineError | None] | None = None,
) -> None:
    """Classify each line; valid requests go to ``run`` in micro-batches of up to ``micro_batch``
    rows (lines that can share a call); output and error lines are written in input order.

    ``classify`` may return requests whose data values are not yet checked (``confirmed``
    False, see :func:`registry.batch_input.quick_line`): they are checked together before the
    call, and if that fails each of them is read again by ``recheck``, the full check."""
    pending: list[BatchRequest] = []
    pending_key: Any = None
    pending_rows = 0
    held: list[tuple[int, bytes]] = []  # error lines of invalid input lines since the last flush
    raws: dict[int, bytes] = {}  # the lines of unconfirmed pending requests

    values: list[Sequence[np.ndarray] | None] = [None]  # the checked arrays of the flush's requests

    def confirmed(requests: list[BatchRequest]) -> list[BatchRequest]:
        unsure = [request for request in requests if not request.confirmed]
        if not unsure:
            return requests
        if len(unsure) == len(requests):
            values[0] = checked_values(requests)
            if values[0] is not None:
                return requests
        elif confirm_values(unsure):
            return requests
        if recheck is None:
            raise ValueError("unconfirmed requests need a recheck")
        sure = []
        for request in requests:
            item = request if request.confirmed else recheck(request.line, raws[request.line])
            if isinstance(item, LineError):
                held.append((item.line, line_error_line(item)))
            elif item is not None:
                sure.append(item)
        return sure

    def flush() -> None:
        nonlocal pending, pending_rows
        values[0] = None
        ready = confirmed(pending) if pending else pending
        errors = list(held)
        held.clear()
        raws.clear()
        if ready:
            for request, result in zip(ready, run(ready, values[0]), strict=True):
                if result.outputs is not None:
                    try:
                        writer.add_output(output_line(request.custom_id, result.outputs, result.finite))
                        continue
                    except ValueError as exc:
                        result = LineResult(code=INVALID_OUTPUT, message=f"the output is not JSON: {exc}")
                errors.append((request.line, error_line(request.custom_id, result.code, result.message)))
        if pending:
            pending, pending_rows = [], 0
        for _, line in sorted(errors, key=lambda item: item[0]):
            writer.add_error(line)

    for number, raw in lines:
        item = classify(number, raw)
        if item is None:
            continue
        if isinstance(item, LineError):
            held.append((number, line_error_line(item)))
            continue
        key = merge_key(item.inputs, item.outputs)
        count = rows(item.inputs)
        if pending and (key is None or key != pending_key or pending_rows + count > micro_batch):
            flush()
        if not item.confirmed:
            raws[number] = raw
        pending.append(item)
        pending_key, pending_rows = key, pending_rows + count
        if key is None:
            flush()
    flush()


def triton_model(model: ResolvedModel) -> TritonModel:
    specs: list[TensorSpec] = [*model.inputs, *model.outputs]
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in specs)
    return TritonModel(model.triton_name, model.triton_version, batchable)


def triton_runner(
    services: Services, model: ResolvedModel, gpu: int, request_id: str, last_attempt: bool
) -> Runner:
    """Micro-batches to GPU ``gpu``'s Triton. On the chunk's last attempt, a Triton that stays
    unreachable fails the lines (``backend_unavailable``) instead of the attempt."""
    endpoint = services.triton(gpu)
    target = triton_model(model)
    retry_seconds = services.settings.batch_triton_retry_seconds
    down: list[str] = []

    def run(requests: Sequence[BatchRequest], values: Sequence[np.ndarray] | None = None) -> list[LineResult]:
        if down:
            return [LineResult(code=TritonUnavailable.code, message=down[0])] * len(requests)

        def call() -> list[LineResult]:
            inputs = [request.inputs for request in requests]
            return infer_lines(
                endpoint,
                target,
                inputs,
                requests[0].outputs,
                retry_seconds=retry_seconds,
                request_id=request_id,
                values=values,
            )

        try:
            results = call()
            if (
                results
                and results[-1].code == TritonModelNotFound.code
                and sidecar.heal(services, gpu, target.name)
            ):
                results = call()  # missing from this worker's own Triton, which should have it: loaded
            return results
        except TritonUnavailable as exc:
            if not last_attempt:
                raise
            down.append(str(exc))
            return [LineResult(code=exc.code, message=str(exc))] * len(requests)

    return run


def cancelled_runner(
    requests: Sequence[BatchRequest], values: Sequence[np.ndarray] | None = None
) -> list[LineResult]:
    message = "the batch was cancelled before this line ran"
    return [LineResult(code=CANCELLED, message=message)] * len(requests)


def classifier(
    services: Services, work: ChunkWork, model: ResolvedModel | None
) -> Callable[[int, bytes], BatchRequest | LineError | None]:
    """Check a line of the chunk as the planner did (``model`` None: its signature is gone, and a
    line's inputs are taken as they are)."""
    max_line = services.settings.batch_max_line_bytes
    inputs = model.inputs if model is not None else []
    outputs = model.outputs if model is not None else []

    def classify(number: int, raw: bytes) -> BatchRequest | LineError | None:
        item = recheck_line(raw, number, inputs, outputs, number in work.duplicates, max_line)
        if model is None and isinstance(item, LineError) and item.code == INVALID_INPUT and item.custom_id:
            return BatchRequest(number, item.custom_id, [], None, None)
        return item

    return classify


def quick_classifier(
    services: Services, work: ChunkWork, model: ResolvedModel | None
) -> Callable[[int, bytes], BatchRequest | LineError | None]:
    """:func:`classifier` with a fast path: a line of the plain form comes back with its values
    unchecked (checked per micro-batch by ``write_lines``, which falls back on :func:`classifier`)."""
    full = classifier(services, work, model)
    if model is None:
        return full
    max_line = services.settings.batch_max_line_bytes
    inputs = model.inputs

    def classify(number: int, raw: bytes) -> BatchRequest | LineError | None:
        if number not in work.duplicates:
            quick = quick_line(raw, number, inputs, max_line)
            if quick is not None:
                return quick
        return full(number, raw)

    return classify


def model_of(services: Services, work: ChunkWork) -> ResolvedModel | None:
    record = model_by_version(services.db, services.cache, work.model_name, work.model_version)
    return ResolvedModel.from_record(record) if record is not None else None


def _count_in_flight(services: Services, queue: str, started: bool, worker: str = "") -> None:
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            if started:
                services.gpus.add_started(pipe, queue, worker)
            else:
                services.gpus.add_finished(pipe, queue, worker)
            pipe.execute()
    except RedisError as exc:  # load figures are advice
        log.debug("in-flight count of %s not updated: %s", queue, exc)


def run_chunk(
    services: Services, dispatch: Dispatch, batch_id: str, index: int, gpu: int, run: str, worker: str = ""
) -> str:
    """Run chunk ``index`` of a batch on GPU ``gpu`` (``run``: a name for this execution; ``worker``:
    the Celery worker running it, whose in-flight count the router reads).

    Writes the execution's own parts, then marks the chunk done, which counts its lines
    once however many executions there are: a second execution's parts are never used.
    Triton unreachable for too long: the chunk is sent again (another GPU if there is one);
    on its last attempt the lines fail with ``backend_unavailable`` instead.
    Returns what happened, for the log.
    """
    with _running:
        return _run_chunk(services, dispatch, batch_id, index, gpu, run, worker)


def _run_chunk(
    services: Services, dispatch: Dispatch, batch_id: str, index: int, gpu: int, run: str, worker: str
) -> str:
    work = start_chunk(services, batch_id, index)
    if work is None:
        return "skipped"
    model = model_of(services, work)
    if model is None:
        fail_batch(services, batch_id, MODEL_NOT_FOUND, f"{work.model_name!r} version {work.model_version!r}")
        return "failed"
    last_attempt = work.attempts >= services.settings.batch_chunk_max_attempts
    writer = PartWriter()
    queue = gpu_queue(gpu)
    _count_in_flight(services, queue, True, worker)
    try:
        try:
            write_lines(
                chunk_lines(services, work),
                quick_classifier(services, work, model),
                triton_runner(services, model, gpu, f"{batch_id}-{index}", last_attempt),
                writer,
                services.settings.batch_micro_batch,
                classifier(services, work, model),
            )
        except TritonUnavailable as exc:
            log.warning("batch %s chunk %s: Triton of GPU %s unreachable: %s", batch_id, index, gpu, exc)
            return resend_chunk(services, dispatch, work, model, avoid=gpu)
        except ObjectNotFound:
            fail_batch(services, batch_id, INPUT_FILE_NOT_FOUND, "the input file's object is missing")
            return "failed"
        finally:
            _count_in_flight(services, queue, False, worker)
        keys = registry.chunk_part_keys(work.tenant, batch_id, index, run)
        output_key, error_key = writer.upload(services, keys)
    finally:
        writer.close()
    completion = complete(services, work, writer.ok, writer.failed, output_key, error_key)
    if not completion.counted:
        # Another execution counted this chunk (or the batch moved on): ours is never used.
        for key in (output_key, error_key):
            if key is not None:
                with contextlib.suppress(StorageError):
                    services.store.delete(key)
        return "duplicate"
    if completion.last:
        queue_finalize(dispatch, batch_id)
    return "done"


@dataclass(frozen=True)
class Completion:
    """What marking a chunk done did: whether this execution counted it, and whether that made the
    batch ``finalizing`` (then the caller queues finalize)."""

    counted: bool
    last: bool = False


def complete(
    services: Services, work: ChunkWork, ok: int, failed: int, output_key: str | None, error_key: str | None
) -> Completion:
    """Mark the chunk done with its counts and parts and, if the batch's counts now add up to its
    total, move it to ``finalizing``: one transaction, one write lock on SQLite (a retried commit
    that had in fact gone through reads as not counted; the reaper then finalizes the batch).

    Two last chunks finishing at once serialize on the batch row's counter update, so the
    second sees the first's counts (and its chunk done) and is the one that moves the batch.
    """

    def done() -> Completion:
        with transaction(services) as session:
            counted = registry.complete_chunk(
                session,
                work.chunk_id,
                ok=ok,
                errors=failed,
                output_part_key=output_key,
                error_part_key=error_key,
            )
            if not counted:
                return Completion(False)
            last = registry.all_counted(session, work.batch_id) and registry.mark_finalizing(
                session, work.batch_id
            )
            return Completion(True, last)

    completion: Completion = db_retrying(done)
    return completion


def queue_finalize(dispatch: Dispatch, batch_id: str) -> None:
    """Queue finalize for a batch just moved to ``finalizing`` (the reaper re-sends a lost one)."""
    try:
        send_finalize(dispatch, batch_id)
    except PipelineError as exc:
        log.warning("batch %s: finalize not queued (%s)", batch_id, exc.detail)


def maybe_finalize(services: Services, dispatch: Dispatch, batch_id: str) -> bool:
    """If no chunk is left, move the batch to ``finalizing`` (one caller wins) and queue finalize.

    A transaction of its own, after the chunk's: two last chunks finishing at once each
    see the other done once both committed, and the conditional update lets one through.
    """

    def move() -> bool:
        with transaction(services) as session:
            return registry.mark_finalizing(session, batch_id)

    if not db_retrying(move):
        return False
    queue_finalize(dispatch, batch_id)
    return True


def resend_chunk(
    services: Services,
    dispatch: Dispatch,
    work: ChunkWork,
    model: ResolvedModel | None,
    avoid: int | None = None,
) -> str:
    """Send the chunk again: to the least loaded GPU where the model is ready, another than
    ``avoid`` when there is one. Recorded first, then sent."""
    candidates = ready_gpus(services, model) if model is not None else []
    candidates = candidates or list(services.settings.gpus)
    others = [gpu for gpu in candidates if gpu != avoid]
    gpu = assign_gpus(services, others or candidates, 1)[0]
    queue, task_id = gpu_queue(gpu), new_task_id()

    def record() -> bool:
        with transaction(services) as session:
            return registry.mark_chunk_sent(session, work.chunk_id, queue, task_id)

    if not db_retrying(record):
        return "not resent"
    try:
        send_chunk(dispatch, work.batch_id, work.index, queue, task_id)
    except PipelineError as exc:
        log.warning(
            "batch %s chunk %s: not re-sent (%s); the reaper will", work.batch_id, work.index, exc.detail
        )
    return "resent"
