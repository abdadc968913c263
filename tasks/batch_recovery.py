"""Recovery (control queue, celery beat): what a lost message or a dead worker left undone is
sent again; the database says what that is."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from inferq.settings import gpu_queue
from registry import batches as registry
from registry.batches import Chunk
from registry.db import utcnow
from tasks.batch_chunks import (
    maybe_finalize,
    model_of,
    resend_chunk,
    work_of,
)
from tasks.batches import (
    CHUNK_FAILED,
    LOST_ATTEMPTS_FACTOR,
    Dispatch,
    fail_batch,
    send_finalize,
    send_plan,
    transaction,
)
from tasks.pipeline import PipelineError
from tasks.runtime import Services

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    """What one recovery pass did."""

    resent: int = 0
    replanned: int = 0
    finalized: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "resent": self.resent,
            "replanned": self.replanned,
            "finalized": self.finalized,
            "failed": self.failed,
        }


def is_lost(chunk: Chunk, depths: Mapping[str, int], now: datetime, age: timedelta) -> bool:
    """Whether a chunk :func:`registry.batches.lost_chunks` returned should be sent again.

    A chunk never sent is. A sent one is when its queue is empty (its message is not
    waiting there: it was lost, or taken by a worker that died) or, whatever the queue,
    after ten times ``age`` (a queue that never drains, a GPU worker that never returns).
    """
    if chunk.status == "pending" or chunk.sent_at is None:
        return True
    if chunk.queue is not None and depths.get(chunk.queue) == 0:
        return True
    return chunk.sent_at < now - 10 * age


def reap(services: Services, dispatch: Dispatch, now: datetime | None = None, limit: int = 1000) -> Reaped:
    """One recovery pass (celery beat runs it every ``INFERQ_BATCH_REAPER_INTERVAL`` seconds):

    - chunks whose message was lost (see :func:`is_lost`), older than
      ``INFERQ_BATCH_LOST_CHUNK_AGE``, are sent again; a chunk lost too many times fails its batch;
    - batches with every chunk done but still ``in_progress`` are moved to finalizing;
    - batches whose planning has not ended (``validating``, or running their first chunks without
      ``planned_at``), or left ``finalizing`` or ``cancelling``, past the task's time limit, get
      their plan or finalize task again (a plan run again skips the chunks already recorded).
    """
    settings = services.settings
    now = now or utcnow()
    age = timedelta(seconds=settings.batch_lost_chunk_age)
    report = Reaped()
    # Messages waiting in a queue are not lost: look only at chunks sent to empty queues
    # (and at those overdue whatever their queue).
    depths = services.gpus.depths.depths([gpu_queue(gpu) for gpu in settings.gpus])
    empty = [queue for queue, depth in depths.items() if depth == 0]
    with transaction(services) as session:
        candidates = registry.lost_chunks(session, now - age, limit, queues=empty, overdue=now - 10 * age)
        session.expunge_all()
    give_up = settings.batch_chunk_max_attempts * LOST_ATTEMPTS_FACTOR
    for chunk in candidates:
        if not is_lost(chunk, depths, now, age):
            continue
        if chunk.attempts >= give_up:
            message = f"chunk {chunk.index} was lost {chunk.attempts} times; see the GPU workers' logs"
            if fail_batch(services, chunk.batch_id, CHUNK_FAILED, message):
                report.failed += 1
            continue
        with transaction(services) as session:
            batch = registry.batch_by_id(session, chunk.batch_id)
            if batch is None:
                continue
            work = work_of(batch, chunk, "")
        if resend_chunk(services, dispatch, work, model_of(services, work)) == "resent":
            report.resent += 1
    with transaction(services) as session:
        ready = registry.batches_done_running(session, limit=limit)
        plan_after = timedelta(seconds=settings.batch_plan_time_limit + 60)
        finalize_after = timedelta(seconds=settings.batch_finalize_time_limit + 60)
        # Validating, or already running the chunks of the file's start: planning never ended.
        validating = [b.id for b in registry.unplanned_batches(session, now - plan_after, limit)]
        stuck = [
            b.id
            for status in ("finalizing", "cancelling")
            for b in registry.stale_batches(session, status, now - finalize_after, limit)
        ]
    for batch_id in ready:
        if maybe_finalize(services, dispatch, batch_id):
            report.finalized += 1
    for batch_id in validating:
        with contextlib.suppress(PipelineError):
            send_plan(dispatch, batch_id)
            report.replanned += 1
    for batch_id in stuck:
        with contextlib.suppress(PipelineError):
            send_finalize(dispatch, batch_id)
            report.finalized += 1
    if any(report.as_dict().values()):
        log.info("batch recovery: %s", report.as_dict())
    return report
