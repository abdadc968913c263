"""The worker side of one inference: the task message it runs, the Triton call, the answer's shape.

Plain functions over a :class:`~workers.triton.TritonEndpoint`; the Celery task
(``tasks.infer``) adds retries, statistics and the wake-up around them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from inferq.tracing import span
from workers.triton import TritonEndpoint


class Tensor(TypedDict):
    """An Open Inference Protocol tensor with flat ``data``."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferMessage(TypedDict):
    """The argument of ``inferq.infer``: which model, and the inputs inline or stashed (then absent)."""

    model_id: str
    model_name: str
    model_version: str
    triton_name: str
    triton_version: str
    outputs: list[str] | None
    id: str | None
    inputs: NotRequired[list[Tensor]]


class InferAnswer(TypedDict):
    """The Open Inference Protocol response of one inference, with where it ran."""

    model_name: str
    model_version: str
    id: str
    outputs: list[dict[str, Any]]
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Timed:
    answer: InferAnswer
    latency_ms: float


def run_inference(
    endpoint: TritonEndpoint, message: InferMessage, inputs: list[Tensor], gpu: int, request_id: str
) -> Timed:
    """Call ``endpoint`` (GPU ``gpu``'s Triton) for ``message`` and shape the answer.

    Raises the :class:`~workers.triton.TritonError` subclasses of the boundary.
    """
    started = time.perf_counter()
    with span("triton.infer", model=message["triton_name"], gpu=gpu):
        outputs = endpoint.infer(
            message["triton_name"],
            inputs,
            outputs=message.get("outputs"),
            version=message.get("triton_version", ""),
            request_id=request_id,
        )
    latency_ms = (time.perf_counter() - started) * 1000
    answer: InferAnswer = {
        "model_name": message["model_name"],
        "model_version": message["model_version"],
        "id": request_id,
        "outputs": outputs,
        "parameters": {"gpu": gpu, "latency_ms": round(latency_ms, 3)},
    }
    return Timed(answer, latency_ms)
