"""A Redis that loses its data (FLUSHDB: a restart without persistence, an operator's mistake):
later requests are neither dropped nor left hanging, and the platform serves again by itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.broker import BINDINGS_TTL
from tests.fixtures import Stack

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_after_flushdb_requests_are_delivered_and_answered(stack: Stack) -> None:
    client = stack.client()
    assert client.post("/v1/models/digits/infer", json=BODY, headers=stack.auth()).status_code == 200
    stack.services.redis.flushdb()  # broker queues, kombu's bindings, records, cache: all gone
    time.sleep(BINDINGS_TTL + 0.5)  # past the bindings each publisher reuses
    statuses = [
        client.post("/v1/models/digits/infer?timeout=20", json=BODY, headers=stack.auth()).status_code
        for _ in range(6)
    ]
    assert statuses == [200] * 6, statuses


def test_a_task_in_flight_when_redis_loses_its_data_still_reaches_its_owner(
    stack: Stack, tmp_path: Path
) -> None:
    """Its record and wake-up are written again with the outcome: the owner gets the result, and
    another tenant still gets 404."""
    from tests.fixtures import extra_gpu
    from tests.integration.test_infer import poll_task
    from tests.integration.test_worker_killed import HoldingProxy

    host, port = stack.settings.triton_urls[0].split("//")[1].split(":")
    proxy = HoldingProxy((host, int(port)))
    try:
        with extra_gpu(stack, tmp_path, 4, f"http://127.0.0.1:{proxy.port}") as gpu:
            client = gpu.app.test_client()
            response = client.post(
                f"/v1/models/{gpu.model}/infer",
                json=BODY,
                headers={**stack.auth(), "Prefer": "respond-async"},
            )
            assert response.status_code == 202
            location = response.headers["Location"]
            assert proxy.held.wait(30), "the task never reached Triton"
            stack.services.redis.flushdb()  # the record, the queue, everything
            assert client.get(location, headers=stack.auth()).status_code == 404
            proxy.release.set()
            deadline = time.monotonic() + 30  # 404 until the outcome writes the record again
            while client.get(location, headers=stack.auth()).status_code == 404:
                assert time.monotonic() < deadline, "the outcome never reached its owner"
                time.sleep(0.1)
            task = poll_task(stack, location)
            assert task["status"] == "succeeded" and task["result"]["outputs"][0]["data"] == [4], task
            assert task["model"] == gpu.model
            other = client.get(location, headers=stack.auth(stack.other_tenant_key))
            assert other.status_code == 404, "and still nobody else's"
            assert stack.services.redis.ttl(f"inferq:task:{location.rsplit('/', 1)[1]}") > 0
    finally:
        proxy.close()


def test_a_result_finished_before_redis_lost_its_data_is_still_given_to_its_owner(stack: Stack) -> None:
    """Nobody waited for it (``Prefer: respond-async``): its outcome was kept in the object store
    too, and the owner polling after the FLUSHDB gets it; another tenant still gets 404."""
    from tasks import results
    from tests.integration.test_infer import poll_task

    client = stack.client()
    response = client.post(
        "/v1/models/digits/infer", json=BODY, headers={**stack.auth(), "Prefer": "respond-async"}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    location = response.headers["Location"]
    task = poll_task(stack, location)
    assert task["status"] == "succeeded"
    task_id = location.rsplit("/", 1)[1]
    deadline = time.monotonic() + 10  # kept just after the Redis record was written
    while results.find(stack.services.store, task_id) is None:
        assert time.monotonic() < deadline, "the outcome was not kept"
        time.sleep(0.05)
    waited = client.post("/v1/models/digits/infer", json=BODY, headers=stack.auth())
    assert waited.status_code == 200
    assert results.find(stack.services.store, waited.get_json()["id"]) is None, "a waited-for one is not kept"

    stack.services.redis.flushdb()
    again = client.get(location, headers=stack.auth())
    assert again.status_code == 200, again.get_data(as_text=True)
    body = again.get_json()
    assert (body["status"], body["result"]["outputs"][0]["data"]) == ("succeeded", [4])
    assert body["result"] == task["result"] and body["model"] == "digits"
    assert client.get(location, headers=stack.auth(stack.other_tenant_key)).status_code == 404


def test_a_sync_request_answered_202_keeps_its_outcome_too(stack: Stack, tmp_path: Path) -> None:
    """Its client stopped waiting (?timeout passed: 202 and Location): the outcome is kept like an
    async one's, so polling after Redis lost its data still gets it."""
    from tests.fixtures import extra_gpu
    from tests.integration.test_infer import poll_task
    from tests.integration.test_worker_killed import HoldingProxy

    host, port = stack.settings.triton_urls[0].split("//")[1].split(":")
    proxy = HoldingProxy((host, int(port)))
    try:
        with extra_gpu(stack, tmp_path, 4, f"http://127.0.0.1:{proxy.port}") as gpu:
            client = gpu.app.test_client()
            response = client.post(
                f"/v1/models/{gpu.model}/infer?timeout=0.5", json=BODY, headers=stack.auth()
            )
            assert response.status_code == 202, response.get_data(as_text=True)
            location = response.headers["Location"]
            proxy.release.set()
            task = poll_task(stack, location)
            assert task["status"] == "succeeded"
            stack.services.redis.flushdb()
            deadline = time.monotonic() + 10  # kept just after the Redis record was written
            again = client.get(location, headers=stack.auth())
            while again.status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.05)
                again = client.get(location, headers=stack.auth())
            assert again.status_code == 200, again.get_data(as_text=True)
            assert again.get_json()["result"] == task["result"]
    finally:
        proxy.close()


def test_with_redis_record_gone_and_the_object_store_down_a_poll_is_503_not_404(stack: Stack) -> None:
    """A 404 is final to a client; not knowing (the object store holding kept outcomes does not
    answer) must say "retry later" instead."""
    import dataclasses

    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, s3_endpoint="http://127.0.0.1:1"))
    try:
        response = app.test_client().get("/v1/tasks/" + "ab" * 16, headers=stack.auth())
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.headers["Retry-After"] and "127.0.0.1:1" not in response.get_data(as_text=True)
    finally:
        app.extensions["inferq"].close()
