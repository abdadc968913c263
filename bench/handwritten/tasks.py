"""The Celery side of the hand-written baseline: one task that calls Triton over HTTP.

Run from this folder: ``celery -A tasks worker --concurrency 2``. Reads
``HANDWRITTEN_REDIS_URL`` (broker and result backend) and ``HANDWRITTEN_TRITON_URL``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as httpclient
from celery import Celery
from tritonclient.utils import triton_to_np_dtype

REDIS_URL = os.environ.get("HANDWRITTEN_REDIS_URL", "redis://127.0.0.1:6379/5")
TRITON_URL = os.environ.get("HANDWRITTEN_TRITON_URL", "http://127.0.0.1:8000")

app = Celery("handwritten", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)

_client: httpclient.InferenceServerClient | None = None


def triton() -> httpclient.InferenceServerClient:
    """One client per worker process (created after the prefork fork)."""
    global _client
    if _client is None:
        _client = httpclient.InferenceServerClient(urlsplit(TRITON_URL).netloc)
    return _client


@app.task(name="handwritten.infer")
def infer(model: str, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tensors = []
    for spec in inputs:
        tensor = httpclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
        array = np.asarray(spec["data"], dtype=triton_to_np_dtype(spec["datatype"]))
        tensor.set_data_from_numpy(array.reshape(spec["shape"]))
        tensors.append(tensor)
    result = triton().infer(model, tensors)
    outputs = []
    for output in result.get_response()["outputs"]:
        array = result.as_numpy(output["name"])
        outputs.append(
            {
                "name": output["name"],
                "datatype": output["datatype"],
                "shape": list(array.shape),
                "data": array.reshape(-1).tolist(),
            }
        )
    return outputs
