"""The OpenAPI document is valid, matches the routes one to one, and describes real answers."""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.fixtures import Stack
from webapp.docs import openapi_document

pytestmark = pytest.mark.integration


def schema_validator(name: str) -> Draft202012Validator:
    registry: Registry = Registry().with_resource(
        "urn:inferq:openapi", DRAFT202012.create_resource(openapi_document())
    )
    return Draft202012Validator({"$ref": f"urn:inferq:openapi#/components/schemas/{name}"}, registry=registry)


def assert_matches(name: str, body: Any) -> None:
    errors = sorted(schema_validator(name).iter_errors(body), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_document_is_valid_openapi(stack: Stack) -> None:
    response = stack.client().get("/openapi.json")
    assert response.status_code == 200
    validate(response.get_json())
    assert response.get_json()["openapi"] == "3.1.0"


def test_every_route_is_documented_and_every_operation_exists(stack: Stack) -> None:
    routes = set()
    for rule in stack.app.url_map.iter_rules():
        if rule.endpoint in ("static", "docs.docs", "docs.docs_assets"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {
        (path, method)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    assert routes == documented, {"undocumented": routes - documented, "no route": documented - routes}


def test_real_answers_match_their_schemas(stack: Stack) -> None:
    client, auth = stack.client(), stack.auth()
    model = client.get("/v1/models/by-name/digits/1", headers=auth).get_json()
    assert_matches("Model", model)
    assert_matches("ModelPage", client.get("/v1/models?limit=5", headers=auth).get_json())
    assert_matches("ModelStats", client.get(f"/v1/models/{model['id']}/stats", headers=auth).get_json())
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    assert_matches("InferRequest", body)
    result = client.post("/v1/models/digits/infer", json=body, headers=auth).get_json()
    assert_matches("InferResponse", result)
    accepted = client.post("/v1/models/digits/infer?timeout=0", json=body, headers=auth)
    assert_matches("Accepted", accepted.get_json())
    assert_matches("Task", client.get(accepted.headers["Location"], headers=auth).get_json())
    assert_matches("Problem", client.post("/v1/models/digits/infer", json={}, headers=auth).get_json())
    assert_matches("Readiness", client.get("/readyz").get_json())


def test_swagger_ui_is_served_locally(stack: Stack) -> None:
    page = stack.client().get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.get_data(as_text=True)
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page.get_data(as_text=True)):
        response = stack.client().get(asset)
        assert response.status_code == 200 and len(response.get_data()) > 1000, asset
        response.close()
