"""``inferq keys create``: the key alone on the last line, only its hash stored, and it works."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from launcher.cli import main
from registry.apikeys import ApiKey, hash_key
from tests.fixtures import Stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("admin", [False, True])
def test_keys_create_prints_a_working_key(stack: Stack, admin: bool) -> None:
    args = ["keys", "create", "--tenant", "initech"] + (["--admin"] if admin else [])
    result = CliRunner().invoke(main, args, env=stack.settings.as_env())
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("iq_") and " " not in key and len(key) > 40
    with stack.services.db.session() as session:
        rows = session.scalars(select(ApiKey).where(ApiKey.tenant == "initech", ApiKey.admin == admin)).all()
        assert any(row.key_hash == hash_key(key) for row in rows)
        assert all(key not in (row.key_hash, row.prefix) for row in rows)
    response = stack.client().get("/v1/tasks/none", headers=stack.auth(key))
    assert response.status_code == 404  # authenticated: the task just does not exist


def test_keys_list_and_revoke(stack: Stack) -> None:
    env = stack.settings.as_env()
    created = CliRunner().invoke(main, ["keys", "create", "--tenant", "umbrella"], env=env)
    key = created.output.strip().splitlines()[-1]
    key_id = created.output.split("key id ")[1].split()[0]
    listed = CliRunner().invoke(main, ["keys", "list", "--tenant", "umbrella"], env=env)
    assert listed.exit_code == 0 and key_id in listed.output and key[:8] in listed.output
    assert key not in listed.output, "the secret is never shown again"
    assert stack.client().get("/v1/tasks/x", headers=stack.auth(key)).status_code == 404
    revoked = CliRunner().invoke(main, ["keys", "revoke", key_id], env=env)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    # Each API process reuses a key's lookup for INFERQ_KEY_CACHE_TTL seconds (1 here).
    deadline = time.monotonic() + stack.settings.key_cache_ttl + 2
    while (response := stack.client().get("/v1/tasks/x", headers=stack.auth(key))).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key keeps working past the key cache TTL"
        time.sleep(0.1)
    assert response.get_json()["title"] == "Invalid API key"
    missing = CliRunner().invoke(main, ["keys", "revoke", "nope"], env=env)
    assert missing.exit_code == 1 and "no key with id nope" in missing.output


def test_keys_create_needs_a_tenant(stack: Stack) -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--tenant", ""], env=stack.settings.as_env())
    assert result.exit_code == 2 and "tenant" in result.output
