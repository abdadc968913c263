"""Triton unreachable on a GPU: retries with back-off, a clean failure, then the GPU's breaker opens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from launcher.localstack import free_port
from tests.fixtures import Stack, extra_gpu

pytestmark = pytest.mark.integration
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_dead_triton_gives_503_a_failed_task_then_an_open_breaker(stack: Stack, tmp_path: Path) -> None:
    # A third simulated GPU whose Triton is a port nobody listens on, with its own real worker.
    dead = f"http://127.0.0.1:{free_port()}"
    with extra_gpu(stack, tmp_path, 2, dead, breaker_threshold=4, breaker_cooldown=60) as gpu:
        # breaker_threshold=4: one request's four attempts trip it.
        client = gpu.app.test_client()
        response = client.post(f"/v1/models/{gpu.model}/infer?timeout=30", json=BODY, headers=stack.auth())
        assert response.status_code == 503, response.get_data(as_text=True)
        problem = response.get_json()
        assert problem["type"].endswith("backend-unavailable") and problem["title"] == "Inference failed"
        task_id = problem["detail"].split(":")[0].removeprefix("task ")
        task = client.get(f"/v1/tasks/{task_id}", headers=stack.auth()).get_json()
        assert task["status"] == "failed" and task["error"]["code"] == "backend_unavailable"
        log = gpu.worker.log_tail(200)
        # Three more attempts on the same GPU after back-offs, then the failure.
        assert log.count("sent to gpu.2 after a failed attempt") == 3, log
        deadline = time.monotonic() + 10  # written just after the outcome that woke the request
        while "breaker open" not in log and time.monotonic() < deadline:
            time.sleep(0.1)
            log = gpu.worker.log_tail(200)
        assert "breaker open" in log

        # The breaker is shared through Redis: the API now fails fast, queueing nothing.
        before = sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*"))
        response = client.post(f"/v1/models/{gpu.model}/infer?timeout=30", json=BODY, headers=stack.auth())
        assert response.status_code == 503 and response.get_json()["type"].endswith("no-gpu-available")
        assert "breakers open" in response.get_json()["detail"]
        assert 50 <= int(response.headers["Retry-After"]) <= 60
        assert sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*")) == before

        # The healthy GPUs of other models are not affected.
        digits = client.post("/v1/models/digits/infer", json=BODY, headers=stack.auth())
        assert digits.status_code == 200 and digits.get_json()["parameters"]["gpu"] in (0, 1)
