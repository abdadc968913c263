"""The README's curl example works as printed (against a served API instead of 127.0.0.1:8080)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from inferq.settings import REPO_ROOT
from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def readme_curl() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## A first request", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return block


def test_readme_curl_classifies_the_zero(stack: Stack, api_url: str) -> None:
    block = readme_curl()
    assert "export INFERQ_API_KEY=$(cat ~/.local/share/inferq/dev-api-key)" in block
    command = (
        block.split("dev-api-key)\n", 1)[1].replace("http://127.0.0.1:8080", api_url).replace("\\\n", " ")
    )
    assert shlex.split(command)[0] == "curl"
    # Through the shell, as a user would (it expands $INFERQ_API_KEY).
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        env={"INFERQ_API_KEY": stack.user_key, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r'"name":"label","datatype":"INT64","shape":\[1\],"data":\[0\]', result.stdout), (
        result.stdout
    )
