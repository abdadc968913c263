"""Deploy and undeploy against the real local Triton, through the control worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from tests.fixtures import Stack

pytestmark = pytest.mark.integration

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]  # iris setosa (class 0)


def register(stack: Stack, triton_name: str, inputs: int = 4) -> dict[str, Any]:
    body = {
        "name": f"flowers-{uuid.uuid4().hex[:6]}",
        "version": "1",
        "triton_name": triton_name,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, inputs]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    response = stack.client().post("/v1/models", json=body, headers=stack.auth(stack.admin_key))
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def deploy(stack: Stack, model_id: str, gpus: list[int]) -> dict[str, Any]:
    response = stack.client().post(
        f"/v1/models/{model_id}/deploy", json={"gpus": gpus}, headers=stack.auth(stack.admin_key)
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["Location"] == f"/v1/models/{model_id}"
    assert response.get_json()["status"] == "deploying"
    assert {d["status"] for d in response.get_json()["deployments"]} == {"loading"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = stack.client().get(f"/v1/models/{model_id}", headers=stack.auth()).get_json()
        if model["status"] != "deploying":
            return model  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError("deploy did not finish")


def triton_ready(stack: Stack, name: str) -> bool:
    url = stack.settings.triton_urls[0]
    return requests.get(f"{url}/v2/models/{name}/ready", timeout=5).status_code == 200


def infer(stack: Stack, name: str, row: list[float]) -> Any:
    body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    return stack.client().post(f"/v1/models/{name}/infer", json=body, headers=stack.auth())


def test_deploy_loads_in_triton_then_undeploy_unloads(stack: Stack) -> None:
    model = register(stack, "iris")
    assert infer(stack, model["name"], IRIS_ROW).status_code == 409  # registered, not deployed
    deployed = deploy(stack, model["id"], [0, 1])
    assert deployed["status"] == "ready", deployed
    assert [(d["gpu"], d["status"]) for d in deployed["deployments"]] == [(0, "ready"), (1, "ready")]
    assert triton_ready(stack, "iris")
    response = infer(stack, model["name"], IRIS_ROW)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["outputs"][0]["data"] == [0]

    # Undeploy one GPU: the router stops sending there; the shared Triton keeps serving the other.
    response = stack.client().post(
        f"/v1/models/{model['id']}/undeploy", json={"gpus": [0]}, headers=stack.auth(stack.admin_key)
    )
    assert response.status_code == 200 and [d["gpu"] for d in response.get_json()["deployments"]] == [1]
    assert triton_ready(stack, "iris")
    for _ in range(5):
        assert infer(stack, model["name"], IRIS_ROW).get_json()["parameters"]["gpu"] == 1

    response = stack.client().post(f"/v1/models/{model['id']}/undeploy", headers=stack.auth(stack.admin_key))
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "registered" and body["deployments"] == []
    assert "warnings" not in body
    assert not triton_ready(stack, "iris")
    assert infer(stack, model["name"], IRIS_ROW).status_code == 409


def test_a_model_triton_cannot_find_fails_with_its_message(stack: Stack) -> None:
    model = register(stack, "no-such-model")
    deployed = deploy(stack, model["id"], [0, 1])
    assert deployed["status"] == "failed"
    assert all(d["status"] == "failed" for d in deployed["deployments"])
    assert "failed to poll from model repository" in deployed["status_message"]
    assert "gpu 0" in deployed["status_message"] and "gpu 1" in deployed["status_message"]


def test_deploy_request_is_validated(stack: Stack) -> None:
    model = register(stack, "iris")
    path = f"/v1/models/{model['id']}/deploy"
    for body, pointer in [
        ({}, "/gpus"),
        ({"gpus": []}, "/gpus"),
        ({"gpus": [0, 7]}, "/gpus/1"),
        ({"gpus": [1, 1]}, "/gpus/1"),
        ({"gpus": ["0"]}, "/gpus/0"),
    ]:
        response = stack.client().post(path, json=body, headers=stack.auth(stack.admin_key))
        assert response.status_code == 400, body
        assert response.get_json()["errors"][0]["pointer"] == pointer
    response = stack.client().post(
        "/v1/models/unknown/deploy", json={"gpus": [0]}, headers=stack.auth(stack.admin_key)
    )
    assert response.status_code == 404


def test_a_deployed_model_cannot_be_deleted_or_retired(stack: Stack) -> None:
    model = register(stack, "iris")
    assert deploy(stack, model["id"], [1])["status"] == "ready"
    path = f"/v1/models/{model['id']}"
    assert stack.client().delete(path, headers=stack.auth(stack.admin_key)).status_code == 409
    response = stack.client().put(path, json={"status": "retired"}, headers=stack.auth(stack.admin_key))
    assert response.status_code == 409
    response = stack.client().put(path, json={"version": "2"}, headers=stack.auth(stack.admin_key))
    assert response.status_code == 409 and "version" in response.get_json()["detail"]
    stack.client().post(f"{path}/undeploy", headers=stack.auth(stack.admin_key))
    assert stack.client().delete(path, headers=stack.auth(stack.admin_key)).status_code == 204


def test_a_deploy_whose_load_never_reports_back_expires(stack: Stack) -> None:
    from datetime import timedelta

    from registry.db import utcnow
    from registry.models import get_model, set_deployment, settle_status
    from tasks import create_celery_app

    model = register(stack, "iris")
    with stack.services.db.session() as session:
        row = get_model(session, model["id"])
        assert row is not None
        set_deployment(session, row, 0, "loading")  # as if the deploy task were lost
        settle_status(row)
        session.flush()
        row.deployments[0].updated_at = utcnow() - timedelta(seconds=stack.settings.deploy_timeout + 5)
    stack.services.cache.invalidate()
    assert (
        stack.client().get(f"/v1/models/{model['id']}", headers=stack.auth()).get_json()["status"]
        == "deploying"
    )

    result = create_celery_app(stack.settings).send_task("inferq.maintenance.expire_deploys", queue="control")
    assert model["id"] in result.get(timeout=30)
    after = stack.client().get(f"/v1/models/{model['id']}", headers=stack.auth()).get_json()
    assert after["status"] == "failed" and "no load result" in after["deployments"][0]["message"]


def test_canary_weights_split_unversioned_traffic(stack: Stack) -> None:
    name = f"petals-{uuid.uuid4().hex[:6]}"
    ids = {}
    for version in ("a", "b"):  # not numbers: both serve Triton's latest iris
        body = {
            "name": name,
            "version": version,
            "triton_name": "iris",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        }
        created = stack.client().post("/v1/models", json=body, headers=stack.auth(stack.admin_key)).get_json()
        assert deploy(stack, created["id"], [0, 1])["status"] == "ready"
        ids[version] = created["id"]

    def served(count: int) -> set[str]:
        return {infer(stack, name, IRIS_ROW).get_json()["model_version"] for _ in range(count)}

    def weigh(version: str, weight: int | None) -> None:
        response = stack.client().put(
            f"/v1/models/{ids[version]}", json={"traffic_weight": weight}, headers=stack.auth(stack.admin_key)
        )
        assert response.status_code == 200 and response.get_json()["traffic_weight"] == weight

    assert served(10) == {"b"}  # no weights: the highest version
    weigh("a", 50)
    weigh("b", 50)
    assert served(40) == {"a", "b"}
    weigh("b", 0)
    assert served(10) == {"a"}
    weigh("a", None)
    weigh("b", None)
    assert served(5) == {"b"}
    for model_id in ids.values():
        stack.client().post(
            f"/v1/models/{model_id}/undeploy", json={"gpus": [0, 1]}, headers=stack.auth(stack.admin_key)
        )


def test_a_redeploy_under_traffic_fails_no_request(stack: Stack) -> None:
    """Redeploying a ready model keeps it serving on its ready GPUs (``reloading``) while Triton
    loads it again: no request sees 409 or any other error."""
    import threading

    model = register(stack, "iris")
    assert deploy(stack, model["id"], [0, 1])["status"] == "ready"
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(infer(stack, model["name"], IRIS_ROW).status_code)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.3)
        response = stack.client().post(
            f"/v1/models/{model['id']}/deploy", json={"gpus": [0, 1]}, headers=stack.auth(stack.admin_key)
        )
        assert response.status_code == 202
        assert response.get_json()["status"] == "ready", "it keeps serving during the redeploy"
        assert {d["status"] for d in response.get_json()["deployments"]} == {"reloading"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = stack.client().get(f"/v1/models/{model['id']}", headers=stack.auth()).get_json()
            if {d["status"] for d in current["deployments"]} == {"ready"}:
                break
            time.sleep(0.1)
        assert {d["status"] for d in current["deployments"]} == {"ready"}
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(30)
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
