"""docker/ is for users (no Docker engine runs here): check the files are consistent with the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferq.settings import REPO_ROOT, Settings, gpu_queue

DOCKER = REPO_ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_every_component_of_the_design_is_a_service(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    assert {
        "redis",
        "postgres",
        "minio",
        "api",
        "flower",
        "prometheus",
        "grafana",
        "jaeger",
        "worker-control",
        "beat",
    } <= services
    assert {"triton-gpu0", "triton-gpu1", "worker-gpu0", "worker-gpu1"} <= services


def test_environment_names_real_settings_and_parses(compose: dict[str, Any]) -> None:
    known = {f"INFERQ_{f.name.upper()}" for f in dataclasses.fields(Settings)} | {
        "CUDA_VISIBLE_DEVICES",
        "FLOWER_BASIC_AUTH",  # Flower's own option, read from its environment
    }
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if not any(key.startswith("INFERQ_") for key in env):
            continue
        assert set(env) <= known, (name, set(env) - known)
        settings = Settings.from_env({k: str(v) for k, v in env.items()})
        assert settings.database_url.startswith("postgresql://")
        for gpu in settings.gpus:
            assert settings.triton_urls[gpu] == f"http://triton-gpu{gpu}:8000"


def test_each_gpu_worker_is_pinned_to_its_queue_and_device(compose: dict[str, Any]) -> None:
    settings = Settings.from_env({k: str(v) for k, v in compose["x-inferq-env"].items()})
    for gpu in settings.gpus:
        worker = compose["services"][f"worker-gpu{gpu}"]
        command = worker["command"]
        assert command[:4] == ["celery", "-A", "tasks", "worker"]
        assert command[command.index("-Q") + 1] == gpu_queue(gpu)
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == str(gpu)
        triton = compose["services"][f"triton-gpu{gpu}"]
        devices = triton["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == [str(gpu)]
        assert "../models:/models:ro" in triton["volumes"]
        assert "--model-control-mode=explicit" in triton["command"]


def test_dockerfile_copies_every_package_and_serves_the_app() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for package in ("inferq", "launcher", "webapp", "tasks", "registry", "workers"):
        assert f"COPY {package} {package}" in dockerfile
        assert (REPO_ROOT / package / "__init__.py").exists()
    assert "celeryconfig.py" in dockerfile and "constraints.txt" in dockerfile
    assert 'CMD ["inferq", "api"]' in dockerfile  # gunicorn as INFERQ_API_* say
    from launcher.cli import main

    assert "api" in main.commands


def test_prometheus_scrapes_what_compose_runs(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in config["scrape_configs"]
        for s in job["static_configs"]
        for t in s["targets"]
    }
    assert targets <= set(compose["services"])


def test_compose_paths_exist(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).resolve().is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).resolve().exists(), source
    assert Path(DOCKER / "../models/digits/config.pbtxt").resolve().is_file()


def host_ip(mapping: str) -> str | None:
    """The host address a compose port mapping binds (None: every interface)."""
    parts = mapping.split(":")
    return parts[0] if len(parts) == 3 else None


def test_only_the_api_is_published_on_every_interface(compose: dict[str, Any]) -> None:
    published = {
        name: [str(port) for port in service.get("ports", [])]
        for name, service in compose["services"].items()
        if service.get("ports")
    }
    assert published.pop("api") == ["8080:8080"]
    assert {"flower", "minio", "prometheus", "grafana", "jaeger"} <= set(published)
    for name, ports in published.items():
        assert all(host_ip(port) == "127.0.0.1" for port in ports), (name, ports)
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
    assert not compose["services"]["redis"].get("ports") and not compose["services"]["postgres"].get("ports")


def test_flower_needs_a_password_from_the_environment(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    value = flower["environment"]["FLOWER_BASIC_AUTH"]
    # Required (compose refuses to start without it), never a value committed here.
    assert value.startswith("${FLOWER_BASIC_AUTH:?") and value.endswith("}")
    assert not any("basic" in part or "auth" in part for part in flower["command"])
