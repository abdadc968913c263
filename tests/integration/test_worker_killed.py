"""A GPU worker killed (SIGKILL) in the middle of an inference loses nothing: the task runs again.

GPU workers run the threads pool, so the process that runs the task is the worker
itself. Its unacknowledged message goes back to the queue once the broker's
visibility timeout passes (here 5 s, restored every second) and a new worker runs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import Stack, extra_gpu

pytestmark = pytest.mark.integration


class HoldingProxy:
    """A TCP proxy to Triton that holds connections (a hung GPU) until released."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.release = threading.Event()
        self.held = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        if not self.release.is_set():
            self.held.set()
            self.release.wait(60)
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            client.close()
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closing = True
        self.release.set()
        self.listener.close()


def test_killed_worker_task_is_run_again(stack: Stack, tmp_path: Path) -> None:
    from launcher.localstack import ManagedProcess
    from launcher.stack import gpu_worker_argv, worker_env
    from tests.fixtures import wait_for_workers

    triton_host, triton_port = stack.settings.triton_urls[0].split("//")[1].split(":")
    proxy = HoldingProxy((triton_host, int(triton_port)))
    fast_restore = {"visibility_timeout": 5, "broker_restore_interval": 1.0}
    replacement = None
    try:
        with extra_gpu(stack, tmp_path, 3, f"http://127.0.0.1:{proxy.port}", **fast_restore) as gpu:
            body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
            client = gpu.app.test_client()
            response = client.post(
                f"/v1/models/{gpu.model}/infer",
                json=body,
                headers={**stack.auth(), "Prefer": "respond-async"},
            )
            assert response.status_code == 202
            location = response.headers["Location"]
            assert proxy.held.wait(30), "the task never reached Triton"
            assert client.get(location, headers=stack.auth()).get_json()["status"] == "running"

            gpu.worker.signal(signal.SIGKILL)  # the whole worker, mid-inference
            gpu.worker.stop()
            proxy.release.set()  # the GPU recovers; the task must run again, not be lost
            replacement = ManagedProcess(
                "worker-gpu3-replacement",
                gpu_worker_argv(gpu.settings, 3, f"gpu3-again-{os.getpid()}"),
                env=worker_env(gpu.settings, 3),
                log_path=tmp_path / "worker-gpu3-replacement.log",
            ).start()
            wait_for_workers(gpu.settings, ["gpu.3"], {"gpu.3": replacement})

            deadline = time.monotonic() + 120  # restored after 5 s; slow only on a loaded machine
            task: dict[str, Any] = {}
            while time.monotonic() < deadline:
                task = client.get(location, headers=stack.auth()).get_json()
                if task["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.2)
            log = replacement.log_tail(200)
            assert task["status"] == "succeeded", (task, log)
            assert task["result"]["outputs"][0]["data"] == [4]
            assert task["result"]["parameters"]["queue"] == "gpu.3"
            assert "gpu3-again" in task["result"]["parameters"]["worker"], "run again by the new worker"
            record = stack.services.redis.hgetall(f"inferq:task:{location.rsplit('/', 1)[1]}")
            assert record[b"redelivered:0"] == b"1", "the redelivery is counted"
    finally:
        if replacement is not None:
            replacement.stop()
        proxy.close()


def test_a_message_that_keeps_killing_workers_is_not_run_forever(stack: Stack) -> None:
    """A message given back after its worker died (kombu marks it redelivered) runs again at most
    INFERQ_MAX_REDELIVERIES times; past that it fails as worker_lost instead of killing the next."""
    import json

    from tasks import create_celery_app, pipeline

    app = create_celery_app(stack.settings)
    model = pipeline.resolve_model(stack.services, "digits", "1")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    pending = pipeline.prepare(pipeline.check_request(model, body), "acme", False, 1 << 20)
    redis = stack.services.redis
    with redis.pipeline(transaction=False) as pipe:
        stack.services.tasks.add_open(pipe, pending.task_id, "acme", "digits", "1")
        pipe.hset(f"inferq:task:{pending.task_id}", "redelivered:0", stack.settings.max_redeliveries)
        pipe.execute()
    # Published to a queue nobody consumes, then put on gpu.0 as the broker gives back a message
    # whose worker died: delivery_info.redelivered set.
    message = pipeline.infer_message(model, None, [pending])
    pipeline.publish(app, "inferq.infer", [message], "gpu.77", pending.task_id, "(poison)")
    raw = redis.rpop("gpu.77")
    payload = json.loads(raw)
    payload["properties"]["delivery_info"].update(redelivered=True, routing_key="gpu.0")
    payload["headers"]["redelivered"] = True
    redis.lpush("gpu.0", json.dumps(payload))
    from tests.integration.test_infer import poll_task

    task = poll_task(stack, f"/v1/tasks/{pending.task_id}")
    assert task["status"] == "failed" and task["error"]["code"] == "worker_lost", task
