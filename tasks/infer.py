"""Sync inference: one request, run on the Triton of the GPU whose queue delivered it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Task, shared_task

from inferq.settings import gpu_of_queue
from registry import stats
from tasks.runtime import Services, services_for
from workers.inference import InferAnswer, InferMessage, run_inference
from workers.triton import TritonError, TritonUnavailable

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
    """What one attempt did, for its statistics and its GPU's breaker (written when it ends)."""

    model_id: str
    gpu: int
    latency_ms: float
    ok: bool
    reachable: bool  # only an unreachable Triton counts against the breaker


def add_attempt(services: Services, pipe: Any, attempt: Attempt) -> None:
    """Queue the statistics and breaker update of ``attempt`` on ``pipe`` (the caller executes it)."""
    stats.add_inference(pipe, attempt.model_id, attempt.gpu, attempt.latency_ms, attempt.ok)
    services.gpus.add_attempt(pipe, attempt.gpu, attempt.reachable)


def settle_breaker(services: Services, attempt: Attempt, failures: Any) -> None:
    """Open the breaker if this attempt's failure tripped it (``failures``: the reply to the
    next-to-last command ``add_attempt`` queued, the failure count after it)."""
    if not attempt.reachable and services.gpus.open_if_tripped(attempt.gpu, int(failures)):
        log.warning("gpu %s: Triton unreachable %s times in a row; breaker open", attempt.gpu, failures)


def infer_on_gpu(
    services: Services, message: InferMessage, gpu: int, task_id: str, attempts: list[Attempt]
) -> InferAnswer:
    """Run ``message`` on ``gpu``'s Triton (inputs inline, or stashed under the task id).

    The attempt is appended to ``attempts``; whoever ends the task writes it.
    """
    inputs = message.get("inputs")
    if inputs is None:
        inputs = services.tasks.load_payload(task_id)
    request_id = message.get("id") or task_id
    model_id = message["model_id"]
    try:
        timed = run_inference(services.triton(gpu), message, inputs, gpu, request_id)
    except TritonUnavailable:
        attempts.append(Attempt(model_id, gpu, 0.0, ok=False, reachable=False))
        raise
    except TritonError:
        attempts.append(Attempt(model_id, gpu, 0.0, ok=False, reachable=True))
        raise
    attempts.append(Attempt(model_id, gpu, timed.latency_ms, ok=True, reachable=True))
    return timed.answer


@shared_task(
    bind=True,
    name=INFER_TASK,
    acks_late=True,
    ignore_result=True,  # the outcome is kept once, by tasks.bookkeeping (see tasks.signals)
    autoretry_for=(TritonUnavailable,),
    max_retries=3,
    retry_backoff=0.5,
    retry_backoff_max=5,
    retry_jitter=True,
    soft_time_limit=60,
    time_limit=90,
)
def infer(self: Task, message: InferMessage) -> InferAnswer:
    """Run one sync inference. Triton unreachable: retried 3 times, then fails as ``backend_unavailable``.

    Other Triton errors fail at once with their code; either way the waiting
    request is woken (see ``tasks.signals``) and ``GET /v1/tasks/{id}`` shows the error.
    """
    queue = (self.request.delivery_info or {}).get("routing_key", "")
    gpu = gpu_of_queue(queue)
    if gpu is None:
        raise InferenceFailed(f"inference must run on a gpu.N queue, not {queue!r}", "misrouted")
    services = services_for(self.app)
    # tasks.signals writes the attempt with the task's end, in the same Redis round trip.
    attempts: list[Attempt] = []
    self.request.inferq_attempts = attempts
    try:
        answer = infer_on_gpu(services, message, gpu, self.request.id, attempts)
    except TritonUnavailable as exc:
        if self.request.retries >= self.max_retries:
            raise InferenceFailed(str(exc), exc.code) from exc
        raise
    except TritonError as exc:
        raise InferenceFailed(str(exc), exc.code) from exc
    except LookupError as exc:
        raise InferenceFailed(str(exc), "inputs_expired") from exc
    answer["parameters"].update(
        queue=queue,
        worker=self.request.hostname,
        cuda_visible_devices=services.settings.cuda_visible_devices,
    )
    return answer
