"""The worker side of a batch chunk: input lines sent to Triton in micro-batches, one call each.

The lines of a micro-batch are concatenated along their first (variable, batch)
dimension into one binary-tensor call; the outputs are split back by rows. When
Triton refuses the merged call (one bad line), or the outputs cannot be split by
rows, each line is sent on its own, so a bad line fails alone. Short bounded
retries (tenacity) absorb an unreachable Triton; past them
:class:`~workers.triton.TritonUnavailable` goes up to the caller, which decides
whether the chunk runs again later.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inferq.retries import retrying
from inferq.tensors import NUMPY_DTYPES, from_numpy, to_numpy
from inferq.tracing import span
from workers.triton import TritonEndpoint, TritonError, TritonModelNotFound, TritonUnavailable


class LineTensor(Protocol):
    """An input tensor of one line, already checked against the model's signature (flat data)."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def data(self) -> list[Any]: ...


@dataclass(frozen=True)
class TritonModel:
    """What a chunk asks Triton for: the model's Triton name and version, and whether every input
    and output has a variable first dimension (lines can then share a call)."""

    name: str
    version: str
    batchable: bool


@dataclass(frozen=True)
class LineResult:
    """How one line ended: its output tensors, or an error code and message."""

    outputs: list[dict[str, Any]] | None = None
    code: str = ""
    message: str = ""
    # Every number of ``outputs`` is known finite (checked on the whole call's arrays at once):
    # the line may then be written by a JSON encoder that has no strict mode for NaN.
    finite: bool = False


def merge_key(inputs: Sequence[LineTensor], outputs: Sequence[str] | None) -> Hashable | None:
    """Lines with equal keys can share one call; None: this line must go alone.

    A line can share when each of its inputs has the same number of rows (first
    dimension); lines share when they ask for the same outputs and their inputs agree
    in name, datatype and every dimension but the first.
    """
    if not inputs or any(len(t.shape) == 0 for t in inputs):
        return None
    if len({int(t.shape[0]) for t in inputs}) != 1:
        return None
    tensors = tuple(sorted((t.name, t.datatype, tuple(t.shape[1:])) for t in inputs))
    return (tuple(outputs) if outputs is not None else None, tensors)


def rows(inputs: Sequence[LineTensor]) -> int:
    """The rows (first dimension) of a line; 1 for a line whose inputs have no dimension."""
    return int(inputs[0].shape[0]) if inputs and len(inputs[0].shape) else 1


class _NotSplittable(Exception):
    """The merged call's outputs cannot be split back by rows."""


def infer_lines(
    endpoint: TritonEndpoint,
    model: TritonModel,
    lines: Sequence[Sequence[LineTensor]],
    outputs: Sequence[str] | None,
    *,
    retry_seconds: float = 30.0,
    request_id: str = "",
    values: Sequence[np.ndarray] | None = None,
) -> list[LineResult]:
    """Run ``lines`` (each a line's input tensors; all with one merge key) on ``endpoint``.

    ``values``, when given, holds the lines' data already as arrays (one per input, in the
    order of the lines' tensors, a row per line): the merged call is built from them instead of
    from the lines' lists, with the same result.

    Returns one result per line, in order. Raises
    :class:`~workers.triton.TritonUnavailable` when Triton stays unreachable for
    ``retry_seconds``; any other Triton error ends up in the results of the lines
    it concerns.
    """
    if not lines:
        return []
    with span("triton.infer", model=model.name, lines=len(lines)):
        if len(lines) > 1 and model.batchable:
            try:
                return _merged(endpoint, model, lines, outputs, retry_seconds, request_id, values)
            except TritonModelNotFound as exc:
                return [LineResult(code=exc.code, message=str(exc))] * len(lines)
            except TritonUnavailable:
                raise
            except (TritonError, _NotSplittable):
                pass  # a bad line among them, or outputs not by rows: each line on its own
        results: list[LineResult] = []
        for index, tensors in enumerate(lines):
            try:
                answer = _call(endpoint, model, _arrays(tensors), outputs, retry_seconds, request_id)
            except TritonModelNotFound as exc:
                # The model is not there for any of them: no point asking again per line.
                return results + [LineResult(code=exc.code, message=str(exc))] * (len(lines) - index)
            except TritonUnavailable:
                raise
            except TritonError as exc:
                results.append(LineResult(code=exc.code, message=str(exc)))
                continue
            results.append(
                LineResult([from_numpy(name, datatype, array) for name, (datatype, array) in answer.items()])
            )
        return results


def _call(
    endpoint: TritonEndpoint,
    model: TritonModel,
    arrays: dict[str, tuple[str, np.ndarray]],
    outputs: Sequence[str] | None,
    retry_seconds: float,
    request_id: str,
) -> dict[str, tuple[str, np.ndarray]]:
    policy = retrying(TritonUnavailable, seconds=retry_seconds, attempts=1_000, first_wait=0.5)
    return policy(
        endpoint.infer_arrays,
        model.name,
        arrays,
        outputs=list(outputs) if outputs is not None else None,
        version=model.version,
        request_id=request_id,
    )


def _arrays(tensors: Sequence[LineTensor]) -> dict[str, tuple[str, np.ndarray]]:
    return {
        t.name: (t.datatype, to_numpy({"datatype": t.datatype, "shape": list(t.shape), "data": t.data}))
        for t in tensors
    }


def _merged(
    endpoint: TritonEndpoint,
    model: TritonModel,
    lines: Sequence[Sequence[LineTensor]],
    outputs: Sequence[str] | None,
    retry_seconds: float,
    request_id: str,
    values: Sequence[np.ndarray] | None = None,
) -> list[LineResult]:
    counts = [rows(tensors) for tensors in lines]
    total = sum(counts)
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    for position, first in enumerate(lines[0]):
        shape = [total, *first.shape[1:]]
        given = _given(values, position, first, shape)
        if given is not None:
            arrays[first.name] = (first.datatype, given)
            continue
        same = [next(t for t in tensors if t.name == first.name) for tensors in lines]
        flat = list(itertools.chain.from_iterable(t.data for t in same))
        arrays[first.name] = (
            first.datatype,
            to_numpy({"datatype": first.datatype, "shape": shape, "data": flat}),
        )
    answer = _call(endpoint, model, arrays, outputs, retry_seconds, request_id)
    if not answer or any(array.ndim == 0 or array.shape[0] != total for _, array in answer.values()):
        raise _NotSplittable("an output does not have one row per input row")
    bounds = list(itertools.accumulate(counts, initial=0))
    finite = all(array.dtype.kind != "f" or bool(np.isfinite(array).all()) for _, array in answer.values())
    # Each output turned into Python lists once for the whole call, then cut by rows: the same
    # tensors as from_numpy on each line's slice, without a numpy round trip per line.
    per_output = [
        (name, datatype, list(array.shape[1:]), _row_lists(datatype, array))
        for name, (datatype, array) in answer.items()
    ]
    results = []
    for i in range(len(lines)):
        low, high = bounds[i], bounds[i + 1]
        tensors = []
        for name, datatype, tail, row_lists in per_output:
            data = (
                row_lists[low]
                if high - low == 1
                else list(itertools.chain.from_iterable(row_lists[low:high]))
            )
            tensors.append({"name": name, "datatype": datatype, "shape": [high - low, *tail], "data": data})
        results.append(LineResult(tensors, finite=finite))
    return results


def _given(
    values: Sequence[np.ndarray] | None, position: int, first: LineTensor, shape: list[int]
) -> np.ndarray | None:
    # The checked array of input ``position`` cast to its datatype: what to_numpy makes of the
    # lines' lists when the kinds agree (Python floats become float64 there too, then are cast;
    # ints stay ints). Otherwise None: built from the lists.
    if values is None or position >= len(values) or first.datatype == "BYTES":
        return None
    array = values[position]
    target = np.dtype(NUMPY_DTYPES[first.datatype])
    same_kind = (array.dtype.kind == "f" and target.kind == "f") or (
        array.dtype.kind in "iu" and target.kind in "iu"
    )
    if not same_kind or array.size != math.prod(shape):
        return None
    return array.astype(target, copy=False).reshape(shape)


def _row_lists(datatype: str, array: np.ndarray) -> list[list[Any]]:
    # Row r's flat data, as from_numpy gives it for array[r : r + 1].
    if datatype == "BYTES":
        return [from_numpy("", datatype, array[r : r + 1])["data"] for r in range(array.shape[0])]
    rows_list: list[list[Any]] = array.reshape(array.shape[0], -1).tolist()
    return rows_list
