"""Tensor signatures (name, datatype, shape) and checking requests against them.

Pure functions, shared by the registry (a model's declared inputs and outputs)
and the inference paths (a request's tensors, sync or batch line). Datatypes and
the body layout follow the Open Inference Protocol (KServe v2), as Triton does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferq.tensors import DATATYPES, NUMPY_DTYPES

TRITON_TYPE_PREFIX = "TYPE_"
MAX_TENSORS = 256  # input or output tensors of one model or request
MAX_NAME = 256  # characters of a tensor name
MAX_RANK = 32  # dimensions of a shape
MAX_SHOWN = 64  # characters of a request's value repeated in a problem


def shown(value: Any) -> str:
    """``repr(value)``, cut short: problems name what was sent without echoing all of it."""
    if isinstance(value, str) and len(value) > MAX_SHOWN:
        return repr(value[:MAX_SHOWN]) + f"... ({len(value)} characters)"
    if isinstance(value, (list, dict)) and len(value) > 16:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, located by a JSON pointer (RFC 6901)."""

    pointer: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


@dataclass(frozen=True)
class TensorSpec:
    """A declared input or output: shape dims are sizes, -1 for a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


def datatype_from_triton(triton_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES``."""
    name = triton_type.removeprefix(TRITON_TYPE_PREFIX)
    return "BYTES" if name == "STRING" else name


def parse_specs(raw: Any, pointer: str) -> tuple[list[TensorSpec], list[Problem]]:
    """Validate a declared signature (a list of ``{name, datatype, shape}``)."""
    problems: list[Problem] = []
    specs: list[TensorSpec] = []
    if not isinstance(raw, list) or not raw:
        return [], [Problem(pointer, "must be a non-empty list of {name, datatype, shape}")]
    if len(raw) > MAX_TENSORS:
        return [], [Problem(pointer, f"at most {MAX_TENSORS} tensors, not {len(raw)}")]
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"{pointer}/{index}"
        if not isinstance(item, dict):
            problems.append(Problem(where, "must be an object with name, datatype and shape"))
            continue
        name: Any = item.get("name")
        datatype: Any = item.get("datatype")
        shape: Any = item.get("shape")
        ok = True
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            problems.append(Problem(f"{where}/name", f"must be a string of 1 to {MAX_NAME} characters"))
            ok = False
        elif name in seen:
            problems.append(Problem(f"{where}/name", f"duplicate tensor name {shown(name)}"))
            ok = False
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            problems.append(
                Problem(f"{where}/datatype", f"{shown(datatype)} is not one of {', '.join(DATATYPES)}")
            )
            ok = False
        if (
            not isinstance(shape, list)
            or not shape
            or len(shape) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape)
        ):
            problems.append(
                Problem(
                    f"{where}/shape",
                    f"must be a non-empty list of at most {MAX_RANK} positive sizes, -1 for a variable one",
                )
            )
            ok = False
        if ok:
            seen.add(name)
            specs.append(TensorSpec(name, datatype, tuple(shape)))
    return specs, problems


def specs_from_json(raw: Sequence[Mapping[str, Any]]) -> list[TensorSpec]:
    """Stored (already validated) signature -> specs."""
    return [TensorSpec(item["name"], item["datatype"], tuple(item["shape"])) for item in raw]


@dataclass(frozen=True)
class CheckedTensor:
    """A request tensor that matched its spec: flattened, row-major data."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape), "data": self.data}


def check_inference_request(
    body: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], pointer: str = ""
) -> tuple[list[CheckedTensor], list[str] | None, list[Problem]]:
    """Check an Open Inference Protocol request body against a model's signature.

    Returns the checked inputs, the requested output names (None: all), and the
    problems; the request may be queued only when there are no problems.
    """
    if not isinstance(body, dict):
        return [], None, [Problem(pointer or "/", "the request body must be a JSON object")]
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        return [], None, [Problem(f"{pointer}/inputs", "must be a non-empty list of input tensors")]
    if len(raw_inputs) > MAX_TENSORS:
        return (
            [],
            None,
            [Problem(f"{pointer}/inputs", f"at most {MAX_TENSORS} input tensors, not {len(raw_inputs)}")],
        )
    by_name = {spec.name: spec for spec in inputs}
    problems: list[Problem] = []
    checked: list[CheckedTensor] = []
    seen: set[str] = set()
    for index, tensor in enumerate(raw_inputs):
        where = f"{pointer}/inputs/{index}"
        if not isinstance(tensor, dict):
            problems.append(Problem(where, "must be an object with name, shape, datatype and data"))
            continue
        name = tensor.get("name")
        if not isinstance(name, str) or name not in by_name:
            problems.append(
                Problem(
                    f"{where}/name",
                    f"unknown input {shown(name)}; the model's inputs are: {', '.join(sorted(by_name))}",
                )
            )
            continue
        if name in seen:
            problems.append(Problem(f"{where}/name", f"input {name!r} is given twice"))
            continue
        seen.add(name)
        result = _check_tensor(tensor, by_name[name], where)
        if isinstance(result, CheckedTensor):
            checked.append(result)
        else:
            problems.extend(result)
    for spec in inputs:
        if spec.name not in seen:
            problems.append(Problem(f"{pointer}/inputs", f"missing input {spec.name!r}"))
    requested, output_problems = _check_requested_outputs(body.get("outputs"), outputs, pointer)
    problems.extend(output_problems)
    return checked, requested, problems


def _check_tensor(tensor: Mapping[str, Any], spec: TensorSpec, where: str) -> CheckedTensor | list[Problem]:
    name = spec.name
    datatype = tensor.get("datatype")
    shape: Any = tensor.get("shape")
    problems = []
    if datatype != spec.datatype:
        problems.append(
            Problem(
                f"{where}/datatype",
                f"input {name!r} has datatype {shown(datatype)}; the model wants {spec.datatype}",
            )
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        problems.append(Problem(f"{where}/shape", f"input {name!r}: shape must be a list of sizes >= 0"))
    elif not spec.accepts_shape(shape):
        problems.append(
            Problem(
                f"{where}/shape",
                f"input {name!r} has shape {shown(shape)}; the model wants {list(spec.shape)} (-1: any size)",
            )
        )
    if problems:
        return problems
    data = tensor.get("data")
    if not isinstance(data, list):
        return [Problem(f"{where}/data", f"input {name!r}: data must be a list")]
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        return [Problem(f"{where}/data", f"input {name!r}: data is a ragged nested list")]
    if array.dtype == object:
        return [
            Problem(f"{where}/data", f"input {name!r}: data is a ragged, mixed-type or out-of-range list")
        ]
    expected = math.prod(shape)
    if array.size != expected:
        return [
            Problem(
                f"{where}/data",
                f"input {name!r}: shape {shown(shape)} needs {expected} values, data has {array.size}",
            )
        ]
    if array.size and array.dtype.kind not in DATATYPES[spec.datatype]:
        return [
            Problem(
                f"{where}/data",
                f"input {name!r}: data holds {_kind_name(array.dtype.kind)} values, not {spec.datatype}",
            )
        ]
    if spec.datatype.startswith(("FP", "INT", "UINT")) and array.size:
        if not np.all(np.isfinite(array)):
            return [Problem(f"{where}/data", f"input {name!r}: data holds NaN or infinite values")]
        target = np.dtype(NUMPY_DTYPES[spec.datatype])
        limits = np.finfo(target) if target.kind == "f" else np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            return [Problem(f"{where}/data", f"input {name!r}: values out of the range of {spec.datatype}")]
    flat = array.reshape(-1).tolist() if array.ndim != 1 else data
    return CheckedTensor(name, spec.datatype, tuple(shape), flat)


def _check_requested_outputs(
    raw: Any, outputs: Sequence[TensorSpec], pointer: str
) -> tuple[list[str] | None, list[Problem]]:
    if raw is None:
        return None, []
    if not isinstance(raw, list):
        return None, [Problem(f"{pointer}/outputs", "must be a list of {name}")]
    if len(raw) > MAX_TENSORS:
        return None, [Problem(f"{pointer}/outputs", f"at most {MAX_TENSORS} outputs, not {len(raw)}")]
    known = {spec.name for spec in outputs}
    names, problems = [], []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in known:
            problems.append(
                Problem(
                    f"{pointer}/outputs/{index}/name",
                    f"unknown output {shown(name)}; the model's outputs are: {', '.join(sorted(known))}",
                )
            )
        else:
            names.append(name)
    return names, problems


def _kind_name(kind: str) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "U": "string"}.get(
        kind, "non-numeric"
    )
