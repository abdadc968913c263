"""The request pipeline, plain Python: every entry point (``/v1``, ``/v2``, batch planning, the CLI)
runs a request through these steps, with explicit arguments and no web framework.

    resolve_model -> check_request -> route -> dispatch (record + publish) -> wait -> answer

Each step raises a :class:`PipelineError` with a stable ``code`` and the HTTP-ish
``status`` it maps to; the web layer turns those into problem+json, the CLI into
a message. Nothing here holds a database session while waiting.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from inferq.settings import gpu_queue
from registry.catalog import model_by_version, serving_versions
from registry.models import pick_version, ready_gpus
from registry.signatures import CheckedTensor, Problem, TensorSpec, check_inference_request, specs_from_json
from tasks.bookkeeping import BookkeepingUnavailable, Outcome, TaskRecord
from tasks.infer import INFER_TASK
from tasks.routing import NoRoute, route_request
from tasks.runtime import Services
from workers.inference import InferAnswer, InferMessage

MAX_ID_LENGTH = 256

# Error codes of failed inferences -> the status a waiting request gets.
ERROR_STATUS = {"invalid_request": 400, "backend_unavailable": 503, "model_not_loaded": 503}


class PipelineError(Exception):
    """A request the pipeline cannot take: ``status`` (HTTP), a stable ``code`` slug, a title, a detail."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str = "",
        problems: list[Problem] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.problems = problems or []
        self.retry_after = retry_after


def invalid(problems: list[Problem], title: str = "The request is not valid") -> PipelineError:
    detail = "; ".join(f"{p.pointer}: {p.detail}" for p in problems[:5])
    return PipelineError(400, "invalid-request", title, detail, problems=problems)


def unavailable(service: str, detail: str) -> PipelineError:
    """A backing service (broker, database, cache, object store, Triton) is down: 503."""
    return PipelineError(
        503, f"{service}-unavailable", f"The {service} is unavailable", detail, retry_after=5
    )


@dataclass(frozen=True)
class ResolvedModel:
    """The model version a request runs on, as the registry (through its cache) describes it."""

    id: str
    name: str
    version: str
    triton_name: str
    triton_version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    gpus: list[int]  # where it is deployed and ready

    @classmethod
    def from_record(cls, model: dict[str, Any]) -> ResolvedModel:
        return cls(
            id=model["id"],
            name=model["name"],
            version=model["version"],
            triton_name=model["triton_name"],
            triton_version=model["triton_version"],
            inputs=specs_from_json(model["inputs"]),
            outputs=specs_from_json(model["outputs"]),
            gpus=ready_gpus(model),
        )


def resolve_model(
    services: Services, name: str, version: str | None, rng: random.Random | None = None
) -> ResolvedModel:
    """The model version to run: the one named, or one of the ready versions (the newest, or by
    canary traffic weights). 404 when unknown, 409 when not deployed and ready."""
    if version is not None:
        model = model_by_version(services.db, services.cache, name, version)
        if model is None:
            raise PipelineError(
                404, "model-not-found", "Model not found", f"no model {name!r} version {version!r}"
            )
    else:
        found = serving_versions(services.db, services.cache, name)
        model = pick_version(found["versions"], rng)
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


def route(services: Services, model: ResolvedModel) -> int:
    """The GPU for one request of ``model``: 503 (with when to retry) when none can take it."""
    try:
        return route_request(services.gpus, model.gpus, services.settings.gpus)
    except NoRoute as exc:
        raise PipelineError(
            503, "no-gpu-available", "No GPU can serve this model", str(exc), retry_after=exc.retry_after
        ) from None


# Publishing gives up fast: a request must not hang on a broker that is down.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def publish(
    app: Celery,
    name: str,
    args: list[Any],
    queue: str,
    task_id: str | None = None,
    argsrepr: str | None = None,
) -> None:
    """Queue a task by name on ``queue``; a broker that cannot take it is a 503 ``broker-unavailable``.

    ``argsrepr`` is what Flower and the logs show of the arguments (never tensors).
    """
    try:
        app.send_task(
            name,
            args=args,
            task_id=task_id,
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY,
            argsrepr=argsrepr,
        )
    except OperationalError as exc:
        raise unavailable("broker", f"the task could not be queued: {exc}") from None


@dataclass(frozen=True)
class Dispatched:
    task_id: str
    gpu: int
    queue: str
    tenant: str
    waiting: bool  # counts against the tenant's waiting requests until ``wait`` returns


def infer_message(
    model: ResolvedModel, request: CheckedRequest, inline_max: int
) -> tuple[InferMessage, bytes | None]:
    """The task message for ``request``, and the inputs to stash when they are too large to carry."""
    message: InferMessage = {
        "model_id": model.id,
        "model_name": model.name,
        "model_version": model.version,
        "triton_name": model.triton_name,
        "triton_version": model.triton_version,
        "outputs": request.outputs,
        "id": request.id,
    }
    encoded_inputs: list[Any] = [tensor.as_dict() for tensor in request.inputs]
    # A JSON number takes at most ~24 bytes: only encode to measure when the inputs may be large.
    if sum(len(t.data) for t in request.inputs) * 24 > inline_max:
        encoded = json.dumps(encoded_inputs, separators=(",", ":")).encode()
        if len(encoded) > inline_max:
            return message, encoded  # the message carries a reference (its task id), not megabytes
    message["inputs"] = encoded_inputs
    return message, None


def dispatch(
    services: Services, app: Celery, model: ResolvedModel, request: CheckedRequest, tenant: str, waiting: bool
) -> Dispatched:
    """Route, record (one Redis round trip), then publish ``inferq.infer`` to the chosen GPU's queue.

    ``waiting``: the caller will wait for the outcome, which counts against the
    tenant's cap of waiting requests (429 beyond it).
    """
    settings = services.settings
    gpu = route(services, model)
    task_id = uuid.uuid4().hex
    message, stash = infer_message(model, request, settings.inline_payload_max)
    cap = settings.sync_waiting_per_tenant if waiting else 0
    try:
        recorded = services.tasks.open(task_id, tenant, model.name, model.version, stash, waiting_cap=cap)
    except BookkeepingUnavailable as exc:
        raise unavailable("cache", f"Redis cannot be reached: {exc}") from None
    if not recorded:
        raise PipelineError(
            429,
            "too-many-waiting",
            "Too many requests waiting",
            f"this tenant already has {cap} sync requests waiting for their result; "
            "retry later or send with 'Prefer: respond-async'",
            retry_after=1,
        )
    queue = gpu_queue(gpu)
    try:
        publish(app, INFER_TASK, [message], queue, task_id, argsrepr=f"({model.name}:{model.version})")
    except PipelineError:
        services.tasks.forget(task_id, tenant if waiting else None)
        raise
    return Dispatched(task_id, gpu, queue, tenant, waiting)


def wait(services: Services, dispatched: Dispatched, timeout: float) -> Outcome | None:
    """The outcome of a dispatched request if it ends within ``timeout`` seconds, else None (it runs on)."""
    try:
        return services.tasks.wait(dispatched.task_id, timeout)
    except BookkeepingUnavailable:
        return None  # the task still runs; the caller polls its status
    finally:
        if dispatched.waiting:
            services.tasks.stop_waiting(dispatched.tenant)


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
) -> InferResult:
    """The whole sync path: resolve, check, dispatch, wait up to ``timeout`` (0: do not wait)."""
    model = resolve_model(services, name, version)
    request = check_request(model, body)
    dispatched = dispatch(services, app, model, request, tenant, waiting=timeout > 0)
    if timeout <= 0:
        return InferResult(dispatched.task_id, model)
    outcome = wait(services, dispatched, timeout)
    if outcome is None:
        return InferResult(dispatched.task_id, model)
    return InferResult(dispatched.task_id, model, answer(dispatched.task_id, outcome))


def task_status(services: Services, tenant: str, task_id: str) -> TaskRecord:
    """A task of ``tenant``'s; another tenant's or an unknown id is 404 alike."""
    try:
        record = services.tasks.get(task_id)
    except BookkeepingUnavailable as exc:
        raise unavailable("cache", f"Redis cannot be reached: {exc}") from None
    if record is None or record.tenant != tenant:
        raise PipelineError(404, "task-not-found", "Task not found", f"no task {task_id!r}")
    return record
