"""A worker process killed in the middle of an inference loses nothing: the task runs again and succeeds."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from inferq.localstack import ManagedProcess
from inferq.settings import gpu_queue
from inferq.stack import worker_argv, worker_env
from registry.models import Model, set_deployment, settle_status
from tests.fixtures import Stack, wait_for_workers

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


def test_killed_pool_process_task_is_run_again(stack: Stack, tmp_path: Path) -> None:
    from tasks import create_celery_app
    from webapp import create_app

    triton_host, triton_port = stack.settings.triton_urls[0].split("//")[1].split(":")
    proxy = HoldingProxy((triton_host, int(triton_port)))
    settings = dataclasses.replace(
        stack.settings,
        gpus=(0, 1, 3),
        triton_urls={**stack.settings.triton_urls, 3: f"http://127.0.0.1:{proxy.port}"},
    )
    name = f"gpu3-{uuid.uuid4().hex[:4]}"
    worker = ManagedProcess(
        "worker-gpu3",
        worker_argv(gpu_queue(3), 1, name),
        env=worker_env(settings, 3),
        log_path=tmp_path / "worker-gpu3.log",
    ).start()
    app = create_app(settings)
    model_name = f"held-{uuid.uuid4().hex[:6]}"
    try:
        wait_for_workers(settings, [gpu_queue(3)], {"gpu.3": worker})
        with stack.services.db.session() as session:
            model = Model(
                name=model_name,
                version="1",
                triton_name="digits",
                inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}],
            )
            session.add(model)
            session.flush()
            set_deployment(session, model, 3, "ready")
            settle_status(model)
        stack.services.cache.invalidate()

        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        response = app.test_client().post(
            f"/v1/models/{model_name}/infer", json=body, headers={**stack.auth(), "Prefer": "respond-async"}
        )
        assert response.status_code == 202
        location = response.headers["Location"]
        assert proxy.held.wait(30), "the task never reached Triton"

        # The pool process running the task, as the worker reports it.
        inspector = create_celery_app(settings).control.inspect(
            destination=[f"{name}@{os.uname().nodename}"], timeout=2
        )
        [active] = inspector.active().values()
        assert len(active) == 1
        os.kill(active[0]["worker_pid"], signal.SIGKILL)
        proxy.release.set()  # the GPU recovers; the task must run again, not be lost

        deadline = time.monotonic() + 60
        task = {}
        while time.monotonic() < deadline:
            task = app.test_client().get(location, headers=stack.auth()).get_json()
            if task["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert task["status"] == "succeeded", (task, worker.log_tail(30))
        assert task["result"]["outputs"][0]["data"] == [4]
        assert task["result"]["parameters"]["queue"] == "gpu.3"
        assert "WorkerLostError" in worker.log_tail(200) or "exited" in worker.log_tail(200)
    finally:
        worker.stop()
        proxy.close()
        app.extensions["inferq"].close()
