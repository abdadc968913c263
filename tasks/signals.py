"""Worker signal handlers: GPU in-flight counters, and waking the request that waits on a task."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, states
from celery.signals import task_postrun, task_prerun, worker_process_init

from inferq.tracing import setup_tracing
from tasks.infer import INFER_TASK
from tasks.outcomes import INFLIGHT_KEY, describe_error, finish_task
from tasks.runtime import services_for

log = logging.getLogger(__name__)
INFLIGHT_TTL = 600  # a counter left high by a killed worker heals after this long


def _queue(task: Task) -> str:
    return str((task.request.delivery_info or {}).get("routing_key", ""))


@worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    # After the fork: span exporters own threads and connections.
    from tasks import app

    setup_tracing(app.inferq_settings, "inferq-worker")


@task_prerun.connect
def _count_start(sender: Task | None = None, **_: Any) -> None:
    if sender is None or sender.name != INFER_TASK:
        return
    try:
        client = services_for(sender.app).redis
        key = INFLIGHT_KEY.format(_queue(sender))
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, INFLIGHT_TTL)
            pipe.execute()
    except redis.RedisError as exc:  # load figures are advice; inference goes on
        log.warning("in-flight counter not updated: %s", exc)


@task_postrun.connect
def _count_end_and_wake(
    sender: Task | None = None, task_id: str = "", retval: Any = None, state: str = "", **_: Any
) -> None:
    if sender is None or sender.name != INFER_TASK:
        return
    outcome = None
    if state == states.SUCCESS:
        outcome = {"state": state, "result": retval}
    elif state == states.FAILURE:
        outcome = {"state": state, "error": describe_error(retval)}
    try:
        finish_task(services_for(sender.app).redis, task_id, _queue(sender), outcome)
    except redis.RedisError as exc:  # the result is in the backend; the waiter falls back to 202
        log.warning("task %s: waiting request not woken: %s", task_id, exc)
