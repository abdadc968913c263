"""Triton's binary tensor data extension, both ways, against what tritonclient itself encodes and decodes."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http import InferResult

from tasks.pipeline import PipelineError
from webapp import v2_codec
from webapp.v2_codec import DecodedRequest

DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def client_body(
    arrays: dict[str, tuple[str, np.ndarray]],
    binary: bool = True,
    outputs: list[Any] | None = None,
    **kwargs: Any,
) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length tritonclient sends for these inputs."""
    inputs = []
    for name, (datatype, array) in arrays.items():
        item = httpclient.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    body, length = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    return body, None if length is None else str(length)


def decode(body: bytes, length: str | None) -> DecodedRequest:
    header, binary = v2_codec.split_body(body, length)
    return v2_codec.decode_request(header, binary)


def problem_pointers(exc: pytest.ExceptionInfo[PipelineError]) -> list[str]:
    return [p.pointer for p in exc.value.problems]


@pytest.mark.parametrize("datatype", sorted(DTYPES))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_numeric_datatype_decodes_to_the_values_sent(datatype: str, binary: bool) -> None:
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        array = rng.integers(0, 2, (3, 4)).astype(np.bool_)
    elif datatype.startswith("FP"):
        array = rng.normal(size=(3, 4)).astype(DTYPES[datatype])
    else:
        info = np.iinfo(DTYPES[datatype])
        array = rng.integers(info.min, info.max, (3, 4), dtype=DTYPES[datatype], endpoint=True)
    body, length = client_body({"x": (datatype, array)}, binary=binary)
    assert (length is not None) == binary
    decoded = decode(body, length)
    tensor = decoded.body["inputs"][0]
    assert tensor["name"] == "x" and tensor["datatype"] == datatype and tensor["shape"] == [3, 4]
    assert "parameters" not in tensor
    np.testing.assert_array_equal(np.asarray(tensor["data"], dtype=DTYPES[datatype]).reshape(3, 4), array)


def test_bytes_inputs_decode_to_text() -> None:
    array = np.array([["héllo", ""], ["a", "bc"]], dtype=np.object_)
    body, length = client_body({"s": ("BYTES", array)})
    assert decode(body, length).body["inputs"][0]["data"] == ["héllo", "", "a", "bc"]
    raw = v2_codec.encode_bytes_elements(["héllo", b"\x00x"])
    assert v2_codec.decode_bytes_elements(raw) == ["héllo".encode(), b"\x00x"]
    assert v2_codec.decode_bytes_elements(raw[:-1]) is None
    assert v2_codec.decode_bytes_elements(b"\x01\x00") is None


def test_non_utf8_bytes_are_refused() -> None:
    body, length = client_body({"s": ("BYTES", np.array([b"\xff\xfe"], dtype=np.object_))})
    with pytest.raises(PipelineError) as exc:
        decode(body, length)
    assert exc.value.status == 400 and "UTF-8" in exc.value.detail


def test_several_binary_inputs_take_their_bytes_in_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, 8], dtype=np.int64)
    body, length = client_body({"a": ("FP32", a), "b": ("INT64", b)})
    inputs = decode(body, length).body["inputs"]
    assert inputs[0]["data"] == a.reshape(-1).tolist() and inputs[1]["data"] == [7, 8]


def test_mixed_json_and_binary_inputs() -> None:
    x = httpclient.InferInput("x", [2], "FP32").set_data_from_numpy(np.array([1, 2], np.float32))
    y = httpclient.InferInput("y", [1], "INT32").set_data_from_numpy(
        np.array([5], np.int32), binary_data=False
    )
    body, length = httpclient.InferenceServerClient.generate_request_body([x, y])
    inputs = decode(body, str(length)).body["inputs"]
    assert [i["data"] for i in inputs] == [[1.0, 2.0], [5]]


@pytest.mark.parametrize(
    ("shape", "size", "pointer"),
    [
        ([2, 64], 508, "/inputs/0/parameters/binary_data_size"),  # too few bytes for the shape
        ([2, 63], 512, "/inputs/0/parameters/binary_data_size"),  # shape and bytes disagree
        ([2, -1], 512, "/inputs/0/shape"),
        ("2x64", 512, "/inputs/0/shape"),
        ([2, 64], -1, "/inputs/0/parameters/binary_data_size"),
        ([2, 64], True, "/inputs/0/parameters/binary_data_size"),
        ([2, 64], 9999, "/inputs/0/parameters/binary_data_size"),  # more than follows the header
    ],
)
def test_binary_sizes_and_shapes_that_disagree_are_400(shape: Any, size: Any, pointer: str) -> None:
    header = {
        "inputs": [
            {"name": "input", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}
        ]
    }
    with pytest.raises(PipelineError) as exc:
        v2_codec.decode_request(header, bytes(512))
    assert exc.value.status == 400 and pointer in problem_pointers(exc), exc.value.detail


def test_unknown_datatype_of_binary_input_is_400() -> None:
    header = {
        "inputs": [{"name": "i", "shape": [1], "datatype": "BF16", "parameters": {"binary_data_size": 2}}]
    }
    with pytest.raises(PipelineError) as exc:
        v2_codec.decode_request(header, bytes(2))
    assert problem_pointers(exc) == ["/inputs/0/datatype"]


def test_bytes_left_over_after_the_inputs_are_400() -> None:
    body, length = client_body({"x": ("FP32", np.zeros(2, np.float32))})
    with pytest.raises(PipelineError) as exc:
        decode(body + b"\0\0\0\0", length)
    assert "belong to no input" in exc.value.detail


@pytest.mark.parametrize("length", ["0", "-3", "abc", "1e3", "99999999", "", " ", "١٢"])
def test_bad_header_lengths_are_400(length: str) -> None:
    with pytest.raises(PipelineError) as exc:
        v2_codec.split_body(b'{"inputs": []}', length)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [b"", b"{nope", b"[1, 2]", b"\xff\xfe", b"[" * 100_000, b'{"inputs": ' + b"[" * 40 + b"]" * 40 + b"}"],
)
def test_headers_that_are_not_a_json_object_are_400(raw: bytes) -> None:
    with pytest.raises(PipelineError) as exc:
        v2_codec.split_body(raw, None)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("header", "pointer"),
    [
        ({"inputs": [], "parameters": {"binary_data_output": "yes"}}, "/parameters/binary_data_output"),
        ({"inputs": [], "parameters": {"sequence_id": 4}}, "/parameters/sequence_id"),
        ({"inputs": [], "parameters": {"timeout": -1}}, "/parameters/timeout"),
        ({"inputs": [], "parameters": []}, "/parameters"),
        (
            {"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 3}}]},
            "/outputs/0/parameters/classification",
        ),
        (
            {"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "/outputs/0/parameters/binary_data",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"shared_memory_region": "r"},
                    }
                ]
            },
            "/inputs/0/parameters/shared_memory_region",
        ),
    ],
)
def test_unsupported_or_malformed_parameters_are_400(header: dict[str, Any], pointer: str) -> None:
    with pytest.raises(PipelineError) as exc:
        v2_codec.decode_request(header)
    assert pointer in problem_pointers(exc)


def test_json_bodies_pass_through_for_the_pipeline_to_check() -> None:
    header = {"id": "r1", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1, 2]]}, 5]}
    decoded = v2_codec.decode_request(header)
    assert decoded.body == {"id": "r1", "inputs": [header["inputs"][0], 5]}
    assert v2_codec.decode_request({"inputs": "nope"}).body == {"inputs": "nope"}


def test_output_encoding_choices_follow_triton() -> None:
    plain = v2_codec.decode_request({"inputs": []})
    assert not plain.wants_binary("y")
    everything = v2_codec.decode_request({"inputs": [], "parameters": {"binary_data_output": True}})
    assert everything.wants_binary("y")
    chosen = v2_codec.decode_request(
        {
            "inputs": [],
            "parameters": {"binary_data_output": True, "timeout": 2_500_000},
            "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
        }
    )
    assert not chosen.wants_binary("a") and chosen.wants_binary("b")
    assert chosen.body["outputs"] == [{"name": "a"}, {"name": "b"}] and chosen.timeout == 2.5


ANSWER = {
    "model_name": "m",
    "model_version": "1",
    "id": "r1",
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [4, 7]},
        {"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.1, 0.9]},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["héllo"]},
    ],
    "parameters": {"gpu": 0},
}


@pytest.mark.parametrize("encoding", [None, "gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_responses_read_back_with_tritonclient(binary: bool, encoding: str | None) -> None:
    request = DecodedRequest({}, binary_default=binary)
    encoded = v2_codec.encode_response(ANSWER, request)
    assert (encoded.header_length is not None) == binary
    assert encoded.content_type == ("application/octet-stream" if binary else "application/json")
    body, used = v2_codec.compress(encoded.body, encoding or "identity")
    assert used == encoding
    result = InferResult.from_response_body(body, header_length=encoded.header_length, content_encoding=used)
    np.testing.assert_array_equal(result.as_numpy("label"), np.array([4, 7], np.int64))
    np.testing.assert_array_equal(result.as_numpy("p"), np.array([[0.25, 0.75], [0.1, 0.9]], np.float32))
    assert result.as_numpy("p").dtype == np.float32
    assert result.as_numpy("s").tolist() == (["héllo".encode()] if binary else ["héllo"])
    response = result.get_response()
    assert response["model_name"] == "m" and response["id"] == "r1" and response["parameters"] == {"gpu": 0}


def test_only_outputs_asked_in_binary_are_binary() -> None:
    request = DecodedRequest({}, binary_outputs={"p": True})
    encoded = v2_codec.encode_response(ANSWER, request)
    assert encoded.header_length is not None
    header = json.loads(encoded.body[: encoded.header_length])
    by_name = {o["name"]: o for o in header["outputs"]}
    assert by_name["p"]["parameters"] == {"binary_data_size": 16} and "data" not in by_name["p"]
    assert by_name["label"]["data"] == [4, 7] and len(encoded.body) == encoded.header_length + 16


def test_compression_negotiation() -> None:
    assert v2_codec.compress(b"x", "")[1] is None
    assert v2_codec.compress(b"x", "gzip;q=0, deflate")[1] == "deflate"
    assert v2_codec.compress(b"x", "br, gzip")[1] == "gzip"


def test_compressed_requests_inflate_within_the_limit() -> None:
    raw = b'{"inputs": []}'
    assert v2_codec.decompress(gzip.compress(raw), "gzip", 100) == raw
    assert v2_codec.decompress(zlib.compress(raw), "deflate", 100) == raw
    assert v2_codec.decompress(raw, None, 100) == raw
    with pytest.raises(PipelineError) as exc:
        v2_codec.decompress(gzip.compress(bytes(10_000)), "gzip", 1000)
    assert exc.value.status == 413
    with pytest.raises(PipelineError) as exc:
        v2_codec.decompress(gzip.compress(raw)[:-5], "gzip", 100)
    assert exc.value.status == 400
    with pytest.raises(PipelineError) as exc:
        v2_codec.decompress(b"junk", "gzip", 100)
    assert exc.value.status == 400
    with pytest.raises(PipelineError) as exc:
        v2_codec.decompress(raw, "br", 100)
    assert exc.value.status == 415
