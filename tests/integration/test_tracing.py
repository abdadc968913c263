"""One trace from the HTTP request through the Celery task to the Triton call, across processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import Stack, extra_gpu

pytestmark = pytest.mark.integration


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue  # a line the worker is still writing
    return found


def test_a_request_is_one_trace_across_api_and_worker(stack: Stack, tmp_path: Path) -> None:
    api_file, worker_file = tmp_path / "api-spans.jsonl", tmp_path / "worker-spans.jsonl"
    with extra_gpu(
        stack,
        tmp_path,
        4,
        stack.settings.triton_urls[0],
        trace_file=str(api_file),
        worker_overrides={"trace_file": str(worker_file)},
    ) as gpu:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        response = gpu.app.test_client().post(
            f"/v1/models/{gpu.model}/infer", json=body, headers=stack.auth()
        )
        assert response.status_code == 200, response.get_data(as_text=True)

    server = [s for s in spans(api_file) if s["kind"] == "SpanKind.SERVER" and "infer" in s["name"]]
    assert len(server) == 1, spans(api_file)
    trace_id = server[0]["context"]["trace_id"]
    published = [
        s for s in spans(api_file) if s["context"]["trace_id"] == trace_id and "apply_async" in s["name"]
    ]
    assert published and published[0]["attributes"].get("celery.task_name") == "inferq.infer"

    # The worker was stopped after the request: every span it made is written.
    worker_spans = [s for s in spans(worker_file) if s["context"]["trace_id"] == trace_id]
    names = {s["name"] for s in worker_spans}
    assert "triton.infer" in names and any(n.startswith("run/") for n in names), spans(worker_file)
    assert all(s["resource"]["attributes"]["service.name"] == "inferq-worker" for s in worker_spans)
    assert server[0]["resource"]["attributes"]["service.name"] == "inferq-api"
