"""RabbitMQ as the broker: the sync path end to end, and queue depth for routing read from RabbitMQ
itself (a passive queue declaration), not from Redis.

Needs the RabbitMQ at INFERQ_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//); each run
uses queues of its own GPU numbers, deleted at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.localstack import ManagedProcess
from launcher.stack import gpu_worker_argv, worker_env
from tests.fixtures import Stack, digits_copy_ready, wait_for_workers

pytestmark = pytest.mark.integration

AMQP_URL = os.environ.get("INFERQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


@dataclasses.dataclass
class Rabbit:
    settings: Any
    app: Any
    model: str


@pytest.fixture(scope="module")
def rabbit(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    from kombu import Connection

    from webapp import create_app

    host, port = "127.0.0.1", 5672
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is required for these tests at {AMQP_URL} (INFERQ_TEST_AMQP_URL): {exc}")
    workdir = tmp_path_factory.mktemp("rabbit")
    gpu = 40 + uuid.uuid4().int % 50  # queues of this run alone
    settings = dataclasses.replace(
        stack.settings,
        broker_url=AMQP_URL,
        gpus=(gpu,),
        triton_urls={gpu: stack.settings.triton_urls[0]},
    )
    worker = ManagedProcess(
        f"worker-gpu{gpu}-amqp",
        gpu_worker_argv(settings, gpu, f"amqp{gpu}-{uuid.uuid4().hex[:4]}"),
        env=worker_env(settings, gpu),
        log_path=workdir / "worker.log",
    ).start()
    app = create_app(settings)
    name = f"rabbit-{uuid.uuid4().hex[:6]}"
    try:
        wait_for_workers(settings, [f"gpu.{gpu}"], {f"gpu.{gpu}": worker})
        digits_copy_ready(stack, name, [gpu])
        yield Rabbit(settings, app, name)
    finally:
        worker.stop()
        app.extensions["inferq"].close()
        app.extensions["celery"].close()  # its AMQP connections
        with Connection(AMQP_URL) as connection, contextlib.suppress(Exception):  # already gone
            connection.default_channel.queue_delete(f"gpu.{gpu}")


def test_sync_inference_through_rabbitmq(rabbit: Rabbit, stack: Stack) -> None:
    client = rabbit.app.test_client()
    for _ in range(3):
        response = client.post(f"/v1/models/{rabbit.model}/infer", json=BODY, headers=stack.auth())
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["outputs"][0]["data"] == [4]
        assert response.get_json()["parameters"]["queue"] == f"gpu.{rabbit.settings.gpus[0]}"


def test_queue_depth_is_read_from_rabbitmq(rabbit: Rabbit, tmp_path: Path) -> None:
    from kombu import Connection, Exchange, Queue

    from workers.gpu_state import QueueDepths

    queue_name = f"depth-{uuid.uuid4().hex[:8]}"
    # Publisher confirms: each publish returns once RabbitMQ holds the message,
    # so the count read next cannot race the publishes (CI once read 1 of 3).
    with Connection(AMQP_URL, transport_options={"confirm_publish": True}) as connection:
        queue = Queue(queue_name, Exchange("inferq", type="direct"), routing_key=queue_name)
        producer = connection.Producer()
        for _ in range(3):
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key=queue_name, declare=[queue])
        reader = QueueDepths(AMQP_URL, max_age=0)
        try:
            deadline = time.monotonic() + 5
            depths = reader.depths([queue_name])
            while depths != {queue_name: 3} and time.monotonic() < deadline:
                time.sleep(0.05)
                depths = reader.depths([queue_name])
            assert depths == {queue_name: 3}
        finally:
            reader.close()
            connection.default_channel.queue_delete(queue_name)
