"""/healthz, /readyz (each dependency, 503 when Triton is down) and /metrics."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from tests.fixtures import Stack, start_triton

pytestmark = pytest.mark.integration


def test_healthz_needs_no_key(stack: Stack) -> None:
    response = stack.client().get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_tells_the_public_only_its_status(stack: Stack) -> None:
    for headers in ({}, stack.auth()):  # no key, or a tenant's key
        response = stack.client().get("/readyz", headers=headers)
        assert response.status_code == 200 and response.get_json() == {"status": "ready"}
    unknown = stack.client().get("/readyz", headers={"Authorization": "Bearer iq_not-a-real-key"})
    assert unknown.status_code == 401 and unknown.mimetype == "application/problem+json"


def test_readyz_reports_each_dependency_to_an_admin(stack: Stack) -> None:
    response = stack.client().get("/readyz", headers=stack.auth(stack.admin_key))
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
    settings = dataclasses.replace(
        stack.settings, triton_urls={0: triton.url, 1: triton.url}, ready_cache_ttl=0
    )
    app = create_app(settings)
    try:
        assert app.test_client().get("/readyz").status_code == 200
        triton.process.stop()
        response = app.test_client().get("/readyz", headers=stack.auth(stack.admin_key))
        body = response.get_json()
        assert response.status_code == 503
        assert body["status"] == "unavailable"
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
        response = app.test_client().get("/readyz", headers=stack.auth(stack.admin_key))
        assert response.status_code == 503
        assert response.get_json()["checks"]["object_store"]["status"] == "fail"
        public = app.test_client().get("/readyz")
        assert public.status_code == 503 and public.get_json() == {"status": "unavailable"}
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
        ready = app.test_client().get("/readyz", headers=stack.auth(stack.admin_key)).get_json()
        assert ready["status"] == "unavailable"  # the key cannot be checked: no details
        assert app.test_client().get("/readyz").status_code == 503
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
        ready = app.test_client().get("/readyz", headers=stack.auth(stack.admin_key))
        assert ready.status_code == 503 and ready.get_json()["checks"]["broker"]["status"] == "fail"
    finally:
        app.extensions["inferq"].close()


def test_readyz_is_cached_and_broadcasts_nothing_to_the_workers(stack: Stack) -> None:
    from tasks import create_celery_app
    from webapp import create_app

    admin = stack.auth(stack.admin_key)
    subscriber = stack.services.redis.pubsub()
    subscriber.psubscribe("*pidbox*")  # where Celery's control broadcasts (inspect, ping) go

    def broadcasts() -> int:
        seen, deadline = 0, time.monotonic() + 1
        while time.monotonic() < deadline:
            message = subscriber.get_message(timeout=0.1)
            seen += bool(message and message["type"] == "pmessage")
        return seen

    cached = create_app(dataclasses.replace(stack.settings, ready_cache_ttl=60))
    uncached = create_app(dataclasses.replace(stack.settings, ready_cache_ttl=0))
    try:
        broadcasts()  # the subscription confirmation, and anything already on its way
        answers = [cached.test_client().get("/readyz", headers=admin).get_json() for _ in range(5)]
        assert len({answer["checked_at"] for answer in answers}) == 1, "checked once, then reused"
        fresh = [uncached.test_client().get("/readyz", headers=admin).get_json() for _ in range(3)]
        assert len({answer["checked_at"] for answer in fresh}) == 3
        assert all(a["checks"]["workers"]["queues"]["gpu.0"] for a in [*answers, *fresh])
        assert broadcasts() == 0, "/readyz must not broadcast to every worker"
        create_celery_app(stack.settings).control.inspect(timeout=0.5).ping()
        assert broadcasts() > 0, "the subscription sees a real broadcast"
    finally:
        subscriber.close()
        cached.extensions["inferq"].close()
        uncached.extensions["inferq"].close()


def test_worker_liveness_entries(stack: Stack) -> None:
    from workers.liveness import announce, live_workers, withdraw

    client, queue = stack.services.redis, f"test-{time.monotonic_ns()}"
    announce(client, "w1@host", [queue])
    announce(client, "w2@host", [queue], alive_for=-1)  # its time is already up
    assert live_workers(client, [queue]) == {queue: ["w1@host"]}
    withdraw(client, "w1@host", [queue])
    assert live_workers(client, [queue]) == {queue: []}
