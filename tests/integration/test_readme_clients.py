"""The README's "Batch from the command line" and "Python SDK" examples work as printed (against a
served API instead of 127.0.0.1:8080)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferq.settings import REPO_ROOT
from tests.fixtures import Stack
from tests.integration.batch_files import make_input

pytestmark = pytest.mark.integration

KEY_LINE = "export INFERQ_API_KEY=$(cat ~/.local/share/inferq/dev-api-key)\n"


def readme_block(section: str, language: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    return text.split(f"## {section}\n", 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


def env(api_url: str, key: str) -> dict[str, str]:
    """What a user's shell has: the venv's bin on PATH, INFERQ_URL and INFERQ_API_KEY."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "INFERQ_URL": api_url,
        "INFERQ_API_KEY": key,
    }


def test_readme_batch_from_the_command_line(stack: Stack, api_url: str, tmp_path: Path) -> None:
    block = readme_block("Batch from the command line", "sh")
    assert block.startswith(KEY_LINE)
    expected = make_input(300, bad_every=20, prefix="readme-cli")
    (tmp_path / "requests.jsonl").write_bytes(expected.data)
    result = subprocess.run(
        ["bash", "-euc", block.removeprefix(KEY_LINE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env(api_url, stack.user_key),
    )
    assert result.returncode == 0, result.stderr
    outputs = (tmp_path / "output.jsonl").read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in outputs] == list(expected.rows)
    assert len((tmp_path / "errors.jsonl").read_text().splitlines()) == len(expected.errors)
    assert "status:      completed" in result.stdout and "metadata run: nightly" in result.stdout


def test_readme_python_sdk(stack: Stack, api_url: str, tmp_path: Path) -> None:
    code = readme_block("Python SDK", "python").replace("http://127.0.0.1:8080", api_url)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env(api_url, stack.user_key),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[0 1 2]"
    assert "completed 100" in lines
    assert lines[-3:] == ["row-0 [0]", "row-1 [1]", "row-2 [2]"]
