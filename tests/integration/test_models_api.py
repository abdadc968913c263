"""The registry API: CRUD, filters, pagination, duplicates under concurrency, admin-only writes."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def model_body(name: str, version: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "framework": "onnx",
        "triton_name": "iris",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "description": "test model",
        **extra,
    }


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = stack.client().post("/v1/models", json=body, headers=stack.auth(stack.admin_key))
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def test_create_get_and_get_by_name(stack: Stack) -> None:
    name = unique()
    response = stack.client().post(
        "/v1/models", json=model_body(name, labels={"team": "vision"}), headers=stack.auth(stack.admin_key)
    )
    assert response.status_code == 201
    created = response.get_json()
    assert response.headers["Location"] == f"/v1/models/{created['id']}"
    assert created["status"] == "registered" and created["deployments"] == []
    assert created["labels"] == {"team": "vision"} and created["triton_name"] == "iris"
    by_id = stack.client().get(f"/v1/models/{created['id']}", headers=stack.auth()).get_json()
    by_name = stack.client().get(f"/v1/models/by-name/{name}/1", headers=stack.auth()).get_json()
    assert by_id == by_name == created
    missing = stack.client().get(f"/v1/models/by-name/{name}/2", headers=stack.auth())
    assert missing.status_code == 404 and missing.get_json()["detail"] == f"no model {name!r} version '2'"


def test_triton_name_and_framework_default(stack: Stack) -> None:
    body = model_body(unique())
    del body["triton_name"], body["framework"]
    created = create(stack, body)
    assert created["triton_name"] == body["name"] and created["framework"] == "onnx"


def test_duplicate_is_409(stack: Stack) -> None:
    body = model_body(unique())
    create(stack, body)
    response = stack.client().post("/v1/models", json=body, headers=stack.auth(stack.admin_key))
    assert response.status_code == 409 and response.mimetype == "application/problem+json"
    assert response.get_json()["title"] == "Model already exists"


def test_concurrent_duplicates_exactly_one_wins(stack: Stack) -> None:
    """Both creates are in flight at once; the unique constraint, not a lookup, decides."""
    for _ in range(3):
        body = model_body(unique("race"))
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def post(
            body: dict[str, Any] = body, barrier: threading.Barrier = barrier, statuses: list[int] = statuses
        ) -> None:
            client = stack.client()
            barrier.wait()
            statuses.append(
                client.post("/v1/models", json=body, headers=stack.auth(stack.admin_key)).status_code
            )

        threads = [threading.Thread(target=post) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [201, 409]
        page = stack.client().get(f"/v1/models?name={body['name']}", headers=stack.auth()).get_json()
        assert page["total"] == 1


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [-1, 4]}]}, "/inputs/0/datatype"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 0]}]}, "/inputs/0/shape"),
        ({"outputs": [{"name": "label", "datatype": "INT64", "shape": "n"}]}, "/outputs/0/shape"),
        ({"outputs": []}, "/outputs"),
        ({"name": "has space"}, "/name"),
        ({"version": ""}, "/version"),
        ({"labels": {"team": 3}}, "/labels/team"),
        ({"colour": "blue"}, "/colour"),
    ],
)
def test_invalid_model_is_400_naming_the_field(stack: Stack, change: dict[str, Any], pointer: str) -> None:
    name = unique()
    response = stack.client().post(
        "/v1/models", json={**model_body(name), **change}, headers=stack.auth(stack.admin_key)
    )
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert pointer in [e["pointer"] for e in response.get_json()["errors"]]
    assert (
        stack.client()
        .get(f"/v1/models?name={change.get('name', name)}", headers=stack.auth())
        .get_json()["total"]
        == 0
    )


def test_missing_fields_are_named(stack: Stack) -> None:
    response = stack.client().post("/v1/models", json={"name": unique()}, headers=stack.auth(stack.admin_key))
    pointers = {e["pointer"] for e in response.get_json()["errors"]}
    assert {"/version", "/inputs", "/outputs"} <= pointers


def test_writes_need_an_admin_key_reads_any_key(stack: Stack) -> None:
    body = model_body(unique())
    response = stack.client().post("/v1/models", json=body, headers=stack.auth(stack.user_key))
    assert response.status_code == 403 and response.get_json()["title"] == "Admin key required"
    created = create(stack, body)
    for method, path in [
        ("put", f"/v1/models/{created['id']}"),
        ("delete", f"/v1/models/{created['id']}"),
        ("post", f"/v1/models/{created['id']}/deploy"),
        ("post", f"/v1/models/{created['id']}/undeploy"),
    ]:
        response = getattr(stack.client(), method)(
            path, json={"gpus": [0]}, headers=stack.auth(stack.user_key)
        )
        assert response.status_code == 403, (method, path)
    response = stack.client().get(f"/v1/models/{created['id']}", headers=stack.auth(stack.other_tenant_key))
    assert response.status_code == 200


def test_update_is_read_back_at_once_through_the_cache(stack: Stack) -> None:
    created = create(stack, model_body(unique(), labels={"stage": "dev"}))
    path = f"/v1/models/{created['id']}"
    assert (
        stack.client().get(path, headers=stack.auth()).get_json()["description"] == "test model"
    )  # now cached
    by_name = f"/v1/models/by-name/{created['name']}/1"
    assert stack.client().get(by_name, headers=stack.auth()).status_code == 200  # cached too
    response = stack.client().put(
        path, json={"description": "v2", "labels": {"stage": "prod"}}, headers=stack.auth(stack.admin_key)
    )
    assert response.status_code == 200
    assert response.get_json()["description"] == "v2"
    for url in (path, by_name):
        body = stack.client().get(url, headers=stack.auth()).get_json()
        assert body["description"] == "v2" and body["labels"] == {"stage": "prod"}
    listed = stack.client().get(f"/v1/models?name={created['name']}", headers=stack.auth()).get_json()
    assert listed["data"][0]["description"] == "v2"


def test_update_conflicts_and_validation(stack: Stack) -> None:
    first = create(stack, model_body(unique()))
    second = create(stack, model_body(unique()))
    path = f"/v1/models/{second['id']}"
    response = stack.client().put(path, json={"name": first["name"]}, headers=stack.auth(stack.admin_key))
    assert response.status_code == 409
    response = stack.client().put(path, json={"status": "ready"}, headers=stack.auth(stack.admin_key))
    assert response.status_code == 400 and response.get_json()["errors"][0]["pointer"] == "/status"
    response = stack.client().put(path, json={"status": "retired"}, headers=stack.auth(stack.admin_key))
    assert response.status_code == 200 and response.get_json()["status"] == "retired"
    response = stack.client().put("/v1/models/nope", json={}, headers=stack.auth(stack.admin_key))
    assert response.status_code == 404


def test_delete(stack: Stack) -> None:
    created = create(stack, model_body(unique()))
    path = f"/v1/models/{created['id']}"
    assert stack.client().get(path, headers=stack.auth()).status_code == 200  # cached
    assert stack.client().delete(path, headers=stack.auth(stack.admin_key)).status_code == 204
    assert stack.client().get(path, headers=stack.auth()).status_code == 404
    assert stack.client().delete(path, headers=stack.auth(stack.admin_key)).status_code == 404


def test_list_filters_and_stable_pagination(stack: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    made = []
    for index in range(7):
        body = model_body(
            f"list-{run}-{index % 3}",
            version=str(index),
            framework="tensorrt" if index % 2 else "onnx",
            labels={"run": run, "parity": "odd" if index % 2 else "even"},
        )
        made.append(create(stack, body))
    retired = made[0]["id"]
    stack.client().put(
        f"/v1/models/{retired}", json={"status": "retired"}, headers=stack.auth(stack.admin_key)
    )

    def page(query: str) -> dict[str, Any]:
        response = stack.client().get(f"/v1/models?label=run:{run}&{query}", headers=stack.auth())
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()  # type: ignore[no-any-return]

    everything = page("limit=100")
    assert everything["total"] == 7 and len(everything["data"]) == 7
    assert {m["id"] for m in everything["data"]} == {m["id"] for m in made}
    assert page(f"name=list-{run}-1")["total"] == 2
    assert page("framework=tensorrt")["total"] == 3
    assert page("label=parity:odd")["total"] == 3
    assert page("label=parity:odd&framework=onnx")["total"] == 0
    assert [m["id"] for m in page("status=retired")["data"]] == [retired]
    assert page("status=registered")["total"] == 6
    pages = [page(f"limit=3&offset={offset}") for offset in (0, 3, 6)]
    assert [len(p["data"]) for p in pages] == [3, 3, 1]
    assert all(p["total"] == 7 and p["limit"] == 3 for p in pages)
    paged_ids = [m["id"] for p in pages for m in p["data"]]
    assert paged_ids == [m["id"] for m in everything["data"]], "pages must follow one stable order"
    assert paged_ids == [m["id"] for m in reversed(made)], "newest first"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "status=done", "label=nocolon"])
def test_bad_list_parameters(stack: Stack, query: str) -> None:
    response = stack.client().get(f"/v1/models?{query}", headers=stack.auth())
    assert response.status_code == 400 and response.get_json()["errors"][0]["pointer"].startswith("?")
