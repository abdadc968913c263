"""Every INFERQ_ name written anywhere in docker/ (files and comments alike) is a real setting."""

from __future__ import annotations

import re

from inferq.settings import REPO_ROOT
from tests.unit.docker import checks


def test_every_inferq_variable_named_in_docker_is_a_setting() -> None:
    found: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "docker").rglob("*"):
        if path.is_file() and path.suffix in ("", ".yml", ".yaml", ".json", ".dockerignore"):
            for name in re.findall(r"\bINFERQ_[A-Z0-9_]+\*?", path.read_text()):
                found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))

    def known(name: str) -> bool:
        if name.endswith("*"):  # INFERQ_API_*: a family of settings
            return any(setting.startswith(name[:-1]) for setting in checks.SETTING_VARIABLES)
        return name in checks.SETTING_VARIABLES

    unknown = {name: paths for name, paths in found.items() if not known(name)}
    assert not unknown, unknown
    assert "INFERQ_TRITON_SIDECAR" in found and "INFERQ_BROKER_URL" in found
