"""docker/k8s and its rabbitmq/ overlay (no cluster here): the core objects against the Kubernetes
schemas, KEDA's objects field by field, and everything they name against the code: settings,
commands, ports, routes, queues."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inferq.settings import CONTROL_QUEUE, REPO_ROOT, Settings, gpu_queue
from tests.unit.docker import checks

K8S = REPO_ROOT / "docker" / "k8s"
OVERLAY = K8S / "rabbitmq"
KUBERNETES_VERSION = "1.30"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# A Secret the operator makes by hand (never committed): control.yaml says how.
OPERATOR_SECRETS = {"inferq-flower": {"basic-auth": "admin:generated"}}


# --- Rendering a kustomization (what `kubectl apply -k` does with the features used here) --------


def load_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` makes: resources (files or kustomizations), then
    JSON 6902 patches, each on the one object its target names."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unsupported, f"{directory}: teach this renderer {unsupported}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += load_kustomization(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load(patch["patch"])
        assert isinstance(operations, list), "only JSON 6902 patches (lists of operations) are rendered"
        target = patch["target"]
        [found] = [
            o
            for o in objects
            if o["kind"] == target["kind"]
            and o["metadata"]["name"] == target["name"]
            and o["apiVersion"] == "/".join(filter(None, [target.get("group"), target["version"]]))
        ]
        for operation in operations:
            apply_operation(found, operation)
    return objects


def apply_operation(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """One JSON Patch (RFC 6902) operation: add, replace or remove, on maps."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
    node = document
    for part in parents:
        node = node[part]
    if operation["op"] == "add":
        node[last] = operation["value"]
    elif operation["op"] == "replace":
        assert last in node, operation["path"]
        node[last] = operation["value"]
    elif operation["op"] == "remove":
        del node[last]
    else:
        raise AssertionError(f"unsupported operation {operation['op']}")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == set(kustomization["resources"])
    return load_kustomization(K8S)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert ".." in kustomization["resources"]
    listed = {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed <= set(kustomization["resources"]), listed
    return load_kustomization(OVERLAY)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Both ways to apply: the base, and the rabbitmq overlay."""
    return load_kustomization(K8S if request.param == "redis" else OVERLAY)


# --- Reading the objects ---------------------------------------------------------------------------


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return pod(workload)["containers"]  # type: ignore[no-any-return]


def every_container(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod(workload).get("initContainers", []), *containers(workload)]


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from by_kind(objects, "Deployment").values()
    yield from by_kind(objects, "Job").values()


def inferq_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads(objects):
        for container in every_container(workload):
            if container["image"].startswith("inferq"):
                yield workload, container


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets: its envFrom sources, then its env."""
    config_maps = {name: o.get("data", {}) for name, o in by_kind(objects, "ConfigMap").items()}
    secrets = {name: o.get("stringData", {}) for name, o in by_kind(objects, "Secret").items()}
    secrets.update(OPERATOR_SECRETS)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = config_maps[ref["name"]][ref["key"]]
    return env


def queue_of(command: list[str]) -> str:
    """The queue an ``inferq worker`` command consumes."""
    assert command[:2] == ["inferq", "worker"], command
    return CONTROL_QUEUE if "--control" in command else gpu_queue(int(command[command.index("--gpu") + 1]))


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container's port name."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(number)


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    return selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()


# --- Schemas ------------------------------------------------------------------------------------


def test_core_objects_follow_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    unvalidated = set()
    for document in rendered:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(document["kind"])
        except kubernetes_validate.ValidationError as exc:
            name = f"{document['kind']}/{document['metadata']['name']}"
            raise AssertionError(
                f"{name}: {exc.caught.message} at {list(exc.caught.absolute_path)}"
            ) from None
    assert unvalidated <= KEDA_KINDS, unvalidated - KEDA_KINDS  # checked by hand below


def test_the_schemas_are_strict(objects: list[dict[str, Any]]) -> None:
    deployment = copy.deepcopy(by_kind(objects, "Deployment")["inferq-api"])
    containers(deployment)[0]["comand"] = ["inferq", "api"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
TRIGGER_METADATA = {
    "redis": {"address", "host", "port", "listName", "listLength", "activationListLength", "databaseIndex"},
    "rabbitmq": {"host", "protocol", "mode", "value", "activationValue", "queueName", "vhostName"},
}


def test_keda_objects_scale_each_worker_on_its_own_queue(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment")
    authentications = by_kind(rendered, "TriggerAuthentication")
    secrets = {name: o["stringData"] for name, o in by_kind(rendered, "Secret").items()}
    settings = Settings.from_env(container_env(rendered, containers(deployments["inferq-control"])[0]))
    scaled = by_kind(rendered, "ScaledObject")
    assert set(scaled) == {"inferq-gpu0", "inferq-gpu1", "inferq-control"}
    for name, scaled_object in scaled.items():
        assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled_object["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC, set(spec) - SCALED_OBJECT_SPEC
        assert set(spec["scaleTargetRef"]) == {"name"}
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "KEDA owns the replicas: apply would reset them"
        # Never 0: the router sends work only to GPUs with live workers.
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        [worker] = [c for c in containers(target) if c["image"].startswith("inferq")]
        queue = queue_of(worker["command"])
        [trigger] = spec["triggers"]
        assert set(trigger) <= TRIGGER_FIELDS, name
        metadata = trigger["metadata"]
        assert set(metadata) <= TRIGGER_METADATA[trigger["type"]], (name, set(metadata))
        assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata are strings"
        if trigger["type"] == "redis":
            assert settings.broker_url.startswith("redis://")
            assert metadata["listName"] == queue, name
            assert int(metadata["listLength"]) > 0
            host, port = checks.url_host_port(settings.broker_url)
            assert metadata["address"] == f"{host}:{port}"
            assert metadata["databaseIndex"] == settings.broker_url.rsplit("/", 1)[1]
        else:
            assert settings.broker_url.startswith("amqp://")
            assert metadata["queueName"] == queue, name
            assert metadata["mode"] == "QueueLength" and metadata["protocol"] == "amqp"
            assert int(metadata["value"]) > 0
            authentication = authentications[trigger["authenticationRef"]["name"]]
            assert authentication["apiVersion"] == "keda.sh/v1alpha1"
            [ref] = authentication["spec"]["secretTargetRef"]
            assert set(ref) == {"parameter", "name", "key"} and ref["parameter"] == "host"
            assert secrets[ref["name"]][ref["key"]] == settings.broker_url


# --- What the containers run ----------------------------------------------------------------------


def test_config_parses_as_settings_and_names_real_variables(rendered: list[dict[str, Any]]) -> None:
    services = by_kind(rendered, "Service")
    for _workload, container in inferq_containers(rendered):
        env = container_env(rendered, container)
        settings = checks.settings_from(env)
        assert settings.database_url.startswith("postgresql://")
        assert settings.redis_url == "redis://redis:6379/0"
        assert checks.url_host_port(settings.broker_url)[0] in {"redis", "rabbitmq"}
        if not settings.triton_sidecar:
            for gpu in settings.gpus:
                host, port = checks.url_host_port(settings.triton_urls[gpu])
                assert host in services, f"INFERQ_TRITON_URLS names {host}, which no Service provides"
                assert port in [p["port"] for p in services[host]["spec"]["ports"]]


def test_every_inferq_container_runs_as_written(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    seen = set()
    for _workload, container in inferq_containers(objects):
        command = container["command"]
        assert isinstance(command, list) and all(isinstance(part, str) for part in command)
        assert "args" not in container
        cli, _ = checks.resolve(command)
        seen.add(" ".join(command[1:]))
        if cli.name not in checks.EXEC_COMMANDS:
            continue
        env = container_env(objects, container)
        settings = checks.settings_from(env)
        process = checks.run(command, {**env, "INFERQ_DATA_DIR": str(tmp_path)})
        ports = [p["containerPort"] for p in container.get("ports", [])]
        if cli.name == "worker":
            assert process.option("-Q") == queue_of(command)
        elif cli.name == "api":
            assert process.option("--bind") == f"0.0.0.0:{settings.api_port}"
            assert ports == [settings.api_port] == [8080]
        elif cli.name == "flower":
            assert process.option("--address") == "0.0.0.0"
            assert ports == [settings.flower_port] == [int(process.option("--port"))]
        elif cli.name == "beat":
            assert Path(process.option("--schedule")).parent == tmp_path
    assert seen == {"init", "api", "worker --gpu 0", "worker --gpu 1", "worker --control", "beat", "flower"}


def test_each_gpu_class_is_a_worker_with_its_own_triton(objects: list[dict[str, Any]]) -> None:
    config = by_kind(objects, "ConfigMap")["inferq"]["data"]
    settings = Settings.from_env(config)
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    claims = by_kind(objects, "PersistentVolumeClaim")
    for gpu in settings.gpus:
        workload = deployments[f"inferq-gpu{gpu}"]
        spec = pod(workload)
        [triton] = spec["initContainers"]
        [worker] = spec["containers"]
        # Triton: a native sidecar, up before the worker starts and stopped after it.
        assert triton["restartPolicy"] == "Always" and triton["image"] == TRITON_IMAGE
        assert triton["command"] == [
            "tritonserver",
            "--model-repository=/models",
            "--model-control-mode=explicit",
        ]
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "nvidia.com/gpu" not in worker["resources"].get("limits", {})
        volumes = {v["name"]: v for v in spec["volumes"]}
        [models] = [m for m in triton["volumeMounts"] if m["mountPath"] == "/models"]
        assert models["readOnly"] and volumes[models["name"]]["persistentVolumeClaim"]["claimName"] in claims
        for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready")):
            assert triton[probe]["httpGet"] == {"path": path, "port": 8000}, probe
        assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
        triton_ports = {p["containerPort"] for p in triton["ports"]}
        # The worker: its queue, its own Triton, and the registry's models loaded into it.
        assert worker["command"] == ["inferq", "worker", "--gpu", str(gpu)]
        worker_settings = checks.settings_from(container_env(objects, worker))
        assert worker_settings.triton_sidecar is True
        host, port = checks.url_host_port(worker_settings.triton_urls[gpu])
        assert (host, port) == ("127.0.0.1", 8000) and port in triton_ports
        # The Service the control worker deploys through, and the API checks.
        service = services[f"triton-gpu{gpu}"]
        assert selects(service["spec"]["selector"], workload)
        assert checks.url_host_port(settings.triton_urls[gpu]) == (service["metadata"]["name"], 8000)
        for service_port in service["spec"]["ports"]:
            assert service_port["targetPort"] in triton_ports
        assert workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # no spare GPU needed


def test_the_api_is_probed_autoscaled_and_kept_available(objects: list[dict[str, Any]]) -> None:
    api = by_kind(objects, "Deployment")["inferq-api"]
    [container] = containers(api)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in checks.api_routes()
        assert port_number(container, get["port"]) == 8080
    [hpa] = by_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "inferq-api",
    }
    assert "replicas" not in api["spec"], "the HPA owns the replicas"
    assert hpa["spec"]["minReplicas"] >= 2


def test_pod_disruption_budgets_cover_the_api_and_each_gpu_class(objects: list[dict[str, Any]]) -> None:
    deployments = by_kind(objects, "Deployment")
    covered = {
        name
        for budget in by_kind(objects, "PodDisruptionBudget").values()
        for name, workload in deployments.items()
        if selects(budget["spec"]["selector"]["matchLabels"], workload)
    }
    assert {"inferq-api", "inferq-gpu0", "inferq-gpu1"} <= covered


def test_exactly_one_beat(objects: list[dict[str, Any]]) -> None:
    beat = by_kind(objects, "Deployment")["inferq-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert [c["command"] for c in containers(beat)] == [["inferq", "beat"]]
    scalers = [
        *by_kind(objects, "HorizontalPodAutoscaler").values(),
        *by_kind(objects, "ScaledObject").values(),
    ]
    assert all(s["spec"]["scaleTargetRef"]["name"] != "inferq-beat" for s in scalers)


def test_init_is_a_job(objects: list[dict[str, Any]]) -> None:
    assert set(by_kind(objects, "Job")) == {"inferq-init"}
    job = by_kind(objects, "Job")["inferq-init"]
    assert [c["command"] for c in containers(job)] == [["inferq", "init"]]
    assert pod(job)["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] > 0


def test_pods_run_unprivileged_with_their_resources_bounded(objects: list[dict[str, Any]]) -> None:
    data_dir = Path(Settings.from_env(by_kind(objects, "ConfigMap")["inferq"]["data"]).data_dir)
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        spec = pod(workload)
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in every_container(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), (name, container["name"])
            assert "memory" in container["resources"]["limits"], (name, container["name"])
            if container["image"].startswith("inferq"):
                # Read-only, with a writable /tmp (gunicorn's heartbeat files, INFERQ_DATA_DIR).
                assert security["readOnlyRootFilesystem"] is True, name
                [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert "emptyDir" in volumes[tmp["name"]], name
                assert data_dir.is_relative_to("/tmp")


def test_services_select_pods(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment").values()
    for name, service in by_kind(rendered, "Service").items():
        [workload] = [d for d in deployments if selects(service["spec"]["selector"], d)]
        listening = {p["containerPort"] for c in every_container(workload) for p in c.get("ports", [])}
        # A port name is looked up in the pod's (regular) containers only.
        named = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        for service_port in service["spec"]["ports"]:
            target = service_port["targetPort"]
            assert named.get(target, target) in listening, (name, service_port)


def test_prometheus_annotations_name_a_metrics_port(objects: list[dict[str, Any]]) -> None:
    for workload in workloads(objects):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true":
            continue
        port = int(annotations["prometheus.io/port"])
        path = annotations["prometheus.io/path"]
        [container] = [
            c for c in every_container(workload) if port in [p["containerPort"] for p in c.get("ports", [])]
        ]
        command = container["command"]
        if command[:2] == ["inferq", "api"]:
            assert path in checks.api_routes()
        elif command[:2] == ["inferq", "flower"]:
            assert path in checks.flower_routes()
        else:
            assert command[0] == "tritonserver" and port == 8002 and path == "/metrics"


def test_only_the_api_may_be_exposed(rendered: list[dict[str, Any]]) -> None:
    for name, service in by_kind(rendered, "Service").items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
    for workload in workloads(rendered):
        spec = pod(workload)
        assert not spec.get("hostNetwork"), workload["metadata"]["name"]
        for container in every_container(workload):
            assert all("hostPort" not in port for port in container.get("ports", [])), container["name"]


def test_flower_has_basic_auth_from_a_secret_not_in_the_manifests(objects: list[dict[str, Any]]) -> None:
    [flower] = containers(by_kind(objects, "Deployment")["inferq-flower"])
    [auth] = [item for item in flower["env"] if item["name"] == "FLOWER_BASIC_AUTH"]
    ref = auth["valueFrom"]["secretKeyRef"]
    assert ref.get("optional") is not True  # no password, no Flower
    assert ref["name"] not in by_kind(objects, "Secret"), "the password is generated, never committed"
    assert ref["name"] in OPERATOR_SECRETS
    assert not any("basic" in part or "auth" in part for part in flower["command"])


# --- The rabbitmq overlay -------------------------------------------------------------------------


def test_the_rabbitmq_overlay_changes_the_broker_and_the_scalers_only(
    objects: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    base = {key(o): o for o in objects}
    changed = {key(o) for o in overlay if base.get(key(o)) != o}
    assert changed == {
        ("Secret", "inferq"),
        ("ScaledObject", "inferq-gpu0"),
        ("ScaledObject", "inferq-gpu1"),
        ("ScaledObject", "inferq-control"),
        ("TriggerAuthentication", "inferq-rabbitmq"),
    }
    secret = by_kind(overlay, "Secret")["inferq"]["stringData"]
    base_secret = by_kind(objects, "Secret")["inferq"]["stringData"]
    assert {k: v for k, v in secret.items() if k != "INFERQ_BROKER_URL"} == base_secret
    settings = Settings.from_env({**by_kind(overlay, "ConfigMap")["inferq"]["data"], **secret})
    assert checks.url_host_port(settings.broker_url) == ("rabbitmq", 5672)
    assert settings.broker_url.endswith("//")  # the default virtual host, "/"
    assert settings.result_backend == settings.redis_url  # Redis keeps the results


def test_variables_in_container_env_are_known(rendered: list[dict[str, Any]]) -> None:
    for workload in workloads(rendered):
        for container in every_container(workload):
            names = {item["name"] for item in container.get("env", [])}
            assert names <= checks.KNOWN_VARIABLES, names - checks.KNOWN_VARIABLES
    known_fields = {f.name for f in dataclasses.fields(Settings)}
    assert "triton_sidecar" in known_fields
