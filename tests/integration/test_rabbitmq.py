"""RabbitMQ as the broker, first-class: the sync path, batches, cancel and recovery run on it with
quorum queues (the default INFERQ_BROKER_QUEUE_TYPE), and queue depth for routing is read from
RabbitMQ itself (a passive queue declaration), not from Redis.

Needs this machine's RabbitMQ at INFERQ_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//)
and its rabbitmqctl, which scripts/test.sh starts (or installs). Each run gets a virtual host of its
own (``rabbitmqctl add_vhost``, deleted at the end), so its ``control`` and ``gpu.N`` queues are
nobody else's. The platform on it is a second one beside the Redis-broker ``stack``: the same
database, S3 and Triton, its own Redis database for bookkeeping, its own workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from launcher.localstack import ManagedProcess
from launcher.stack import gpu_worker_argv, worker_argv, worker_env
from tests.fixtures import Stack, wait_for_workers
from tests.integration.batch_files import create_batch, make_input, upload, wait_for
from tests.integration.test_batches_api import check_partition
from tests.integration.test_worker_killed import HoldingProxy

pytestmark = pytest.mark.integration

AMQP_URL = os.environ.get("INFERQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or done.stdout
    return done.stdout


@contextlib.contextmanager
def own_vhost() -> Iterator[tuple[str, str]]:
    """An AMQP URL on a virtual host of this run (and its name), deleted afterwards: made with
    rabbitmqctl, so the RabbitMQ must be this machine's (scripts/test.sh starts or installs it)."""
    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"RabbitMQ is required for these tests at {AMQP_URL} (INFERQ_TEST_AMQP_URL): {exc}")
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is required for these tests (scripts/test.sh installs rabbitmq-server)")
    vhost = f"inferq-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path=f"/{vhost}")), vhost
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            rabbitmqctl("delete_vhost", vhost)


@dataclasses.dataclass
class Rabbit:
    """The platform on RabbitMQ; ``stack`` is a Stack view of it for the batch helpers."""

    url: str
    vhost: str
    settings: Any
    stack: Stack
    workdir: Path

    def gpu_worker(self, gpu: int, name: str, settings: Any = None) -> ManagedProcess:
        settings = settings or self.settings
        worker = ManagedProcess(
            name,
            gpu_worker_argv(settings, gpu, f"{name}-{uuid.uuid4().hex[:4]}"),
            env=worker_env(settings, gpu),
            log_path=self.workdir / f"{name}.log",
        ).start()
        wait_for_workers(settings, [f"gpu.{gpu}"], {f"gpu.{gpu}": worker})
        return worker


@pytest.fixture(scope="module")
def rabbit(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    from webapp import create_app

    workdir = tmp_path_factory.mktemp("rabbit")
    redis_url = stack.settings.redis_url.rsplit("/", 1)[0] + "/9"  # bookkeeping of its own
    with own_vhost() as (url, vhost):
        settings = dataclasses.replace(
            stack.settings, broker_url=url, redis_url=redis_url, result_backend=redis_url
        )
        assert settings.broker_queue_type == "quorum"
        workers: dict[str, ManagedProcess] = {}
        app = None
        try:
            for gpu in settings.gpus:
                workers[f"gpu.{gpu}"] = ManagedProcess(
                    f"amqp-gpu{gpu}",
                    gpu_worker_argv(settings, gpu, f"amqp{gpu}-{uuid.uuid4().hex[:4]}"),
                    env=worker_env(settings, gpu),
                    log_path=workdir / f"gpu{gpu}.log",
                ).start()
            workers["control"] = ManagedProcess(
                "amqp-control",
                worker_argv("control", 1, f"amqp-control-{uuid.uuid4().hex[:4]}"),
                env=worker_env(settings, None),
                log_path=workdir / "control.log",
            ).start()
            wait_for_workers(settings, list(workers), workers)
            app = create_app(settings)
            view = dataclasses.replace(stack, settings=settings, workers=workers, app=app)
            yield Rabbit(url, vhost, settings, view, workdir)
        finally:
            for process in workers.values():
                process.stop()
            if app is not None:
                app.extensions["inferq"].close()
                app.extensions["celery"].close()  # its AMQP connections


def test_the_queues_are_quorum_queues(rabbit: Rabbit) -> None:
    listing = rabbitmqctl("list_queues", "-p", rabbit.vhost, "name", "type", "durable", "--no-table-headers")
    kinds = {line.split()[0]: line.split()[1:] for line in listing.splitlines() if line.strip()}
    for name in ("gpu.0", "gpu.1", "control"):
        assert kinds[name] == ["quorum", "true"], listing


def test_sync_inference_through_rabbitmq(rabbit: Rabbit) -> None:
    client = rabbit.stack.client()
    for _ in range(3):
        response = client.post("/v1/models/digits/infer", json=BODY, headers=rabbit.stack.auth())
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["outputs"][0]["data"] == [4]
        assert response.get_json()["parameters"]["queue"] in ("gpu.0", "gpu.1")


class RefusingProxy(HoldingProxy):
    """A proxy to Triton that refuses (closes at once) every connection until released."""

    refused = 0

    def _handle(self, client: socket.socket) -> None:
        if not self.release.is_set():
            self.refused += 1
            client.close()
            return
        super()._handle(client)


def test_a_retry_after_a_back_off_goes_through_rabbitmq_delayed_delivery(rabbit: Rabbit) -> None:
    """Triton unreachable on the only GPU: the task retries on the same GPU after a back-off
    (a countdown, which quorum queues deliver through RabbitMQ's delayed-delivery exchanges), and
    answers once Triton is back: nothing lost on the way."""
    host, port = rabbit.settings.triton_urls[0].split("//")[1].split(":")
    proxy = RefusingProxy((host, int(port)))
    gpu = 7  # a GPU of its own: its only worker reaches Triton through the proxy
    settings = dataclasses.replace(
        rabbit.settings,
        gpus=(gpu,),
        triton_urls={gpu: f"http://127.0.0.1:{proxy.port}"},
    )
    from tests.fixtures import digits_copy_ready
    from webapp import create_app

    name = f"delayed-{uuid.uuid4().hex[:6]}"
    digits_copy_ready(rabbit.stack, name, [gpu])
    worker = rabbit.gpu_worker(gpu, "amqp-gpu7", settings)
    app = create_app(settings)
    try:
        threading.Timer(3.0, proxy.release.set).start()
        response = app.test_client().post(
            f"/v1/models/{name}/infer?timeout=40", json=BODY, headers=rabbit.stack.auth()
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["outputs"][0]["data"] == [4]
        assert proxy.refused >= 1, "the first tries found Triton unreachable"
    finally:
        proxy.close()
        worker.stop()
        app.extensions["inferq"].close()
        app.extensions["celery"].close()


def test_a_request_past_its_deadline_on_rabbitmq_ends_expired_not_queued_forever(rabbit: Rabbit) -> None:
    """RabbitMQ would delete a message past its TTL unseen (Celery turns ``expires`` into one):
    there the message carries its deadline and the task fails it as ``expired`` when it arrives."""
    from tests.fixtures import digits_copy_ready
    from tests.integration.test_infer import poll_task
    from webapp import create_app

    gpu = 6  # no worker yet: the message waits in gpu.6 past its deadline
    settings = dataclasses.replace(
        rabbit.settings,
        gpus=(*rabbit.settings.gpus, gpu),
        triton_urls={**rabbit.settings.triton_urls, gpu: rabbit.settings.triton_urls[0]},
        sync_deadline=2.0,
    )
    name = f"late-{uuid.uuid4().hex[:6]}"
    digits_copy_ready(rabbit.stack, name, [gpu])
    app = create_app(settings)
    worker = None
    try:
        response = app.test_client().post(
            f"/v1/models/{name}/infer", json=BODY, headers={**rabbit.stack.auth(), "Prefer": "respond-async"}
        )
        assert response.status_code == 202, response.get_data(as_text=True)
        time.sleep(3)
        worker = rabbit.gpu_worker(gpu, "amqp-gpu6-late", settings)
        view = dataclasses.replace(rabbit.stack, app=app)
        task = poll_task(view, response.headers["Location"])
        assert task["status"] == "failed" and task["error"]["code"] == "expired", task
    finally:
        if worker is not None:
            worker.stop()
        app.extensions["inferq"].close()
        app.extensions["celery"].close()


def test_a_batch_runs_on_rabbitmq(rabbit: Rabbit) -> None:
    expected = make_input(1500, bad_every=60, prefix="amqp")
    file = upload(rabbit.stack, expected.data)
    batch = create_batch(rabbit.stack, file["id"])
    done = wait_for(rabbit.stack, batch["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"]["total"] == expected.total
    check_partition(rabbit.stack, done, expected)


def test_cancel_on_rabbitmq_keeps_what_finished(rabbit: Rabbit) -> None:
    from tests.integration.test_batches_api import check_partition_cancelled

    expected = make_input(20_000, bad_every=50, prefix="amqp-cancel")
    file = upload(rabbit.stack, expected.data)
    batch = create_batch(rabbit.stack, file["id"])
    wait_for(rabbit.stack, batch["id"], ("in_progress",), timeout=60)
    client, auth = rabbit.stack.client(), rabbit.stack.auth()
    response = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    assert response.status_code == 200 and response.get_json()["status"] == "cancelling"
    done = wait_for(rabbit.stack, batch["id"])
    assert done["status"] == "cancelled", done
    counts = done["request_counts"]
    assert counts["completed"] + counts["failed"] == expected.total
    outputs, errors = check_partition_cancelled(rabbit.stack, done, expected)
    assert outputs and any(line["error"]["code"] == "cancelled" for line in errors)


def test_a_gpu_worker_killed_mid_chunk_on_rabbitmq_loses_nothing(rabbit: Rabbit) -> None:
    """RabbitMQ gives a dead consumer's unacknowledged messages back at once (no visibility
    timeout, no recovery pass needed): the chunk runs again on the replacement and the batch
    completes with every line exactly once."""
    host, port = rabbit.settings.triton_urls[1].split("//")[1].split(":")
    proxy = HoldingProxy((host, int(port)))
    held_settings = dataclasses.replace(
        rabbit.settings, triton_urls={**rabbit.settings.triton_urls, 1: f"http://127.0.0.1:{proxy.port}"}
    )
    workers = rabbit.stack.workers
    workers["gpu.1"].stop()
    held = rabbit.gpu_worker(1, "amqp-gpu1-held", held_settings)
    try:
        expected = make_input(2000, bad_every=40, prefix="amqp-killed")
        file = upload(rabbit.stack, expected.data)
        batch = create_batch(rabbit.stack, file["id"])
        assert proxy.held.wait(60), "no chunk reached the held GPU"
        held.signal(signal.SIGKILL)  # the whole worker, mid-chunk, its message unacknowledged
        held.stop()
        proxy.close()
        workers["gpu.1"] = rabbit.gpu_worker(1, "amqp-gpu1-again")
        done = wait_for(rabbit.stack, batch["id"])  # no recovery pass runs here
        assert done["status"] == "completed", done
        check_partition(rabbit.stack, done, expected)
    finally:
        proxy.close()
        if not workers["gpu.1"].alive():
            workers["gpu.1"] = rabbit.gpu_worker(1, "amqp-gpu1-restored")


def test_rabbitmq_dropping_every_connection_mid_batch_loses_nothing(rabbit: Rabbit) -> None:
    """As a broker restart looks to its clients: every AMQP connection of the virtual host closed
    by RabbitMQ mid-batch. Workers reconnect, unacknowledged chunks come back, the batch completes
    with every line once."""
    expected = make_input(20_000, bad_every=70, prefix="amqp-drop")
    file = upload(rabbit.stack, expected.data)
    batch = create_batch(rabbit.stack, file["id"])
    before = wait_for(rabbit.stack, batch["id"], ("in_progress",), timeout=60)
    rabbitmqctl("close_all_connections", "-p", rabbit.vhost, "inferq test: as a broker restart")
    assert before["request_counts"]["completed"] < expected.total - len(expected.errors), "mid-batch"
    done = wait_for(rabbit.stack, batch["id"], timeout=180)
    assert done["status"] == "completed", done
    check_partition(rabbit.stack, done, expected)
    logs = "".join(process.log_tail(400) for process in rabbit.stack.workers.values())
    assert "Connection to broker lost" in logs, "the workers saw the broker go"
    client = rabbit.stack.client()  # the API's publisher reconnects too
    response = client.post("/v1/models/digits/infer", json=BODY, headers=rabbit.stack.auth())
    assert response.status_code == 200, response.get_data(as_text=True)


def test_queue_depth_is_read_from_rabbitmq(rabbit: Rabbit) -> None:
    from kombu import Connection, Exchange, Queue

    from workers.gpu_state import QueueDepths

    queue_name = f"depth-{uuid.uuid4().hex[:8]}"
    # Publisher confirms: each publish returns once RabbitMQ holds the message, so the count
    # read next cannot race the publishes (CI once read 1 of 3).
    with Connection(rabbit.url, transport_options={"confirm_publish": True}) as connection:
        queue = Queue(queue_name, Exchange("depths", type="direct"), routing_key=queue_name)
        producer = connection.Producer()
        for _ in range(3):
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key=queue_name, declare=[queue])
        reader = QueueDepths(rabbit.url, max_age=0)
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
