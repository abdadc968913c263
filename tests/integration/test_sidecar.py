"""INFERQ_TRITON_SIDECAR: a GPU worker whose Triton is its own (a sidecar in its Kubernetes pod,
one replica of the GPU's queue among several) loads into it what the registry says its GPU
serves: when it starts, and on the call that finds the model missing. Here the sidecar is the
shared test Triton and the model is ``iris``, which no other test keeps loaded.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import Stack, extra_gpu
from workers.triton import TritonEndpoint

pytestmark = pytest.mark.integration

GPU = 5


def iris_ready_on(stack: Stack, gpu: int) -> str:
    """A registry row served by Triton's ``iris``, ready on ``gpu`` as if it had loaded there
    (through another replica); nothing is loaded into Triton here."""
    from registry.models import Model, set_deployment, settle_status

    name = f"iris-sidecar-{uuid.uuid4().hex[:6]}"
    with stack.services.db.session() as session:
        row = Model(
            name=name,
            version="1",
            triton_name="iris",
            inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            outputs=[
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            ],
        )
        session.add(row)
        session.flush()
        set_deployment(session, row, gpu, "ready")
        settle_status(row)
    stack.services.cache.invalidate()
    return name


def test_a_sidecar_worker_loads_what_the_registry_says_its_gpu_serves(stack: Stack, tmp_path: Path) -> None:
    url = stack.settings.triton_urls[0]
    triton = TritonEndpoint(url)
    if "iris" in triton.loaded_models():
        triton.unload_model("iris")
    name = iris_ready_on(stack, GPU)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    try:
        with extra_gpu(stack, tmp_path, GPU, url, triton_sidecar=True) as gpu:
            deadline = time.monotonic() + 60
            while "iris" not in triton.loaded_models() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "iris" in triton.loaded_models(), "loaded by the worker's first pass at start"

            triton.unload_model("iris")  # lost, as after the sidecar restarted
            response = gpu.app.test_client().post(
                f"/v1/models/{name}/infer?timeout=30", json=body, headers=stack.auth()
            )
            assert response.status_code == 200, response.get_data(as_text=True)
            outputs = {o["name"]: o for o in response.get_json()["outputs"]}
            assert outputs["label"]["data"] == [0]  # a setosa
            assert np.isclose(sum(outputs["probabilities"]["data"]), 1.0, atol=1e-4)
            assert response.get_json()["parameters"]["queue"] == f"gpu.{GPU}"
            assert "iris missing from this worker's Triton; loading it" in gpu.worker.log_tail(200)
    finally:
        if "iris" in triton.loaded_models():
            triton.unload_model("iris")


def test_without_sidecar_mode_a_missing_model_is_not_loaded_by_the_worker(
    stack: Stack, tmp_path: Path
) -> None:
    url = stack.settings.triton_urls[0]
    triton = TritonEndpoint(url)
    if "iris" in triton.loaded_models():
        triton.unload_model("iris")
    name = iris_ready_on(stack, GPU + 1)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    with extra_gpu(stack, tmp_path, GPU + 1, url) as gpu:
        response = gpu.app.test_client().post(
            f"/v1/models/{name}/infer?timeout=30", json=body, headers=stack.auth()
        )
        # The control worker's reconciler is in charge of a shared Triton, not each worker.
        assert response.status_code in (503, 500), response.get_data(as_text=True)
        assert "iris" not in triton.loaded_models()


def test_the_control_reconciler_never_marks_a_sidecar_class_missing(stack: Stack) -> None:
    """Its pass reaches one replica of the class; one that lacks (or cannot load) a model must not
    take the model off the whole class: with INFERQ_TRITON_SIDECAR the pass only loads."""
    import dataclasses

    from registry.models import Model, set_deployment, settle_status
    from tasks import create_celery_app

    gpu = GPU + 2
    url = stack.settings.triton_urls[0]
    with stack.services.db.session() as session:
        row = Model(
            name=f"absent-{uuid.uuid4().hex[:6]}",
            version="1",
            triton_name="no-such-model-here",  # Triton cannot load it: the load fails
            inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}],
        )
        session.add(row)
        session.flush()
        set_deployment(session, row, gpu, "ready")
        settle_status(row)
        model_id = row.id
    for sidecar, marked in ((True, False), (False, True)):
        settings = dataclasses.replace(
            stack.settings,
            gpus=(gpu,),
            triton_urls={gpu: url},
            triton_sidecar=sidecar,
        )
        app = create_celery_app(settings)
        app.loader.import_default_modules()
        actions = app.tasks["inferq.maintenance.reconcile"].apply().get(timeout=60)
        assert any("no-such-model-here missing, reload failed" in action for action in actions), actions
        assert stack.services.gpus.loads([gpu], model_id)[gpu].missing is marked, (sidecar, actions)
        stack.services.gpus.clear_missing(model_id, gpu)
