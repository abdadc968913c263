"""Statistics: what the test sends is what the stats say, before and after the flush to the database."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from registry import stats
from tests.fixtures import Stack
from tests.integration.test_deploy import deploy, register

pytestmark = pytest.mark.integration


def digits_id(stack: Stack) -> str:
    return stack.client().get("/v1/models/by-name/digits/1", headers=stack.auth()).get_json()["id"]  # type: ignore[no-any-return]


def read(stack: Stack, model_id: str, key: str | None = None) -> dict[str, Any]:
    """The figures ``key`` may read (default: the admin key, the platform's)."""
    response = stack.client().get(f"/v1/models/{model_id}/stats", headers=stack.auth(key or stack.admin_key))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def test_counts_equal_what_was_sent_per_gpu(stack: Stack) -> None:
    model_id = digits_id(stack)
    before = read(stack, model_id)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
    sent = Counter()
    for _ in range(24):
        response = stack.client().post("/v1/models/digits/infer", json=body, headers=stack.auth())
        assert response.status_code == 200
        sent[str(response.get_json()["parameters"]["gpu"])] += 1
    after = read(stack, model_id)
    assert after["requests"] - before["requests"] == 24
    assert after["errors"] == before["errors"]
    for gpu, count in sent.items():
        previous = before["gpus"].get(gpu, {"requests": 0})["requests"]
        assert after["gpus"][gpu]["requests"] - previous == count
    latency = after["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert after["complete"] is True

    moved = stats.flush(stack.services.redis, stack.services.db)
    assert moved >= 1
    assert not list(stack.services.redis.scan_iter("inferq:stats:*")), "the flush empties Redis"
    flushed = read(stack, model_id)
    assert {k: flushed[k] for k in ("requests", "errors", "latency_ms", "gpus")} == {
        k: after[k] for k in ("requests", "errors", "latency_ms", "gpus")
    }


def test_triton_errors_are_counted(stack: Stack) -> None:
    # Declared with 5 features, so requests pass our validation; the iris model takes 4 and Triton refuses.
    model = register(stack, "iris", inputs=5)
    assert deploy(stack, model["id"], [0])["status"] == "ready"
    body = {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1.0] * 5}]}
    for _ in range(3):
        response = stack.client().post(f"/v1/models/{model['name']}/infer", json=body, headers=stack.auth())
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["title"] == "Inference failed"
    figures = read(stack, model["id"])
    assert (figures["requests"], figures["errors"], figures["error_rate"]) == (3, 3, 1.0)
    assert figures["gpus"]["0"]["errors"] == 3 and figures["latency_ms"]["p50"] is None
    stack.client().post(f"/v1/models/{model['id']}/undeploy", headers=stack.auth(stack.admin_key))


def test_flush_runs_on_the_control_worker(stack: Stack) -> None:
    from tasks import create_celery_app

    stats.record(stack.services.redis, digits_id(stack), 0, 3.0, ok=True)
    result = create_celery_app(stack.settings).send_task("inferq.maintenance.flush_stats", queue="control")
    assert result.get(timeout=30) >= 1
    deadline = time.monotonic() + 5
    while list(stack.services.redis.scan_iter("inferq:stats:*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(stack.services.redis.scan_iter("inferq:stats:*"))


def test_unknown_model_stats_are_404(stack: Stack) -> None:
    assert stack.client().get("/v1/models/nope/stats", headers=stack.auth()).status_code == 404


def test_a_tenant_key_reads_its_own_traffic_only(stack: Stack) -> None:
    model_id = digits_id(stack)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [2.0] * 64}]}
    before = {
        key: read(stack, model_id, key) for key in (stack.user_key, stack.other_tenant_key, stack.admin_key)
    }
    for key, count in ((stack.user_key, 5), (stack.other_tenant_key, 3)):
        for _ in range(count):
            response = stack.client().post("/v1/models/digits/infer", json=body, headers=stack.auth(key))
            assert response.status_code == 200, response.get_data(as_text=True)
    acme = read(stack, model_id, stack.user_key)
    globex = read(stack, model_id, stack.other_tenant_key)
    platform = read(stack, model_id, stack.admin_key)
    assert (acme["scope"], acme["tenant"], globex["tenant"]) == ("tenant", "acme", "globex")
    assert acme["requests"] - before[stack.user_key]["requests"] == 5
    assert globex["requests"] - before[stack.other_tenant_key]["requests"] == 3
    assert acme["gpus"] == {} and globex["gpus"] == {} and "attempts" not in acme, "nothing of the platform"
    assert 0 < acme["latency_ms"]["p50"] <= acme["latency_ms"]["p99"]
    assert platform["scope"] == "platform" and platform["gpus"]
    assert platform["requests"] - before[stack.admin_key]["requests"] == 8, "the admin key sees every tenant"
    stats.flush(stack.services.redis, stack.services.db)
    assert not list(stack.services.redis.scan_iter("inferq:tstats:*")), "the flush moves tenant counts too"
    after_flush = read(stack, model_id, stack.user_key)
    assert {k: after_flush[k] for k in ("requests", "errors", "latency_ms")} == {
        k: acme[k] for k in ("requests", "errors", "latency_ms")
    }


def test_an_admin_key_may_read_its_own_tenants_figures_and_a_tenant_key_not_the_platforms(
    stack: Stack,
) -> None:
    model_id = digits_id(stack)
    client = stack.client()
    own = client.get(f"/v1/models/{model_id}/stats?scope=tenant", headers=stack.auth(stack.admin_key))
    assert own.status_code == 200 and (own.get_json()["scope"], own.get_json()["tenant"]) == (
        "tenant",
        "acme",
    )
    refused = client.get(f"/v1/models/{model_id}/stats?scope=platform", headers=stack.auth())
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    bad = client.get(f"/v1/models/{model_id}/stats?scope=everything", headers=stack.auth())
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["pointer"] == "?scope"
