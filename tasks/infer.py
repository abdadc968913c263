"""Sync inference: one request, run on the Triton of the GPU whose queue delivered it."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task, shared_task

from inferq.services import Services
from inferq.settings import gpu_of_queue
from inferq.tracing import span
from registry import stats
from tasks import breaker
from tasks.outcomes import load_payload
from tasks.runtime import services_for
from workers.triton import TritonError, TritonUnavailable

INFER_TASK = "inferq.infer"
log = logging.getLogger(__name__)


class InferenceFailed(Exception):
    """An inference that cannot succeed; ``code`` says why (stored as the task's error)."""

    def __init__(self, message: str, code: str = "inference_failed") -> None:
        # Both in args, so Celery's result backend rebuilds the same exception.
        super().__init__(message, code)
        self.message, self.code = message, code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def note_attempt(
    services: Services, model_id: str, gpu: int, latency_ms: float, ok: bool, reachable: bool
) -> None:
    """Statistics and the GPU's breaker for one attempt, in one Redis round trip; never raises.

    Only an unreachable Triton counts against the breaker: a request Triton refused
    says nothing about the GPU's health.
    """
    policy = breaker.BreakerPolicy(services.settings.breaker_threshold, services.settings.breaker_cooldown)
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            stats.add_inference(pipe, model_id, gpu, latency_ms, ok)
            breaker.add_outcome(pipe, gpu, reachable, policy)
            replies = pipe.execute()
        if not reachable and breaker.open_if_tripped(services.redis, gpu, int(replies[-2]), policy):
            log.warning("gpu %s: Triton unreachable %s times in a row; breaker open", gpu, replies[-2])
    except redis.RedisError as exc:
        log.warning("gpu %s: statistics and breaker not updated: %s", gpu, exc)


def run_inference(services: Services, request: dict[str, Any], gpu: int, task_id: str) -> dict[str, Any]:
    """Call ``gpu``'s Triton for ``request`` and shape the Open Inference Protocol answer."""
    inputs = request.get("inputs")
    if inputs is None:
        inputs = load_payload(services.redis, task_id)
    started = time.perf_counter()
    try:
        with span("triton.infer", model=request["triton_name"], gpu=gpu):
            outputs = services.triton(gpu).infer(
                request["triton_name"],
                inputs,
                outputs=request.get("outputs"),
                version=request.get("triton_version", ""),
                request_id=request.get("id") or task_id,
            )
    except TritonUnavailable:
        note_attempt(services, request["model_id"], gpu, 0.0, ok=False, reachable=False)
        raise
    except TritonError:
        note_attempt(services, request["model_id"], gpu, 0.0, ok=False, reachable=True)
        raise
    latency_ms = (time.perf_counter() - started) * 1000
    note_attempt(services, request["model_id"], gpu, latency_ms, ok=True, reachable=True)
    return {
        "model_name": request["model_name"],
        "model_version": request["model_version"],
        "id": request.get("id") or task_id,
        "outputs": outputs,
        "parameters": {"gpu": gpu, "latency_ms": round(latency_ms, 3)},
    }


@shared_task(
    bind=True,
    name=INFER_TASK,
    acks_late=True,
    autoretry_for=(TritonUnavailable,),
    max_retries=3,
    retry_backoff=0.5,
    retry_backoff_max=5,
    retry_jitter=True,
    soft_time_limit=60,
    time_limit=90,
)
def infer(self: Task, request: dict[str, Any]) -> dict[str, Any]:
    """Run one sync inference. Triton unreachable: retried 3 times, then fails as ``backend_unavailable``.

    Other Triton errors fail at once with their code; either way the waiting
    request is woken (see ``tasks.signals``) and ``GET /v1/tasks/{id}`` shows the error.
    """
    queue = (self.request.delivery_info or {}).get("routing_key", "")
    gpu = gpu_of_queue(queue)
    if gpu is None:
        raise InferenceFailed(f"inference must run on a gpu.N queue, not {queue!r}", "misrouted")
    services = services_for(self.app)
    try:
        result = run_inference(services, request, gpu, self.request.id)
    except TritonUnavailable as exc:
        if self.request.retries >= self.max_retries:
            raise InferenceFailed(str(exc), exc.code) from exc
        raise
    except TritonError as exc:
        raise InferenceFailed(str(exc), exc.code) from exc
    except LookupError as exc:
        raise InferenceFailed(str(exc), "inputs_expired") from exc
    result["parameters"].update(
        queue=queue,
        worker=self.request.hostname,
        cuda_visible_devices=services.settings.cuda_visible_devices,
    )
    return result
