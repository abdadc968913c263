"""Bad inference requests: a problem+json 400 (or 404/401) naming the problem, and nothing queued."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures import Stack

pytestmark = pytest.mark.integration

ROW = [0.0] * 64


def tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW, **overrides}


def queued_task_count(stack: Stack) -> int:
    return sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*"))


CASES = [
    ("unknown input", {"inputs": [tensor(name="pixels")]}, "/inputs/0/name", "unknown input 'pixels'"),
    ("missing input", {"inputs": []}, "/inputs", "non-empty list"),
    ("wrong datatype", {"inputs": [tensor(datatype="INT32")]}, "/inputs/0/datatype", "wants FP32"),
    ("wrong shape", {"inputs": [tensor(shape=[1, 63], data=[0.0] * 63)]}, "/inputs/0/shape", "[-1, 64]"),
    ("wrong rank", {"inputs": [tensor(shape=[64])]}, "/inputs/0/shape", "shape [64]"),
    ("data length", {"inputs": [tensor(shape=[2, 64])]}, "/inputs/0/data", "needs 128 values, data has 64"),
    ("strings as FP32", {"inputs": [tensor(data=["a"] * 64)]}, "/inputs/0/data", "string values, not FP32"),
    ("duplicate input", {"inputs": [tensor(), tensor()]}, "/inputs/1/name", "given twice"),
    (
        "unknown output",
        {"inputs": [tensor()], "outputs": [{"name": "logits"}]},
        "/outputs/0/name",
        "'logits'",
    ),
    ("not an object", [tensor()], "/", "JSON object"),
]


@pytest.mark.parametrize(("body", "pointer", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_request_is_a_400_naming_the_field(stack: Stack, body: Any, pointer: str, text: str) -> None:
    before = queued_task_count(stack)
    response = stack.client().post("/v1/models/digits/infer", json=body, headers=stack.auth())
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 400 and problem["type"].endswith("invalid-request")
    assert any(e["pointer"] == pointer and text in e["detail"] for e in problem["errors"]), problem
    assert queued_task_count(stack) == before, "a bad request must not queue anything"


def test_missing_input_is_named(stack: Stack) -> None:
    # The model has one input; a body with only an unknown tensor also lacks 'input'.
    response = stack.client().post(
        "/v1/models/digits/infer", json={"inputs": [tensor(name="x")]}, headers=stack.auth()
    )
    errors = response.get_json()["errors"]
    assert {"pointer": "/inputs", "detail": "missing input 'input'"} in errors


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"inputs": [', "\xff".encode("latin-1")])
def test_malformed_json(stack: Stack, raw: bytes) -> None:
    before = queued_task_count(stack)
    response = stack.client().post(
        "/v1/models/digits/infer", data=raw, headers={**stack.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert response.get_json()["title"] == "Malformed JSON"
    assert queued_task_count(stack) == before


def test_unknown_model_and_version_are_404(stack: Stack) -> None:
    body = {"inputs": [tensor()]}
    response = stack.client().post("/v1/models/nope/infer", json=body, headers=stack.auth())
    assert response.status_code == 404 and response.get_json()["detail"] == "no model named 'nope'"
    response = stack.client().post("/v1/models/digits/versions/9/infer", json=body, headers=stack.auth())
    assert response.status_code == 404 and "version '9'" in response.get_json()["detail"]


@pytest.mark.parametrize("timeout", ["-1", "abc", "1e9", "nan"])
def test_bad_timeout_parameter(stack: Stack, timeout: str) -> None:
    response = stack.client().post(
        f"/v1/models/digits/infer?timeout={timeout}", json={"inputs": [tensor()]}, headers=stack.auth()
    )
    assert response.status_code == 400 and "timeout" in response.get_json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer iq_not-a-real-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no-header", "unknown-key", "wrong-scheme"],
)
def test_v1_needs_a_valid_key(stack: Stack, headers: dict[str, str]) -> None:
    response = stack.client().post("/v1/models/digits/infer", json={"inputs": [tensor()]}, headers=headers)
    assert response.status_code == 401 and response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert stack.client().get("/v1/tasks/abc", headers=headers).status_code == 401


def test_request_id_is_echoed(stack: Stack) -> None:
    response = stack.client().post(
        "/v1/models/nope/infer", json={}, headers={**stack.auth(), "X-Request-ID": "abc-1"}
    )
    assert response.headers["X-Request-ID"] == "abc-1"
    assert response.get_json()["request_id"] == "abc-1"
