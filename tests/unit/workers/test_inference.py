"""Running a message of several requests: one merged Triton call split back by rows, or each alone.

Triton is replaced by a fake endpoint here (pure logic); the real merged call runs in the
integration tests against the real Triton.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workers.inference import InferMessage, Tensor, is_failure, run_message
from workers.triton import TritonRejected


class FakeTriton:
    """Doubles each input row as 'label'; refuses any call holding a negative value."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _run(self, array: np.ndarray) -> np.ndarray:
        if (array < 0).any():
            raise TritonRejected("negative input")
        return array.sum(axis=1) * 2

    def infer_arrays(self, model: str, inputs: Mapping[str, tuple[str, np.ndarray]], **_: Any) -> Any:
        array = inputs["x"][1]
        self.calls.append(array.shape[0])
        return {"label": ("FP32", self._run(array))}

    def infer(self, model: str, inputs: Sequence[Mapping[str, Any]], **_: Any) -> list[dict[str, Any]]:
        array = np.asarray(inputs[0]["data"], dtype=np.float32).reshape(inputs[0]["shape"])
        self.calls.append(array.shape[0])
        out = self._run(array)
        return [{"name": "label", "datatype": "FP32", "shape": list(out.shape), "data": out.tolist()}]


def message(count: int, batchable: bool = True) -> InferMessage:
    return {
        "model_id": "m",
        "model_name": "sum",
        "model_version": "1",
        "triton_name": "sum",
        "triton_version": "1",
        "outputs": None,
        "batchable": batchable,
        "requests": [{"task_id": f"t{i}", "id": None} for i in range(count)],
    }


def tensor(rows: list[list[float]]) -> list[Tensor]:
    return [{"name": "x", "datatype": "FP32", "shape": [len(rows), 2], "data": [v for r in rows for v in r]}]


def test_requests_share_one_call_and_get_their_own_rows_back() -> None:
    triton = FakeTriton()
    inputs = [tensor([[1, 1]]), tensor([[2, 2], [3, 3]]), tensor([[4, 4]])]
    result = run_message(triton, message(3), inputs, gpu=0)  # type: ignore[arg-type]
    assert triton.calls == [4] and result.triton_calls == 1
    labels = [answer["outputs"][0]["data"] for answer in result.answers]  # type: ignore[typeddict-item]
    assert labels == [[4.0], [8.0, 12.0], [16.0]]
    assert [answer["id"] for answer in result.answers] == ["t0", "t1", "t2"]  # type: ignore[typeddict-item]
    assert all(answer["parameters"]["batch_size"] == 3 for answer in result.answers)  # type: ignore[typeddict-item]


def test_a_refused_merged_call_falls_back_so_one_bad_request_fails_alone() -> None:
    triton = FakeTriton()
    inputs = [tensor([[1, 1]]), tensor([[-1, 0]]), tensor([[2, 2]])]
    result = run_message(triton, message(3), inputs, gpu=1)  # type: ignore[arg-type]
    assert triton.calls == [3, 1, 1, 1]
    assert [is_failure(a) for a in result.answers] == [False, True, False]
    assert result.answers[1] == {"code": "invalid_request", "message": "negative input"}


def test_a_model_without_a_batch_dimension_runs_each_request_alone() -> None:
    triton = FakeTriton()
    result = run_message(triton, message(2, batchable=False), [tensor([[1, 1]]), tensor([[1, 2]])], gpu=0)  # type: ignore[arg-type]
    assert triton.calls == [1, 1] and result.triton_calls == 2
