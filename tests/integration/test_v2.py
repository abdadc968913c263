"""Unmodified ``tritonclient.http`` code against inferq's /v2 (only the URL and the Authorization
header change), compared with the same calls made straight to the stack's Triton."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from tasks import pipeline
from tests.fixtures import Stack, TritonServer

pytestmark = pytest.mark.integration


@pytest.fixture
def inferq(api_url: str) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(api_url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def direct(triton: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(triton.url.removeprefix("http://"))
    yield client
    client.close()


def rows(start: int, count: int) -> np.ndarray:
    return load_digits().data[start : start + count].astype(np.float32)


def infer(
    client: httpclient.InferenceServerClient,
    data: np.ndarray,
    binary_in: bool,
    binary_out: bool | None,
    **kwargs: Any,
) -> httpclient.InferResult:
    """The tritonclient call a user already has; binary_out None: no outputs named (all, in binary)."""
    item = httpclient.InferInput("input", list(data.shape), "FP32")
    item.set_data_from_numpy(data, binary_data=binary_in)
    outputs = None
    if binary_out is not None:
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=binary_out)
            for name in ("label", "probabilities")
        ]
    return client.infer("digits", [item], outputs=outputs, **kwargs)


def auth(stack: Stack, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or stack.user_key}"}


def registered_only(stack: Stack) -> str:
    """A model registered and never deployed (other tests deploy the repository's iris)."""
    import uuid

    name = f"v2-idle-{uuid.uuid4().hex[:8]}"
    spec = {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    body = {"name": name, "version": "1", "inputs": [spec], "outputs": [{**spec, "name": "y"}]}
    response = stack.client().post("/v1/models", json=body, headers=auth(stack, stack.admin_key))
    assert response.status_code == 201, response.get_data(as_text=True)
    return name


@pytest.mark.parametrize("binary_out", [True, False, None], ids=["out-binary", "out-json", "out-default"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
def test_infer_matches_triton_direct(
    stack: Stack,
    inferq: httpclient.InferenceServerClient,
    direct: httpclient.InferenceServerClient,
    binary_in: bool,
    binary_out: bool | None,
) -> None:
    data = rows(100, 48)
    ours = infer(inferq, data, binary_in, binary_out, headers=auth(stack), request_id="req-7")
    theirs = infer(direct, data, binary_in, binary_out, request_id="req-7")
    for name in ("label", "probabilities"):
        got, want = ours.as_numpy(name), theirs.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
    assert (ours.as_numpy("label") == load_digits().target[100:148]).mean() > 0.9
    response = ours.get_response()
    assert (
        response["model_name"] == "digits" and response["model_version"] == "1" and response["id"] == "req-7"
    )
    binary = binary_out is not False
    for output in response["outputs"]:
        assert ("binary_data_size" in output.get("parameters", {})) == binary, output
        assert ("data" in output) == (not binary), output
    # It went through the pipeline to a GPU queue's worker, as /v1 does.
    assert response["parameters"]["queue"] == f"gpu.{response['parameters']['gpu']}"


def test_versioned_and_compressed_requests(
    stack: Stack, inferq: httpclient.InferenceServerClient, direct: httpclient.InferenceServerClient
) -> None:
    data = rows(0, 5)
    want = infer(direct, data, True, True).as_numpy("probabilities")
    for compression in ("gzip", "deflate"):
        result = infer(
            inferq,
            data,
            True,
            True,
            model_version="1",
            headers=auth(stack),
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        np.testing.assert_array_equal(result.as_numpy("probabilities"), want)


def test_only_some_outputs_some_in_binary(stack: Stack, inferq: httpclient.InferenceServerClient) -> None:
    item = httpclient.InferInput("input", [2, 64], "FP32").set_data_from_numpy(rows(3, 2))
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = inferq.infer("digits", [item], outputs=outputs, headers=auth(stack))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.get_response()["outputs"][0]["data"] == result.as_numpy("label").tolist()
    assert result.as_numpy("probabilities") is None


def test_health_and_metadata_as_triton_answers(
    stack: Stack, inferq: httpclient.InferenceServerClient, direct: httpclient.InferenceServerClient
) -> None:
    headers = auth(stack)
    assert inferq.is_server_live(headers=headers) and inferq.is_server_ready(headers=headers)
    assert inferq.is_server_live() and inferq.is_server_ready()  # open, like /healthz and /readyz
    for version in ("", "1"):
        assert inferq.is_model_ready("digits", version, headers=headers)
        assert direct.is_model_ready("digits", version)
    assert not inferq.is_model_ready("nope", headers=headers) and not direct.is_model_ready("nope")
    idle = registered_only(stack)
    assert not inferq.is_model_ready(idle, headers=headers) and not inferq.is_model_ready(
        idle, "1", headers=headers
    )

    ours, theirs = inferq.get_model_metadata("digits", headers=headers), direct.get_model_metadata("digits")
    for key in ("name", "versions", "inputs", "outputs"):
        assert ours[key] == theirs[key], key
    assert ours["platform"] == "onnxruntime_onnx"  # what production Triton reports for models/digits
    assert inferq.get_model_metadata("digits", "1", headers=headers)["inputs"] == theirs["inputs"]
    described = inferq.get_model_metadata(idle, "1", headers=headers)  # not deployed: still described
    assert described["name"] == idle and described["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    ]
    with pytest.raises(InferenceServerException) as exc:  # no version named, none ready
        inferq.get_model_metadata(idle, headers=headers)
    assert_triton_error(exc.value, 409, idle)

    config, real = inferq.get_model_config("digits", headers=headers), direct.get_model_config("digits")
    assert config["name"] == real["name"] and config["max_batch_size"] == real["max_batch_size"]
    for key in ("input", "output"):
        assert [{k: t[k] for k in ("name", "data_type", "dims")} for t in real[key]] == config[key]

    server = inferq.get_server_metadata(headers=headers)
    assert server["name"] == "inferq" and "binary_tensor_data" in server["extensions"]


def assert_triton_error(exc: InferenceServerException, status: int, *words: str) -> None:
    assert exc.status() == str(status), (exc.status(), exc.message())
    for word in words:
        assert word in exc.message(), exc.message()


def test_without_a_valid_key_401(stack: Stack, inferq: httpclient.InferenceServerClient) -> None:
    for headers in (None, auth(stack, "not-a-key"), {"Authorization": "Basic dXNlcjpwdw=="}):
        with pytest.raises(InferenceServerException) as exc:
            infer(inferq, rows(0, 1), True, True, headers=headers)
        assert_triton_error(exc.value, 401)
        with pytest.raises(InferenceServerException) as exc:
            inferq.get_model_metadata("digits", headers=headers)
        assert_triton_error(exc.value, 401)
    assert not inferq.is_model_ready("digits")


def test_unknown_model_404_in_triton_shape(
    stack: Stack, api_url: str, inferq: httpclient.InferenceServerClient
) -> None:
    item = httpclient.InferInput("input", [1, 64], "FP32").set_data_from_numpy(rows(0, 1))
    with pytest.raises(InferenceServerException) as exc:
        inferq.infer("nope", [item], headers=auth(stack))
    assert_triton_error(exc.value, 404, "nope")
    with pytest.raises(InferenceServerException) as exc:
        inferq.get_model_metadata("digits", "9", headers=auth(stack))
    assert_triton_error(exc.value, 404)
    for path in ("/v2/models/nope", "/v2/models/nope/infer"):
        method = requests.post if path.endswith("infer") else requests.get
        response = method(f"{api_url}{path}", headers=auth(stack), json={"inputs": []}, timeout=10)
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"
        assert list(response.json()) == ["error"]


def test_bad_shapes_and_bodies_400(
    stack: Stack, api_url: str, inferq: httpclient.InferenceServerClient
) -> None:
    bad = httpclient.InferInput("input", [2, 63], "FP32").set_data_from_numpy(np.zeros((2, 63), np.float32))
    for binary in (True, False):
        bad.set_data_from_numpy(np.zeros((2, 63), np.float32), binary_data=binary)
        with pytest.raises(InferenceServerException) as exc:
            inferq.infer("digits", [bad], headers=auth(stack))
        assert_triton_error(exc.value, 400, "'input'", "[2, 63]")
    # Binary data that does not match the shape, and bodies that are not what they claim.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 512},
                }
            ]
        }
    ).encode()
    url = f"{api_url}/v2/models/digits/infer"
    cases = [
        (header + bytes(508), {"Inference-Header-Content-Length": str(len(header))}),
        (header + bytes(512), {"Inference-Header-Content-Length": "nope"}),
        (header + bytes(512), {}),
        (b"{nope", {}),
        (b"", {}),
    ]
    for body, headers in cases:
        response = requests.post(url, data=body, headers={**auth(stack), **headers}, timeout=10)
        assert response.status_code == 400 and list(response.json()) == ["error"], response.text


def test_not_done_in_time_is_504_naming_the_task(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def slow(*args: Any, **_: Any) -> pipeline.InferResult:
        seen.append(args[-1])
        return pipeline.InferResult("task-1", pipeline.resolve_model(stack.services, "digits", None))

    monkeypatch.setattr(pipeline, "infer", slow)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
    body["parameters"] = {"timeout": 250_000}
    response = stack.client().post("/v2/models/digits/infer", json=body, headers=auth(stack))
    assert response.status_code == 504 and "/v1/tasks/task-1" in response.get_json()["error"]
    assert seen == [0.25]


def test_v2_counts_against_the_key_like_v1(stack: Stack) -> None:
    """A 429 over the rate limit keeps Retry-After and takes Triton's shape."""
    import dataclasses

    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, rate_limit="2/minute"))
    try:
        client = app.test_client()
        from registry.apikeys import create_key

        with stack.services.db.session() as session:
            _, key = create_key(session, "acme")
        statuses = [client.get("/v2", headers=auth(stack, key)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        response = client.get("/v2/models/digits", headers=auth(stack, key))
        assert response.status_code == 429 and response.headers["Retry-After"]
        assert list(response.get_json()) == ["error"]
        assert client.get("/v2/health/ready").status_code == 200  # open: not counted
    finally:
        app.extensions["inferq"].close()


def test_answers_match_the_openapi_document(stack: Stack) -> None:
    from tests.integration.test_openapi import assert_matches

    client, headers = stack.client(), auth(stack)
    assert_matches("V2ServerMetadata", client.get("/v2", headers=headers).get_json())
    assert_matches("V2ModelMetadata", client.get("/v2/models/digits", headers=headers).get_json())
    assert_matches(
        "V2ModelConfig", client.get("/v2/models/digits/versions/1/config", headers=headers).get_json()
    )
    body = {
        "id": "x",
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}],
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
        "parameters": {"timeout": 30_000_000},
    }
    assert_matches("V2InferRequest", body)
    response = client.post("/v2/models/digits/infer", json=body, headers=headers)
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert_matches("V2InferResponse", response.get_json())
    for path in ("/v2/models/nope", f"/v2/models/{registered_only(stack)}/config"):
        assert_matches("TritonError", client.get(path, headers=headers).get_json())
    assert_matches(
        "TritonError", client.post("/v2/models/digits/infer", data=b"[", headers=headers).get_json()
    )


def test_readme_triton_client_example_runs_as_printed(stack: Stack, api_url: str) -> None:
    """The README's tritonclient code, run by the venv's Python, against a served API instead of
    127.0.0.1:8080."""
    import subprocess
    import sys

    from inferq.settings import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    code = text.split("## Triton clients", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert 'InferenceServerClient("127.0.0.1:8080")' in code and "import tritonclient.http" in code
    code = code.replace("127.0.0.1:8080", api_url.removeprefix("http://"))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"INFERQ_API_KEY": stack.user_key, "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True True", result.stdout
    assert "'name': 'input', 'datatype': 'FP32', 'shape': [-1, 64]" in lines[1], result.stdout
    assert lines[-1] == "[0]", result.stdout


def test_bodies_over_the_limit_are_413_inflated_or_not(stack: Stack) -> None:
    import dataclasses
    import gzip

    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, max_request_bytes=4096))
    try:
        client, url = app.test_client(), "/v2/models/digits/infer"
        body = {"inputs": [{"name": "input", "shape": [16, 64], "datatype": "FP32", "data": [0.0] * 1024}]}
        raw = json.dumps(body).encode()
        for data, headers in ((raw, {}), (gzip.compress(raw), {"Content-Encoding": "gzip"})):
            response = client.post(url, data=data, headers={**auth(stack), **headers})
            assert response.status_code == 413 and list(response.get_json()) == ["error"], response.data
        response = client.post(url, data=b"x", headers={**auth(stack), "Content-Encoding": "br"})
        assert response.status_code == 415 and list(response.get_json()) == ["error"]
    finally:
        app.extensions["inferq"].close()


def test_paths_and_methods_v2_does_not_have_answer_in_triton_shape(stack: Stack) -> None:
    client = stack.client()
    missing = client.get("/v2/repository/index", headers=auth(stack))
    assert missing.status_code == 404 and missing.mimetype == "application/json"
    assert set(missing.get_json()) == {"error"}
    wrong = client.delete("/v2/models/digits/infer", headers=auth(stack))
    assert wrong.status_code == 405 and set(wrong.get_json()) == {"error"}
    assert "POST" in wrong.headers["Allow"]
    v1 = client.get("/v1/nothing-here", headers=auth(stack))
    assert v1.status_code == 404 and v1.mimetype == "application/problem+json", "/v1 keeps problem+json"
