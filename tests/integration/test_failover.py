"""Failover between GPUs: while one GPU that has the model is healthy, no request fails because
another lost the model or hangs. The failed attempt is routed again, to the healthy GPU.

Two extra simulated GPUs serve a copy of digits: GPU 8 on a Triton of this module's own (which
the tests unload the model from, or freeze with SIGSTOP), GPU 9 on the session's Triton.
"""

from __future__ import annotations

import dataclasses
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from launcher.localstack import ManagedProcess
from launcher.stack import gpu_worker_argv, worker_env
from tests.fixtures import Stack, TritonServer, digits_copy_ready, start_triton, wait_for_workers
from workers.triton import TritonEndpoint

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@dataclasses.dataclass
class Pair:
    app: Any
    model: str
    triton: TritonServer  # GPU 8's own
    settings: Any


@pytest.fixture(scope="module")
def pair(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    from webapp import create_app

    workdir = tmp_path_factory.mktemp("failover")
    own = start_triton(workdir, "triton-gpu8")
    TritonEndpoint(own.url).load_model("digits")
    settings = dataclasses.replace(
        stack.settings,
        gpus=(*stack.settings.gpus, 8, 9),
        triton_urls={**stack.settings.triton_urls, 8: own.url, 9: stack.settings.triton_urls[0]},
        triton_timeout=2.0,  # a hung Triton is given up on after this
    )
    workers = [
        ManagedProcess(
            f"worker-gpu{gpu}",
            gpu_worker_argv(settings, gpu, f"gpu{gpu}-{uuid.uuid4().hex[:4]}"),
            env=worker_env(settings, gpu),
            log_path=workdir / f"worker-gpu{gpu}.log",
        ).start()
        for gpu in (8, 9)
    ]
    app = create_app(settings)
    name = f"pair-{uuid.uuid4().hex[:6]}"
    try:
        wait_for_workers(settings, ["gpu.8", "gpu.9"], {"gpu.8": workers[0], "gpu.9": workers[1]})
        digits_copy_ready(stack, name, [8, 9])
        yield Pair(app, name, own, settings)
    finally:
        own.process.signal(signal.SIGCONT)
        for worker in workers:
            worker.stop()
        own.process.stop()
        app.extensions["inferq"].close()


def send(pair: Pair, stack: Stack, count: int) -> list[tuple[int, dict[str, Any]]]:
    client = pair.app.test_client()

    def one(_: int) -> tuple[int, dict[str, Any]]:
        response = client.post(f"/v1/models/{pair.model}/infer?timeout=30", json=BODY, headers=stack.auth())
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def test_a_gpu_whose_triton_lost_the_model_fails_no_request(pair: Pair, stack: Stack) -> None:
    TritonEndpoint(pair.triton.url).unload_model("digits")  # as after a Triton restart
    try:
        answers = send(pair, stack, 12)
        assert [status for status, _ in answers] == [200] * 12, answers
        assert {body["parameters"]["queue"] for _, body in answers} == {"gpu.9"}
        assert all(body["outputs"][0]["data"] == [4] for _, body in answers)  # digits says 4 for zeros
        figures = pair.app.test_client().get(
            f"/v1/models/{pair_model_id(stack, pair)}/stats", headers=stack.auth(stack.admin_key)
        )
        stats = figures.get_json()
        # Requests count once, where they ended; the failed tries on GPU 8 are attempts.
        assert (stats["requests"], stats["errors"]) == (12, 0), stats
        assert stats["gpus"]["8"]["requests"] == 0 and stats["gpus"]["8"]["failed_attempts"] >= 1
        assert stats["attempts"] == 12 + stats["failed_attempts"]
    finally:
        TritonEndpoint(pair.triton.url).load_model("digits")
        for gpu in (8, 9):
            stack.services.gpus.clear_missing(pair_model_id(stack, pair), gpu)


def test_a_hung_triton_fails_no_request_and_the_retry_goes_elsewhere(pair: Pair, stack: Stack) -> None:
    pair.triton.process.signal(signal.SIGSTOP)  # hangs instead of refusing
    try:
        started = time.monotonic()
        answers = send(pair, stack, 8)
        assert [status for status, _ in answers] == [200] * 8, answers
        assert {body["parameters"]["queue"] for _, body in answers} == {"gpu.9"}
        assert time.monotonic() - started < 25, "a hung GPU costs one Triton timeout, not a pile-up"
    finally:
        pair.triton.process.signal(signal.SIGCONT)


def pair_model_id(stack: Stack, pair: Pair) -> str:
    from registry.models import get_model_version

    with stack.services.db.session() as session:
        model = get_model_version(session, pair.model, "1")
        assert model is not None
        return model.id


def test_the_reconciler_reloads_what_a_triton_lost_and_routing_comes_back(pair: Pair, stack: Stack) -> None:
    from tasks.maintenance import reconcile
    from tasks.runtime import Services

    TritonEndpoint(pair.triton.url).unload_model("digits")  # as after a Triton restart
    assert send(pair, stack, 2)[0][0] == 200  # served elsewhere; GPU 8 is marked missing
    services = Services(pair.settings)
    try:
        actions = reconcile(services)
        assert any(a.startswith("gpu 8: digits was missing, reloaded") for a in actions), actions
        assert "digits" in TritonEndpoint(pair.triton.url).loaded_models()
        assert reconcile(services) == [], "nothing left to do"
        model_id = pair_model_id(stack, pair)
        assert not services.gpus.loads([8], model_id)[8].missing, "routed to again"
    finally:
        services.close()
