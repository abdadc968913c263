"""The registry cache-aside: hits and misses, TTL, and answers that stay right when Redis is down or slow."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferq.metrics import REGISTRY_CACHE
from launcher.localstack import free_port
from tests.fixtures import Stack
from tests.integration.test_models_api import create, model_body, unique

pytestmark = pytest.mark.integration


def cache_count(result: str) -> float:
    return REGISTRY_CACHE.labels(result)._value.get()  # type: ignore[attr-defined,no-any-return]


def cached_keys(stack: Stack, model_id: str) -> list[bytes]:
    return list(stack.services.redis.scan_iter(f"inferq:registry:*:id:{model_id}"))


def test_second_read_is_a_hit(stack: Stack) -> None:
    created = create(stack, model_body(unique()))
    path = f"/v1/models/{created['id']}"
    misses, hits = cache_count("miss"), cache_count("hit")
    first = stack.client().get(path, headers=stack.auth()).get_json()
    assert cache_count("miss") == misses + 1
    second = stack.client().get(path, headers=stack.auth()).get_json()
    assert cache_count("hit") == hits + 1 and first == second == created
    metrics = stack.client().get("/metrics").get_data(as_text=True)
    assert 'inferq_registry_cache_total{result="hit"}' in metrics


def test_entries_expire_after_the_ttl(stack: Stack) -> None:
    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, cache_ttl=1))
    try:
        created = create(stack, model_body(unique()))
        app.test_client().get(f"/v1/models/{created['id']}", headers=stack.auth())
        [key] = cached_keys(stack, created["id"])
        assert 0 < stack.services.redis.pttl(key) <= 1000
        time.sleep(1.2)
        assert cached_keys(stack, created["id"]) == []
    finally:
        app.extensions["inferq"].close()


def test_default_ttl_is_fifteen_minutes(stack: Stack) -> None:
    created = create(stack, model_body(unique()))
    stack.client().get(f"/v1/models/{created['id']}", headers=stack.auth())
    [key] = cached_keys(stack, created["id"])
    assert 890 < stack.services.redis.ttl(key) <= 900


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("redis_state", ["down", "hanging"])
def test_registry_works_without_redis(stack: Stack, redis_state: str, request: Any) -> None:
    from webapp import create_app

    port = free_port() if redis_state == "down" else request.getfixturevalue("silent_server")
    settings = dataclasses.replace(stack.settings, redis_url=f"redis://127.0.0.1:{port}/0")
    app = create_app(settings)
    client = app.test_client()
    admin = stack.auth(stack.admin_key)
    try:
        errors = cache_count("error")
        name = unique("nored")
        response = client.post("/v1/models", json=model_body(name), headers=admin)
        assert response.status_code == 201, response.get_data(as_text=True)
        model_id = response.get_json()["id"]
        for _ in range(3):
            body = client.get(f"/v1/models/{model_id}", headers=stack.auth()).get_json()
            assert body["name"] == name
        response = client.put(f"/v1/models/{model_id}", json={"description": "changed"}, headers=admin)
        assert response.status_code == 200
        assert (
            client.get(f"/v1/models/{model_id}", headers=stack.auth()).get_json()["description"] == "changed"
        )
        assert client.get(f"/v1/models?name={name}", headers=stack.auth()).get_json()["total"] == 1
        figures = client.get(f"/v1/models/{model_id}/stats", headers=stack.auth()).get_json()
        assert figures["requests"] == 0 and figures["complete"] is False
        assert cache_count("error") > errors
    finally:
        app.extensions["inferq"].close()
    # The write made while Redis was unreachable is visible through the real cache too.
    assert (
        stack.client().get(f"/v1/models/{model_id}", headers=stack.auth()).get_json()["description"]
        == "changed"
    )


def test_the_launchers_start_up_writes_invalidate_the_cache(stack: Stack, tmp_path: Path) -> None:
    """``inferq up`` registers and deploys models/ at start; a cached read from before (the previous
    run) must not outlive it."""
    import dataclasses

    from launcher.stack import Stack as LocalStack
    from registry.models import get_model_version

    with stack.services.db.session() as session:
        model = get_model_version(session, "digits", "1")
        assert model is not None
        model_id = model.id
    before = stack.client().get(f"/v1/models/{model_id}", headers=stack.auth()).get_json()  # cached now
    launcher = LocalStack(dataclasses.replace(stack.settings, data_dir=str(tmp_path)), say=lambda _: None)
    with stack.services.db.session() as session:
        model = get_model_version(session, "digits", "1")
        assert model is not None
        model.description = "changed by a previous run"
    launcher.deploy_models(stack.services)  # registers (digits exists) and deploys again
    after = stack.client().get(f"/v1/models/{model_id}", headers=stack.auth()).get_json()
    assert before["description"] != after["description"] == "changed by a previous run"
    assert {d["status"] for d in after["deployments"]} == {"ready"}


def test_sync_requests_reuse_a_resolved_model_until_the_registry_changes(stack: Stack) -> None:
    """The API resolves a model once and reuses it (no registry read per request); a registry write
    is still seen by the very next request, which reads the generation in its record round trip."""
    from registry.models import Model, set_deployment, settle_status
    from tests.fixtures import digits_copy_ready
    from tests.integration.test_infer import digits_rows, infer_body

    name = unique()
    digits_copy_ready(stack, name, [0, 1])
    rows, labels = digits_rows(3, 1)
    client = stack.client()
    url = f"/v1/models/{name}/infer"
    first = client.post(url, json=infer_body(rows), headers=stack.auth())
    assert first.status_code == 200, first.get_data(as_text=True)
    hits = cache_count("hit") + cache_count("miss")
    for _ in range(3):
        again = client.post(url, json=infer_body(rows), headers=stack.auth())
        assert again.status_code == 200, again.get_data(as_text=True)
        assert again.get_json()["outputs"][0]["data"] == [int(labels[0])]
    assert cache_count("hit") + cache_count("miss") == hits, "reused: no registry read per request"

    with stack.services.db.session() as session:  # undeployed everywhere, then readers told
        model = session.query(Model).filter_by(name=name).one()
        for gpu in (0, 1):
            set_deployment(session, model, gpu, "failed", "taken away by the test")
        settle_status(model)
    stack.services.cache.invalidate()
    gone = client.post(url, json=infer_body(rows), headers=stack.auth())
    assert gone.status_code == 409, gone.get_data(as_text=True)
    assert gone.get_json()["type"].endswith("model-not-ready")
    assert stack.services.redis.get("inferq:waiting:acme") in (b"0", None), (
        "the refused request holds no place"
    )
