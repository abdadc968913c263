"""The built package (what the Docker image installs) carries every module it needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from inferq.settings import REPO_ROOT


def test_wheel_has_migrations_and_the_triton_wrapper(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("inferq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "celeryconfig.py",
        "inferq/py.typed",  # the SDK's type hints reach its users (PEP 561)
        "launcher/triton_onnx_model.py",
        "webapp/openapi.yaml",
        "registry/migrations/env.py",
        "registry/migrations/script.py.mako",
        *(
            f"registry/migrations/versions/{p.name}"
            for p in (REPO_ROOT / "registry/migrations/versions").glob("*.py")
        ),
    }
    assert expected <= names, expected - names
    assert not any(name.startswith("tests/") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "inferq = launcher.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
