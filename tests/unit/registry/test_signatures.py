from __future__ import annotations

from typing import Any

import pytest

from registry.signatures import TensorSpec, check_inference_request, parse_specs

INPUTS = [TensorSpec("input", "FP32", (-1, 4)), TensorSpec("mask", "BOOL", (-1,))]
OUTPUTS = [TensorSpec("label", "INT64", (-1,))]


def body(*tensors: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(tensors), **extra}


def x(**overrides: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3.5, 4], **overrides}


def mask(**overrides: Any) -> dict[str, Any]:
    return {"name": "mask", "shape": [1], "datatype": "BOOL", "data": [True], **overrides}


def problems(request: Any) -> list[tuple[str, str]]:
    return [(p.pointer, p.detail) for p in check_inference_request(request, INPUTS, OUTPUTS)[2]]


def test_valid_request_is_flattened() -> None:
    checked, outputs, found = check_inference_request(
        body(x(shape=[2, 4], data=[[1, 2, 3, 4], [5, 6, 7, 8]]), mask(shape=[2], data=[True, False])),
        INPUTS,
        OUTPUTS,
    )
    assert found == [] and outputs is None
    assert checked[0].data == [1, 2, 3, 4, 5, 6, 7, 8] and checked[0].shape == (2, 4)


@pytest.mark.parametrize(
    ("request_body", "pointer", "fragment"),
    [
        (body(x(name="nope"), mask()), "/inputs/0/name", "unknown input 'nope'"),
        (body(x()), "/inputs", "missing input 'mask'"),
        (body(x(), mask(), x()), "/inputs/2/name", "given twice"),
        (body(x(datatype="FP64"), mask()), "/inputs/0/datatype", "wants FP32"),
        (body(x(shape=[1, 3], data=[1, 2, 3]), mask()), "/inputs/0/shape", "wants [-1, 4]"),
        (body(x(shape=[4]), mask()), "/inputs/0/shape", "wants [-1, 4]"),
        (body(x(shape=[1, -4]), mask()), "/inputs/0/shape", "sizes >= 0"),
        (body(x(shape=[2, 4]), mask()), "/inputs/0/data", "needs 8 values, data has 4"),
        (body(x(data=[[1, 2], [3]]), mask()), "/inputs/0/data", "ragged"),
        (body(x(data=["a", "b", "c", "d"]), mask()), "/inputs/0/data", "string values, not FP32"),
        (body(x(data=[1, 2, 3, float("nan")]), mask()), "/inputs/0/data", "NaN"),
        (body(x(data="1,2,3,4"), mask()), "/inputs/0/data", "must be a list"),
        (body(x(data=[1, 2, 3, 1e39]), mask()), "/inputs/0/data", "out of the range of FP32"),
        (body(x(data=[1, 2, 3, 10**30]), mask()), "/inputs/0/data", "out-of-range"),
        (body(x(), mask(data=[1])), "/inputs/1/data", "integer values, not BOOL"),
        (body(x(), mask(), outputs=[{"name": "logits"}]), "/outputs/0/name", "unknown output 'logits'"),
        ({"inputs": "x"}, "/inputs", "non-empty list"),
        ([], "/", "JSON object"),
    ],
)
def test_each_problem_is_named(request_body: Any, pointer: str, fragment: str) -> None:
    found = problems(request_body)
    assert any(p == pointer and fragment in d for p, d in found), found


def test_integers_are_accepted_for_floats_but_floats_not_for_integers() -> None:
    spec = [TensorSpec("n", "INT32", (2,))]
    ok = check_inference_request(
        {"inputs": [{"name": "n", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}, spec, []
    )
    bad = check_inference_request(
        {"inputs": [{"name": "n", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}]}, spec, []
    )
    assert ok[2] == [] and "floating-point values, not INT32" in bad[2][0].detail
    big = check_inference_request(
        {"inputs": [{"name": "n", "shape": [2], "datatype": "INT32", "data": [1, 2**31]}]}, spec, []
    )
    assert "out of the range of INT32" in big[2][0].detail


@pytest.mark.parametrize(
    ("raw", "pointer"),
    [
        ([{"name": "a", "datatype": "FP33", "shape": [1]}], "/inputs/0/datatype"),
        ([{"name": "a", "datatype": "FP32", "shape": [0]}], "/inputs/0/shape"),
        ([{"name": "a", "datatype": "FP32", "shape": []}], "/inputs/0/shape"),
        ([{"name": "", "datatype": "FP32", "shape": [1]}], "/inputs/0/name"),
        (
            [
                {"name": "a", "datatype": "FP32", "shape": [1]},
                {"name": "a", "datatype": "FP32", "shape": [1]},
            ],
            "/inputs/1/name",
        ),
        ([], "/inputs"),
    ],
)
def test_declared_signatures_are_validated(raw: Any, pointer: str) -> None:
    _specs, found = parse_specs(raw, "/inputs")
    assert [p.pointer for p in found] == [pointer]
