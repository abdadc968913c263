"""``inferq models ...`` against the API over real HTTP (INFERQ_URL, INFERQ_API_KEY)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from inferq.settings import REPO_ROOT
from launcher.cli import main
from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def run(api_url: str, key: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"INFERQ_URL": api_url, "INFERQ_API_KEY": key})


def test_register_show_list_deploy_stats_undeploy_delete(stack: Stack, api_url: str, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    spec = {
        "name": name,
        "version": "1",
        "triton_name": "iris",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    (tmp_path / "model.json").write_text(json.dumps(spec))
    admin = stack.admin_key
    result = run(
        api_url, admin, "models", "register", "--file", str(tmp_path / "model.json"), "--label", "team:cli"
    )
    assert result.exit_code == 0, result.output
    model_id = result.output.split(" as ")[-1].strip()

    shown = json.loads(run(api_url, stack.user_key, "models", "show", f"{name}:1").output)
    assert shown["id"] == model_id and shown["labels"] == {"team": "cli"}

    listed = run(api_url, stack.user_key, "models", "list", "--label", "team:cli", "--name", name)
    assert listed.exit_code == 0 and model_id in listed.output and "1 of 1" in listed.output

    deployed = run(api_url, admin, "models", "deploy", model_id, "--gpus", "0,1")
    assert deployed.exit_code == 0, deployed.output
    assert "gpu 0: ready" in deployed.output and f"{name}:1 ready" in deployed.output

    figures = json.loads(run(api_url, stack.user_key, "models", "stats", model_id).output)
    assert figures["requests"] == 0 and figures["model_id"] == model_id

    undeployed = run(api_url, admin, "models", "undeploy", f"{name}:1")
    assert undeployed.exit_code == 0 and f"{name}:1 registered" in undeployed.output
    deleted = run(api_url, admin, "models", "delete", model_id)
    assert deleted.exit_code == 0 and "deleted" in deleted.output
    missing = run(api_url, admin, "models", "show", model_id)
    assert missing.exit_code == 1 and "404 Model not found" in missing.output


def test_register_from_a_repository_folder_and_errors(stack: Stack, api_url: str) -> None:
    result = run(
        api_url, stack.admin_key, "models", "register", "--from-repository", str(REPO_ROOT / "models/iris")
    )
    # iris:1 is registered by the stack already: the API's 409 comes back as a clean error.
    assert result.exit_code == 1 and "409 Model already exists" in result.output
    result = run(
        api_url, stack.user_key, "models", "register", "--from-repository", str(REPO_ROOT / "models/iris")
    )
    assert result.exit_code == 1 and "403" in result.output
    failed = run(api_url, stack.admin_key, "models", "deploy", "iris:1", "--gpus", "9")
    assert failed.exit_code == 1 and "/gpus/0" in failed.output


def test_api_unreachable_is_a_clean_error() -> None:
    result = run("http://127.0.0.1:9", "k", "models", "list")
    assert result.exit_code == 1 and "API unreachable" in result.output
