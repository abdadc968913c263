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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    if _content_length(raw) > max_line_bytes:
        return LineError(line, LINE_TOO_LONG, f"the line is longer than {max_line_bytes} bytes")
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark may start the file
    except UnicodeDecodeError:
        return LineError(line, INVALID_JSON, "the line is not UTF-8 text")
    try:
        body = json.loads(text)
    except ValueError as exc:
        return LineError(line, INVALID_JSON, f"the line is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return LineError(line, INVALID_JSON, "the line must be a JSON object with custom_id and inputs")
    custom_id = body.get("custom_id")
    if custom_id is None:
        return LineError(line, MISSING_CUSTOM_ID, "custom_id is required")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return LineError(
            line, INVALID_CUSTOM_ID, f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
        )
    if custom_id in seen:
        return duplicate_error(line, custom_id)
    seen.add(custom_id)
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


def output_line(custom_id: str, outputs: Sequence[dict[str, Any]]) -> bytes:
    """A line of the output file: ``{"custom_id", "outputs"}`` (ValueError for NaN or infinite values)."""
    return _dumps({"custom_id": custom_id, "outputs": list(outputs)})


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
    lines: Iterable[tuple[int, int, int]], lines_per_chunk: int, max_chunk_bytes: int | None = None
) -> Iterator[ChunkSpec]:
    """Group ``(line_number, start_byte, end_byte)`` spans, in file order, into chunks.

    A chunk takes up to ``lines_per_chunk`` lines, and closes early once it holds
    ``max_chunk_bytes`` (a single longer line still makes a chunk of its own).
    ``line_count`` counts the spans given, so pass the request lines (blank lines
    left out) and the counts add up to the batch total; a chunk's byte range
    covers any blank lines between its spans, which readers skip. A generator:
    one chunk's worth of state at a time, whatever the file size.
    """
    if lines_per_chunk < 1:
        raise ValueError("lines_per_chunk must be at least 1")
    index = 0
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
