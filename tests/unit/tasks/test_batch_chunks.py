"""A chunk's lines: classified, micro-batched, written in input order to the output and error parts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from registry.batch_input import BatchRequest, LineError, recheck_line
from registry.signatures import TensorSpec
from tasks.batch_chunks import PartWriter, triton_model, write_lines
from tasks.pipeline import ResolvedModel
from workers.batch_inference import LineResult

INPUTS = [TensorSpec("input", "FP32", (-1, 2))]
OUTPUTS = [TensorSpec("label", "INT64", (-1,))]


def raw(custom_id: object, *values: float, rows: int = 1) -> bytes:
    tensor = {"name": "input", "shape": [rows, 2], "datatype": "FP32", "data": list(values)}
    return json.dumps({"custom_id": custom_id, "inputs": [tensor]}).encode() + b"\n"


def numbered(*lines: bytes, first: int = 1) -> Iterator[tuple[int, bytes]]:
    return iter(enumerate(lines, first))


def classify(duplicates: set[int]):  # type: ignore[no-untyped-def]
    def check(number: int, line: bytes) -> BatchRequest | LineError | None:
        return recheck_line(line, number, INPUTS, OUTPUTS, number in duplicates, 1000)

    return check


class Recorder:
    """A runner that fails requests whose first value is negative, and records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, requests: Sequence[BatchRequest], values: Any = None) -> list[LineResult]:
        self.calls.append([r.custom_id for r in requests])
        return [
            LineResult(code="invalid_request", message="negative")
            if r.inputs[0].data[0] < 0
            else LineResult(
                [{"name": "label", "datatype": "INT64", "shape": [1], "data": [int(r.inputs[0].data[0])]}]
            )
            for r in requests
        ]


def parts(writer: PartWriter) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    writer.output.seek(0)
    writer.errors.seek(0)
    return (
        [json.loads(line) for line in writer.output.read().splitlines()],
        [json.loads(line) for line in writer.errors.read().splitlines()],
    )


def test_lines_are_written_in_input_order_across_micro_batches() -> None:
    runner, writer = Recorder(), PartWriter()
    lines = numbered(
        raw("a", 1, 1),
        b"not json\n",
        raw("b", -1, 0),
        b"\n",
        raw("c", 3, 3, 3, 3, rows=2),
        raw("d", 4, 4),
        raw("a", 5, 5),  # the planner found this custom_id earlier in the file
        raw("e", 6, 6, 6, rows=1),  # 3 values for 2: invalid input
        first=10,
    )
    write_lines(lines, classify({16}), runner, writer, micro_batch=3)
    outputs, errors = parts(writer)
    assert [o["custom_id"] for o in outputs] == ["a", "c", "d"]
    assert [(e["custom_id"], e["error"]["code"], e.get("line")) for e in errors] == [
        (None, "invalid_json", 11),
        ("b", "invalid_request", None),
        ("a", "duplicate_custom_id", 16),
        ("e", "invalid_input", None),
    ]
    assert runner.calls == [["a", "b"], ["c", "d"]]  # at most 3 rows a call: c has 2
    assert (writer.ok, writer.failed) == (3, 4)
    writer.close()


def test_lines_that_cannot_share_a_call_go_alone() -> None:
    runner, writer = Recorder(), PartWriter()
    other_outputs = json.dumps(
        {
            "custom_id": "x",
            "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [7, 7]}],
            "outputs": [{"name": "label"}],
        }
    ).encode()
    write_lines(numbered(raw("a", 1, 1), other_outputs, raw("b", 2, 2)), classify(set()), runner, writer, 100)
    assert runner.calls == [["a"], ["x"], ["b"]]
    writer.close()


def test_output_that_is_not_json_fails_its_line() -> None:
    writer = PartWriter()

    def nan(requests: Sequence[BatchRequest], values: Any = None) -> list[LineResult]:
        return [
            LineResult([{"name": "label", "datatype": "FP32", "shape": [1], "data": [float("nan")]}])
        ] * len(requests)

    write_lines(numbered(raw("a", 1, 1)), classify(set()), nan, writer, 10)
    _, errors = parts(writer)
    assert errors[0]["error"]["code"] == "invalid_output"
    writer.close()


def test_a_model_batches_when_every_tensor_has_a_variable_first_dimension() -> None:
    model = ResolvedModel("id", "m", "1", "m", "1", INPUTS, OUTPUTS, [0])
    assert triton_model(model).batchable
    fixed = ResolvedModel("id", "m", "1", "m", "1", [TensorSpec("input", "FP32", (1, 2))], OUTPUTS, [0])
    assert not triton_model(fixed).batchable
