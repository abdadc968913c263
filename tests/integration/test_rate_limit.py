"""Per-key rate limits: 429 problem+json with Retry-After, keys counted apart, open when Redis is down."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from launcher.cli import main
from launcher.localstack import free_port
from registry.apikeys import ApiKey, create_key, hash_key
from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def new_key(stack: Stack, rate_limit: str | None = None) -> str:
    with stack.services.db.session() as session:
        _, key = create_key(session, f"rl-{uuid.uuid4().hex[:6]}", rate_limit=rate_limit)
    return key


def test_a_key_over_its_own_limit_gets_429(stack: Stack) -> None:
    limited, other = new_key(stack, "3/minute"), new_key(stack, "3/minute")
    for _ in range(3):
        assert stack.client().get("/v1/tasks/none", headers=stack.auth(limited)).status_code == 404
    response = stack.client().get("/v1/tasks/none", headers=stack.auth(limited))
    assert response.status_code == 429 and response.mimetype == "application/problem+json"
    assert (
        response.get_json()["title"] == "Too many requests"
        and "3 per 1 minute" in response.get_json()["detail"]
    )
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == "3" and response.headers["X-RateLimit-Remaining"] == "0"
    assert stack.client().get("/v1/tasks/none", headers=stack.auth(other)).status_code == 404  # counted apart


def test_sync_inference_counts_in_the_same_window_as_every_other_request(stack: Stack) -> None:
    """Inference counts its hit in the pipeline's record round trip (/v1 and /v2), other routes
    before the view, a request refused early (bad body, unknown model) on its own: one window."""
    from tests.integration.test_infer import digits_rows, infer_body

    key = new_key(stack, "6/minute")
    body = infer_body(digits_rows(0, 1)[0])
    client = stack.client()
    statuses = [
        client.post("/v1/models/digits/infer", json=body, headers=stack.auth(key)).status_code,
        client.get("/v1/tasks/none", headers=stack.auth(key)).status_code,
        client.post("/v2/models/digits/infer", json=body, headers=stack.auth(key)).status_code,
        client.post("/v1/models/digits/infer", json={"inputs": 1}, headers=stack.auth(key)).status_code,
        client.post("/v1/models/nope/infer", json=body, headers=stack.auth(key)).status_code,
        client.post(
            "/v1/models/digits/infer", json=body, headers={**stack.auth(key), "Prefer": "respond-async"}
        ).status_code,
    ]
    assert statuses == [200, 404, 200, 400, 404, 202]
    over = client.post("/v1/models/digits/infer", json=body, headers=stack.auth(key))
    assert over.status_code == 429, over.get_data(as_text=True)
    assert over.headers["X-RateLimit-Remaining"] == "0" and "6 per 1 minute" in over.get_json()["detail"]
    assert (
        client.post("/v1/models/digits/infer", json={"inputs": 1}, headers=stack.auth(key)).status_code == 429
    )
    v2 = client.post("/v2/models/digits/infer", json=body, headers=stack.auth(key))
    assert v2.status_code == 429 and "error" in v2.get_json(), "Triton's error shape on /v2"
    assert stack.services.redis.get("inferq:waiting:" + over_tenant(stack, key)) in (b"0", None)


def test_inference_is_counted_after_redis_lost_its_scripts(stack: Stack) -> None:
    """The pipelined hit sends the script by its hash; a Redis that lost its scripts (a restart, SCRIPT
    FLUSH) gets it loaded again and the request counted, not let through uncounted or failed."""
    from tests.integration.test_infer import digits_rows, infer_body

    key = new_key(stack, "2/minute")
    body = infer_body(digits_rows(0, 1)[0])
    stack.services.redis.script_flush()
    statuses = [
        stack.client().post("/v1/models/digits/infer", json=body, headers=stack.auth(key)).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def over_tenant(stack: Stack, key: str) -> str:
    with stack.services.db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        assert row is not None
        return str(row.tenant)


def test_the_platform_default_applies_to_keys_without_their_own(stack: Stack) -> None:
    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, rate_limit="2/minute"))
    key = new_key(stack)
    try:
        statuses = [
            app.test_client().get("/v1/tasks/none", headers=stack.auth(key)).status_code for _ in range(3)
        ]
        assert statuses == [404, 404, 429]
        assert app.test_client().get("/healthz").status_code == 200  # health is never limited
    finally:
        app.extensions["inferq"].close()


def test_requests_go_through_when_redis_is_down(stack: Stack) -> None:
    from webapp import create_app

    settings = dataclasses.replace(
        stack.settings, rate_limit="1/minute", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    app = create_app(settings)
    try:
        page = [app.test_client().get("/v1/models?name=digits", headers=stack.auth()) for _ in range(3)]
        assert [r.status_code for r in page] == [200, 200, 200]
        assert page[-1].get_json()["total"] == 1
    finally:
        app.extensions["inferq"].close()


def test_keys_create_takes_a_rate_limit(stack: Stack) -> None:
    env = stack.settings.as_env()
    bad = CliRunner().invoke(main, ["keys", "create", "--tenant", "t", "--rate-limit", "lots"], env=env)
    assert bad.exit_code == 2 and "--rate-limit" in bad.output
    good = CliRunner().invoke(main, ["keys", "create", "--tenant", "t", "--rate-limit", "10/second"], env=env)
    assert good.exit_code == 0, good.output
    key = good.output.strip().splitlines()[-1]
    with stack.services.db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        assert row is not None and row.rate_limit == "10/second"
