"""Micro-batches of batch lines: one merged binary call, outputs split by rows, per-line fallback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from registry.signatures import CheckedTensor
from workers.batch_inference import TritonModel, infer_lines, merge_key, rows
from workers.triton import TritonModelNotFound, TritonRejected, TritonUnavailable

MODEL = TritonModel("digits", "1", batchable=True)


def line(*values: float, name: str = "input", width: int = 2) -> list[CheckedTensor]:
    data = list(values)
    return [CheckedTensor(name, "FP32", (len(data) // width, width), data)]


class FakeTriton:
    """``infer_arrays`` like Triton's: label = sum of each row; a row holding -1 is refused."""

    def __init__(self, failures: list[Exception] | None = None, by_rows: bool = True) -> None:
        self.calls: list[dict[str, np.ndarray]] = []
        self.failures = failures or []
        self.by_rows = by_rows

    def infer_arrays(
        self,
        model: str,
        inputs: Mapping[str, tuple[str, np.ndarray]],
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
    ) -> dict[str, tuple[str, np.ndarray]]:
        self.calls.append({name: array for name, (_, array) in inputs.items()})
        if self.failures:
            raise self.failures.pop(0)
        array = inputs["input"][1]
        if (array == -1).any():
            raise TritonRejected("a row holds -1")
        labels = array.sum(axis=1).astype(np.int64)
        if not self.by_rows:
            labels = labels[:1]
        return {"label": ("INT64", labels), "scores": ("FP32", array * 2)}


def labels(results: Any) -> list[Any]:
    return [r.outputs[0]["data"] if r.outputs is not None else r.code for r in results]


def test_lines_share_one_call_and_get_their_own_rows_back() -> None:
    triton = FakeTriton()
    lines = [line(1, 2), line(3, 4, 5, 6), line(7, 8)]
    results = infer_lines(triton, MODEL, lines, None)  # type: ignore[arg-type]
    assert len(triton.calls) == 1 and triton.calls[0]["input"].shape == (4, 2)
    assert triton.calls[0]["input"].dtype == np.float32
    assert labels(results) == [[3], [7, 11], [15]]
    assert results[1].outputs is not None
    assert results[1].outputs[1] == {
        "name": "scores",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [6, 8, 10, 12],
    }


def test_a_refused_micro_batch_falls_back_to_one_call_per_line() -> None:
    triton = FakeTriton()
    results = infer_lines(triton, MODEL, [line(1, 2), line(-1, 0), line(3, 3)], None)  # type: ignore[arg-type]
    assert labels(results) == [[3], "invalid_request", [6]]
    assert results[1].message == "a row holds -1"
    assert len(triton.calls) == 4  # the merged one, then each line


def test_outputs_not_by_rows_are_asked_for_line_by_line() -> None:
    triton = FakeTriton(by_rows=False)
    results = infer_lines(triton, MODEL, [line(1, 2), line(3, 4)], None)  # type: ignore[arg-type]
    assert labels(results) == [[3], [7]] and len(triton.calls) == 3


def test_a_model_that_cannot_batch_is_called_line_by_line() -> None:
    triton = FakeTriton()
    model = TritonModel("fixed", "", batchable=False)
    assert labels(infer_lines(triton, model, [line(1, 2), line(3, 4)], None)) == [[3], [7]]  # type: ignore[arg-type]
    assert len(triton.calls) == 2


def test_a_missing_model_fails_every_line_without_asking_per_line() -> None:
    triton = FakeTriton(failures=[TritonModelNotFound("unknown model 'digits'")])
    results = infer_lines(triton, MODEL, [line(1, 2), line(3, 4)], None)  # type: ignore[arg-type]
    assert labels(results) == ["model_not_loaded", "model_not_loaded"] and len(triton.calls) == 1


def test_an_unreachable_triton_is_retried_briefly_then_reported() -> None:
    triton = FakeTriton(failures=[TritonUnavailable("refused")])
    assert labels(infer_lines(triton, MODEL, [line(1, 1)], None, retry_seconds=2)) == [[2]]  # type: ignore[arg-type]
    triton = FakeTriton(failures=[TritonUnavailable("refused")] * 100)
    with pytest.raises(TritonUnavailable):
        infer_lines(triton, MODEL, [line(1, 1), line(2, 2)], None, retry_seconds=0.3)  # type: ignore[arg-type]


def test_merge_keys_group_lines_that_can_share_a_call() -> None:
    assert merge_key(line(1, 2), None) == merge_key(line(1, 2, 3, 4), None)
    assert merge_key(line(1, 2), None) != merge_key(line(1, 2, 3, width=3), None)
    assert merge_key(line(1, 2), ["label"]) != merge_key(line(1, 2), None)
    mismatched = [*line(1, 2), CheckedTensor("mask", "BOOL", (2,), [True, False])]
    assert merge_key(mismatched, None) is None  # one row of input, two of mask: not by rows
    assert merge_key([CheckedTensor("scalar", "FP32", (), [1.0])], None) is None
    assert rows(line(1, 2, 3, 4)) == 2


def test_checked_values_build_the_same_merged_call_as_the_lines_lists() -> None:
    """The arrays the chunk checked are sent as they are; the call is the one the lists make."""
    from workers.batch_inference import _given, _merged

    class Capture:
        def __init__(self) -> None:
            self.arrays: list[dict[str, Any]] = []

        def infer_arrays(self, name: str, arrays: dict[str, Any], **_: Any) -> dict[str, Any]:
            self.arrays.append(arrays)
            total = next(iter(arrays.values()))[1].shape[0]
            return {"label": ("INT64", np.zeros((total, 1), dtype=np.int64))}

    data = [[0.1, 2.0, 1e-8, 3.4028234e38], [1, 2, 3, 4], [0.30000000000000004, -0.0, 5.5, 7.0]]
    for rows_data in (data, [[1, 2, 3, 4], [5, 6, 7, 8]]):
        lines = [[CheckedTensor("x", "FP32", (1, 4), row)] for row in rows_data]
        values = [np.asarray(rows_data)]
        plain, given = Capture(), Capture()
        _merged(plain, MODEL, lines, None, 1.0, "")  # type: ignore[arg-type]
        _merged(given, MODEL, lines, None, 1.0, "", values)  # type: ignore[arg-type]
        a, b = plain.arrays[0]["x"][1], given.arrays[0]["x"][1]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert _given([np.asarray([[1, 2]])], 0, CheckedTensor("x", "FP32", (1, 2), [1, 2]), [1, 2]) is None
