"""docker/docker-compose.yml (no Docker engine runs here): valid Compose, consistent with itself and
with the code: settings, commands, ports, start-up order and profiles."""

from __future__ import annotations

import copy
import json
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from celery.bin.celery import celery as celery_cli

from inferq.settings import CONTROL_QUEUE, REPO_ROOT, gpu_queue
from tests.unit.docker import checks
from tests.unit.docker.checks import (
    AMQP_ENV,
    USER_ENV,
    MissingVariable,
    enabled,
    hostnames,
    interpolate,
    variables,
)

DOCKER = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
PROFILE_SETS = [(), ("gpu",), ("cpu",), ("gpu", "rabbitmq"), ("cpu", "rabbitmq")]
# Long-running services without a health check of their own, each with its reason in the file.
UNCHECKED = {"beat", "jaeger"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as compose reads it, with the variables a user exports for the default broker."""
    return interpolate(raw, USER_ENV)  # type: ignore[no-any-return]


def header() -> str:
    """The comment the file starts with."""
    lines = COMPOSE_FILE.read_text().splitlines()
    end = next(index for index, line in enumerate(lines) if not line.startswith("#"))
    return "\n".join(lines[:end])


def inferq_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "inferq"
    }


def depends(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition}."""
    found = service.get("depends_on", {})
    if isinstance(found, list):
        return dict.fromkeys(found, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in found.items()}


def worker_gpu(command: list[str]) -> int | None:
    return int(command[command.index("--gpu") + 1]) if "--gpu" in command else None


def test_the_file_follows_the_compose_specification(raw: dict[str, Any]) -> None:
    schema_text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema = json.loads(schema_text)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    for env in (USER_ENV, AMQP_ENV):
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(interpolate(raw, env))]
        assert not errors, errors
    # The schema is strict: a misspelt key is caught.
    broken = copy.deepcopy(raw)
    broken["services"]["api"]["depend_on"] = broken["services"]["api"].pop("depends_on")
    assert not validator.is_valid(broken)


def test_every_variable_is_documented_in_the_header(raw: dict[str, Any]) -> None:
    text = header()
    for name in variables(raw):
        assert name in text, f"${{{name}}} is used but the header does not say how to set it"
    with pytest.raises(MissingVariable, match="FLOWER_BASIC_AUTH"):
        interpolate(raw, {})
    assert "--profile gpu" in text and "--profile cpu" in text and "--profile rabbitmq" in text


def test_every_component_of_the_design_is_a_service(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    assert {
        "redis",
        "postgres",
        "minio",
        "init",
        "api",
        "flower",
        "prometheus",
        "grafana",
        "jaeger",
        "worker-control",
        "beat",
        "rabbitmq",
    } <= services
    assert {"triton-gpu0", "triton-gpu1", "worker-gpu0", "worker-gpu1"} <= services
    assert {"triton-cpu0", "triton-cpu1", "worker-cpu0", "worker-cpu1"} <= services
    assert "migrate" not in services  # `inferq init` replaced `inferq db upgrade`


def test_environment_names_real_settings_and_parses(raw: dict[str, Any]) -> None:
    for env, broker in ((USER_ENV, "redis://redis:6379/0"), (AMQP_ENV, AMQP_ENV["INFERQ_BROKER_URL"])):
        compose = interpolate(raw, env)
        for name, service in compose["services"].items():
            environment = service.get("environment", {})
            if not any(key.startswith("INFERQ_") for key in environment):
                continue
            assert isinstance(environment, dict), f"{name}: environment as a map, not a list"
            settings = checks.settings_from(environment)
            assert settings.database_url.startswith("postgresql://")
            assert settings.broker_url == broker
            assert settings.result_backend == settings.redis_url  # Redis keeps the results
            for gpu in settings.gpus:
                assert settings.triton_urls[gpu] == f"http://triton-gpu{gpu}:8000"
            assert settings.data_dir.startswith("/tmp/")


def test_one_image_built_once(compose: dict[str, Any]) -> None:
    builds = {json.dumps(s["build"], sort_keys=True) for s in compose["services"].values() if "build" in s}
    assert len(builds) == 1
    for name, service in compose["services"].items():
        if "build" in service or service.get("command", [None])[0] == "inferq":
            assert service["image"] == "inferq:latest", name
    assert (DOCKER / compose["services"]["api"]["build"]["context"] / "docker/Dockerfile").is_file()


def test_every_inferq_command_exists_and_runs_as_written(compose: dict[str, Any], tmp_path: Path) -> None:
    seen = set()
    for name, service in inferq_services(compose).items():
        command = service["command"]
        assert isinstance(command, list) and all(isinstance(part, str) for part in command), name
        cli, _ = checks.resolve(command)
        seen.add(cli.name)
        if cli.name not in checks.EXEC_COMMANDS:
            continue
        # The data directory is the container's; here it is a temporary one.
        env = {**service["environment"], "INFERQ_DATA_DIR": str(tmp_path)}
        process = checks.run(command, {k: str(v) for k, v in env.items()})
        settings = checks.settings_from(service["environment"])
        if cli.name == "worker":
            gpu = worker_gpu(command)
            queue = CONTROL_QUEUE if gpu is None else gpu_queue(gpu)
            assert process.option("-Q") == queue, name
            assert process.env["CUDA_VISIBLE_DEVICES"] == ("" if gpu is None else str(gpu))
            ping = shlex.split(service["healthcheck"]["test"][1])
            assert ping[:3] == ["celery", "-A", "tasks"], name
            options = celery_cli.commands[ping[3]].make_context(ping[3], ping[4 : ping.index(">")]).params
            assert options["command"] == "ping"
            assert options["destination"] == [process.option("-n").replace("%h", "$HOSTNAME")], name
        elif cli.name == "api":
            assert process.option("--bind") == f"0.0.0.0:{settings.api_port}"
            assert [p.split(":")[-1] for p in service["ports"]] == [str(settings.api_port)]
            url = checks.python_url(service["healthcheck"]["test"])
            assert url == f"http://127.0.0.1:{settings.api_port}/readyz"
            assert "/readyz" in checks.api_routes()
        elif cli.name == "flower":
            assert process.option("--address") == "0.0.0.0"
            assert process.option("--port") == str(settings.flower_port)
            assert [p.split(":")[-1] for p in service["ports"]] == [str(settings.flower_port)]
            url = checks.python_url(service["healthcheck"]["test"])
            assert url == f"http://127.0.0.1:{settings.flower_port}/healthcheck"
            assert "/healthcheck" in checks.flower_routes()
        elif cli.name == "beat":
            assert Path(process.option("--schedule")).parent == tmp_path
    assert seen == {"init", "api", "worker", "beat", "flower"}


def test_each_gpu_worker_is_pinned_to_its_queue_and_its_triton(compose: dict[str, Any]) -> None:
    settings = checks.settings_from(compose["x-inferq-env"])
    for profile, triton in (("gpu", "triton-gpu{}"), ("cpu", "triton-cpu{}")):
        services = enabled(compose, [profile])
        names = hostnames(compose, services)
        workers = {
            worker_gpu(s["command"]): name
            for name, s in inferq_services(compose).items()
            if name in services and worker_gpu(s["command"]) is not None
        }
        assert sorted(workers) == list(settings.gpus), profile
        for gpu, worker in workers.items():
            assert compose["services"][worker]["command"] == ["inferq", "worker", "--gpu", str(gpu)]
            host, port = checks.url_host_port(settings.triton_urls[gpu])
            assert names[host] == triton.format(gpu), (profile, gpu)
            assert depends(compose["services"][worker])[names[host]] == "service_healthy"
            assert port == 8000


def test_tritons_serve_the_model_repository(compose: dict[str, Any]) -> None:
    tritons = {n: s for n, s in compose["services"].items() if n.startswith("triton-")}
    assert set(tritons) == {"triton-gpu0", "triton-gpu1", "triton-cpu0", "triton-cpu1"}
    for name, triton in tritons.items():
        assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
        assert triton["command"] == [
            "tritonserver",
            "--model-repository=/models",
            "--model-control-mode=explicit",
        ]
        assert "../models:/models:ro" in triton["volumes"]
        assert "http://localhost:8000/v2/health/ready" in triton["healthcheck"]["test"]
        gpu = name[-1]
        if name.startswith("triton-gpu"):
            assert triton["profiles"] == ["gpu"]
            [device] = triton["deploy"]["resources"]["reservations"]["devices"]
            assert device == {"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}
        else:
            assert triton["profiles"] == ["cpu"]
            assert "deploy" not in triton
            assert triton["networks"]["default"]["aliases"] == [f"triton-gpu{gpu}"]


def test_start_up_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = services["init"]
    assert init["command"] == ["inferq", "init"]
    assert init["restart"] == "no"  # one-shot
    assert depends(init) == {"postgres": "service_healthy", "minio": "service_healthy"}
    for name in set(inferq_services(compose)) - {"init"}:
        assert depends(services[name])["init"] == "service_completed_successfully", name
        assert depends(services[name])["redis"] == "service_healthy", name
    for name, service in services.items():
        for target, condition in depends(service).items():
            if condition == "service_healthy":
                check = services[target].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (name, target)


@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p) or "none")
def test_each_profile_set_starts_a_whole_stack(raw: dict[str, Any], profiles: tuple[str, ...]) -> None:
    compose = interpolate(raw, AMQP_ENV if "rabbitmq" in profiles else USER_ENV)
    services = enabled(compose, profiles)
    names = hostnames(compose, services)
    for name in services:
        service = compose["services"][name]
        missing = set(depends(service)) - services
        assert not missing, f"{name} depends on {missing}, not started with profiles {profiles}"
        if name in inferq_services(compose):
            settings = checks.settings_from(service["environment"])
            urls = [settings.broker_url, settings.redis_url, settings.database_url, settings.s3_endpoint]
            urls += [settings.otlp_endpoint]
            if {"gpu", "cpu"} & set(profiles):
                urls += list(settings.triton_urls.values())
            for url in urls:
                assert checks.url_host_port(url)[0] in names, (profiles, name, url)
    tritons = {n for n in services if n.startswith("triton-")}
    if not {"gpu", "cpu"} & set(profiles):
        assert not tritons and "no Triton" in header()
    assert ("rabbitmq" in services) == ("rabbitmq" in profiles)


def test_health_checks_on_every_long_running_service(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        if service.get("restart") == "no":
            continue
        assert service.get("restart") == "unless-stopped", name
        if name in UNCHECKED:
            assert not check.get("test"), name
        else:
            assert check.get("test") and not check.get("disable"), f"{name} has no health check"


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
    assert {"flower", "minio", "prometheus", "grafana", "jaeger", "rabbitmq"} <= set(published)
    for name, ports in published.items():
        assert all(host_ip(port) == "127.0.0.1" for port in ports), (name, ports)
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
    for name in ("redis", "postgres"):
        assert not compose["services"][name].get("ports"), name


def test_flower_needs_a_password_from_the_environment(raw: dict[str, Any]) -> None:
    flower = raw["services"]["flower"]
    value = flower["environment"]["FLOWER_BASIC_AUTH"]
    # Required (compose refuses to start without it), never a value committed here.
    assert value.startswith("${FLOWER_BASIC_AUTH:?") and value.endswith("}")
    assert not any("basic" in part or "auth" in part for part in flower["command"])
