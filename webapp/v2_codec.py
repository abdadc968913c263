"""Triton's HTTP body formats for ``/v2``: pure functions between request/response bytes and the
request pipeline's Open Inference Protocol body (flat JSON ``data`` lists).

Binary tensor data extension: a body is a JSON header, followed (when the
``Inference-Header-Content-Length`` header gives the JSON's length) by raw tensor bytes. An input
with ``parameters.binary_data_size`` takes that many bytes, in input order: little-endian,
row-major values of its datatype, or for ``BYTES`` each element as a 4-byte little-endian length
and its bytes. Outputs travel the same way back when asked for (``binary_data_output`` in the
request's parameters, ``binary_data`` on a requested output). Problems are
:class:`~tasks.pipeline.PipelineError` s (400 naming the field, 413, 415), as the pipeline's own.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferq.tensors import NUMPY_DTYPES
from registry.signatures import Problem
from tasks.pipeline import PipelineError, invalid
from webapp.bodies import MAX_JSON_DEPTH, json_depth_exceeds

HEADER_LENGTH = "Inference-Header-Content-Length"
# Request parameters of Triton features inferq does not offer: refused rather than ignored.
UNSUPPORTED_INPUT_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
UNSUPPORTED_OUTPUT_PARAMETERS = ("classification", *UNSUPPORTED_INPUT_PARAMETERS)


def _bad(pointer: str, detail: str) -> PipelineError:
    return invalid([Problem(pointer, detail)], "The inference request is not valid")


@dataclass(frozen=True)
class DecodedRequest:
    """A /v2 inference request in the pipeline's terms, and how its answer is to be encoded."""

    body: dict[str, Any]  # Open Inference Protocol body with flat ``data`` lists: pipeline.check_request
    binary_default: bool = False  # ``parameters.binary_data_output``
    binary_outputs: Mapping[str, bool] = field(default_factory=dict)  # per requested output
    timeout: float | None = None  # seconds, from Triton's ``parameters.timeout`` (microseconds)

    def wants_binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_default)


@dataclass(frozen=True)
class EncodedResponse:
    """A response body; ``header_length`` is set when raw output bytes follow the JSON header."""

    body: bytes
    header_length: int | None

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body under its ``Content-Encoding`` (gzip or deflate, as tritonclient sends), at most
    ``limit`` bytes once inflated (413 beyond, 415 for another encoding)."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return raw
    if name not in ("gzip", "deflate"):
        raise PipelineError(
            415,
            "unsupported-media-type",
            "Unsupported Content-Encoding",
            f"{encoding!r}: send gzip, deflate or an uncompressed body",
        )
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if name == "gzip" else 32))
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise _bad("/", f"the body is not valid {name} data: {exc}") from None
    if len(body) > limit:
        raise PipelineError(
            413,
            "request-entity-too-large",
            "Request Entity Too Large",
            f"inflated, the body exceeds {limit} bytes",
        )
    if not inflater.eof:
        raise _bad("/", f"the {name} body is truncated")
    return body


def split_body(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header (an object) and the binary data after it (empty without ``header_length``)."""
    binary = memoryview(b"")
    if header_length is not None:
        text = header_length.strip()
        length = int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else -1
        if not 0 < length <= len(raw):
            raise _bad(
                "/",
                f"{HEADER_LENGTH} must be the length in bytes of the JSON header, from 1 to the body's "
                f"{len(raw)}, not {header_length!r}",
            )
        binary = memoryview(raw)[length:]
        raw = raw[:length]
    if not raw:
        raise _bad("/", "the request body is empty; send a JSON object")
    if json_depth_exceeds(raw):
        raise _bad("/", f"the request header nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("/", f"the request header is not valid JSON: {exc}") from None
    except RecursionError:
        raise _bad("/", "the request header nests too deeply") from None
    if not isinstance(header, dict):
        raise _bad("/", "the request body must be a JSON object")
    return header, binary


def decode_request(header: Mapping[str, Any], binary: bytes | memoryview = b"") -> DecodedRequest:
    """A /v2 request (JSON header and binary data) as the pipeline's body, with flat ``data`` lists.

    Tensors sent as JSON pass through unchanged (the pipeline checks them); binary ones are
    decoded by datatype and shape. Every problem found is reported at once (400).
    """
    problems: list[Problem] = []
    parameters = _parameters(header.get("parameters"), "/parameters", problems)
    binary_default = _flag(parameters, "binary_data_output", "/parameters", problems)
    sequence = parameters.get("sequence_id")
    if sequence not in (None, 0, ""):
        problems.append(Problem("/parameters/sequence_id", "sequence (stateful) models are not supported"))
    timeout = _timeout(parameters.get("timeout"), problems)

    view = memoryview(binary)
    offset = 0
    inputs: Any = header.get("inputs")
    body_inputs: Any = inputs
    if isinstance(inputs, list):
        body_inputs = []
        for index, tensor in enumerate(inputs):
            where = f"/inputs/{index}"
            if not isinstance(tensor, dict):
                body_inputs.append(tensor)  # the pipeline names what is wrong with it
                continue
            params = _parameters(tensor.get("parameters"), f"{where}/parameters", problems)
            _refuse(params, UNSUPPORTED_INPUT_PARAMETERS, f"{where}/parameters", "shared memory", problems)
            item = {key: tensor[key] for key in ("name", "shape", "datatype", "data") if key in tensor}
            size = params.get("binary_data_size")
            if size is not None:
                if not _is_count(size):
                    problems.append(
                        Problem(f"{where}/parameters/binary_data_size", "must be an integer >= 0")
                    )
                elif offset + size > len(view):
                    problems.append(
                        Problem(
                            f"{where}/parameters/binary_data_size",
                            f"{size} bytes asked from offset {offset}, but {len(view)} bytes of binary "
                            f"data follow the header ({HEADER_LENGTH})",
                        )
                    )
                else:
                    raw = view[offset : offset + size]
                    offset += size
                    if "data" in tensor:
                        problems.append(Problem(f"{where}/data", "give data or binary_data_size, not both"))
                    else:
                        decoded = decode_tensor(tensor.get("datatype"), tensor.get("shape"), raw, where)
                        if isinstance(decoded, Problem):
                            problems.append(decoded)
                        else:
                            item["data"] = decoded
            body_inputs.append(item)
    if offset != len(view) and not problems:
        problems.append(
            Problem(
                "/inputs", f"{len(view) - offset} bytes of binary data after the header belong to no input"
            )
        )

    body: dict[str, Any] = {"inputs": body_inputs}
    if "id" in header:
        body["id"] = header["id"]
    binary_outputs: dict[str, bool] = {}
    outputs = header.get("outputs")
    if outputs is not None:
        body["outputs"] = outputs
        if isinstance(outputs, list):
            body["outputs"] = []
            for index, output in enumerate(outputs):
                if not isinstance(output, dict):
                    body["outputs"].append(output)
                    continue
                where = f"/outputs/{index}/parameters"
                params = _parameters(output.get("parameters"), where, problems)
                _refuse(
                    params, UNSUPPORTED_OUTPUT_PARAMETERS, where, "classification or shared memory", problems
                )
                wanted = _flag(params, "binary_data", where, problems)
                if "binary_data" in params and isinstance(output.get("name"), str):
                    binary_outputs[output["name"]] = wanted
                body["outputs"].append({"name": output.get("name")})
    if problems:
        raise invalid(problems, "The inference request is not valid")
    return DecodedRequest(body, binary_default, binary_outputs, timeout)


def decode_tensor(datatype: Any, shape: Any, raw: bytes | memoryview, where: str) -> list[Any] | Problem:
    """Raw tensor bytes as a flat list of ``datatype`` values, or the problem with them."""
    if datatype not in NUMPY_DTYPES:
        return Problem(f"{where}/datatype", f"{datatype!r} is not one of {', '.join(NUMPY_DTYPES)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return Problem(f"{where}/shape", "must be a list of sizes >= 0")
    count = math.prod(shape)
    if datatype == "BYTES":
        elements = decode_bytes_elements(raw)
        if elements is None:
            return Problem(
                f"{where}/parameters/binary_data_size",
                "BYTES data must be elements of a 4-byte little-endian length and that many bytes",
            )
        if len(elements) != count:
            return Problem(
                f"{where}/shape", f"shape {shape} needs {count} elements, the data holds {len(elements)}"
            )
        try:
            # The pipeline carries text: BYTES values that are not UTF-8 cannot travel.
            return [element.decode() for element in elements]
        except UnicodeDecodeError:
            return Problem(f"{where}/parameters/binary_data_size", "BYTES elements must be UTF-8 text here")
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        return Problem(
            f"{where}/parameters/binary_data_size",
            f"shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, not {len(raw)}",
        )
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def decode_bytes_elements(raw: bytes | memoryview) -> list[bytes] | None:
    """Length-prefixed elements (Triton's BYTES serialization), or None when malformed."""
    view = memoryview(raw)
    elements, offset = [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            return None
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            return None
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def encode_bytes_elements(values: Sequence[str | bytes]) -> bytes:
    """Elements as Triton's BYTES serialization (4-byte little-endian length, then the bytes)."""
    parts = []
    for value in values:
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_tensor(datatype: str, data: Sequence[Any]) -> bytes:
    """A flat list of values as raw little-endian bytes of ``datatype``."""
    if datatype == "BYTES":
        return encode_bytes_elements(data)
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    return np.asarray(data, dtype=dtype).tobytes()


def encode_response(answer: Mapping[str, Any], request: DecodedRequest) -> EncodedResponse:
    """The pipeline's answer as a /v2 response: JSON, with each output asked for in binary as raw
    bytes after it (``binary_data_size`` in its parameters)."""
    outputs, buffers = [], []
    for output in answer["outputs"]:
        item = {"name": output["name"], "datatype": output["datatype"], "shape": output["shape"]}
        if request.wants_binary(output["name"]):
            raw = encode_tensor(output["datatype"], output["data"])
            item["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            item["data"] = output["data"]
        outputs.append(item)
    header: dict[str, Any] = {"model_name": answer["model_name"], "model_version": answer["model_version"]}
    if answer.get("id"):
        header["id"] = answer["id"]
    if answer.get("parameters"):
        header["parameters"] = answer["parameters"]
    header["outputs"] = outputs
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not buffers:
        return EncodedResponse(encoded, None)
    return EncodedResponse(b"".join([encoded, *buffers]), len(encoded))


def compress(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """``body`` compressed as the client accepts (gzip, else deflate, as Triton does), and the
    ``Content-Encoding``; unchanged when it accepts neither."""
    accepted = set()
    for token in accept_encoding.lower().split(","):
        name, _, params = token.partition(";")
        if params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            accepted.add(name.strip())
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=6, mtime=0), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 6), "deflate"
    return body, None


def _parameters(raw: Any, pointer: str, problems: list[Problem]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(Problem(pointer, "must be an object"))
        return {}
    return raw


def _flag(parameters: Mapping[str, Any], name: str, pointer: str, problems: list[Problem]) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        problems.append(Problem(f"{pointer}/{name}", "must be true or false"))
        return False
    return value


def _refuse(
    parameters: Mapping[str, Any], names: Sequence[str], pointer: str, feature: str, problems: list[Problem]
) -> None:
    for name in names:
        if name in parameters:
            problems.append(Problem(f"{pointer}/{name}", f"{feature} is not supported by inferq"))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _timeout(raw: Any, problems: list[Problem]) -> float | None:
    """Triton's request ``timeout`` parameter (microseconds; 0: none) in seconds."""
    if raw is None or raw == 0:
        return None
    if not _is_count(raw):
        problems.append(Problem("/parameters/timeout", "must be an integer number of microseconds >= 0"))
        return None
    seconds: float = raw / 1_000_000
    return seconds
