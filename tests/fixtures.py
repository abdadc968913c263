"""Real services for integration tests, each started on free ports and stopped afterwards.

Redis, rclone's S3 server and Triton come from the same builders ``inferq up``
uses (``launcher.localstack``). The registry runs on SQLite and on the machine's
PostgreSQL (a fresh database per run): every integration test runs on both.
Celery workers are real subprocesses, one per simulated GPU plus control.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from inferq.settings import REPO_ROOT, Settings, gpu_queue
from launcher.localstack import (
    ManagedProcess,
    TritonPorts,
    free_port,
    port_open,
    redis_process,
    s3_process,
    triton_process,
)
from launcher.stack import gpu_worker_argv, worker_argv, worker_env
from tasks.runtime import Services

POSTGRES_ADMIN_URL = os.environ.get(
    "INFERQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
GPUS = (0, 1)


@dataclasses.dataclass
class TritonServer:
    process: ManagedProcess
    url: str
    metrics_url: str

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def start_triton(workdir: Path, name: str = "triton") -> TritonServer:
    """A real tritonserver over the repository's models/, on free ports, nothing loaded yet."""
    ports = TritonPorts.free()
    process = triton_process(workdir / name, REPO_ROOT / "models", ports, log_path=workdir / f"{name}.log")
    server = TritonServer(
        process.start(), f"http://127.0.0.1:{ports.http}", f"http://127.0.0.1:{ports.metrics}/metrics"
    )
    process.wait_until(server.ready, 120, "ready")
    return server


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    port = free_port()
    process = redis_process(port, workdir / "redis", workdir / "redis.log").start()
    try:
        process.wait_until(lambda: port_open("127.0.0.1", port), 20, "listening")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.stop()


@pytest.fixture(scope="session")
def s3_endpoint(workdir: Path) -> Iterator[str]:
    port = free_port()
    process = s3_process(port, workdir / "s3", "test-access", "test-secret", workdir / "s3.log").start()
    try:
        process.wait_until(lambda: port_open("127.0.0.1", port), 30, "listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture(scope="session")
def triton(workdir: Path) -> Iterator[TritonServer]:
    server = start_triton(workdir)
    try:
        yield server
    finally:
        server.process.stop()


def _create_postgres_database() -> tuple[str, str]:
    import psycopg2

    name = f"inferq_test_{uuid.uuid4().hex[:10]}"
    try:
        connection = psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for the integration tests and is not reachable at {POSTGRES_ADMIN_URL} "
            f"(set INFERQ_TEST_POSTGRES_URL): {exc}"
        )
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return name, POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_postgres_database(name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=5)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, workdir: Path) -> Iterator[str]:
    """A migrated, empty registry database: a SQLite file, then a fresh PostgreSQL database."""
    from registry.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{workdir / f'registry-{uuid.uuid4().hex[:6]}.db'}"
        upgrade(url)
        yield url
        return
    name, url = _create_postgres_database()
    try:
        upgrade(url)
        yield url
    finally:
        _drop_postgres_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty registry database (no migration run yet): a SQLite file, then a fresh PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name, url = _create_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(name)


def make_settings(
    workdir: Path, redis_url: str, database_url: str, s3_endpoint: str, triton_url: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=str(workdir / "data"),
        redis_url=redis_url,
        database_url=database_url,
        s3_endpoint=s3_endpoint,
        s3_access_key="test-access",
        s3_secret_key="test-secret",
        s3_bucket="inferq-test",
        gpus=GPUS,
        triton_urls={gpu: triton_url for gpu in GPUS},
        model_repository=str(REPO_ROOT / "models"),
        sync_timeout=10.0,
        health_timeout=2.0,
        worker_concurrency=1,
        gpu_worker_concurrency=4,
        key_cache_ttl=1.0,
        rate_limit="",  # many requests per key here; test_rate_limit.py sets its own limits
        batch_chunk_lines=100,  # many chunks from small files: recovery and cancel have work to find
    )
    values.update(overrides)
    return Settings(**values)


@dataclasses.dataclass
class Stack:
    """The running platform for a test: settings, services, workers, a Flask app and keys."""

    settings: Settings
    services: Services
    workers: dict[str, ManagedProcess]
    app: Any
    admin_key: str
    user_key: str
    other_tenant_key: str

    def serve(self) -> Iterator[str]:
        """Serve the app over real HTTP on a free port (for the CLI and other HTTP clients)."""
        from werkzeug.serving import make_server

        server = make_server("127.0.0.1", free_port(), self.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(10)

    def client(self) -> Any:
        return self.app.test_client()

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.user_key}"}


def wait_for_workers(
    settings: Settings, queues: list[str], workers: dict[str, ManagedProcess], timeout: float = 60
) -> None:
    from tasks import create_celery_app

    app = create_celery_app(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in workers.values():
            if not process.alive():
                raise RuntimeError(f"{process.name} died:\n{process.log_tail()}")
        replies = app.control.inspect(timeout=1).active_queues() or {}
        consumed = {q["name"] for qs in replies.values() for q in qs or []}
        if set(queues) <= consumed:
            return
    raise RuntimeError(f"workers for {queues} not ready after {timeout}s")


def start_workers(settings: Settings, workdir: Path) -> dict[str, ManagedProcess]:
    """One real worker subprocess per GPU queue (CUDA_VISIBLE_DEVICES=N) and one for control."""
    workers = {}
    for gpu in settings.gpus:
        argv = gpu_worker_argv(settings, gpu, f"gpu{gpu}-{uuid.uuid4().hex[:4]}")
        workers[gpu_queue(gpu)] = ManagedProcess(
            f"worker-gpu{gpu}", argv, env=worker_env(settings, gpu), log_path=workdir / f"worker-gpu{gpu}.log"
        ).start()
    argv = worker_argv("control", 1, f"control-{uuid.uuid4().hex[:4]}")
    workers["control"] = ManagedProcess(
        "worker-control", argv, env=worker_env(settings, None), log_path=workdir / "worker-control.log"
    ).start()
    wait_for_workers(settings, list(workers), workers)
    return workers


@pytest.fixture(scope="session")
def api_url(stack: Stack) -> Iterator[str]:
    """The stack's API over real HTTP."""
    yield from stack.serve()


@pytest.fixture(scope="session")
def stack(
    workdir: Path, redis_url: str, database_url: str, s3_endpoint: str, triton: TritonServer
) -> Iterator[Stack]:
    """The whole platform on real services, with ``digits`` registered and deployed on both GPUs."""
    from registry.apikeys import create_key
    from registry.deploy import register_repository
    from tasks.deploy import deploy
    from webapp import create_app

    settings = make_settings(workdir, redis_url, database_url, s3_endpoint, triton.url)
    services = Services(settings)
    services.redis.flushall()
    services.store.ensure_bucket()
    with services.db.session() as session:
        for model in register_repository(session, Path(settings.model_repository)):
            if model.name == "digits":  # the others stay unloaded for the deploy tests
                deploy(session, model, settings.gpus, services.triton)
                assert model.status == "ready", model.status_message
        _, admin_key = create_key(session, "acme", admin=True)
        _, user_key = create_key(session, "acme")
        _, other_key = create_key(session, "globex")
    workers = start_workers(settings, workdir / database_url.split(":")[0])
    app = create_app(settings)
    try:
        yield Stack(settings, services, workers, app, admin_key, user_key, other_key)
    finally:
        for process in workers.values():
            process.signal(signal.SIGTERM)
        for process in workers.values():
            process.stop()
        app.extensions["inferq"].close()
        services.close()


@dataclasses.dataclass
class ExtraGpu:
    """One more simulated GPU with its own real worker, and a ``digits`` copy deployed only there."""

    settings: Settings
    worker: ManagedProcess
    worker_name: str
    app: Any
    model: str


def digits_copy_ready(stack: Stack, name: str, gpus: list[int]) -> None:
    """Register ``name`` version 1 as a copy of digits (label output only), ready on ``gpus`` as if
    it had loaded there, and make readers see it."""
    from registry.models import Model, set_deployment, settle_status

    with stack.services.db.session() as session:
        row = Model(
            name=name,
            version="1",
            triton_name="digits",
            inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}],
        )
        session.add(row)
        session.flush()
        for gpu in gpus:
            set_deployment(session, row, gpu, "ready")
        settle_status(row)
    stack.services.cache.invalidate()


@contextlib.contextmanager
def extra_gpu(stack: Stack, workdir: Path, gpu: int, triton_url: str, **overrides: Any) -> Iterator[ExtraGpu]:
    """GPU ``gpu`` served by the Triton at ``triton_url``; worker and API share ``overrides``.

    ``worker_overrides`` (a dict in ``overrides``) applies to the worker only (e.g. a trace file).
    """
    from webapp import create_app

    worker_only = overrides.pop("worker_overrides", {})
    settings = dataclasses.replace(
        stack.settings,
        gpus=(*stack.settings.gpus, gpu),
        triton_urls={**stack.settings.triton_urls, gpu: triton_url},
        **overrides,
    )
    name = f"gpu{gpu}-{uuid.uuid4().hex[:4]}"
    worker = ManagedProcess(
        f"worker-gpu{gpu}",
        gpu_worker_argv(settings, gpu, name),
        env=worker_env(dataclasses.replace(settings, **worker_only), gpu),
        log_path=workdir / f"worker-gpu{gpu}.log",
    ).start()
    app = create_app(settings)
    model = f"only-gpu{gpu}-{uuid.uuid4().hex[:6]}"
    try:
        wait_for_workers(settings, [gpu_queue(gpu)], {gpu_queue(gpu): worker})
        digits_copy_ready(stack, model, [gpu])
        yield ExtraGpu(settings, worker, f"{name}@{os.uname().nodename}", app, model)
    finally:
        worker.stop()
        app.extensions["inferq"].close()
