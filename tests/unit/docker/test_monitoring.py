"""docker/prometheus.yml and the Grafana dashboards: they scrape what compose runs, on the ports and
paths the code serves, and chart metrics inferq and Flower export. (Triton's nv_* names need a live
Triton: tests/integration/test_dashboards.py checks them.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from inferq.settings import REPO_ROOT
from tests.unit.docker import checks
from tests.unit.docker.checks import USER_ENV, enabled, hostnames, interpolate

DOCKER = REPO_ROOT / "docker"
TRITON_METRICS_PORT = 8002  # Triton's default; the Tritons here set no --metrics-port


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load((DOCKER / "docker-compose.yml").read_text()), USER_ENV)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "prometheus.yml").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_prometheus_scrapes_what_compose_runs(
    compose: dict[str, Any], prometheus: dict[str, Any], profile: str
) -> None:
    names = hostnames(compose, enabled(compose, [profile]))
    for job in prometheus["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.partition(":")
                assert host in names, (profile, target)
                service = compose["services"][names[host]]
                command = service.get("command", [])
                if command[:2] == ["inferq", "api"]:
                    assert int(port) == checks.settings_from(service["environment"]).api_port
                    assert path in checks.api_routes()
                elif command[:2] == ["inferq", "flower"]:
                    env = {k: v for k, v in service["environment"].items() if k.startswith("INFERQ_")}
                    assert int(port) == checks.settings_from(env).flower_port
                    assert path in checks.flower_routes()
                else:
                    assert command[0] == "tritonserver", target
                    assert not any(part.startswith("--metrics-port") for part in command)
                    assert int(port) == TRITON_METRICS_PORT


def dashboard_metrics() -> set[str]:
    names = set()
    for path in (DOCKER / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                names.update(re.findall(r"\b((?:inferq|flower|nv)_[a-z_]+)", target["expr"]))
    assert names
    return names


def test_dashboards_chart_metrics_inferq_and_flower_export() -> None:
    exported = checks.inferq_metric_names() | checks.flower_metric_names()
    missing = {n for n in dashboard_metrics() if not n.startswith("nv_") and n not in exported}
    assert not missing, missing
