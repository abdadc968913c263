"""/healthz, /readyz (each dependency, 503 when Triton is down) and /metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.fixtures import Stack, start_triton

pytestmark = pytest.mark.integration


def test_healthz_needs_no_key(stack: Stack) -> None:
    response = stack.client().get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_reports_each_dependency(stack: Stack) -> None:
    response = stack.client().get("/readyz")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"broker", "database", "object_store", "triton", "workers"}
    assert all(check["status"] == "ok" for check in body["checks"].values()), body
    assert body["checks"]["database"]["backend"] in {"sqlite", "postgresql"}
    assert set(body["checks"]["triton"]["gpus"]) == {"0", "1"}
    assert all(body["checks"]["workers"]["queues"][q] for q in ("gpu.0", "gpu.1", "control"))


def test_readyz_is_503_when_triton_stops(stack: Stack, tmp_path: Path) -> None:
    from webapp import create_app

    triton = start_triton(tmp_path, "triton-readyz")
    settings = dataclasses.replace(stack.settings, triton_urls={0: triton.url, 1: triton.url})
    app = create_app(settings)
    try:
        assert app.test_client().get("/readyz").status_code == 200
        triton.process.stop()
        response = app.test_client().get("/readyz")
        body = response.get_json()
        assert response.status_code == 503
        assert body["status"] == "not ready"
        assert body["checks"]["triton"]["status"] == "fail"
        assert body["checks"]["triton"]["gpus"]["0"]["status"] == "fail"
        assert all(body["checks"][name]["status"] == "ok" for name in ("broker", "database", "object_store"))
    finally:
        triton.process.stop()
        app.extensions["inferq"].close()


def test_readyz_is_503_when_the_object_store_is_unreachable(stack: Stack) -> None:
    from launcher.localstack import free_port
    from webapp import create_app

    settings = dataclasses.replace(stack.settings, s3_endpoint=f"http://127.0.0.1:{free_port()}")
    app = create_app(settings)
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["checks"]["object_store"]["status"] == "fail"
    finally:
        app.extensions["inferq"].close()


def test_metrics_count_requests(stack: Stack) -> None:
    stack.client().get("/healthz")
    text = stack.client().get("/metrics").get_data(as_text=True)
    assert 'inferq_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text


def test_object_store_round_trip_and_presigned_url(stack: Stack) -> None:
    """The S3 boundary (minio SDK against rclone's real S3 server), as batch results will use it."""
    import requests

    from workers.storage import StorageError

    store = stack.services.store
    store.put_bytes("tests/hello.jsonl", b'{"custom_id": "1"}\n', content_type="application/jsonl")
    assert store.get_bytes("tests/hello.jsonl") == b'{"custom_id": "1"}\n'
    url = store.presigned_get("tests/hello.jsonl", expires=60)
    assert requests.get(url, timeout=10).content == b'{"custom_id": "1"}\n'
    with pytest.raises(StorageError):
        store.get_bytes("tests/missing")


def test_database_down_is_a_503_not_a_500(stack: Stack) -> None:
    from launcher.localstack import free_port
    from webapp import create_app

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(dataclasses.replace(stack.settings, database_url=url))
    try:
        response = app.test_client().get("/v1/models", headers=stack.auth())
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
        assert response.get_json()["type"].endswith("database-unavailable")
        assert response.headers["Retry-After"] == "5"
        ready = app.test_client().get("/readyz").get_json()
        assert ready["checks"]["database"]["status"] == "fail"
    finally:
        app.extensions["inferq"].close()


def test_redis_down_inference_answers_503_not_a_hang(stack: Stack) -> None:
    from launcher.localstack import free_port
    from webapp import create_app

    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(
        dataclasses.replace(stack.settings, redis_url=dead, broker_url=dead, result_backend=dead)
    )
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    try:
        response = app.test_client().post("/v1/models/digits/infer", json=body, headers=stack.auth())
        assert response.status_code == 503 and response.get_json()["type"].endswith("cache-unavailable")
        response = app.test_client().get("/v1/tasks/abc", headers=stack.auth())
        assert response.status_code == 503
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["broker"]["status"] == "fail"
    finally:
        app.extensions["inferq"].close()
