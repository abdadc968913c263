from __future__ import annotations

import json
from typing import Any

import pytest

from registry.batch_input import (
    BatchRequest,
    ChunkSpec,
    LineError,
    error_line,
    line_error_line,
    output_line,
    parse_line,
    plan_chunks,
    reader_limit,
)
from registry.signatures import TensorSpec

INPUTS = [TensorSpec("input", "FP32", (-1, 4))]
OUTPUTS = [TensorSpec("label", "INT64", (-1,)), TensorSpec("scores", "FP32", (-1, 10))]
MAX_LINE = 1000


def tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **overrides}


def request(custom_id: Any = "req-1", **fields: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [tensor()], **fields}
    if custom_id is not ...:
        body = {"custom_id": custom_id, **body}
    return json.dumps(body).encode() + b"\n"


def parse(raw: bytes, line: int = 7, seen: set[str] | None = None) -> BatchRequest | LineError | None:
    return parse_line(raw, line, INPUTS, OUTPUTS, set() if seen is None else seen, MAX_LINE)


def error_of(raw: bytes, seen: set[str] | None = None) -> LineError:
    result = parse(raw, seen=seen)
    assert isinstance(result, LineError), result
    return result


def test_a_valid_line_gives_the_checked_request() -> None:
    result = parse(request(outputs=[{"name": "label"}], parameters={"priority": 1}))
    assert isinstance(result, BatchRequest)
    assert (result.line, result.custom_id, result.outputs, result.parameters) == (
        7,
        "req-1",
        ["label"],
        {"priority": 1},
    )
    assert [t.as_dict() for t in result.inputs] == [tensor()]


def test_nested_data_is_flattened_as_in_sync_requests() -> None:
    result = parse(request(inputs=[tensor(shape=[2, 4], data=[[1, 2, 3, 4], [5, 6, 7, 8]])]))
    assert isinstance(result, BatchRequest) and result.inputs[0].data == [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_line_endings_do_not_matter(ending: bytes) -> None:
    assert isinstance(parse(request().rstrip(b"\n") + ending), BatchRequest)


def test_a_byte_order_mark_is_ignored() -> None:
    assert isinstance(parse(b"\xef\xbb\xbf" + request()), BatchRequest)


@pytest.mark.parametrize("raw", [b"", b"\n", b"   \r\n", b"\t \n"])
def test_blank_lines_are_not_requests(raw: bytes) -> None:
    assert parse(raw) is None


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"{not json}\n", "invalid_json", "not valid JSON"),
        (b'{"custom_id": "a", \n', "invalid_json", "not valid JSON"),
        (b"\xff\xfe{}\n", "invalid_json", "not UTF-8"),
        (b"[1, 2]\n", "invalid_json", "JSON object"),
        (b'"text"\n', "invalid_json", "JSON object"),
        (request(...), "missing_custom_id", "custom_id is required"),
        (request(None), "missing_custom_id", "custom_id is required"),
        (request(17), "invalid_custom_id", "string of 1 to 256"),
        (request(""), "invalid_custom_id", "string of 1 to 256"),
        (request(["a"]), "invalid_custom_id", "string of 1 to 256"),
        (request("x" * 257), "invalid_custom_id", "string of 1 to 256"),
        (request(inputs=[tensor(datatype="INT64")]), "invalid_input", "/inputs/0/datatype: "),
        (request(inputs=[tensor(shape=[1, 3])]), "invalid_input", "/inputs/0/shape: "),
        (request(inputs=[tensor(data=[1, 2])]), "invalid_input", "/inputs/0/data: "),
        (request(inputs=[tensor(name="other")]), "invalid_input", "/inputs/0/name: unknown input 'other'"),
        (request(inputs=[]), "invalid_input", "/inputs: must be a non-empty list"),
        (request(inputs="1,2,3,4"), "invalid_input", "/inputs: must be a non-empty list"),
        (request(outputs=[{"name": "nope"}]), "invalid_input", "/outputs/0/name: unknown output 'nope'"),
        (request(parameters=[1]), "invalid_input", "/parameters: must be an object"),
        (request(model="digits"), "invalid_input", "/model: unknown field"),
    ],
)
def test_invalid_lines_get_a_stable_code(raw: bytes, code: str, fragment: str) -> None:
    error = error_of(raw)
    assert (error.code, error.line) == (code, 7)
    assert fragment in error.message, error.message


def test_a_custom_id_of_256_characters_is_fine() -> None:
    assert isinstance(parse(request("x" * 256)), BatchRequest)


def test_invalid_input_keeps_the_custom_id_and_names_the_first_problems() -> None:
    raw = request(
        "req-9",
        inputs=[tensor(name="a"), tensor(name="b"), tensor(name="c"), tensor(name="d")],
    )
    error = error_of(raw)
    assert error.custom_id == "req-9"
    assert error.message.count("unknown input") == 3
    assert error.message.endswith("(and 2 more)"), error.message  # 4 unknown, 1 missing


def test_the_second_line_with_a_custom_id_is_a_duplicate() -> None:
    seen: set[str] = set()
    assert isinstance(parse(request("a"), seen=seen), BatchRequest)
    error = error_of(request("a"), seen=seen)
    assert (error.code, error.custom_id) == ("duplicate_custom_id", "a")
    assert isinstance(parse(request("b"), seen=seen), BatchRequest)
    assert seen == {"a", "b"}


def test_a_custom_id_is_claimed_by_its_first_line_even_when_that_line_is_invalid() -> None:
    seen: set[str] = set()
    assert error_of(request("a", inputs=[]), seen=seen).code == "invalid_input"
    assert error_of(request("a"), seen=seen).code == "duplicate_custom_id"


def test_lines_that_are_not_requests_claim_no_custom_id() -> None:
    seen: set[str] = set()
    error_of(request(17), seen=seen)
    error_of(b"{oops\n", seen=seen)
    assert seen == set()


def test_line_too_long_is_checked_first_and_ignores_the_line_ending() -> None:
    body = request().rstrip(b"\n")
    padded = body[:-1] + b" " * (MAX_LINE - len(body)) + b"}"
    assert len(padded) == MAX_LINE
    assert isinstance(parse(padded + b"\r\n"), BatchRequest)
    error = error_of(padded + b" \n")
    assert (error.code, error.message) == ("line_too_long", f"the line is longer than {MAX_LINE} bytes")
    assert error_of(b" " * (MAX_LINE + 1)).code == "line_too_long"  # long whitespace is not blank


def test_a_line_cut_by_the_reader_is_too_long() -> None:
    # ObjectStore.iter_lines(max_line=reader_limit(MAX_LINE)) hands over the first MAX_LINE + 3 bytes.
    cut = (b"[" + b"1," * MAX_LINE)[: reader_limit(MAX_LINE) + 1]
    assert error_of(cut).code == "line_too_long"
    cut_at_cr = b"x" * MAX_LINE + b"\r\r\n"
    assert error_of(cut_at_cr).code == "line_too_long"


def test_output_and_error_lines_are_compact_json_lines() -> None:
    outputs = [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}]
    assert output_line("req-1", outputs) == (
        b'{"custom_id":"req-1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[3]}]}\n'
    )
    assert error_line("req-2", "inference_failed", "Triton said no") == (
        b'{"custom_id":"req-2","error":{"code":"inference_failed","message":"Triton said no"}}\n'
    )
    assert json.loads(error_line(None, "invalid_json", "bad", 12)) == {
        "custom_id": None,
        "error": {"code": "invalid_json", "message": "bad"},
        "line": 12,
    }


def test_output_lines_keep_unicode_and_reject_nan() -> None:
    assert output_line("Ünï", []) == '{"custom_id":"Ünï","outputs":[]}\n'.encode()
    with pytest.raises(ValueError):
        output_line("a", [{"data": [float("nan")]}])


def test_a_line_error_has_a_line_number_when_the_custom_id_does_not_identify_it() -> None:
    no_id = json.loads(line_error_line(error_of(b"[]")))
    assert no_id == {
        "custom_id": None,
        "error": {"code": "invalid_json", "message": no_id["error"]["message"]},
        "line": 7,
    }
    seen = {"a"}
    assert json.loads(line_error_line(error_of(request("a"), seen=seen)))["line"] == 7
    assert "line" not in json.loads(line_error_line(error_of(request("b", inputs=[]))))
    assert error_of(b"[]").as_dict()["line"] == 7


def spans(*lengths: int, start: int = 0, first: int = 1) -> list[tuple[int, int, int]]:
    out, position = [], start
    for number, length in enumerate(lengths, first):
        out.append((number, position, position + length))
        position += length
    return out


def test_plan_chunks_groups_lines() -> None:
    assert list(plan_chunks(spans(10, 10, 10, 10, 10), 2)) == [
        ChunkSpec(0, 0, 20, 1, 2),
        ChunkSpec(1, 20, 40, 3, 2),
        ChunkSpec(2, 40, 50, 5, 1),
    ]


def test_plan_chunks_of_nothing_is_nothing() -> None:
    assert list(plan_chunks([], 10)) == []


def test_plan_chunks_spans_blank_lines_left_out() -> None:
    # Lines 2 and 5 were blank (bytes 10-11 and 31-32) and are not given.
    lines = [(1, 0, 10), (3, 11, 21), (4, 21, 31), (6, 32, 42)]
    assert list(plan_chunks(lines, 3)) == [ChunkSpec(0, 0, 31, 1, 3), ChunkSpec(1, 32, 42, 6, 1)]


def test_plan_chunks_closes_a_chunk_at_the_byte_limit() -> None:
    assert list(plan_chunks(spans(40, 40, 40, 200, 10), 100, max_chunk_bytes=100)) == [
        ChunkSpec(0, 0, 80, 1, 2),
        ChunkSpec(1, 80, 120, 3, 1),
        ChunkSpec(2, 120, 320, 4, 1),  # one line longer than the limit is a chunk of its own
        ChunkSpec(3, 320, 330, 5, 1),
    ]


def test_plan_chunks_is_lazy() -> None:
    def endless() -> Any:
        number = 0
        while True:
            number += 1
            yield number, number * 10, number * 10 + 10

    planned = plan_chunks(endless(), 1000)
    first, second = next(planned), next(planned)
    assert (first.line_count, second.first_line) == (1000, 1001)


@pytest.mark.parametrize(
    "lines",
    [[(1, 0, 10), (2, 5, 15)], [(2, 0, 10), (1, 10, 20)], [(1, 10, 5)]],
)
def test_plan_chunks_refuses_lines_out_of_order(lines: list[tuple[int, int, int]]) -> None:
    with pytest.raises(ValueError, match="out of file order"):
        list(plan_chunks(lines, 10))


def test_plan_chunks_needs_a_positive_size() -> None:
    with pytest.raises(ValueError):
        list(plan_chunks(spans(1), 0))


def test_a_line_checked_again_alone_comes_out_as_the_planner_saw_it() -> None:
    from registry.batch_input import recheck_line

    seen: set[str] = set()
    lines = [request("a"), request("a"), request("b", inputs=[]), request("b"), b"[]", b"\n"]
    first_pass = [parse(line, number, seen) for number, line in enumerate(lines, 1)]
    duplicates = {
        number
        for number, found in enumerate(first_pass, 1)
        if isinstance(found, LineError) and found.code == "duplicate_custom_id"
    }
    assert duplicates == {2, 4}
    again = [
        recheck_line(line, n, INPUTS, OUTPUTS, n in duplicates, MAX_LINE) for n, line in enumerate(lines, 1)
    ]
    assert again == first_pass


TRICKY_DATA: list[Any] = [
    [1, 2, 3, 4],
    [1.5, 2, 3, 4],
    [True, False, True, False],
    [True, 2, 3, 4],
    [1, 2, 3, "4"],
    [1, 2, 3, None],
    [[1, 2], [3, 4]],
    [1, 2, 3],
    [1e39, 2, 3, 4],
    [-1e39, 2, 3, 4],
    [12345678901234567890123, 2, 3, 4],
    [-9223372036854775809, 2, 3, 4],
]


@pytest.mark.parametrize("data", TRICKY_DATA, ids=range(len(TRICKY_DATA)))
def test_the_quick_path_never_accepts_what_the_full_check_refuses(data: Any) -> None:
    """quick_line + confirm_values, alone and next to a valid line, accept a line only when
    parse_line does, with the same tensors; anything else is left to the full check."""
    from registry.batch_input import confirm_values, quick_line

    raw = request(inputs=[tensor(data=data)])
    full = parse(raw)
    quick = quick_line(raw, 7, INPUTS, MAX_LINE)
    good = quick_line(request("ok"), 8, INPUTS, MAX_LINE)
    assert good is not None and confirm_values([good])
    if quick is None:
        return
    for group in ([quick], [good, quick], [quick, good]):
        if confirm_values(group):
            assert isinstance(full, BatchRequest), data
            assert full.inputs == quick.inputs


def test_orjson_and_json_read_lines_alike() -> None:
    from registry.batch_input import load_json

    for raw in (b'{"a": 12345678901234567890}', b'\xef\xbb\xbf{"a": 1}', b'{"a": NaN}', b'{"a": 1e400}'):
        assert repr(load_json(raw)) == repr(json.loads(raw.decode("utf-8-sig")))


def test_long_digit_runs_are_found_as_the_regex_finds_them() -> None:
    import random
    import re

    from inferq.jsonio import has_long_digits

    pattern = re.compile(rb"\d{19}")
    rng = random.Random(3)
    samples = [b"", b"1" * 18, b"1" * 19, b"x" + b"9" * 19 + b"x", b"12345678901234567890", b"\xd9\xa0" * 30]
    alphabet = b"0123456789.,e-\xd9\xa0 x"
    for _ in range(2000):
        samples.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))))
        samples.append(bytes(rng.choice(b"0123456789x") for _ in range(rng.randrange(15, 45))))
    for raw in samples:
        assert has_long_digits(raw) == bool(pattern.search(raw)), raw
