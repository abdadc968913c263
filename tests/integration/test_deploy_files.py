"""The deployment files come up: every inferq process of docker/docker-compose.yml (profile gpu, then cpu) and
of docker/k8s is started here with its command and environment exactly as the file writes them,
outside Docker (there is no engine here), against real local services: a fresh PostgreSQL
database, an empty S3 store (no bucket), Redis, and the test Triton. Then /readyz must answer 200,
an operator registers and deploys a model with the CLI, and an inference runs through the API.

What the test changes, and only that: the network names of the other containers (redis, postgres,
minio, triton-gpuN, the pod's own 127.0.0.1:8000 Triton, jaeger) become the local services'
addresses; the database URL becomes the fresh database's (its user and password are the file's
example ones); published ports (8080, 5555) become free ports; INFERQ_DATA_DIR goes under tmp.
Every other variable and every command is used as written. The health checks the compose file
declares are run too, as Docker would run them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from inferq.settings import REPO_ROOT
from launcher.localstack import ManagedProcess, free_port, port_open, s3_process
from tests.fixtures import TritonServer, _create_postgres_database, _drop_postgres_database

pytestmark = pytest.mark.integration

DOCKER = REPO_ROOT / "docker"
BIN = Path(sys.executable).parent  # the image puts inferq and celery on PATH; so does the venv
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
# What may differ from the files (see the module docstring).
REWRITTEN = {
    "INFERQ_REDIS_URL",
    "INFERQ_BROKER_URL",
    "INFERQ_RESULT_BACKEND",
    "INFERQ_DATABASE_URL",
    "INFERQ_S3_ENDPOINT",
    "INFERQ_TRITON_URLS",
    "INFERQ_DATA_DIR",
    "INFERQ_OTLP_ENDPOINT",
    "INFERQ_API_PORT",
    "INFERQ_FLOWER_PORT",
}


@dataclass
class Local:
    """The local services standing in for the other containers."""

    redis: str  # host:port
    redis_db: int
    s3: str  # host:port
    triton: str  # host:port
    database_url: str
    data_dir: Path
    ports: dict[str, str] = field(default_factory=dict)  # published port -> free port

    def rewrite(self, text: str) -> str:
        text = re.sub(r"redis://redis:6379/\d+", f"redis://{self.redis}/{self.redis_db}", text)
        text = text.replace("//minio:9000", f"//{self.s3}")
        text = re.sub(r"//triton-gpu\d+:8000", f"//{self.triton}", text)
        text = text.replace("//127.0.0.1:8000", f"//{self.triton}")  # a pod's own Triton
        text = text.replace("//jaeger:4318", f"//127.0.0.1:{closed_port()}")
        for published, free in self.ports.items():
            text = re.sub(rf"(?<![\d.]){published}(?!\d)", free, text)
        return text

    def environment(self, written: dict[str, str]) -> dict[str, str]:
        env = {key: self.rewrite(value) for key, value in written.items()}
        if "INFERQ_DATABASE_URL" in env:
            assert env["INFERQ_DATABASE_URL"].startswith("postgresql://"), env["INFERQ_DATABASE_URL"]
            env["INFERQ_DATABASE_URL"] = self.database_url
        env["INFERQ_DATA_DIR"] = str(self.data_dir)
        for key in ("INFERQ_API_PORT", "INFERQ_FLOWER_PORT"):
            env.setdefault(key, self.ports[{"INFERQ_API_PORT": "8080", "INFERQ_FLOWER_PORT": "5555"}[key]])
        changed = {key for key in env if env[key] != written.get(key)}
        assert changed <= REWRITTEN, changed - REWRITTEN
        return env


def closed_port() -> int:
    return free_port()  # nothing listens there: spans are dropped at once


def base_env() -> dict[str, str]:
    """A container's environment before the file's variables: PATH with the image's tools."""
    return {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "HOSTNAME": socket.gethostname(),
        "PYTHONUNBUFFERED": "1",
    }


def interpolate(value: Any, shell: dict[str, str]) -> str:
    """Compose variable interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if op == ":-":
            return shell.get(name) or arg
        if op == ":?":
            if not shell.get(name):
                raise AssertionError(f"compose would refuse to start: {arg}")
            return shell[name]
        return shell.get(name, "")

    text = str(value)
    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, text)
    return text.replace("$$", "$")


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None = None  # a Docker health check, as argv


@dataclass
class Running:
    local: Local
    processes: dict[str, ManagedProcess]
    env: dict[str, str]  # the API container's environment (for the operator's CLI)
    api: str

    def run(self, *argv: str, extra: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            env={**base_env(), **self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        return done.stdout


def resolve(argv: list[str]) -> list[str]:
    assert argv[0] in ("inferq", "celery", "python"), argv
    return [str(BIN / argv[0]) if argv[0] != "python" else sys.executable, *argv[1:]]


def health_argv(check: Any, shell: dict[str, str]) -> list[str] | None:
    if not check or check.get("disable"):
        return None
    test = [interpolate(part, shell) for part in check["test"]]
    if test[0] == "CMD":
        return resolve(test[1:])
    assert test[0] == "CMD-SHELL", test
    return ["/bin/sh", "-c", test[1]]


@pytest.fixture
def local(redis_url: str, triton: TritonServer, tmp_path: Path) -> Iterator[Local]:
    """A fresh PostgreSQL database, Redis db 13, the test Triton; the S3 store is started empty by
    :func:`start`, with the credentials the files give."""
    import redis

    name, database_url = _create_postgres_database()
    redis_host = redis_url.split("//")[1].rsplit("/", 1)[0]
    try:
        redis.Redis.from_url(f"redis://{redis_host}/13").flushdb()
        yield Local(
            redis=redis_host,
            redis_db=13,
            s3=f"127.0.0.1:{free_port()}",
            triton=triton.url.split("//")[1],
            database_url=database_url,
            data_dir=tmp_path / "data",
            ports={"8080": str(free_port()), "5555": str(free_port())},
        )
    finally:
        _drop_postgres_database(name)


@contextlib.contextmanager
def start(local: Local, init: Process, long_running: list[Process], tmp_path: Path) -> Iterator[Running]:
    """Start an empty S3 store with the credentials the files give; run ``init`` to completion,
    then the long-running processes."""
    s3_port = int(local.s3.split(":")[1])
    keys = (init.env["INFERQ_S3_ACCESS_KEY"], init.env["INFERQ_S3_SECRET_KEY"])
    store = s3_process(s3_port, tmp_path / "s3", *keys, tmp_path / "s3.log").start()
    store.wait_until(lambda: port_open("127.0.0.1", s3_port), 30, "listening")
    done = subprocess.run(
        init.argv, env={**base_env(), **init.env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "migrated" in done.stdout and "bucket inferq ready" in done.stdout, done.stdout
    processes: dict[str, ManagedProcess] = {}
    try:
        for process in long_running:
            processes[process.name] = ManagedProcess(
                process.name,
                process.argv,
                env={**base_env(), **process.env},
                log_path=tmp_path / f"{process.name}.log",
            ).start()
        api = next(p for p in long_running if p.argv[1:] == ["api"])
        url = f"http://127.0.0.1:{api.env['INFERQ_API_PORT']}"
        deadline = time.monotonic() + 120
        status, body = 0, ""
        while time.monotonic() < deadline:
            for managed in processes.values():
                assert managed.alive(), f"{managed.name} exited:\n{managed.log_tail(60)}"
            try:
                answer = requests.get(f"{url}/readyz", timeout=5)
                status, body = answer.status_code, answer.text
                if status == 200:
                    break
            except requests.RequestException as exc:
                body = str(exc)
            time.sleep(1)
        assert status == 200, f"/readyz: {status} {body}"
        yield Running(local, processes, api.env, url)
    finally:
        for managed in processes.values():
            managed.stop()
        store.stop()


def operator_deploys_and_infers(running: Running) -> None:
    """As an operator would: an admin key, the model registered and deployed with the CLI, then
    an inference through the API."""
    key = running.run("inferq", "keys", "create", "--tenant", "ops", "--admin").strip().splitlines()[-1]
    cli = {"INFERQ_URL": running.api, "INFERQ_API_KEY": key}
    running.run(
        "inferq", "models", "register", "--from-repository", str(REPO_ROOT / "models" / "digits"), extra=cli
    )
    running.run("inferq", "models", "deploy", "digits:1", "--gpus", "0,1", extra=cli)
    response = requests.post(
        f"{running.api}/v1/models/digits/infer",
        json=BODY,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [4]  # digits says 4 for zeros


# --- Compose ---------------------------------------------------------------------------------


def compose_processes(local: Local, profiles: set[str]) -> tuple[Process, list[Process]]:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    shell = {"FLOWER_BASIC_AUTH": f"admin:{uuid.uuid4().hex}"}
    init: Process | None = None
    long_running = []
    for name, service in compose["services"].items():
        if service.get("image") != "inferq:latest":
            continue
        if service.get("profiles") and not set(service["profiles"]) & profiles:
            continue
        argv = service.get("command") or ["inferq", "api"]  # the image's CMD
        written = {key: interpolate(value, shell) for key, value in service.get("environment", {}).items()}
        env = local.environment(written)
        check = service.get("healthcheck")
        health = health_argv(check, shell)
        process = Process(name, resolve([interpolate(part, shell) for part in argv]), env, health)
        if process.health:
            process.health = [local.rewrite(part) for part in process.health]
        if name == "init":
            init = process
        else:
            long_running.append(process)
    assert init is not None, "compose has an init service"
    return init, long_running


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_compose_comes_up_from_the_files_commands(local: Local, tmp_path: Path, profile: str) -> None:
    init, long_running = compose_processes(local, {profile})
    names = {process.name for process in long_running}
    workers = {f"worker-{profile}0", f"worker-{profile}1"}
    assert {"api", "worker-control", "beat", "flower"} | workers <= names, names
    assert not {"worker-gpu0", "worker-cpu0"} - workers & names, "one profile's workers only"
    with start(local, init, long_running, tmp_path) as running:
        # Docker's health checks pass as Docker would run them (in the container's environment).
        for process in long_running:
            if process.health and process.argv[1:2] == ["worker"]:
                # Every process here has this machine's host name; in Docker each has its own,
                # so the check must ping the name its own worker takes.
                own = f"gpu{process.argv[-1]}@" if "--gpu" in process.argv else "control@"
                assert own in " ".join(process.health), (process.name, process.health)
            if process.health:
                done = subprocess.run(
                    process.health,
                    env={**base_env(), **process.env},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, (
                    f"{process.name} health check {shlex.join(process.health)}: {done.stderr}"
                )
        flower = next(p for p in long_running if p.name == "flower")
        flower_url = f"http://127.0.0.1:{flower.env['INFERQ_FLOWER_PORT']}/"
        deadline = time.monotonic() + 30
        while (
            not port_open("127.0.0.1", int(flower.env["INFERQ_FLOWER_PORT"])) and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert requests.get(flower_url, timeout=10).status_code == 401, "Flower asks for its password"
        user, password = flower.env["FLOWER_BASIC_AUTH"].split(":", 1)
        assert requests.get(flower_url, auth=(user, password), timeout=10).status_code == 200
        operator_deploys_and_infers(running)


# --- Kubernetes ------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DOCKER / "k8s" / "kustomization.yaml").read_text())
    found: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        path = DOCKER / "k8s" / name
        if path.is_file():
            found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def k8s_processes(local: Local) -> tuple[Process, list[Process]]:
    objects = k8s_objects()
    config = {
        (o["kind"], o["metadata"]["name"]): o.get("data") or o.get("stringData") or {}
        for o in objects
        if o["kind"] in ("ConfigMap", "Secret")
    }
    flower_secret = {"basic-auth": f"admin:{uuid.uuid4().hex}"}  # made by the operator (kubectl)
    init: Process | None = None
    long_running = []
    for o in objects:
        if o["kind"] not in ("Deployment", "Job"):
            continue
        for container in o["spec"]["template"]["spec"]["containers"]:
            command = container.get("command") or container.get("args")
            if not command or command[0] != "inferq":
                continue  # Triton: the test Triton stands in for it
            written: dict[str, str] = {}
            for source in container.get("envFrom", []):
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                ref = source.get("configMapRef") or source.get("secretRef")
                written.update({k: str(v) for k, v in config[(kind, ref["name"])].items()})
            for item in container.get("env", []):
                if "value" in item:
                    written[item["name"]] = str(item["value"])
                else:
                    ref = item["valueFrom"]["secretKeyRef"]
                    source = config.get(("Secret", ref["name"])) or (
                        flower_secret if ref["name"] == "inferq-flower" else {}
                    )
                    written[item["name"]] = str(source[ref["key"]])
            name = f"{o['metadata']['name']}-{container['name']}"
            process = Process(name, resolve(command), local.environment(written))
            if o["kind"] == "Job":
                init = process
            else:
                long_running.append(process)
    assert init is not None, "the manifests have an init Job"
    return init, long_running


def test_kubernetes_manifests_come_up_from_their_commands(local: Local, tmp_path: Path) -> None:
    init, long_running = k8s_processes(local)
    commands = {" ".join(p.argv[1:]) for p in long_running}
    assert {"api", "worker --gpu 0", "worker --gpu 1", "worker --control", "beat", "flower"} <= commands
    sidecars = [p for p in long_running if p.argv[1:3] == ["worker", "--gpu"]]
    assert all(p.env.get("INFERQ_TRITON_SIDECAR") == "true" for p in sidecars)
    with start(local, init, long_running, tmp_path) as running:
        operator_deploys_and_infers(running)


def test_init_says_what_is_wrong_in_one_line_and_does_not_wait_on_a_wrong_setting(tmp_path: Path) -> None:
    """A role that does not exist is not a database still starting: one line, exit 1, at once. An
    object store that does not answer yet is waited for (--wait), each wait said."""
    env = {**base_env(), "INFERQ_DATA_DIR": str(tmp_path)}
    wrong = {**env, "INFERQ_DATABASE_URL": "postgresql://nobody:wrong@127.0.0.1:5432/nosuchdb"}
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "inferq"), "init", "--wait", "30"], env=wrong, capture_output=True, text=True
    )
    assert done.returncode == 1 and time.monotonic() - started < 15, done.stderr
    assert "init failed:" in done.stderr and "Traceback" not in done.stderr and "wrong@" not in done.stderr
    away = {**env, "INFERQ_S3_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    done = subprocess.run(
        [str(BIN / "inferq"), "init", "--wait", "3"], env=away, capture_output=True, text=True
    )
    assert done.returncode == 1 and "migrated" in done.stdout, done.stdout + done.stderr
    assert "init: waiting for the object store" in done.stderr and "Traceback" not in done.stderr
