"""Batch tasks: plan and finalize on ``control``, chunks on the ``gpu.N`` queues, recovery by beat.

Thin wrappers: the work is in :mod:`tasks.batch_planning`, :mod:`tasks.batch_chunks`,
:mod:`tasks.batch_finalize` and :mod:`tasks.batch_recovery`. Each declares its contract:

- ``inferq.batch.plan`` (control): acknowledged late (a killed worker's planning comes
  back); storage or database trouble is retried 3 times, then the batch fails
  (``input_unreadable``). Time limits: ``INFERQ_BATCH_PLAN_TIME_LIMIT``.
- ``inferq.batch.chunk`` (gpu.N, the threads pool): acknowledged late; no Celery retry:
  short retries happen inside (tenacity), an unreachable Triton sends the chunk again
  (another GPU if any), and a chunk whose execution died is found and sent again by the
  reaper; on its last attempt its lines fail instead. ``INFERQ_BATCH_CHUNK_TIME_LIMIT``.
- ``inferq.batch.finalize`` (control): acknowledged late; retried 3 times, then left
  ``finalizing`` for the reaper to send again. ``INFERQ_BATCH_FINALIZE_TIME_LIMIT``.
- ``inferq.batch.reap`` (control, every ``INFERQ_BATCH_REAPER_INTERVAL`` seconds): no retry,
  the next pass is the retry; a message older than two intervals is dropped.

Time limits come from the settings through ``task_annotations`` (celeryconfig); the
threads pool of GPU workers does not enforce them (the Triton timeout bounds a call).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_init
from sqlalchemy.exc import OperationalError

from inferq.services import tune_gc
from inferq.settings import gpu_of_queue
from registry.db import DatabaseUnavailable
from tasks import batch_chunks, batch_finalize, batch_planning, batch_recovery, batches
from tasks.batches import CHUNK_TASK, FINALIZE_TASK, PLAN_TASK, REAP_TASK, celery_dispatch
from tasks.publish import delivered_queue
from tasks.runtime import services_for
from workers.storage import StorageUnavailable

log = logging.getLogger(__name__)
TRANSIENT = (StorageUnavailable, DatabaseUnavailable, OperationalError)

# A chunk holds a micro-batch of parsed lines (thousands of lists and dicts) while it reads the
# next: at the default threshold (700 allocations) the collector ran every few lines, and its older
# generations walked the worker's whole heap each time: 45 % of a chunk's CPU, measured on the
# chunk loop (32 -> 19 us a line with inferq.services.tune_gc).


@worker_init.connect
def _tune_gc(**_: Any) -> None:
    # In the main process, before a prefork pool forks: its children inherit the frozen objects
    # and the threshold.
    tune_gc()


# Planning and finalizing are acknowledged when received, not after they ran: they may run longer
# than the Redis broker's visibility timeout (which would hand a running plan to a second worker)
# or RabbitMQ's consumer timeout. A worker that dies running one loses nothing: the recovery pass
# sends it again once the batch stayed validating or finalizing past the task's time limit.
@shared_task(
    bind=True, name=PLAN_TASK, acks_late=False, ignore_result=True, max_retries=3, default_retry_delay=5
)
def plan(self: Task, batch_id: str) -> str:
    """Plan batch ``batch_id`` (see :func:`tasks.batch_planning.plan_batch`)."""
    services = services_for(self.app)
    try:
        return batch_planning.plan_batch(services, celery_dispatch(self.app), batch_id)
    except TRANSIENT as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc) from exc
        batches.fail_batch(services, batch_id, batches.INPUT_UNREADABLE, f"planning failed: {exc}")
        return "failed"


@shared_task(bind=True, name=CHUNK_TASK, acks_late=True, ignore_result=True, max_retries=0)
def run_chunk(self: Task, batch_id: str, index: int) -> str:
    """Run chunk ``index`` of batch ``batch_id`` on the GPU of the queue that delivered it."""
    queue = delivered_queue(self.request.delivery_info)
    gpu = gpu_of_queue(queue)
    if gpu is None:
        log.error(
            "batch %s chunk %s arrived on %r, not a gpu.N queue; left to the reaper", batch_id, index, queue
        )
        return "misrouted"
    services = services_for(self.app)
    run = uuid.uuid4().hex[:12]
    worker = self.request.hostname or ""
    outcome = batch_chunks.run_chunk(services, celery_dispatch(self.app), batch_id, index, gpu, run, worker)
    log.info("batch %s chunk %s: %s", batch_id, index, outcome)
    return outcome


@shared_task(
    bind=True, name=FINALIZE_TASK, acks_late=False, ignore_result=True, max_retries=3, default_retry_delay=10
)
def finalize(self: Task, batch_id: str) -> str:
    """Write the result files of batch ``batch_id`` (see :func:`tasks.batch_finalize.finalize_batch`)."""
    try:
        return batch_finalize.finalize_batch(services_for(self.app), batch_id)
    except TRANSIENT as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc) from exc
        log.error("batch %s: finalize failed (%s); the reaper will send it again", batch_id, exc)
        return "left for the reaper"


@shared_task(bind=True, name=REAP_TASK, acks_late=True, ignore_result=True, max_retries=0)
def reap(self: Task) -> dict[str, int]:
    """One recovery pass (see :func:`tasks.batch_recovery.reap`)."""
    return batch_recovery.reap(services_for(self.app), celery_dispatch(self.app)).as_dict()
