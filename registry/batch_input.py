"""Batch input and output lines, and chunk planning: pure functions, no I/O.

An input file is JSON Lines, one request a line:
``{"custom_id": "...", "inputs": [...], "outputs"?: [...], "parameters"?: {...}}``
where ``inputs`` and ``outputs`` are those of a sync request (Open Inference
Protocol). Each request line ends up as exactly one line of the output file
(``{"custom_id", "outputs"}``) or of the error file (``{"custom_id", "error"}``,
with ``"line"`` when the line has no usable custom_id).

Blank lines (only whitespace) are not requests: they are skipped, count in no
total and appear in neither file; they still count as lines, so line numbers are
those an editor shows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inferq import jsonio
from inferq.tensors import DATATYPES, NUMPY_DTYPES
from registry.signatures import CheckedTensor, TensorSpec, check_inference_request

MAX_CUSTOM_ID = 256
LINE_FIELDS = ("custom_id", "inputs", "outputs", "parameters")
SHOWN_PROBLEMS = 3

# Stable error codes of input lines (they appear in error files users parse).
INVALID_JSON = "invalid_json"
MISSING_CUSTOM_ID = "missing_custom_id"
INVALID_CUSTOM_ID = "invalid_custom_id"
DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
INVALID_INPUT = "invalid_input"
LINE_TOO_LONG = "line_too_long"
LINE_ERROR_CODES = (
    INVALID_JSON,
    MISSING_CUSTOM_ID,
    INVALID_CUSTOM_ID,
    DUPLICATE_CUSTOM_ID,
    INVALID_INPUT,
    LINE_TOO_LONG,
)


@dataclass(frozen=True)
class BatchRequest:
    """A valid input line: its custom_id and the tensors, checked against the model's signature."""

    line: int
    custom_id: str
    inputs: list[CheckedTensor]
    outputs: list[str] | None
    parameters: dict[str, Any] | None
    # False: read by :func:`quick_line`, whose data values :func:`confirm_values` still checks.
    confirmed: bool = True


@dataclass(frozen=True)
class LineError:
    """An input line that is not a valid request, and why (``code`` is one of LINE_ERROR_CODES)."""

    line: int
    code: str
    message: str
    custom_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line}


def parse_line(
    raw: bytes,
    line: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    seen: set[str],
    max_line_bytes: int,
) -> BatchRequest | LineError | None:
    """Parse input line number ``line`` (1-based; ``raw`` with or without its line ending).

    ``max_line_bytes`` caps a line's length without its ending (read lines with
    ``max_line=reader_limit(max_line_bytes)``). Returns None for a blank line, a
    :class:`LineError` for a line that is not a valid request, else the
    :class:`BatchRequest`. ``seen`` holds the custom_ids
    met so far in the file: a well-formed custom_id is claimed by its first line
    (even when that line's inputs are invalid) and any later line with it is a
    ``duplicate_custom_id``.
    """
    head = _read_head(raw, line, max_line_bytes)
    if head is None or isinstance(head, LineError):
        return head
    body, custom_id = head
    if custom_id in seen:
        return duplicate_error(line, custom_id)
    seen.add(custom_id)
    return _check_body(body, line, custom_id, inputs, outputs)


def claim_line(raw: bytes, line: int, seen: set[str], max_line_bytes: int) -> LineError | str | None:
    """What the planner needs of input line ``line``: None for a blank line, the
    :class:`LineError` of a line without a usable custom_id (or a ``duplicate_custom_id``),
    else its custom_id, now claimed in ``seen``.

    The inputs are not checked here (the chunk that runs the line checks them, with
    :func:`recheck_line`): a line is parsed once on each side, and a well-formed custom_id
    is claimed by its first line whatever its inputs, exactly as :func:`parse_line` does.
    """
    head = _read_head(raw, line, max_line_bytes)
    if head is None or isinstance(head, LineError):
        return head
    custom_id = head[1]
    if custom_id in seen:
        return duplicate_error(line, custom_id)
    seen.add(custom_id)
    return custom_id


def load_json(raw: bytes) -> Any:
    """``json.loads(raw.decode("utf-8-sig"))``, faster: orjson when it reads the line the same way.

    Raises what that would (UnicodeDecodeError, ValueError): whatever orjson refuses (a byte
    order mark, NaN, lone surrogates, huge numbers...) goes through the json module.
    """
    return jsonio.loads(raw, _load_text)


def _load_text(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8-sig"))  # a byte order mark may start the file


def _read_head(raw: bytes, line: int, max_line_bytes: int) -> tuple[dict[str, Any], str] | LineError | None:
    # Blank (None), not a request with a usable custom_id (LineError), else (body, custom_id).
    if _content_length(raw) > max_line_bytes:
        return LineError(line, LINE_TOO_LONG, f"the line is longer than {max_line_bytes} bytes")
    if not raw.strip():
        return None
    try:
        body = load_json(raw)
    except UnicodeDecodeError:
        return LineError(line, INVALID_JSON, "the line is not UTF-8 text")
    except ValueError as exc:
        return LineError(line, INVALID_JSON, f"the line is not valid JSON: {exc}")
    except RecursionError:
        return LineError(line, INVALID_JSON, "the line's JSON is nested too deeply")
    if not isinstance(body, dict):
        return LineError(line, INVALID_JSON, "the line must be a JSON object with custom_id and inputs")
    custom_id = body.get("custom_id")
    if custom_id is None:
        return LineError(line, MISSING_CUSTOM_ID, "custom_id is required")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return LineError(
            line, INVALID_CUSTOM_ID, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
        )
    return body, custom_id


def _check_body(
    body: dict[str, Any],
    line: int,
    custom_id: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> BatchRequest | LineError:
    problems = [
        f"/{key}: unknown field; allowed: {', '.join(LINE_FIELDS)}" for key in body if key not in LINE_FIELDS
    ]
    parameters = body.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        problems.append("/parameters: must be an object")
    checked, requested, found = check_inference_request(body, inputs, outputs)
    problems += [f"{p.pointer}: {p.detail}" for p in found]
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        message = shown + (f" (and {more} more)" if more > 0 else "")
        return LineError(line, INVALID_INPUT, message, custom_id)
    return BatchRequest(line, custom_id, checked, requested, parameters)


def quick_line(
    raw: bytes, line: int, inputs: Sequence[TensorSpec], max_line_bytes: int
) -> BatchRequest | None:
    """A chunk's fast path: the request of a line of the plain form (``custom_id`` and ``inputs``
    only, each input's name, datatype and shape as the signature says, ``data`` a flat list of
    the right length, no ``true``/``false`` anywhere), with its data values not yet checked
    (``confirmed`` False: :func:`confirm_values` checks the values of many lines at once).
    None for any other line, which :func:`recheck_line` then reads as before.
    """
    if b"true" in raw or b"false" in raw:  # bools would hide in a micro-batch's numeric array
        return None
    head = _read_head(raw, line, max_line_bytes)
    if head is None or isinstance(head, LineError):
        return None
    body, custom_id = head
    tensors = body.get("inputs")
    if len(body) != 2 or not isinstance(tensors, list) or len(tensors) != len(inputs) or not inputs:
        return None
    checked = []
    for tensor, spec in zip(tensors, inputs, strict=True):
        if not isinstance(tensor, dict) or len(tensor) != 4 or tensor.get("name") != spec.name:
            return None
        data = tensor.get("data")
        if tensor.get("datatype") != spec.datatype or spec.datatype in ("BYTES", "BOOL"):
            return None
        shape = _plain_shape(spec.shape, tensor.get("shape"))
        if shape is None or not isinstance(data, list) or len(data) != math.prod(shape) or not data:
            return None
        checked.append(CheckedTensor(spec.name, spec.datatype, tuple(shape), data))
    return BatchRequest(line, custom_id, checked, None, None, confirmed=False)


def _plain_shape(want: tuple[int, ...], shape: Any) -> list[int] | None:
    # ``shape`` if it is a list of non-negative ints that the declared shape accepts (-1: any
    # size), else None. One loop: this runs for every line of a chunk.
    if type(shape) is not list or len(shape) != len(want):
        return None
    for size, got in zip(want, shape):  # noqa: B905 - lengths checked above
        if type(got) is not int or got < 0 or (size != -1 and size != got):
            return None
    return shape


def confirm_values(requests: Sequence[BatchRequest]) -> bool:
    """Whether the data values of these :func:`quick_line` requests (one merge key: the same
    inputs and per-row shapes) pass the signature check, tested on all lines' values at once.

    True only when each line alone would pass: numbers only (no bools: quick_line sees to
    that), of a kind the datatype accepts, finite, in its range. False says only that some
    line may not: recheck the lines one by one for their exact verdicts.
    """
    return checked_values(requests) is not None


def checked_values(requests: Sequence[BatchRequest]) -> list[np.ndarray] | None:
    """:func:`confirm_values`, giving the values it checked when they pass: for each input (in
    the order of the lines' inputs), one array of the lines' data, a row per line (None: some
    line may not pass). The caller may send these to Triton instead of building them again."""
    arrays: list[np.ndarray] = []
    if not requests:
        return arrays
    for position, first in enumerate(requests[0].inputs):
        try:
            values = np.asarray([request.inputs[position].data for request in requests])
        except (ValueError, TypeError, OverflowError):
            return None
        if (
            values.ndim != 2
            or values.dtype.kind not in DATATYPES[first.datatype]
            or values.dtype.kind not in "iuf"
        ):
            return None
        if not np.all(np.isfinite(values)):
            return None
        target = np.dtype(NUMPY_DTYPES[first.datatype])
        limits = np.finfo(target) if target.kind == "f" else np.iinfo(target)
        if values.min() < limits.min or values.max() > limits.max:
            return None
        arrays.append(values)
    return arrays


def duplicate_error(line: int, custom_id: str) -> LineError:
    """The error of line ``line``, whose ``custom_id`` an earlier line of the file already has."""
    return LineError(
        line, DUPLICATE_CUSTOM_ID, f"custom_id {custom_id!r} is used by an earlier line", custom_id
    )


def recheck_line(
    raw: bytes,
    line: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    duplicate: bool,
    max_line_bytes: int,
) -> BatchRequest | LineError | None:
    """Parse a line again, away from the rest of the file (a chunk re-reading its own lines).

    Everything :func:`parse_line` decides from the line alone comes out the same;
    whether its custom_id is a ``duplicate`` of an earlier line is what the planner,
    which saw the whole file, found and recorded.
    """
    parsed = parse_line(raw, line, inputs, outputs, set(), max_line_bytes)
    # Only a line whose custom_id is well formed can be a duplicate: a valid request, or one
    # whose inputs are wrong (the planner found the repeat before looking at the inputs).
    claims_id = isinstance(parsed, BatchRequest) or (
        isinstance(parsed, LineError) and parsed.code == INVALID_INPUT
    )
    if duplicate and claims_id and parsed is not None and parsed.custom_id is not None:
        return duplicate_error(line, parsed.custom_id)
    return parsed


def _content_length(raw: bytes) -> int:
    # Without its line ending: b"\n" or b"\r\n" (not every trailing CR: a cut line may end in one).
    if raw.endswith(b"\r\n"):
        return len(raw) - 2
    return len(raw) - 1 if raw.endswith(b"\n") else len(raw)


def reader_limit(max_line_bytes: int) -> int:
    """The ``max_line`` to read lines with (``ObjectStore.iter_lines``) for this line cap.

    The reader cuts a longer line to ``max_line + 1`` bytes, which
    :func:`parse_line` then reports as ``line_too_long``; the 2 leave room for
    a ``b"\r\n"`` ending.
    """
    return max_line_bytes + 2


def _dumps(value: Any) -> bytes:
    # Compact, one line, and strict JSON: NaN or Infinity raise ValueError instead of
    # writing a line other JSON parsers reject.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def output_line(custom_id: str, outputs: Sequence[dict[str, Any]], finite: bool = False) -> bytes:
    """A line of the output file: ``{"custom_id", "outputs"}`` (ValueError for NaN or infinite values).

    ``finite``: the caller knows every number is finite, so orjson may write it (it writes
    NaN as null instead of refusing it); anything orjson refuses goes through the json module.
    """
    value = {"custom_id": custom_id, "outputs": list(outputs)}
    if finite:
        try:
            return orjson.dumps(value) + b"\n"
        except orjson.JSONEncodeError:
            pass
    return _dumps(value)


def error_line(custom_id: str | None, code: str, message: str, line: int | None = None) -> bytes:
    """A line of the error file: ``{"custom_id", "error": {code, message}}``.

    ``line`` (the input line number) is added when given; give it whenever the
    custom_id is missing or does not identify the line alone (a duplicate).
    """
    value: dict[str, Any] = {"custom_id": custom_id, "error": {"code": code, "message": message}}
    if line is not None:
        value["line"] = line
    return _dumps(value)


def line_error_line(error: LineError) -> bytes:
    """The error-file line for an input line that is not a valid request."""
    needs_line = error.custom_id is None or error.code == DUPLICATE_CUSTOM_ID
    return error_line(error.custom_id, error.code, error.message, error.line if needs_line else None)


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """A planned chunk: lines ``first_line`` .. ``first_line + line_count - 1`` at bytes [start, end)."""

    index: int
    start: int
    end: int
    first_line: int
    line_count: int


def plan_chunks(
    lines: Iterable[tuple[int, int, int]],
    lines_per_chunk: int,
    max_chunk_bytes: int | None = None,
    first_index: int = 0,
) -> Iterator[ChunkSpec]:
    """Group ``(line_number, start_byte, end_byte)`` spans, in file order, into chunks.

    A chunk takes up to ``lines_per_chunk`` lines, and closes early once it holds
    ``max_chunk_bytes`` (a single longer line still makes a chunk of its own).
    ``line_count`` counts the spans given, so pass the request lines (blank lines
    left out) and the counts add up to the batch total; a chunk's byte range
    covers any blank lines between its spans, which readers skip. A generator:
    one chunk's worth of state at a time, whatever the file size. Chunks are numbered from
    ``first_index`` (a planner resuming after the chunks recorded before it).
    """
    if lines_per_chunk < 1:
        raise ValueError("lines_per_chunk must be at least 1")
    index = first_index
    current: list[int] | None = None  # [start, end, first_line, line_count]
    previous_end = 0
    previous_line = 0
    for number, start, end in lines:
        if start < previous_end or end < start or number <= previous_line:
            raise ValueError(f"line {number} at bytes [{start}, {end}) is out of file order")
        previous_end, previous_line = end, number
        if current is not None and (
            current[3] >= lines_per_chunk
            or (max_chunk_bytes is not None and end - current[0] > max_chunk_bytes)
        ):
            yield ChunkSpec(index, current[0], current[1], current[2], current[3])
            index += 1
            current = None
        if current is None:
            current = [start, end, number, 1]
        else:
            current[1] = end
            current[3] += 1
    if current is not None:
        yield ChunkSpec(index, current[0], current[1], current[2], current[3])
