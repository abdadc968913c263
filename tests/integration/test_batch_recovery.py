"""Recovery: the database is the truth. A GPU worker SIGKILLed mid-batch, or the broker's GPU queues
deleted mid-batch, and the batch still completes with every line exactly once, because the
recovery pass (tasks.batch_recovery.reap, run by celery beat) finds the chunks whose message was
lost and sends them again. Here the pass runs in the test, every second, with a 2 s lost-chunk age.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures import Stack, wait_for_workers
from tests.integration.batch_files import create_batch, get_batch, make_input, upload, wait_for
from tests.integration.test_batches_api import check_partition
from tests.integration.test_worker_killed import HoldingProxy

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def fast_recovery(stack: Stack) -> Iterator[Any]:
    """A recovery pass with a 2 s lost-chunk age, and a function that runs it until a batch is final."""
    from tasks import create_celery_app
    from tasks.batch_recovery import reap
    from tasks.batches import celery_dispatch
    from tasks.runtime import Services

    settings = dataclasses.replace(stack.settings, batch_lost_chunk_age=2.0)
    services = Services(settings)
    dispatch = celery_dispatch(create_celery_app(settings))
    resent: list[int] = []

    def until_final(batch_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        batch: dict[str, Any] = {}
        while time.monotonic() < deadline:
            batch = get_batch(stack, batch_id)
            if batch["status"] in ("completed", "failed", "cancelled"):
                return batch
            resent.append(reap(services, dispatch).resent)
            time.sleep(1)
        raise AssertionError(f"batch {batch_id} not final after {timeout}s: {batch}")

    try:
        yield until_final, resent
    finally:
        services.close()


def chunk_attempts(stack: Stack, batch_id: str) -> list[int]:
    from registry.batches import list_chunks

    with stack.services.db.session() as session:
        return [chunk.attempts for chunk in list_chunks(session, batch_id)]


def test_a_gpu_worker_killed_mid_batch_loses_nothing(stack: Stack, tmp_path: Any) -> None:
    from launcher.localstack import ManagedProcess
    from launcher.stack import gpu_worker_argv, worker_env

    host, port = stack.settings.triton_urls[1].split("//")[1].split(":")
    proxy = HoldingProxy((host, int(port)))
    held_settings = dataclasses.replace(
        stack.settings, triton_urls={**stack.settings.triton_urls, 1: f"http://127.0.0.1:{proxy.port}"}
    )

    def gpu1_worker(settings: Any, name: str) -> ManagedProcess:
        worker = ManagedProcess(
            name,
            gpu_worker_argv(settings, 1, f"{name}-{uuid.uuid4().hex[:4]}"),
            env=worker_env(settings, 1),
            log_path=tmp_path / f"{name}.log",
        ).start()
        wait_for_workers(settings, ["gpu.1"], {"gpu.1": worker})
        return worker

    original = stack.workers["gpu.1"]
    original.signal(signal.SIGTERM)
    original.stop()
    held = gpu1_worker(held_settings, "gpu1-held")  # its Triton calls hang until released
    replacement = None
    try:
        expected = make_input(3000, bad_every=40, prefix="killed")
        file = upload(stack, expected.data)
        with fast_recovery(stack) as (until_final, resent):
            batch = create_batch(stack, file["id"])
            assert proxy.held.wait(60), "no chunk reached the held GPU"
            held.signal(signal.SIGKILL)  # the whole worker (threads pool: one process), mid-chunk
            held.stop()
            proxy.close()
            replacement = gpu1_worker(stack.settings, "gpu1-again")
            stack.workers["gpu.1"] = replacement
            done = until_final(batch["id"])
        assert done["status"] == "completed", done
        assert done["request_counts"]["total"] == expected.total
        check_partition(stack, done, expected)
        assert sum(resent) > 0 and max(chunk_attempts(stack, batch["id"])) > 1, (
            "the reaper re-sent lost chunks"
        )
    finally:
        proxy.close()
        if replacement is None or not replacement.alive():
            stack.workers["gpu.1"] = gpu1_worker(stack.settings, "gpu1-restored")


def test_the_gpu_queues_deleted_mid_batch_and_the_reaper_recovers(stack: Stack) -> None:
    expected = make_input(20_000, bad_every=60, prefix="flushed")
    file = upload(stack, expected.data)
    with fast_recovery(stack) as (until_final, resent):
        batch = create_batch(stack, file["id"])
        wait_for(stack, batch["id"], ("in_progress",), timeout=60)
        dropped = stack.services.redis.delete("gpu.0", "gpu.1")  # the broker's queues (Redis lists)
        assert dropped, "there were chunk messages waiting"
        done = until_final(batch["id"])
    assert done["status"] == "completed", done
    check_partition(stack, done, expected)
    assert sum(resent) > 0 and max(chunk_attempts(stack, batch["id"])) > 1
