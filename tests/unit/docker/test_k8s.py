"""docker/k8s manifests (no cluster here): consistent with each other and with the code's settings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from inferq.settings import REPO_ROOT, Settings, gpu_queue

K8S = REPO_ROOT / "docker" / "k8s"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == set(kustomization["resources"])
    return found


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_config_parses_as_settings_and_names_real_variables(objects: list[dict[str, Any]]) -> None:
    known = {f"INFERQ_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    env = {
        **by_kind(objects, "ConfigMap")["inferq"]["data"],
        **by_kind(objects, "Secret")["inferq"]["stringData"],
    }
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env(env)
    services = by_kind(objects, "Service")
    for gpu in settings.gpus:
        host = settings.triton_urls[gpu].split("//")[1].split(":")[0]
        assert host in services, f"INFERQ_TRITON_URLS names {host}, which no Service provides"


def test_each_gpu_pod_pins_one_gpu_to_its_queue(objects: list[dict[str, Any]]) -> None:
    settings = Settings.from_env(by_kind(objects, "ConfigMap")["inferq"]["data"])
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    for gpu in settings.gpus:
        pod = deployments[f"inferq-gpu{gpu}"]
        assert pod["spec"]["replicas"] == 1
        parts = {c["name"]: c for c in containers(pod)}
        assert parts["triton"]["resources"]["limits"]["nvidia.com/gpu"] == 1
        command = parts["worker"]["command"]
        assert command[command.index("-Q") + 1] == gpu_queue(gpu)
        assert {"name": "CUDA_VISIBLE_DEVICES", "value": str(gpu)} in parts["worker"]["env"]
        selector = services[f"triton-gpu{gpu}"]["spec"]["selector"]
        assert selector.items() <= pod["spec"]["template"]["metadata"]["labels"].items()


def test_every_inferq_container_gets_the_settings(objects: list[dict[str, Any]]) -> None:
    for deployment in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]:
        for container in containers(deployment):
            if container["image"].startswith("inferq"):
                sources = [next(iter(s.values()))["name"] for s in container["envFrom"]]
                assert sources == ["inferq", "inferq"], deployment["metadata"]["name"]


def test_autoscalers_target_what_exists(objects: list[dict[str, Any]]) -> None:
    deployments = by_kind(objects, "Deployment")
    for hpa in by_kind(objects, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for scaled in by_kind(objects, "ScaledObject").values():
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        command = containers(target)[0]["command"]
        queue = command[command.index("-Q") + 1]
        assert [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]] == [queue]


def test_services_select_pods(objects: list[dict[str, Any]]) -> None:
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind(objects, "Deployment").values()]
    for name, service in by_kind(objects, "Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= pod.items() for pod in labels), name


def test_api_probes_use_the_health_endpoints(objects: list[dict[str, Any]]) -> None:
    [api] = containers(by_kind(objects, "Deployment")["inferq-api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    [migrate] = containers(by_kind(objects, "Job")["inferq-migrate"])
    assert migrate["command"] == ["inferq", "db", "upgrade"]


def test_only_the_api_may_be_exposed(objects: list[dict[str, Any]]) -> None:
    for name, service in by_kind(objects, "Service").items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
    for deployment in by_kind(objects, "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        assert not spec.get("hostNetwork"), deployment["metadata"]["name"]
        for container in spec["containers"]:
            assert all("hostPort" not in port for port in container.get("ports", [])), container["name"]


def test_flower_has_basic_auth_from_a_secret_not_in_the_manifests(objects: list[dict[str, Any]]) -> None:
    [flower] = containers(by_kind(objects, "Deployment")["inferq-flower"])
    [auth] = [item for item in flower["env"] if item["name"] == "FLOWER_BASIC_AUTH"]
    ref = auth["valueFrom"]["secretKeyRef"]
    assert ref.get("optional") is not True  # no password, no Flower
    assert ref["name"] not in by_kind(objects, "Secret"), "the password is generated, never committed"
    assert not any("basic" in part or "auth" in part for part in flower["command"])
