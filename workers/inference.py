"""The worker side of sync inference: the task message it runs, the Triton call, the answers' shape.

One message carries one or more requests for the same model version (the API merges
requests that arrive while a publish for that model is under way). When the model
takes a variable first (batch) dimension, the requests' rows go to Triton in one call
and the outputs are split back; otherwise, or when Triton refuses the merged call,
each request is sent on its own, so one bad request fails alone.

Plain functions over a :class:`~workers.triton.TritonEndpoint`; the Celery task
(``tasks.infer``) adds retries, statistics and the wake-ups around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import numpy as np

from inferq.tensors import from_numpy, to_numpy
from inferq.tracing import span
from workers.triton import (
    TritonEndpoint,
    TritonError,
    TritonModelNotFound,
    TritonRejected,
    TritonUnavailable,
)


class Tensor(TypedDict):
    """An Open Inference Protocol tensor with flat ``data``."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferRequest(TypedDict):
    """One request of a message: its task id, the caller's id, and its inputs (absent: stashed)."""

    task_id: str
    id: str | None
    tenant: NotRequired[str]  # the owner, so the outcome's record is whole even if Redis lost it
    durable: NotRequired[bool]  # nobody waits for it: its outcome is kept in the object store too
    inputs: NotRequired[list[Tensor]]


class InferMessage(TypedDict):
    """The argument of ``inferq.infer``: one model version, the outputs asked for, the requests."""

    model_id: str
    model_name: str
    model_version: str
    triton_name: str
    triton_version: str
    outputs: list[str] | None
    batchable: bool  # every input and output has a variable first dimension
    gpus: list[int]  # where the model was ready when the message was sent (a retry may go to another)
    requests: list[InferRequest]
    deadline: NotRequired[float]  # epoch seconds: not started by then, the requests fail as expired


class InferAnswer(TypedDict):
    """The Open Inference Protocol response of one request, with where it ran."""

    model_name: str
    model_version: str
    id: str
    outputs: list[dict[str, Any]]
    parameters: dict[str, Any]


class RequestFailure(TypedDict):
    code: str
    message: str


@dataclass(frozen=True)
class MessageResult:
    """How each request of a message ended (same order), and the Triton time spent on them."""

    answers: list[InferAnswer | RequestFailure]
    latency_ms: float
    triton_calls: int


def is_failure(item: InferAnswer | RequestFailure) -> bool:
    return "code" in item


def run_message(
    endpoint: TritonEndpoint,
    message: InferMessage,
    inputs: Sequence[list[Tensor]],
    gpu: int,
) -> MessageResult:
    """Run every request of ``message`` (``inputs[i]`` for request ``i``) on ``endpoint``.

    Raises :class:`~workers.triton.TritonUnavailable` when Triton cannot be reached and
    :class:`~workers.triton.TritonModelNotFound` when it does not have the model (the whole
    message is worth sending elsewhere); a request Triton refuses fails alone.
    """
    started = time.perf_counter()
    requests = message["requests"]
    with span("triton.infer", model=message["triton_name"], gpu=gpu, requests=len(requests)):
        if len(requests) > 1 and message["batchable"]:
            try:
                answers = _merged(endpoint, message, inputs, gpu)
                return _result(answers, started, 1)
            except (TritonRejected, _NotSplittable):
                pass  # one of them is bad (or the outputs cannot be split): each on its own
        answers = [_single(endpoint, message, i, inputs[i], gpu) for i in range(len(requests))]
        return _result(answers, started, len(requests))


def _result(answers: list[InferAnswer | RequestFailure], started: float, calls: int) -> MessageResult:
    latency_ms = (time.perf_counter() - started) * 1000
    for answer in answers:
        if not is_failure(answer):
            answer["parameters"]["latency_ms"] = round(latency_ms, 3)  # type: ignore[typeddict-item]
    return MessageResult(answers, latency_ms, calls)


def _answer(
    message: InferMessage, index: int, outputs: list[dict[str, Any]], gpu: int, batch: int
) -> InferAnswer:
    request = message["requests"][index]
    return {
        "model_name": message["model_name"],
        "model_version": message["model_version"],
        "id": request["id"] or request["task_id"],
        "outputs": outputs,
        "parameters": {"gpu": gpu, "batch_size": batch},
    }


def _single(
    endpoint: TritonEndpoint, message: InferMessage, index: int, tensors: list[Tensor], gpu: int
) -> InferAnswer | RequestFailure:
    request = message["requests"][index]
    try:
        outputs = endpoint.infer(
            message["triton_name"],
            tensors,
            outputs=message["outputs"],
            version=message["triton_version"],
            request_id=request["id"] or request["task_id"],
        )
    except (TritonUnavailable, TritonModelNotFound):
        raise  # about this GPU, not this request: the whole message goes elsewhere or waits
    except TritonError as exc:
        return {"code": exc.code, "message": str(exc)}
    return _answer(message, index, outputs, gpu, 1)


class _NotSplittable(Exception):
    """Triton's merged answer cannot be split back by rows."""


def _merged(
    endpoint: TritonEndpoint, message: InferMessage, inputs: Sequence[list[Tensor]], gpu: int
) -> list[InferAnswer | RequestFailure]:
    names = [tensor["name"] for tensor in inputs[0]]
    rows = [int(tensors[0]["shape"][0]) for tensors in inputs]
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    for position, name in enumerate(names):
        parts: list[np.ndarray] = []
        for tensors in inputs:
            tensor = _by_name(tensors, name, position)
            if tensor is None or int(tensor["shape"][0]) != rows[len(parts)]:
                raise _NotSplittable(name)
            parts.append(to_numpy(tensor))
        if len({part.shape[1:] for part in parts}) != 1:
            raise _NotSplittable(name)
        arrays[name] = (inputs[0][position]["datatype"], np.concatenate(parts))
    first = message["requests"][0]
    answer = endpoint.infer_arrays(
        message["triton_name"],
        arrays,
        outputs=message["outputs"],
        version=message["triton_version"],
        request_id=first["id"] or first["task_id"],
    )
    total = sum(rows)
    if any(array.ndim == 0 or array.shape[0] != total for _, array in answer.values()):
        raise _NotSplittable("outputs")
    bounds = np.cumsum([0, *rows])
    split: Callable[[np.ndarray, int], np.ndarray] = lambda array, i: array[bounds[i] : bounds[i + 1]]  # noqa: E731
    return [
        _answer(
            message,
            i,
            [from_numpy(name, datatype, split(array, i)) for name, (datatype, array) in answer.items()],
            gpu,
            len(inputs),
        )
        for i in range(len(inputs))
    ]


def _by_name(tensors: list[Tensor], name: str, position: int) -> Tensor | None:
    if position < len(tensors) and tensors[position]["name"] == name:
        return tensors[position]
    return next((t for t in tensors if t["name"] == name), None)
