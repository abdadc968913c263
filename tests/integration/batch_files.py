"""Builders for batch tests: input files with known good and bad lines, upload, wait, download."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
from sklearn.datasets import load_digits

from tests.fixtures import Stack

DIGITS = load_digits().data.astype(np.float32)
FINAL = ("completed", "failed", "cancelled")


def request_line(custom_id: Any, row: np.ndarray, **extra: Any) -> dict[str, Any]:
    body = {
        "custom_id": custom_id,
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}],
    }
    body.update(extra)
    return body


@dataclass
class InputFile:
    """A JSONL input and what each of its request lines must become."""

    data: bytes
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # custom_id -> input row (valid lines)
    errors: dict[int, str] = field(default_factory=dict)  # line number -> error code (invalid lines)
    error_ids: dict[int, str | None] = field(default_factory=dict)  # line number -> its custom_id

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.errors)


def make_input(count: int, bad_every: int = 0, seed: int = 7, prefix: str = "row") -> InputFile:
    """``count`` lines of digits rows; with ``bad_every``, about one line in ``bad_every`` is bad in
    one of the ways a file can be (bad JSON, no or bad custom_id, duplicate, wrong shape, type, name)."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    result = InputFile(b"")
    for i in range(count):
        number = len(lines) + 1
        row = DIGITS[i % len(DIGITS)]
        custom_id = f"{prefix}-{i}"
        kind = rng.randrange(7) if bad_every and rng.randrange(bad_every) == 0 else None
        if kind is None or (kind == 3 and not result.rows):
            lines.append(json.dumps(request_line(custom_id, row)).encode())
            result.rows[custom_id] = row
            continue
        if kind == 0:
            lines.append(b'{"custom_id": "' + custom_id.encode() + b'", "inputs": [')
            result.errors[number], result.error_ids[number] = "invalid_json", None
        elif kind == 1:
            lines.append(json.dumps({"inputs": request_line("x", row)["inputs"]}).encode())
            result.errors[number], result.error_ids[number] = "missing_custom_id", None
        elif kind == 2:
            lines.append(json.dumps(request_line(12345, row)).encode())
            result.errors[number], result.error_ids[number] = "invalid_custom_id", None
        elif kind == 3:
            taken = rng.choice(sorted(result.rows))
            lines.append(json.dumps(request_line(taken, row)).encode())
            result.errors[number], result.error_ids[number] = "duplicate_custom_id", taken
        elif kind == 4:
            body = request_line(custom_id, row)
            body["inputs"][0]["shape"] = [1, 63]
            lines.append(json.dumps(body).encode())
            result.errors[number], result.error_ids[number] = "invalid_input", custom_id
        elif kind == 5:
            body = request_line(custom_id, row)
            body["inputs"][0]["datatype"] = "INT64"
            lines.append(json.dumps(body).encode())
            result.errors[number], result.error_ids[number] = "invalid_input", custom_id
        else:
            body = request_line(custom_id, row)
            body["inputs"][0]["name"] = "pixels"
            lines.append(json.dumps(body).encode())
            result.errors[number], result.error_ids[number] = "invalid_input", custom_id
        if rng.randrange(10) == 0:
            lines.append(b"")  # a blank line now and then: no request, but it counts as a line
    result.data = b"\n".join(lines) + b"\n"
    return result


def multipart(
    data: bytes, name: str = "input.jsonl", boundary: str | None = None, **fields: str
) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and the file ``data`` in the field ``file``."""
    from urllib3 import encode_multipart_formdata

    parts: dict[str, Any] = {**fields, "file": (name, data, "application/jsonl")}
    return encode_multipart_formdata(parts, boundary=boundary)


def upload(stack: Stack, data: bytes, key: str | None = None, name: str = "input.jsonl") -> dict[str, Any]:
    body, content_type = multipart(data, name)
    response = stack.client().post("/v1/files", data=body, headers=stack.auth(key), content_type=content_type)
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def create_batch(
    stack: Stack, file_id: str, key: str | None = None, model: str = "digits", **extra: Any
) -> dict[str, Any]:
    response = stack.client().post(
        "/v1/batches", json={"model": model, "input_file_id": file_id, **extra}, headers=stack.auth(key)
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def get_batch(stack: Stack, batch_id: str, key: str | None = None) -> dict[str, Any]:
    response = stack.client().get(f"/v1/batches/{batch_id}", headers=stack.auth(key))
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def wait_for(
    stack: Stack, batch_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 240
) -> dict[str, Any]:
    """Poll the batch until its status is one of ``statuses`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = get_batch(stack, batch_id)
        if batch["status"] in statuses:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not {statuses} after {timeout}s: {batch}")


def download(stack: Stack, file_id: str | None, key: str | None = None) -> list[dict[str, Any]]:
    """The lines of a file, through its presigned URL (none for a null file id)."""
    if file_id is None:
        return []
    response = stack.client().get(f"/v1/files/{file_id}/content", headers=stack.auth(key))
    assert response.status_code == 302, response.get_data(as_text=True)
    content = requests.get(response.headers["Location"], timeout=30)
    assert content.status_code == 200, content.text[:300]
    return [json.loads(line) for line in content.content.splitlines()]
