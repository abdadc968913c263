"""Sync inference: the requests of one message, run on the Triton of the GPU whose queue delivered it."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Task, shared_task

from inferq.services import RedisError
from inferq.settings import gpu_of_queue, gpu_queue
from registry import stats
from tasks import payloads, sidecar
from tasks.bookkeeping import Outcome
from tasks.publish import delivered_queue, publish
from tasks.routing import NoRoute, candidates, choose_gpu
from tasks.runtime import Services, services_for
from workers.inference import InferMessage, MessageResult, Tensor, is_failure, run_message
from workers.storage import StorageUnavailable
from workers.triton import TritonModelNotFound, TritonUnavailable

INFER_TASK = "inferq.infer"
log = logging.getLogger(__name__)


class InferenceFailed(Exception):
    """An inference that cannot succeed; ``code`` says why (stored as the task's error)."""

    def __init__(self, message: str, code: str = "inference_failed") -> None:
        # Both in args, so the exception pickles and rebuilds the same.
        super().__init__(message, code)
        self.message, self.code = message, code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Attempt:
    """What one attempt did, for statistics and its GPU's breaker (written when the task ends)."""

    model_id: str
    gpu: int
    latency_ms: float
    ok: int  # requests answered
    failed: int  # requests that failed
    reachable: bool  # only an unreachable Triton counts against the breaker
    final: bool = True  # the requests end here (False: they are tried again, here or elsewhere)


def add_attempt(services: Services, pipe: Any, attempt: Attempt) -> None:
    """Queue the statistics and breaker update of ``attempt`` on ``pipe`` (the caller executes it)."""
    stats.add_attempts(pipe, attempt.model_id, attempt.gpu, attempt.ok + attempt.failed, attempt.failed)
    if attempt.ok:
        stats.add_inference(pipe, attempt.model_id, attempt.gpu, attempt.latency_ms, True, attempt.ok)
    if attempt.failed and attempt.final:
        stats.add_inference(pipe, attempt.model_id, attempt.gpu, 0.0, False, attempt.failed)
    services.gpus.add_attempt(pipe, attempt.gpu, attempt.reachable)


def add_tenant_outcomes(
    pipe: Any, message: InferMessage, outcomes: Sequence[Outcome] | None, latency_ms: float
) -> None:
    """Queue each tenant's counts of the requests of ``message`` that end here (``outcomes`` in
    request order; None: all failed) on ``pipe``: a tenant key reads these figures, not the GPUs'."""
    per_tenant: dict[str, list[int]] = {}
    for index, request in enumerate(message["requests"]):
        tenant = request.get("tenant")
        if tenant:
            ok = outcomes is not None and outcomes[index]["state"] == "SUCCESS"
            per_tenant.setdefault(tenant, [0, 0])[0 if ok else 1] += 1
    for tenant, (answered, failed) in per_tenant.items():
        if answered:
            stats.add_tenant_inference(pipe, message["model_id"], tenant, latency_ms, True, answered)
        if failed:
            stats.add_tenant_inference(pipe, message["model_id"], tenant, 0.0, False, failed)


def settle_breaker(services: Services, attempt: Attempt, failures: Any) -> None:
    """Open the breaker if this attempt's failure tripped it (``failures``: the reply to the
    next-to-last command ``add_attempt`` queued, the failure count after it)."""
    if not attempt.reachable and services.gpus.open_if_tripped(attempt.gpu, int(failures)):
        log.warning("gpu %s: Triton unreachable %s times in a row; breaker open", attempt.gpu, failures)


def load_inputs(services: Services, message: InferMessage) -> list[list[Tensor]]:
    """Each request's inputs: inline in the message, or in the object store under its task id."""
    found = []
    for request in message["requests"]:
        inputs = request.get("inputs")
        found.append(
            inputs if inputs is not None else payloads.load(services.quick_store, request["task_id"])
        )
    return found


def infer_on_gpu(
    services: Services, message: InferMessage, gpu: int, attempts: list[Attempt], heal_missing: bool = True
) -> MessageResult:
    """Run ``message`` on ``gpu``'s Triton; the attempt is appended to ``attempts`` (written at the end).

    A model missing from a sidecar Triton that should have it is loaded there, and the message
    run again (``tasks.sidecar``)."""
    model_id = message["model_id"]
    try:
        result = run_message(services.triton(gpu), message, load_inputs(services, message), gpu)
    except TritonUnavailable:
        attempts.append(
            Attempt(model_id, gpu, 0.0, 0, len(message["requests"]), reachable=False, final=False)
        )
        raise
    except TritonModelNotFound:
        if heal_missing and sidecar.heal(services, gpu, message["triton_name"]):
            return infer_on_gpu(services, message, gpu, attempts, heal_missing=False)
        attempts.append(Attempt(model_id, gpu, 0.0, 0, len(message["requests"]), reachable=True, final=False))
        raise
    failed = sum(1 for answer in result.answers if is_failure(answer))
    attempts.append(Attempt(model_id, gpu, result.latency_ms, len(result.answers) - failed, failed, True))
    return result


def refuse_poison(services: Services, task_id: str, attempt: int) -> None:
    """A message given back because its worker died is run again, but not forever: past
    ``INFERQ_MAX_REDELIVERIES`` it fails as ``worker_lost`` instead of killing the next worker."""
    try:
        deaths = services.tasks.count_redelivery(task_id, attempt)
    except RedisError:
        return  # cannot tell: run it
    if deaths > services.settings.max_redeliveries:
        raise InferenceFailed(
            f"the workers running this task died {deaths} times; it is not run again", "worker_lost"
        )


def reroute_target(services: Services, message: InferMessage, failed_gpu: int) -> int | None:
    """Another GPU where the model is ready and that can take the message now, or None."""
    try:
        others = candidates(message.get("gpus", []), services.settings.gpus, exclude=failed_gpu)
        loads = services.gpus.loads(others, message["model_id"])
        return choose_gpu(others, loads, claim_trial=services.gpus.claim_trial)
    except NoRoute:
        return None


def back_off(retries: int) -> float:
    """Seconds before attempt ``retries + 1`` on the same GPU: 1, 1, 2, 4, at most 5 (whole
    seconds: RabbitMQ's delayed delivery counts no less)."""
    return float(max(1, min(5, int(0.5 * 2**retries))))


def send_again(task: Task, message: InferMessage, gpu: int, countdown: float | None = None) -> None:
    """Publish ``message`` to ``gpu``'s queue as the next attempt of ``task`` (same id and deadline),
    after ``countdown`` seconds if given."""
    request = task.request
    expires = datetime.fromisoformat(request.expires) if isinstance(request.expires, str) else request.expires
    size = len(message["requests"])
    publish(
        task.app,
        INFER_TASK,
        [message],
        gpu_queue(gpu),
        request.id,
        f"({message['model_name']}:{message['model_version']}, {size} request{'s' if size > 1 else ''})",
        expires,
        retries=request.retries + 1,
        countdown=countdown,
    )
    log.info("task %s: sent to gpu.%s after a failed attempt on %s", request.id, gpu, request.delivery_info)


@shared_task(
    bind=True,
    name=INFER_TASK,
    acks_late=True,
    ignore_result=True,  # each request's outcome is kept once, by tasks.bookkeeping (see tasks.signals)
    max_retries=3,  # attempts after the first, counted across GPUs
    soft_time_limit=60,
    time_limit=90,
)
def infer(self: Task, message: InferMessage) -> int:
    """Run the requests of one message; returns how many were answered.

    Each request's outcome goes to ``tasks.signals`` on the task's request (the return
    value is kept small: Celery renders it into the task-succeeded event).

    Triton unreachable, or without the model: the message goes to another GPU where the
    model is ready and whose breaker lets it through (or, when there is none, back to
    this GPU after a back-off); after 3 attempts every request fails as
    ``backend_unavailable`` (or ``model_not_loaded``). A request Triton refuses fails
    alone with its code. Whatever happens, each waiting request is woken (see
    ``tasks.signals``) and ``GET /v1/tasks/{id}`` shows its end.
    """
    queue = delivered_queue(self.request.delivery_info)
    gpu = gpu_of_queue(queue)
    if gpu is None:
        raise InferenceFailed(f"inference must run on a gpu.N queue, not {queue!r}", "misrouted")
    deadline = message.get("deadline")
    if deadline is not None and time.time() > deadline:
        raise InferenceFailed("the inference was not started before its deadline", "expired")
    services = services_for(self.app)
    if (self.request.delivery_info or {}).get("redelivered"):
        refuse_poison(services, self.request.id, self.request.retries)
    # tasks.signals writes the attempt with the task's end, in the same Redis round trip.
    attempts: list[Attempt] = []
    self.request.inferq_attempts = attempts
    try:
        result = infer_on_gpu(services, message, gpu, attempts)
    except (TritonUnavailable, TritonModelNotFound) as exc:
        if isinstance(exc, TritonModelNotFound):
            services.gpus.mark_missing(message["model_id"], gpu)
        if self.request.retries >= self.max_retries:
            attempts[-1] = dataclasses.replace(attempts[-1], final=True)  # the requests end here
            raise InferenceFailed(str(exc), exc.code) from exc
        target = reroute_target(services, message, gpu)
        if target is not None:
            send_again(self, message, target)
            self.request.inferq_rerouted = target
            return 0
        if isinstance(exc, TritonModelNotFound):
            attempts[-1] = dataclasses.replace(attempts[-1], final=True)
            raise InferenceFailed(str(exc), exc.code) from exc
        # No other GPU: this one again after a back-off. Published to its queue by name (not
        # Celery's retry, which on quorum queues would lose the GPU queue to the default route).
        send_again(self, message, gpu, countdown=back_off(self.request.retries))
        self.request.inferq_rerouted = gpu
        return 0
    except StorageUnavailable as exc:  # the object store holding large inputs: try again later
        log.warning("task %s: inputs unreadable on gpu.%s: %s", self.request.id, gpu, exc)
        if self.request.retries >= self.max_retries:
            message_text = "the object store holding the inputs is unavailable"
            raise InferenceFailed(message_text, "storage_unavailable") from exc
        send_again(self, message, gpu, countdown=back_off(self.request.retries))
        self.request.inferq_rerouted = gpu
        return 0
    except LookupError as exc:
        raise InferenceFailed(str(exc), "inputs_expired") from exc
    where = {
        "queue": queue,
        "worker": self.request.hostname,
        "cuda_visible_devices": services.settings.cuda_visible_devices,
    }
    outcomes: list[Outcome] = []
    self.request.inferq_outcomes = outcomes
    for answer in result.answers:
        if is_failure(answer):
            outcomes.append({"state": "FAILURE", "error": answer})  # type: ignore[typeddict-item]
        else:
            answer["parameters"].update(where)  # type: ignore[typeddict-item]
            outcomes.append({"state": "SUCCESS", "result": answer})  # type: ignore[typeddict-item]
    return len(outcomes) - sum(1 for outcome in outcomes if outcome["state"] == "FAILURE")
