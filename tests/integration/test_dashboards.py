"""The Grafana dashboard uses only metrics that inferq, Triton and Flower really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import flower.events
import pytest
import requests

from inferq.settings import REPO_ROOT
from tests.fixtures import Stack, TritonServer

pytestmark = pytest.mark.integration
GRAFANA = REPO_ROOT / "docker" / "grafana"


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "inferq.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert expressions
    return {name for expr in expressions for name in re.findall(r"\b((?:inferq|nv|flower)_[a-z_]+)", expr)}


def test_dashboard_metrics_exist(stack: Stack, triton: TritonServer) -> None:
    # Some traffic first, so that labelled series exist.
    stack.client().get("/v1/models/by-name/digits/1", headers=stack.auth())
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    assert stack.client().post("/v1/models/digits/infer", json=body, headers=stack.auth()).status_code == 200
    exported = stack.client().get("/metrics").get_data(as_text=True)
    exported += requests.get(triton.metrics_url, timeout=10).text
    exported += Path(flower.events.__file__).read_text()  # Flower declares its metric names there
    missing = sorted(name for name in dashboard_metrics() if name not in exported)
    assert not missing, missing


def test_grafana_provisioning_points_at_the_dashboard_folder() -> None:
    import yaml

    compose = yaml.safe_load((REPO_ROOT / "docker" / "docker-compose.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"])
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "inferq.yml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    dashboard = json.loads((GRAFANA / "dashboards" / "inferq.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasource["datasources"][0]["uid"]}
