"""The request pipeline, plain Python: every entry point (``/v1``, ``/v2``, batch planning, the CLI)
runs a request through these steps, with explicit arguments and no web framework.

    resolve_model -> check_request -> dispatch (record + route + publish) -> wait -> answer

Each step raises a :class:`PipelineError` with a stable ``code`` and the HTTP-ish
``status`` it maps to; the web layer turns those into problem+json, the CLI into
a message. Nothing here holds a database session while waiting.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from celery import Celery

from inferq.services import RedisError
from inferq.settings import gpu_queue
from registry.catalog import model_by_version_at, serving_versions_at
from registry.models import pick_version, ready_gpus
from registry.signatures import CheckedTensor, Problem, check_inference_request
from tasks import payloads, results
from tasks.bookkeeping import BookkeepingUnavailable, Outcome, TaskRecord
from tasks.broker import QueuedMessage, add_push, redis_message
from tasks.coalesce import Ticket
from tasks.errors import PipelineError, invalid, unavailable
from tasks.infer import INFER_TASK
from tasks.publish import publish
from tasks.resolved import ResolvedModel, StaleModel
from tasks.routing import NoRoute, candidates, choose_gpu
from tasks.runtime import Services
from workers.inference import InferAnswer, InferMessage, InferRequest, Tensor
from workers.storage import StorageError

MAX_ID_LENGTH = 256

# Error codes of failed inferences -> the status a waiting request gets.
log = logging.getLogger(__name__)
ERROR_STATUS = {
    "invalid_request": 400,
    "backend_unavailable": 503,
    "model_not_loaded": 503,
    "storage_unavailable": 503,
}


def resolve_model(
    services: Services,
    name: str,
    version: str | None,
    rng: random.Random | None = None,
    reuse: bool = False,
) -> ResolvedModel:
    """The model version to run: the one named, or one of the ready versions (the newest, or by
    canary traffic weights). 404 when unknown, 409 when not deployed and ready.

    ``reuse``: the caller dispatches the request (which checks the registry generation), so a
    model this process resolved before may be reused without a registry read."""
    memo = services.models
    if reuse:
        hit = memo.get(name, version)
        if hit is not None:
            at, known, resolved = hit
            picked = pick_version(known, rng)
            index = next(i for i, record in enumerate(known) if record is picked)
            return dataclasses.replace(resolved[index], reused_at=at)
    generation: str | None
    if version is not None:
        generation, model = model_by_version_at(services.db, services.cache, name, version)
        if model is None:
            raise PipelineError(
                404, "model-not-found", "Model not found", f"no model {name!r} version {version!r}"
            )
        records = [model]
    else:
        generation, found = serving_versions_at(services.db, services.cache, name)
        records = found["versions"]
        model = pick_version(records, rng)
        if model is None:
            if not found["exists"]:
                raise PipelineError(404, "model-not-found", "Model not found", f"no model named {name!r}")
            raise PipelineError(
                409, "model-not-ready", "Model not ready", f"no version of {name!r} is deployed"
            )
    if model["status"] != "ready" or not ready_gpus(model):
        raise PipelineError(
            409,
            "model-not-ready",
            "Model not ready",
            f"{name!r} version {model['version']!r} is {model['status']}, not deployed and ready",
        )
    if generation is not None:
        memo.put(name, version, generation, records)
    return ResolvedModel.from_record(model)


@dataclass(frozen=True)
class CheckedRequest:
    """A request body that matches its model's signature."""

    inputs: list[CheckedTensor]
    outputs: list[str] | None
    id: str | None


def check_request(model: ResolvedModel, body: Any, pointer: str = "") -> CheckedRequest:
    """Check an Open Inference Protocol body against ``model``'s signature; 400 naming each problem."""
    inputs, outputs, problems = check_inference_request(body, model.inputs, model.outputs, pointer)
    if problems:
        raise invalid(problems, "The inference request does not match the model's signature")
    request_id = body.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH):
        raise invalid([Problem(f"{pointer}/id", f"must be a string of at most {MAX_ID_LENGTH} characters")])
    return CheckedRequest(inputs, outputs, request_id)


@dataclass(frozen=True)
class Dispatched:
    task_id: str
    tenant: str
    waiting: bool  # counts against the tenant's waiting requests until ``wait`` returns
    batch_size: int = 1  # requests that went to the worker in the same message
    ticket: Ticket | None = None  # the coalescer's slot, given back by ``wait``
    key: Hashable = None
    push: tuple[QueuedMessage, ...] = ()  # its message, pushed by ``wait`` (see ``publish_requests``)


# A check the caller makes in the record round trip (the API's rate limit): it queues its commands on
# the pipeline and returns how to read its verdict from the replies (the error to fail with, or None).
# Replies come with errors in place: the verdict resolves its own (writing the value in their place).
Admit = Callable[[Any], Callable[[list[Any]], BaseException | None]]


@dataclass(frozen=True)
class Pending:
    """One checked request on its way to a GPU queue."""

    task_id: str
    tenant: str
    id: str | None
    inputs: list[Tensor] | None  # None: stashed (``stash``, in the object store: ``tasks.payloads``)
    stash: bytes | None
    waiting: bool
    admit: Admit | None = None


def _size_bound(tensor: CheckedTensor) -> int:
    if tensor.datatype == "BYTES":
        return sum(len(str(value)) * 6 + 2 for value in tensor.data)  # escapes at most \uXXXX
    return len(tensor.data) * 24


def prepare(
    request: CheckedRequest, tenant: str, waiting: bool, inline_max: int, admit: Admit | None = None
) -> Pending:
    """A request's task id, and its inputs inline, or encoded to stash when they are too large to carry."""
    inputs: Any = [tensor.as_dict() for tensor in request.inputs]
    stash = None
    # A JSON number takes at most ~24 bytes, a string (BYTES) its length and quoting: only encode to
    # measure when the inputs may be large.
    if sum(_size_bound(t) for t in request.inputs) > inline_max:
        encoded = json.dumps(inputs, separators=(",", ":")).encode()
        if len(encoded) > inline_max:
            inputs, stash = None, encoded
    return Pending(uuid.uuid4().hex, tenant, request.id, inputs, stash, waiting, admit)


def is_batchable(model: ResolvedModel) -> bool:
    """Whether requests' rows can share one Triton call (every input and output has a variable
    first dimension)."""
    return all(spec.shape and spec.shape[0] == -1 for spec in [*model.inputs, *model.outputs])


def infer_message(model: ResolvedModel, outputs: list[str] | None, batch: Sequence[Pending]) -> InferMessage:
    """The task message of ``batch`` (requests of one model version asking for the same outputs)."""
    requests: list[InferRequest] = []
    for pending in batch:
        request: InferRequest = {"task_id": pending.task_id, "id": pending.id, "tenant": pending.tenant}
        if not pending.waiting:
            request["durable"] = True  # its owner polls later: the outcome is kept (tasks.results)
        if pending.inputs is not None:
            request["inputs"] = pending.inputs
        requests.append(request)
    return {
        "model_id": model.id,
        "model_name": model.name,
        "model_version": model.version,
        "triton_name": model.triton_name,
        "triton_version": model.triton_version,
        "outputs": outputs,
        "batchable": is_batchable(model),
        "gpus": list(model.gpus),
        "requests": requests,
    }


def publish_requests(
    services: Services,
    app: Celery,
    model: ResolvedModel,
    outputs: list[str] | None,
    batch: Sequence[Pending],
    later: list[QueuedMessage] | None = None,
) -> list[BaseException | None]:
    """Record ``batch`` and read the GPUs' loads in one Redis round trip, route, then publish one message.

    Where the broker is the same Redis (``Services.pushes_tasks``) the message is pushed by this
    process's client; ``later``: the caller waits for ``batch``'s one request right after, and
    takes the message to push in the wait's round trip (one round trip less). A message of several
    requests goes out at once: the others wait on it too.

    Returns, per request, the error it failed with (what its ``admit`` check said, 429 over its
    tenant's waiting cap, 503 when no GPU can take it, the broker will not, or its large inputs
    could not be stored), or None once it is queued. Large inputs are stored after those checks
    and before the publish: a request refused costs no write, and one store failure fails only
    its own request.
    """
    settings = services.settings
    book = services.tasks
    try:
        gpus = candidates(model.gpus, settings.gpus)
    except NoRoute as exc:
        return [no_gpu(exc)] * len(batch)  # nothing recorded yet
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            verdicts = [p.admit(pipe) if p.admit is not None else None for p in batch]
            waits = [
                book.add_open(pipe, p.task_id, p.tenant, model.name, model.version, p.waiting) for p in batch
            ]
            parse_loads = services.gpus.add_loads(pipe, gpus, model.id)
            registry_generation = services.cache.add_generation(pipe)
            replies = pipe.execute(raise_on_error=False)  # an admit check reads its own errors
    except RedisError as exc:
        return [unavailable("cache", f"Redis cannot be reached: {exc}")] * len(batch)
    refusals = [verdict(replies) if verdict is not None else None for verdict in verdicts]
    failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
    if failed is not None:
        for pending in batch:
            book.forget(pending.task_id, pending.tenant if pending.waiting else None)
        return [unavailable("cache", f"Redis refused a command: {failed}")] * len(batch)
    generation = registry_generation(replies)
    services.models.seen(generation)
    if model.reused_at is not None and model.reused_at != generation:
        for pending in batch:  # resolved from a registry that has changed since: nothing goes out
            book.forget(pending.task_id, pending.tenant if pending.waiting else None)
        return [refused or StaleModel() for refused in refusals]
    cap = settings.sync_waiting_per_tenant
    errors: list[BaseException | None] = []
    accepted: list[Pending] = []
    for pending, at, refused in zip(batch, waits, refusals, strict=True):
        if refused is not None:
            book.forget(pending.task_id, pending.tenant if pending.waiting else None)
            errors.append(refused)
        elif book.over_cap(replies, at, cap):
            book.forget(pending.task_id, pending.tenant)
            errors.append(
                PipelineError(
                    429,
                    "too-many-waiting",
                    "Too many requests waiting",
                    f"this tenant already has {cap} sync requests waiting for their result; "
                    "retry later or send with 'Prefer: respond-async'",
                    retry_after=1,
                )
            )
        elif pending.stash is not None and not stash(services, pending):
            book.forget(pending.task_id, pending.tenant if pending.waiting else None)
            errors.append(unavailable("storage", "the request's inputs could not be stored; retry later"))
        else:
            errors.append(None)
            accepted.append(pending)
    if not accepted:
        return errors
    try:
        gpu = choose_gpu(gpus, parse_loads(replies), claim_trial=services.gpus.claim_trial)
        message = infer_message(model, outputs, accepted)
        where = f"({model.name}:{model.version}, {len(accepted)} request{'s' if len(accepted) > 1 else ''})"
        deadline = datetime.now(UTC) + timedelta(seconds=settings.sync_deadline)
        message["deadline"] = deadline.timestamp()
        queue, task_id = gpu_queue(gpu), accepted[0].task_id
        if not services.pushes_tasks:
            publish(app, INFER_TASK, [message], queue, task_id, where, deadline)
        else:
            queued = redis_message(app, INFER_TASK, [message], queue, task_id, where, deadline)
            if later is not None and len(batch) == 1 and accepted[0].waiting:
                later.append(queued)  # pushed in the wait's round trip (see ``wait``)
            else:
                push_now(services, queued)
    except (NoRoute, PipelineError) as exc:
        failure = exc if isinstance(exc, PipelineError) else no_gpu(exc)
        for pending in accepted:
            book.forget(pending.task_id, pending.tenant if pending.waiting else None)
        payloads.drop(services.quick_store, [p.task_id for p in accepted if p.stash is not None])
        return [failure if error is None else error for error in errors]
    return errors


def stash(services: Services, pending: Pending) -> bool:
    """Store the large inputs of ``pending`` in the object store (``tasks.payloads``); False when
    the store would not take them (logged: the client is not shown the store's address)."""
    assert pending.stash is not None
    try:
        payloads.put(services.quick_store, pending.task_id, pending.stash)
    except StorageError as exc:
        log.warning("task %s: inputs not stored: %s", pending.task_id, exc)
        payloads.drop(services.quick_store, [pending.task_id])
        return False
    return True


def push_now(services: Services, queued: QueuedMessage) -> None:
    """Push a task message to its GPU queue now; a Redis that will not take it is a 503."""
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            add_push(pipe, queued)
            pipe.execute()
    except RedisError as exc:
        raise unavailable("broker", f"the task could not be queued: {exc}") from None


def no_gpu(exc: NoRoute) -> PipelineError:
    return PipelineError(
        503, "no-gpu-available", "No GPU can serve this model", str(exc), retry_after=exc.retry_after
    )


def dispatch(
    services: Services,
    app: Celery,
    model: ResolvedModel,
    request: CheckedRequest,
    tenant: str,
    waiting: bool,
    admit: Admit | None = None,
    wait_next: bool = False,
) -> Dispatched:
    """Record the request and publish it to the least loaded GPU where ``model`` is ready.

    Requests for the same model and outputs that arrive while a publish is under way
    go out together in the next message (see ``tasks.coalesce``). ``waiting``: the caller
    will wait for the outcome, which counts against the tenant's cap (429 beyond it).
    ``admit``: a check made in the record round trip (see :data:`Admit`). ``wait_next``: the
    caller calls :func:`wait` next, whatever happens, which may then push the message.
    """
    pending = prepare(request, tenant, waiting, services.settings.inline_payload_max, admit)
    outputs = request.outputs
    later: list[QueuedMessage] | None = [] if wait_next and waiting else None

    def flush(batch: Sequence[Pending]) -> list[BaseException | None]:
        return publish_requests(services, app, model, outputs, batch, later)

    key = (model.id, tuple(outputs or ()))
    ticket = services.coalescer.submit(key, pending, flush, waits=waiting)
    push = tuple(later or ())
    return Dispatched(pending.task_id, tenant, waiting, ticket.batch_size, ticket, key, push)


def wait(services: Services, dispatched: Dispatched, timeout: float) -> Outcome | None:
    """The outcome of a dispatched request if it ends within ``timeout`` seconds, else None (it runs on).

    A message left to push (``Dispatched.push``) goes in the same round trip as the wait; when
    Redis fails that round trip the request is a 503 (it may have gone out: then it runs, and its
    outcome is kept in its record, which the worker writes whole again)."""
    release = dispatched.tenant if dispatched.waiting else None
    try:
        return services.tasks.wait(
            dispatched.task_id,
            timeout,
            release=release,
            first=[partial(add_push, message=message) for message in dispatched.push],
        )
    except BookkeepingUnavailable as exc:
        if dispatched.push:
            services.tasks.forget(dispatched.task_id)
            raise unavailable("broker", f"the task could not be queued: {exc}") from None
        return None  # the task still runs; the caller polls its status
    finally:
        if dispatched.ticket is not None:
            services.coalescer.done(dispatched.key, dispatched.ticket)


def answer(task_id: str, outcome: Outcome) -> InferAnswer:
    """The inference answer of a finished task, or the :class:`PipelineError` its failure maps to."""
    if outcome["state"] == "SUCCESS":
        result: Any = outcome["result"]
        answer: InferAnswer = result
        return answer
    error = outcome["error"]
    raise PipelineError(
        ERROR_STATUS.get(error["code"], 500),
        error["code"].replace("_", "-"),
        "Inference failed",
        f"task {task_id}: {error['message']}",
    )


@dataclass(frozen=True)
class InferResult:
    """A sync request's end: its answer, or (not done within the wait) the task to poll."""

    task_id: str
    model: ResolvedModel
    answer: InferAnswer | None = None


def infer(
    services: Services,
    app: Celery,
    tenant: str,
    name: str,
    version: str | None,
    body: Any,
    timeout: float,
    admit: Admit | None = None,
) -> InferResult:
    """The whole sync path: resolve, check, dispatch, wait up to ``timeout`` (0: do not wait).

    ``admit``: a check made in the record round trip (the API's rate limit); it is queued
    once, also when the request is dispatched again after a registry change."""
    model = resolve_model(services, name, version, reuse=True)
    request = check_request(model, body)
    try:
        dispatched = dispatch(services, app, model, request, tenant, timeout > 0, admit, wait_next=True)
    except StaleModel:  # the registry changed since this process resolved the model: read it again
        model = resolve_model(services, name, version)
        request = check_request(model, body)
        dispatched = dispatch(services, app, model, request, tenant, timeout > 0, wait_next=True)
    if timeout <= 0:
        return InferResult(dispatched.task_id, model)
    outcome = wait(services, dispatched, timeout)
    if outcome is None:
        # The client is told to poll: from now on the outcome is kept like an async one. If it
        # arrived meanwhile, it is the answer after all.
        outcome = services.tasks.mark_polled(dispatched.task_id)
    if outcome is None:
        return InferResult(dispatched.task_id, model)
    return InferResult(dispatched.task_id, model, answer(dispatched.task_id, outcome))


def kept_record(services: Services, task_id: str) -> TaskRecord | None:
    """The outcome kept in the object store for a request nobody waited for (``tasks.results``);
    an object store that does not answer is a 503, not a 404 a client would take as final."""
    try:
        return results.find(services.quick_store, task_id)
    except StorageError as exc:
        log.warning("task %s: kept outcome unreadable: %s", task_id, exc)
        raise unavailable("storage", "the task's record cannot be read now; retry later") from None


def task_status(services: Services, tenant: str, task_id: str) -> TaskRecord:
    """A task of ``tenant``'s; another tenant's or an unknown id is 404 alike."""
    try:
        record = services.tasks.get(task_id)
    except BookkeepingUnavailable as exc:
        try:
            record = kept_record(services, task_id)
        except PipelineError:
            record = None
        if record is None:
            raise unavailable("cache", f"Redis cannot be reached: {exc}") from None
    if record is None:
        record = kept_record(services, task_id)  # Redis lost it: kept if nobody waited for it
    if record is None or record.tenant != tenant:
        raise PipelineError(404, "task-not-found", "Task not found", f"no task {task_id!r}")
    return record
