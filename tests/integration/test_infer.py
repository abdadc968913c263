"""Sync inference end to end: API -> Celery task on a gpu.N queue -> real Triton -> answer."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from inferq.settings import REPO_ROOT
from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def digits_rows(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.data[start : start + count].astype(np.float32), digits.target[start : start + count]


def infer_body(rows: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ],
        **extra,
    }


def local_onnx(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(
        str(REPO_ROOT / "models/digits/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(["label", "probabilities"], {"input": rows})
    return labels, probabilities


def output(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in body["outputs"] if o["name"] == name)


def test_digits_through_the_whole_path_match_onnxruntime(stack: Stack) -> None:
    rows, truth = digits_rows(100, 48)
    response = stack.client().post(
        "/v1/models/digits/infer", json=infer_body(rows, id="req-1"), headers=stack.auth()
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model_name"] == "digits" and body["model_version"] == "1" and body["id"] == "req-1"
    labels = output(body, "label")
    probabilities = output(body, "probabilities")
    assert labels["datatype"] == "INT64" and labels["shape"] == [48]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [48, 10]
    expected_labels, expected_probabilities = local_onnx(rows)
    assert labels["data"] == expected_labels.tolist()
    np.testing.assert_allclose(
        np.array(probabilities["data"]).reshape(48, 10), expected_probabilities, rtol=1e-5
    )
    assert (np.array(labels["data"]) == truth).mean() > 0.9


def test_workers_write_no_line_per_task_by_default(stack: Stack) -> None:
    """INFERQ_LOG_TASKS off (the default): Celery's "Task ... received" and "succeeded in" lines,
    about 0.3 ms of a worker's main thread each, are not written; its start-up lines are."""
    logs = [p.log_path for name, p in stack.workers.items() if name.startswith("gpu.") and p.log_path]
    assert logs and all(" ready." in path.read_text() for path in logs)  # INFO lines are written
    before = [path.stat().st_size for path in logs]
    rows, _ = digits_rows(0, 1)
    for _ in range(4):  # both GPUs get some
        response = stack.client().post("/v1/models/digits/infer", json=infer_body(rows), headers=stack.auth())
        assert response.status_code == 200, response.get_data(as_text=True)
    written = "".join(path.read_bytes()[size:].decode() for path, size in zip(logs, before, strict=True))
    assert "inferq.infer[" not in written, written


def test_large_inputs_travel_by_reference(stack: Stack) -> None:
    import dataclasses

    from tasks import pipeline
    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, inline_payload_max=1024))
    try:
        rows, _ = digits_rows(300, 20)  # 1280 floats: well over 1 KiB of JSON
        model = pipeline.resolve_model(stack.services, "digits", "1")
        pending = pipeline.prepare(pipeline.check_request(model, infer_body(rows)), "acme", False, 1024)
        assert pending.inputs is None and pending.stash is not None and len(pending.stash) > 1024
        assert "inputs" not in pipeline.infer_message(model, None, [pending])["requests"][0]
        store = app.extensions["inferq"].quick_store
        written: list[str] = []
        put_bytes = store.put_bytes

        def spy(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
            written.append(key)  # and on to the real S3 server
            put_bytes(key, data, content_type)

        store.put_bytes = spy
        response = app.test_client().post(
            "/v1/models/digits/infer", json=infer_body(rows), headers=stack.auth()
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        assert output(response.get_json(), "label")["data"] == local_onnx(rows)[0].tolist()
        task_id = response.get_json()["id"]
        assert written == [f"internal/payloads/{task_id}.json"], "the inputs went to the object store"
        assert not list(stack.services.redis.scan_iter("inferq:payload:*")), "not to Redis"
        deadline = time.monotonic() + 10  # deleted just after the waiter was woken
        while (
            stack.services.store.keys_older_than("internal/payloads/", far_future())
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not stack.services.store.keys_older_than("internal/payloads/", far_future()), (
            "dropped at its end"
        )
        message = stack.client().get(f"/v1/tasks/{task_id}", headers=stack.auth()).get_json()
        assert message["status"] == "succeeded"
    finally:
        app.extensions["inferq"].close()


def test_requested_outputs_only(stack: Stack) -> None:
    rows, _ = digits_rows(0, 2)
    response = stack.client().post(
        "/v1/models/digits/versions/1/infer",
        json=infer_body(rows, outputs=[{"name": "label"}]),
        headers=stack.auth(),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [o["name"] for o in response.get_json()["outputs"]] == ["label"]


def test_tasks_run_on_the_gpu_queue_their_worker_consumes(stack: Stack) -> None:
    """The worker (not the router) reports the queue that delivered the task and its pinned GPU."""
    from tasks import create_celery_app

    queues = create_celery_app(stack.settings).control.inspect(timeout=2).active_queues()
    by_worker = {worker: sorted(q["name"] for q in qs) for worker, qs in queues.items()}
    assert sorted(by_worker.values()) == [["control"], ["gpu.0"], ["gpu.1"]]
    gpu_workers = {qs[0]: worker for worker, qs in by_worker.items() if qs[0].startswith("gpu.")}

    rows, _ = digits_rows(7, 1)
    seen = set()
    for _ in range(30):
        response = stack.client().post("/v1/models/digits/infer", json=infer_body(rows), headers=stack.auth())
        assert response.status_code == 200, response.get_data(as_text=True)
        params = response.get_json()["parameters"]
        assert params["queue"] == f"gpu.{params['gpu']}"
        assert params["worker"] == gpu_workers[params["queue"]]
        assert params["cuda_visible_devices"] == str(params["gpu"])
        seen.add(params["gpu"])
    assert seen == {0, 1}, "the router should spread equal load over both GPUs"


def poll_task(stack: Stack, location: str, key: str | None = None, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = stack.client().get(location, headers=stack.auth(key))
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["status"] in {"queued", "running", "succeeded", "failed"}
        if body["status"] in {"succeeded", "failed"}:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{location} did not finish in {timeout}s")


@pytest.mark.parametrize(
    ("query", "headers"),
    [("", {"Prefer": "respond-async"}), ("?timeout=0", {})],
    ids=["prefer-respond-async", "timeout-0"],
)
def test_async_answer_then_poll(stack: Stack, query: str, headers: dict[str, str]) -> None:
    rows, _ = digits_rows(200, 3)
    response = stack.client().post(
        f"/v1/models/digits/infer{query}", json=infer_body(rows), headers={**stack.auth(), **headers}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    location = response.headers["Location"]
    task_id = response.get_json()["id"]
    assert location == f"/v1/tasks/{task_id}" and response.get_json()["status"] == "queued"
    body = poll_task(stack, location)
    assert body["status"] == "succeeded" and body["model"] == "digits"
    assert output(body["result"], "label")["data"] == local_onnx(rows)[0].tolist()


def test_tasks_are_visible_to_their_tenant_only(stack: Stack) -> None:
    rows, _ = digits_rows(0, 1)
    response = stack.client().post(
        "/v1/models/digits/infer", json=infer_body(rows), headers={**stack.auth(), "Prefer": "respond-async"}
    )
    location = response.headers["Location"]
    assert stack.client().get(location, headers=stack.auth(stack.admin_key)).status_code == 200  # same tenant
    other = stack.client().get(location, headers=stack.auth(stack.other_tenant_key))
    assert other.status_code == 404 and other.mimetype == "application/problem+json"
    unknown = stack.client().get("/v1/tasks/0123456789abcdef", headers=stack.auth())
    assert unknown.status_code == 404 and unknown.get_json()["title"] == "Task not found"


def test_concurrent_requests_merged_into_one_message_each_get_their_own_answer(
    api_url: str, stack: Stack
) -> None:
    """Requests that arrive while a publish for the model is under way share one task message and
    one Triton call (``parameters.batch_size``); each still gets exactly its own rows' outputs."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    merged = 0
    for round_ in range(5):
        starts = [round_ * 100 + 7 * i for i in range(16)]

        def send(start: int) -> tuple[int, dict[str, Any]]:
            rows, _ = digits_rows(start, 1 + start % 3)
            response = requests.post(
                f"{api_url}/v1/models/digits/infer", json=infer_body(rows), headers=stack.auth(), timeout=30
            )
            assert response.status_code == 200, response.text
            return start, response.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, starts))
        for start, body in answers:
            rows, _ = digits_rows(start, 1 + start % 3)
            assert output(body, "label")["data"] == local_onnx(rows)[0].tolist()
            assert output(body, "probabilities")["shape"] == [len(rows), 10]
            merged += body["parameters"]["batch_size"] > 1
        if merged:
            break
    assert merged, "16 concurrent requests never shared a message in 5 rounds"


def test_a_sync_task_past_its_deadline_is_not_run_and_fails_visibly(stack: Stack) -> None:
    """A message that reaches a worker after INFERQ_SYNC_DEADLINE is dropped, and its request
    ends as failed (``expired``) instead of staying queued."""
    import dataclasses
    from datetime import UTC, datetime, timedelta

    from tasks import create_celery_app, pipeline

    model = pipeline.resolve_model(stack.services, "digits", "1")
    rows, _ = digits_rows(0, 1)
    pending = pipeline.prepare(pipeline.check_request(model, infer_body(rows)), "acme", False, 1 << 20)
    with stack.services.redis.pipeline(transaction=False) as pipe:
        stack.services.tasks.add_open(pipe, pending.task_id, "acme", "digits", "1")
        pipe.execute()
    app = create_celery_app(dataclasses.replace(stack.settings))
    past = datetime.now(UTC) - timedelta(seconds=1)
    message = pipeline.infer_message(model, None, [pending])
    pipeline.publish(app, "inferq.infer", [message], "gpu.0", pending.task_id, "(expired)", past)
    task = poll_task(stack, f"/v1/tasks/{pending.task_id}")
    assert task["status"] == "failed" and task["error"]["code"] == "expired", task


def far_future() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=1)


def test_stashed_inputs_a_crash_left_are_expired_by_the_upkeep(stack: Stack) -> None:
    from datetime import timedelta

    from tasks import payloads

    payloads.put(stack.services.store, "left-by-a-crash", b"[]")
    store = stack.services.store
    assert store.delete_older_than(payloads.PREFIX, timedelta(hours=1)) == 0, "a recent one is kept"
    assert payloads.load(stack.services.store, "left-by-a-crash") == []
    assert store.delete_older_than(payloads.PREFIX, timedelta(0)) >= 1
    with pytest.raises(LookupError):
        payloads.load(stack.services.store, "left-by-a-crash")


def test_a_store_failure_fails_only_the_request_whose_inputs_it_could_not_keep(stack: Stack) -> None:
    """Requests of different tenants share a message: the object store refusing one's large inputs
    is a 503 for that one (with nothing of the store's address in it), not for the others."""
    import dataclasses

    from tasks import pipeline
    from webapp import create_app
    from workers.storage import StorageUnavailable

    app = create_app(dataclasses.replace(stack.settings, inline_payload_max=1024))
    try:
        services = app.extensions["inferq"]
        model = pipeline.resolve_model(services, "digits", "1")
        big = pipeline.prepare(
            pipeline.check_request(model, infer_body(digits_rows(0, 20)[0])), "acme", False, 1024
        )
        small = pipeline.prepare(
            pipeline.check_request(model, infer_body(digits_rows(0, 1)[0])), "globex", False, 1024
        )
        assert big.stash is not None and small.stash is None

        def refuse(*_: Any, **__: Any) -> None:
            raise StorageUnavailable("http://internal-s3:9000: down")

        services.quick_store.put_bytes = refuse
        errors = pipeline.publish_requests(services, app.extensions["celery"], model, None, [big, small])
        assert errors[1] is None, "the inline request of another tenant is queued"
        assert errors[0] is not None and (errors[0].status, errors[0].code) == (503, "storage-unavailable")
        assert "internal-s3" not in errors[0].detail
        assert services.tasks.get(big.task_id) is None, "the refused request leaves no record"
        assert (
            poll_task(stack, f"/v1/tasks/{small.task_id}", key=stack.other_tenant_key)["status"]
            == "succeeded"
        )
    finally:
        app.extensions["inferq"].close()


def test_inputs_the_worker_cannot_read_are_retried_then_a_clean_503(stack: Stack, tmp_path: Any) -> None:
    """The object store holding a request's large inputs does not answer the worker: the task is
    sent again after back-offs, then fails as storage_unavailable (503), naming no address."""
    from tests.fixtures import extra_gpu

    with extra_gpu(
        stack,
        tmp_path,
        9,
        stack.settings.triton_urls[0],
        inline_payload_max=1024,
        worker_overrides={"s3_endpoint": "http://127.0.0.1:1"},
    ) as gpu:
        response = gpu.app.test_client().post(
            f"/v1/models/{gpu.model}/infer?timeout=40",
            json=infer_body(digits_rows(0, 20)[0]),
            headers=stack.auth(),
        )
        assert response.status_code == 503, response.get_data(as_text=True)
        problem = response.get_json()
        assert problem["type"].endswith("storage-unavailable"), problem
        assert "127.0.0.1:1" not in problem["detail"] and "payloads" not in problem["detail"]
        assert gpu.worker.log_tail(300).count("sent to gpu.9 after a failed attempt") == 3
    # The worker could not delete the inputs either: the upkeep does, once no task can need them.
    from datetime import timedelta

    from tasks import payloads

    assert stack.services.store.delete_older_than(payloads.PREFIX, timedelta(0)) >= 1


def test_a_wait_whose_round_trip_fails_with_the_message_in_it_is_a_503(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone waiting request's message is pushed in the wait's round trip: when Redis fails that
    round trip the message may not have gone, so the answer is a clean 503 (not a 202 for a task
    that may never run), the record is forgotten and the tenant's waiting count given back."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from inferq.services import redis_client
    from tasks.bookkeeping import WAITING_KEY

    services = stack.app.extensions["inferq"]
    assert services.pushes_tasks  # the broker is the cache's Redis here
    book = services.tasks
    dead = redis_client("redis://127.0.0.1:1/0", 0.5, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(book, "blocking", dead)
    waiting = WAITING_KEY.format("acme")
    before = int(stack.services.redis.get(waiting) or 0)
    records = sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*", count=1000))
    queues = {queue: stack.services.redis.llen(queue) for queue in ("gpu.0", "gpu.1")}
    rows, _ = digits_rows(0, 1)
    response = stack.client().post("/v1/models/digits/infer", json=infer_body(rows), headers=stack.auth())
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["type"].endswith("broker-unavailable") and response.headers["Retry-After"]
    assert "could not be queued" in problem["detail"]
    assert int(stack.services.redis.get(waiting) or 0) == before
    assert sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*", count=1000)) == records
    assert {queue: stack.services.redis.llen(queue) for queue in queues} == queues  # nothing went out
    monkeypatch.undo()
    again = stack.client().post("/v1/models/digits/infer", json=infer_body(rows), headers=stack.auth())
    assert again.status_code == 200, again.get_data(as_text=True)
