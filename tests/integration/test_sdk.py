"""The Python SDK (inferq.client) against the real API over HTTP: numpy inference equal to
onnxruntime, a streamed upload with progress, a batch waited for and its results streamed."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from inferq.client import (
    BadRequest,
    Client,
    Conflict,
    NotFound,
    Unauthorized,
)
from tests.fixtures import Stack
from tests.integration.batch_files import DIGITS, make_input
from tests.integration.test_infer import local_onnx

pytestmark = pytest.mark.integration


def test_infer_takes_and_returns_numpy_like_onnxruntime(stack: Stack, api_url: str) -> None:
    rows = DIGITS[10:17]
    labels, probabilities = local_onnx(rows)
    with Client(api_url, stack.user_key) as client:
        outputs = client.infer("digits", {"input": rows})
        assert outputs["label"].dtype == np.int64 and outputs["label"].shape == (7,)
        np.testing.assert_array_equal(outputs["label"], labels)
        assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (7, 10)
        np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
        only = client.infer("digits", [("input", rows[:1])], version="1", outputs=["label"])
        assert list(only) == ["label"] and only["label"].tolist() == [int(labels[0])]
        with pytest.raises(BadRequest) as caught:
            client.infer("digits", {"input": rows.astype(np.float64)[:, :10]})
        pointers = {e["pointer"] for e in caught.value.errors}
        assert pointers == {"/inputs/0/datatype", "/inputs/0/shape"}, caught.value.errors
        assert caught.value.status == 400 and caught.value.code == "invalid-request"
        with pytest.raises(NotFound):
            client.infer("no-such-model", {"input": rows})
        assert client.models.find("digits:1")["name"] == "digits"
    with pytest.raises(Unauthorized) as unauthorized:
        Client(api_url, "iq_wrong").infer("digits", {"input": rows})
    assert "unknown or revoked" in unauthorized.value.describe()


def test_upload_wait_and_stream_the_results(stack: Stack, api_url: str, tmp_path: Path) -> None:
    expected = make_input(5_000, bad_every=40, prefix=f"sdk-{uuid.uuid4().hex[:4]}")
    path = tmp_path / "requests.jsonl"
    path.write_bytes(expected.data)
    client = Client(api_url, stack.user_key)
    sent: list[tuple[int, int | None]] = []
    file = client.files.upload(path, progress=lambda done, total: sent.append((done, total)))
    assert file["bytes"] == len(expected.data) and file["filename"] == "requests.jsonl"
    assert len(sent) >= 3 and sent[-1] == (len(expected.data), len(expected.data))  # in 1 MiB pieces
    assert b"".join(client.files.content(file["id"])) == expected.data

    key = f"sdk-{file['id']}"
    batch = client.batches.create("digits", file["id"], metadata={"run": "sdk"}, idempotency_key=key)
    assert (
        client.batches.create("digits", file["id"], metadata={"run": "sdk"}, idempotency_key=key)["id"]
        == (batch["id"])
    )
    seen: list[str] = []
    final = client.batches.wait(
        batch["id"], poll=0.2, timeout=120, progress=lambda b: seen.append(b["status"])
    )
    assert final["status"] == "completed" and seen[-1] == "completed"
    assert final["request_counts"] == {
        "total": expected.total,
        "completed": len(expected.rows),
        "failed": len(expected.errors),
    }
    lines = client.results(batch["id"])
    outputs = list(lines)
    assert [line["custom_id"] for line in outputs] == list(expected.rows)
    labels, _ = local_onnx(np.stack(list(expected.rows.values())))
    got = [next(o for o in line["outputs"] if o["name"] == "label")["data"][0] for line in outputs]
    assert got == labels.tolist()
    errors = list(client.results(batch["id"], kind="error"))
    assert len(errors) == len(expected.errors) and all(line["error"]["code"] for line in errors)

    assert batch["id"] in [b["id"] for b in client.batches.iter(status="completed", page_size=2)][:50]
    assert client.batches.list(limit=1)["data"][0]["id"] == batch["id"]
    assert file["id"] in [f["id"] for f in client.files.iter(purpose="batch_input")]
    with pytest.raises(Conflict):
        client.batches.cancel(batch["id"])
    with pytest.raises(NotFound):
        client.batches.get("no-such-batch")
    other = Client(api_url, stack.other_tenant_key)
    with pytest.raises(NotFound):
        list(other.results(batch["id"]))
