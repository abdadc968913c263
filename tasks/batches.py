"""Batch inference, plain Python: the API side (create, get, list, cancel) and what the stages share.

    POST /v1/batches -> create (row ``validating``; commit; plan task on ``control``)
    tasks.batch_planning (control): stream the input file, check every line, cut it into chunks
                 (rows in the database, recorded as sent: ``queued``), then send one chunk task
                 per chunk to the least loaded ``gpu.N`` queue where the model is ready
    tasks.batch_chunks (gpu.N): the first chunk moves the batch to ``in_progress``; a chunk reads
                 its byte range, checks its lines again, sends micro-batches to Triton, writes one
                 output part and one error part, and is marked done (counted once, in the
                 database); whoever finishes the last chunk moves the batch to ``finalizing``
    tasks.batch_finalize (control): the parts concatenated in chunk order into the output file
                 and the error file, recorded; ``completed`` (or ``cancelled``)
    tasks.batch_recovery (control, celery beat): what a lost message or a dead worker left undone

The database is the source of truth: nothing depends on a message arriving once, or
at all. The Celery tasks (``tasks.batch``) are thin wrappers around these functions,
which take their collaborators as arguments (:class:`Services`, a :class:`Dispatch`),
so tests call them directly.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError

from inferq.retries import call_retrying
from inferq.settings import CONTROL_QUEUE
from registry import batches as registry
from registry.batches import BATCH_STATUSES, Batch, BatchStateError
from registry.db import DatabaseUnavailable
from registry.files import get_file
from registry.pagination import UnknownCursor, clamp_limit
from registry.signatures import Problem
from tasks.pipeline import PipelineError, ResolvedModel, invalid, publish, resolve_model
from tasks.routing import NoRoute, choose_gpu
from tasks.runtime import Services
from workers.gpu_state import GpuLoad
from workers.storage import StorageError

log = logging.getLogger(__name__)

PLAN_TASK = "inferq.batch.plan"
CHUNK_TASK = "inferq.batch.chunk"
FINALIZE_TASK = "inferq.batch.finalize"
REAP_TASK = "inferq.batch.reap"

# Why a batch itself failed (``errors[0].code`` of a failed batch).
MODEL_NOT_FOUND = "model_not_found"
MODEL_NOT_READY = "model_not_ready"
INPUT_FILE_NOT_FOUND = "input_file_not_found"
INPUT_UNREADABLE = "input_unreadable"
EMPTY_INPUT = "empty_input"
TOO_MANY_REQUESTS = "too_many_requests"
CHUNK_FAILED = "chunk_failed"

# Why a line that was valid has no output (error file codes, beside the input-line codes of
# registry.batch_input and Triton's: invalid_request, model_not_loaded, backend_unavailable).
CANCELLED = "cancelled"
INVALID_OUTPUT = "invalid_output"

CREATE_FIELDS = ("model", "version", "input_file_id", "metadata")
SPOOL_BYTES = 1024 * 1024  # a part beyond this is spooled to a temporary file, not memory
DB_ERRORS = (OperationalError, DatabaseUnavailable)
# The reaper gives up on a chunk lost this many times over (then the batch fails).
LOST_ATTEMPTS_FACTOR = 2


@dataclass(frozen=True)
class Dispatch:
    """How batch work leaves this process: ``send(task name, args, queue, task id, argsrepr)``
    (a broker that will not take it raises a 503 :class:`PipelineError`), and ``revoke(task ids)``."""

    send: Callable[[str, list[Any], str, str, str], None]
    revoke: Callable[[list[str]], None]


def celery_dispatch(app: Any) -> Dispatch:
    """Send and revoke through the Celery app ``app``."""

    def send(name: str, args: list[Any], queue: str, task_id: str, argsrepr: str) -> None:
        publish(app, name, args, queue, task_id=task_id, argsrepr=argsrepr)

    def revoke(task_ids: list[str]) -> None:
        try:
            app.control.revoke(task_ids)
        except Exception as exc:  # noqa: BLE001 - revoking is an optimisation: a chunk checks the database
            log.warning("could not revoke %s chunk tasks: %s", len(task_ids), exc)

    return Dispatch(send, revoke)


def new_task_id() -> str:
    return uuid.uuid4().hex


def send_plan(dispatch: Dispatch, batch_id: str) -> None:
    dispatch.send(PLAN_TASK, [batch_id], CONTROL_QUEUE, new_task_id(), f"(batch={batch_id!r})")


def send_finalize(dispatch: Dispatch, batch_id: str) -> None:
    dispatch.send(FINALIZE_TASK, [batch_id], CONTROL_QUEUE, new_task_id(), f"(batch={batch_id!r})")


def send_chunk(dispatch: Dispatch, batch_id: str, index: int, queue: str, task_id: str) -> None:
    """Flower shows the batch id and the chunk number: the whole message is these two."""
    dispatch.send(CHUNK_TASK, [batch_id, index], queue, task_id, f"(batch={batch_id!r}, chunk={index})")


def transaction(services: Services) -> Any:
    return services.db.session()


def db_retrying(call: Callable[[], Any]) -> Any:
    """A short database transaction, retried while the database is briefly unreachable or locked."""
    return call_retrying(call, *DB_ERRORS, seconds=30, attempts=6)


# --- the API side ------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRequestBody:
    """A checked ``POST /v1/batches`` body."""

    model: str
    version: str | None
    input_file_id: str
    metadata: dict[str, str]


def check_create_body(body: Any) -> BatchRequestBody:
    """Check a ``POST /v1/batches`` body; 400 naming each field that is wrong."""
    if not isinstance(body, dict):
        raise invalid([Problem("/", "the body must be a JSON object with model and input_file_id")])
    problems = [Problem(f"/{key}", "unknown field") for key in body if key not in CREATE_FIELDS]

    def text(name: str, required: bool, limit: int) -> str | None:
        value = body.get(name)
        if value is None:
            if required:
                problems.append(Problem(f"/{name}", "required"))
            return None
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            problems.append(Problem(f"/{name}", f"must be a string of 1 to {limit} characters"))
            return None
        return value

    model = text("model", True, 128)
    version = text("version", False, 64)
    input_file_id = text("input_file_id", True, 64)
    metadata, metadata_problems = registry.check_metadata(body.get("metadata"))
    problems += metadata_problems
    if problems or model is None or input_file_id is None:
        raise invalid(problems, "The batch is not valid")
    return BatchRequestBody(model, version, input_file_id, metadata)


def _same_request(batch: Batch, request: BatchRequestBody) -> bool:
    return (
        batch.model_name == request.model
        and (request.version is None or request.version == batch.model_version)
        and batch.input_file_id == request.input_file_id
        and dict(batch.meta or {}) == request.metadata
    )


def _replay(batch: Batch, request: BatchRequestBody) -> dict[str, Any]:
    if not _same_request(batch, request):
        raise PipelineError(
            422,
            "idempotency-key-reused",
            "Idempotency key already used",
            f"this Idempotency-Key created batch {batch.id} with other parameters; "
            "use a new key for a different batch",
        )
    return batch.as_dict()


def ready_gpus(services: Services, model: ResolvedModel) -> list[int]:
    """The configured GPUs where ``model`` is deployed and ready."""
    return [gpu for gpu in model.gpus if gpu in services.settings.gpus]


def create(
    services: Services, dispatch: Dispatch, tenant: str, body: Any, idempotency_key: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Create a batch and queue its planning; returns the batch object and whether it is new.

    With an ``idempotency_key`` already used by the tenant, the batch it created comes
    back (not new) when the parameters are the same, and 422 when they differ. A model
    that does not exist is a 404, one not deployed and ready a 409, an input file the
    tenant does not have a 400 naming ``/input_file_id``.
    """
    request = check_create_body(body)
    if idempotency_key is not None:
        try:
            registry.check_idempotency_key(idempotency_key)
        except ValueError as exc:
            raise invalid([Problem("Idempotency-Key", str(exc))], "Invalid Idempotency-Key header") from None
        with transaction(services) as session:
            existing = registry.batch_by_idempotency_key(session, tenant, idempotency_key)
            if existing is not None:
                return _replay(existing, request), False
    model = resolve_model(services, request.model, request.version)
    if not ready_gpus(services, model):
        raise PipelineError(
            409, "model-not-ready", "Model not ready", f"{model.name!r} is not ready on any configured GPU"
        )
    with transaction(services) as session:
        file = get_file(session, tenant, request.input_file_id)
        if file is None:
            raise invalid([Problem("/input_file_id", f"no file {request.input_file_id!r}")])
        if file.purpose != "batch_input":
            raise invalid(
                [Problem("/input_file_id", f"the file is a {file.purpose} file, not a batch_input")]
            )
        batch, created = registry.create_batch(
            session,
            tenant=tenant,
            model_id=model.id,
            model_name=model.name,
            model_version=model.version,
            input_file_id=file.id,
            metadata=request.metadata,
            idempotency_key=idempotency_key,
        )
        value = batch.as_dict() if created else _replay(batch, request)
        batch_id = batch.id
    if created:
        try:
            send_plan(dispatch, batch_id)
        except PipelineError:
            # Nobody has seen the batch yet: take it back, so a retry (same key) starts afresh.
            with transaction(services) as session:
                session.query(Batch).filter(Batch.id == batch_id).delete()
            raise
    return value, created


def not_found(batch_id: str) -> PipelineError:
    return PipelineError(404, "batch-not-found", "Batch not found", f"no batch {batch_id!r}")


def get(services: Services, tenant: str, batch_id: str) -> dict[str, Any]:
    """The tenant's batch; another tenant's or an unknown id is 404 alike."""
    with transaction(services) as session:
        batch = registry.get_batch(session, tenant, batch_id)
        if batch is None:
            raise not_found(batch_id)
        return batch.as_dict()


def list_page(
    services: Services, tenant: str, status: str | None, after: str | None, limit: int | None
) -> dict[str, Any]:
    """A page of the tenant's batches, newest first (``after``: the last id of the previous page)."""
    if status is not None and status not in BATCH_STATUSES:
        raise invalid([Problem("?status", f"must be one of {', '.join(BATCH_STATUSES)}")])
    with transaction(services) as session:
        try:
            page = registry.list_batches(session, tenant, status=status, after=after, limit=limit)
        except UnknownCursor:
            raise invalid([Problem("?after", f"no batch {after!r} to continue after")]) from None
        return page_body([b.as_dict() for b in page.items], page.total, page.has_more, clamp_limit(limit))


def page_body(items: list[dict[str, Any]], total: int, has_more: bool, limit: int) -> dict[str, Any]:
    """A cursor page as the API shows it."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
        "total": total,
        "limit": limit,
    }


def cancel(services: Services, dispatch: Dispatch, tenant: str, batch_id: str) -> dict[str, Any]:
    """Cancel the tenant's batch: chunks not yet done are cancelled (their queued tasks revoked), and
    the batch is finalized at once with what finished. Cancelling again changes nothing; a batch
    already finalizing or final is a 409."""
    with transaction(services) as session:
        try:
            cancellation = registry.cancel_batch(session, tenant, batch_id)
        except BatchStateError as exc:
            raise PipelineError(409, "batch-not-cancellable", "Batch cannot be cancelled", str(exc)) from None
        if cancellation is None:
            raise not_found(batch_id)
        value = cancellation.batch.as_dict()
    if cancellation.changed:
        if cancellation.revoke_task_ids:
            dispatch.revoke(cancellation.revoke_task_ids)
        try:
            send_finalize(dispatch, batch_id)
        except PipelineError as exc:  # the reaper finalizes batches left cancelling
            log.warning("batch %s: finalize not queued (%s); the reaper will", batch_id, exc.detail)
    return value


# --- shared by the stages ---------------------------------------------------------------


def fail_batch(services: Services, batch_id: str, code: str, message: str) -> bool:
    """The batch itself failed: ``failed`` with why (its parts are removed). False if already final."""
    with transaction(services) as session:
        batch = registry.batch_by_id(session, batch_id)
        if batch is None or not registry.mark_failed(session, batch_id, code, message):
            return False
        tenant = batch.tenant
    log.warning("batch %s failed: %s: %s", batch_id, code, message)
    remove_parts(services, tenant, batch_id)
    return True


def remove_parts(services: Services, tenant: str, batch_id: str) -> None:
    try:
        services.store.delete_prefix(registry.batch_prefix(tenant, batch_id))
    except StorageError as exc:  # leftover parts cost space, not correctness
        log.warning("batch %s: parts not removed: %s", batch_id, exc)


def assign_gpus(services: Services, candidates: Sequence[int], count: int) -> list[int]:
    """A GPU for each of ``count`` chunks: the least loaded each time (loads counted up locally),
    skipping GPUs whose breaker is open unless every one is (the chunks then wait for them)."""
    loads = dict(services.gpus.loads(candidates))
    chosen = []
    for _ in range(count):
        try:
            gpu = choose_gpu(candidates, loads)
        except NoRoute:
            gpu = min(candidates, key=lambda g: loads.get(g, GpuLoad()).load)
        current = loads.get(gpu, GpuLoad())
        loads[gpu] = GpuLoad(current.load + 1, current.open_for)
        chosen.append(gpu)
    return chosen
