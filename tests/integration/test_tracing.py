"""One trace from the HTTP request through the Celery task to the Triton call, across processes."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from inferq.localstack import ManagedProcess
from inferq.settings import gpu_queue
from inferq.stack import worker_argv, worker_env
from registry.models import Model, set_deployment, settle_status
from tests.fixtures import Stack, wait_for_workers

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
    from webapp import create_app

    api_file, worker_file = tmp_path / "api-spans.jsonl", tmp_path / "worker-spans.jsonl"
    base = dataclasses.replace(
        stack.settings,
        gpus=(0, 1, 4),
        triton_urls={**stack.settings.triton_urls, 4: stack.settings.triton_urls[0]},
    )
    worker_settings = dataclasses.replace(base, trace_file=str(worker_file))
    worker = ManagedProcess(
        "worker-gpu4",
        worker_argv(gpu_queue(4), 1, f"gpu4-{uuid.uuid4().hex[:4]}"),
        env=worker_env(worker_settings, 4),
        log_path=tmp_path / "worker-gpu4.log",
    ).start()
    app = create_app(dataclasses.replace(base, trace_file=str(api_file)))
    name = f"traced-{uuid.uuid4().hex[:6]}"
    try:
        wait_for_workers(base, [gpu_queue(4)], {"gpu.4": worker})
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
            set_deployment(session, model, 4, "ready")
            settle_status(model)
        stack.services.cache.invalidate()
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        response = app.test_client().post(f"/v1/models/{name}/infer", json=body, headers=stack.auth())
        assert response.status_code == 200, response.get_data(as_text=True)

        server = [s for s in spans(api_file) if s["kind"] == "SpanKind.SERVER" and "infer" in s["name"]]
        assert len(server) == 1, spans(api_file)
        trace_id = server[0]["context"]["trace_id"]
        published = [
            s for s in spans(api_file) if s["context"]["trace_id"] == trace_id and "apply_async" in s["name"]
        ]
        assert published and published[0]["attributes"].get("celery.task_name") == "inferq.infer"

        def worker_names() -> set[str]:
            return {s["name"] for s in spans(worker_file) if s["context"]["trace_id"] == trace_id}

        # The task's own span ends after the waiting request was woken: give it a moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(n.startswith("run/") for n in worker_names()):
            time.sleep(0.1)
        worker_spans = [s for s in spans(worker_file) if s["context"]["trace_id"] == trace_id]
        names = worker_names()
        assert "triton.infer" in names and any(n.startswith("run/") for n in names), spans(worker_file)
        assert all(s["resource"]["attributes"]["service.name"] == "inferq-worker" for s in worker_spans)
        assert server[0]["resource"]["attributes"]["service.name"] == "inferq-api"
    finally:
        worker.stop()
        app.extensions["inferq"].close()
