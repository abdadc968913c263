"""Triton unreachable on a GPU: retries with back-off, a clean failure, then the GPU's breaker opens."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from inferq.localstack import ManagedProcess, free_port
from inferq.settings import gpu_queue
from inferq.stack import worker_argv, worker_env
from registry.models import Model, set_deployment, settle_status
from tests.fixtures import Stack, wait_for_workers

pytestmark = pytest.mark.integration


def test_dead_triton_gives_503_a_failed_task_then_an_open_breaker(stack: Stack, tmp_path: Path) -> None:
    from webapp import create_app

    # A third simulated GPU whose Triton is a port nobody listens on, with its own real worker.
    settings = dataclasses.replace(
        stack.settings,
        gpus=(0, 1, 2),
        triton_urls={**stack.settings.triton_urls, 2: f"http://127.0.0.1:{free_port()}"},
        breaker_threshold=4,  # one request's four attempts trip it
        breaker_cooldown=60,
    )
    worker = ManagedProcess(
        "worker-gpu2",
        worker_argv(gpu_queue(2), 1, f"gpu2-{uuid.uuid4().hex[:4]}"),
        env=worker_env(settings, 2),
        log_path=tmp_path / "worker-gpu2.log",
    ).start()
    app = create_app(settings)
    name = f"ghost-{uuid.uuid4().hex[:6]}"
    try:
        wait_for_workers(settings, [gpu_queue(2)], {"gpu.2": worker})
        with stack.services.db.session() as session:
            model = Model(
                name=name,
                version="1",
                triton_name="digits",
                inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}],
            )
            session.add(model)
            session.flush()
            set_deployment(session, model, 2, "ready")  # as if it had loaded there before Triton died
            settle_status(model)
        stack.services.cache.invalidate()

        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        client = app.test_client()
        response = client.post(f"/v1/models/{name}/infer?timeout=30", json=body, headers=stack.auth())
        assert response.status_code == 503, response.get_data(as_text=True)
        problem = response.get_json()
        assert problem["type"].endswith("backend-unavailable") and problem["title"] == "Inference failed"
        task_id = problem["detail"].split(":")[0].removeprefix("task ")
        task = client.get(f"/v1/tasks/{task_id}", headers=stack.auth()).get_json()
        assert task["status"] == "failed" and task["error"]["code"] == "backend_unavailable"
        log = worker.log_tail(200)
        assert log.count("Retry in") == 3, log  # three retries, then the failure
        assert "breaker open" in log

        # The breaker is shared through Redis: the API now fails fast, queueing nothing.
        before = sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*"))
        response = client.post(f"/v1/models/{name}/infer?timeout=30", json=body, headers=stack.auth())
        assert response.status_code == 503 and response.get_json()["type"].endswith("no-gpu-available")
        assert "breakers open" in response.get_json()["detail"]
        assert 50 <= int(response.headers["Retry-After"]) <= 60
        assert sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*")) == before

        # The healthy GPUs of other models are not affected.
        digits = client.post("/v1/models/digits/infer", json=body, headers=stack.auth())
        assert digits.status_code == 200 and digits.get_json()["parameters"]["gpu"] in (0, 1)
    finally:
        worker.stop()
        app.extensions["inferq"].close()
