"""Waiting holds nothing scarce: 200 sync requests waiting on a frozen Triton (SIGSTOP) do not stop
the API (gunicorn with gevent workers, as ``inferq up`` runs it) from answering everyone else, and a
tenant's waiting requests are capped (429 with Retry-After beyond the cap)."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from inferq.settings import Settings
from launcher.localstack import ManagedProcess, free_port
from launcher.stack import api_argv, http_ok, worker_env
from tests.fixtures import Stack, TritonServer, extra_gpu, start_triton
from workers.triton import TritonEndpoint

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of this test's alone (it gets frozen), with digits loaded."""
    server = start_triton(tmp_path, "triton-frozen")
    try:
        TritonEndpoint(server.url).load_model("digits")
        yield server
    finally:
        server.process.signal(signal.SIGCONT)
        server.process.stop()


def serve(settings: Settings, tmp_path: Path, name: str) -> ManagedProcess:
    """The API under gunicorn exactly as ``inferq up`` starts it."""
    env = worker_env(settings, None)
    process = ManagedProcess(name, api_argv(settings), env=env, log_path=tmp_path / f"{name}.log").start()
    url = f"http://127.0.0.1:{settings.api_port}/healthz"
    process.wait_until(lambda: http_ok(url), 60, "serving")
    return process


def timed_get(url: str, **kwargs: object) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = requests.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]
    return time.perf_counter() - started, response


def test_200_requests_waiting_on_a_frozen_triton_do_not_stop_the_api(
    stack: Stack, tmp_path: Path, own_triton: TritonServer
) -> None:
    with extra_gpu(stack, tmp_path, 5, own_triton.url, sync_waiting_per_tenant=1000) as gpu:
        settings = dataclasses.replace(
            gpu.settings, api_port=free_port(), api_server="gevent", rate_limit="100000/minute"
        )
        api = serve(settings, tmp_path, "api-gevent")
        base = f"http://127.0.0.1:{settings.api_port}"
        auth = stack.auth()
        try:
            own_triton.process.signal(signal.SIGSTOP)
            results: list[int] = []
            lock = threading.Lock()

            def wait_one(_: int) -> None:
                response = requests.post(
                    f"{base}/v1/models/{gpu.model}/infer?timeout=20", json=BODY, headers=auth, timeout=60
                )
                with lock:
                    results.append(response.status_code)

            with ThreadPoolExecutor(200) as pool:
                futures = [pool.submit(wait_one, i) for i in range(200)]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # every request is in, waiting
                    if stack.services.redis.get("inferq:waiting:acme") == b"200":
                        break
                    time.sleep(0.2)
                assert stack.services.redis.get("inferq:waiting:acme") == b"200", results

                for _ in range(3):
                    elapsed, health = timed_get(f"{base}/healthz")
                    assert health.status_code == 200 and elapsed < 1.0, elapsed
                    elapsed, models = timed_get(f"{base}/v1/models", headers=auth)
                    assert models.status_code == 200 and elapsed < 1.0, elapsed
                    assert models.json()["total"] >= 1 and models.json()["data"]
                assert not results, "nobody was answered while Triton is frozen"

                own_triton.process.signal(signal.SIGCONT)
                for future in futures:
                    future.result(timeout=90)
            # Each one is answered: done within its wait, or 202 to poll. No 5xx, nothing dropped.
            assert len(results) == 200
            assert set(results) <= {200, 202}, sorted(set(results))
        finally:
            own_triton.process.signal(signal.SIGCONT)
            api.stop()


def test_a_tenants_waiting_requests_are_capped(stack: Stack, tmp_path: Path) -> None:
    from tests.integration.test_worker_killed import HoldingProxy

    triton_host, triton_port = stack.settings.triton_urls[0].split("//")[1].split(":")
    proxy = HoldingProxy((triton_host, int(triton_port)))
    try:
        with extra_gpu(
            stack, tmp_path, 6, f"http://127.0.0.1:{proxy.port}", sync_waiting_per_tenant=2
        ) as gpu:
            client = gpu.app.test_client()
            url = f"/v1/models/{gpu.model}/infer?timeout=15"
            with ThreadPoolExecutor(2) as pool:
                waiting = [pool.submit(client.post, url, json=BODY, headers=stack.auth()) for _ in range(2)]
                deadline = time.monotonic() + 15
                while stack.services.redis.get("inferq:waiting:acme") != b"2" and time.monotonic() < deadline:
                    time.sleep(0.05)
                over = client.post(url, json=BODY, headers=stack.auth())
                assert over.status_code == 429, over.get_data(as_text=True)
                assert over.headers["Retry-After"] == "1"
                assert over.get_json()["type"].endswith("too-many-waiting")
                other_url = f"/v1/models/{gpu.model}/infer?timeout=1"
                other = client.post(other_url, json=BODY, headers=stack.auth(stack.other_tenant_key))
                assert other.status_code == 202, "another tenant is not capped by this one"
                # A wait that ran out gave its place back (in the round trip of the wait itself).
                assert stack.services.redis.get("inferq:waiting:globex") in (b"0", None)
                queued = client.post(url, json=BODY, headers={**stack.auth(), "Prefer": "respond-async"})
                assert queued.status_code == 202, "async requests hold no waiter and are not capped"
                proxy.release.set()
                assert all(f.result(timeout=30).status_code == 200 for f in waiting)
            assert stack.services.redis.get("inferq:waiting:acme") in (b"0", None)
    finally:
        proxy.close()
