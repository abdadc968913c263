"""Worker signal handlers around each inference attempt, one Redis round trip at each end: at the
start the GPU's in-flight count and the task's state; at the end the attempt's statistics and
breaker update, the in-flight count, and the outcome with the wake-up of the waiting request."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, states
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

from inferq.services import RedisError
from inferq.tracing import setup_tracing
from tasks.bookkeeping import Outcome, describe_error
from tasks.infer import INFER_TASK, add_attempt, settle_breaker
from tasks.runtime import services_for

log = logging.getLogger(__name__)


def _queue(task: Task) -> str:
    return str((task.request.delivery_info or {}).get("routing_key", ""))


@worker_process_init.connect
def _start_tracing(sender: Any = None, **_: Any) -> None:
    # In each pool process, after the fork: span exporters own threads and connections.
    from tasks import app

    setup_tracing(app.inferq_settings, "inferq-worker")


@worker_init.connect
def _start_tracing_in_main(sender: Any = None, **_: Any) -> None:
    # A threads (or solo) pool runs tasks in the main process, which never forks.
    pool = getattr(sender, "pool_cls", "")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" not in name:
        _start_tracing()


@task_prerun.connect
def _attempt_started(sender: Task | None = None, task_id: str = "", **_: Any) -> None:
    if sender is None or sender.name != INFER_TASK:
        return
    services = services_for(sender.app)
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            services.gpus.add_started(pipe, _queue(sender))
            services.tasks.add_running(pipe, task_id)
            pipe.execute()
    except RedisError as exc:  # load figures and states are advice; inference goes on
        log.warning("task %s: in-flight count and state not updated: %s", task_id, exc)


@task_postrun.connect
def _attempt_ended(
    sender: Task | None = None, task_id: str = "", retval: Any = None, state: str = "", **_: Any
) -> None:
    if sender is None or sender.name != INFER_TASK:
        return
    services = services_for(sender.app)
    attempts = getattr(sender.request, "inferq_attempts", None) or []
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            for attempt in attempts:
                add_attempt(services, pipe, attempt)
            failures_at = len(pipe.command_stack) - 2  # the last attempt's breaker count
            services.gpus.add_finished(pipe, _queue(sender))
            if state == states.SUCCESS:
                outcome: Outcome = {"state": "SUCCESS", "result": retval}
                services.tasks.add_outcome(pipe, task_id, outcome)
            elif state == states.FAILURE:
                services.tasks.add_outcome(
                    pipe, task_id, {"state": "FAILURE", "error": describe_error(retval)}
                )
            elif state == states.RETRY:
                note = {"code": "retrying", "message": str(getattr(retval, "exc", retval) or "")}
                services.tasks.add_retrying(pipe, task_id, note)  # type: ignore[arg-type]
            replies = pipe.execute()
        if attempts:
            settle_breaker(services, attempts[-1], replies[failures_at])
    except RedisError as exc:  # the waiter falls back to 202; the client polls
        log.warning("task %s: outcome not recorded: %s", task_id, exc)
