"""Worker signal handlers around each inference attempt, one Redis round trip at each end: at the
start the GPU's in-flight count and the requests' state (written by a background thread while
Triton runs); at the end, once that write is done, the attempt's statistics and breaker update,
the in-flight count, and each request's outcome with the wake-up of its waiter."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import Task, states
from celery.signals import (
    after_setup_logger,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from inferq.services import RedisError
from inferq.settings import gpu_of_queue
from inferq.tracing import setup_tracing
from tasks import payloads, results, sidecar
from tasks.bookkeeping import Outcome, TaskError, describe_error
from tasks.infer import INFER_TASK, add_attempt, add_tenant_outcomes, settle_breaker
from tasks.publish import delivered_queue
from tasks.runtime import services_for
from workers.inference import InferRequest
from workers.liveness import start_announcing, stop_announcing

log = logging.getLogger(__name__)
STARTED_WAIT = 6.0  # seconds the end of an attempt waits for its start's write (1 s timeouts)


def _queue(task: Task) -> str:
    return delivered_queue(task.request.delivery_info)


def _owner(args: Any, request: InferRequest) -> dict[str, str] | None:
    """Who owns a request's task, as its message says (None for messages without it)."""
    try:
        message = args[0]
        return {
            "tenant": request["tenant"],
            "model": message["model_name"],
            "version": message["model_version"],
        }
    except (IndexError, KeyError, TypeError):
        return None


def _requests(args: Any) -> list[InferRequest]:
    try:
        return list(args[0]["requests"])
    except (IndexError, KeyError, TypeError):
        return []


# Celery's loggers of a line per task: received (the consumer), succeeded/retry (the tracer).
TASK_LINE_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@after_setup_logger.connect
def _task_lines(**_: Any) -> None:
    """Without ``INFERQ_LOG_TASKS``, Celery's line per task received and succeeded is not written
    (a task's failure still is, at ERROR): each costs its task about 0.3 ms on the worker's main
    thread. Set before the consumer and the tracer read the level."""
    from tasks import app

    if not app.inferq_settings.log_tasks:
        for name in TASK_LINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@task_retry.connect
def _log_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    """Celery's own "Task ... retry" line is at INFO, in a logger quieted without INFERQ_LOG_TASKS:
    a task retried (planning, finalizing) says so here, with why."""
    name = getattr(request, "task", None) or "?"
    log.warning("task %s[%s] will be retried: %s", name, getattr(request, "id", "?"), reason)


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
def _attempt_started(sender: Task | None = None, task_id: str = "", args: Any = None, **_: Any) -> None:
    if sender is None or sender.name != INFER_TASK:
        return
    services = services_for(sender.app)
    queue, worker, requests = _queue(sender), sender.request.hostname or "", _requests(args)

    def write() -> None:
        try:
            with services.redis.pipeline(transaction=False) as pipe:
                services.gpus.add_started(pipe, queue, worker)
                for request in requests:
                    services.tasks.add_running(pipe, request["task_id"])
                pipe.execute()
        except RedisError as exc:  # load figures and states are advice; inference goes on
            log.warning("task %s: in-flight count and state not updated: %s", task_id, exc)

    # Written while Triton runs (the round trip is off the request's path); the end of the
    # attempt waits for it, so "running" never lands after the outcome.
    sender.request.inferq_started = _background().submit(write)


_executor: tuple[int, ThreadPoolExecutor] | None = None


def _background() -> ThreadPoolExecutor:
    """This process's thread for writes that overlap an attempt (made after a fork, not before)."""
    global _executor
    if _executor is None or _executor[0] != os.getpid():
        # A few threads: with a stalled Redis (1 s timeouts) one would queue every attempt's write.
        _executor = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="inferq-started"))
    return _executor[1]


def _await_started(request: Any) -> None:
    started: Future[None] | None = getattr(request, "inferq_started", None)
    if started is not None:
        with contextlib.suppress(TimeoutError):
            started.result(timeout=STARTED_WAIT)


@task_postrun.connect
def _attempt_ended(
    sender: Task | None = None,
    task_id: str = "",
    args: Any = None,
    retval: Any = None,
    state: str = "",
    **_: Any,
) -> None:
    if sender is None or sender.name != INFER_TASK:
        return
    services = services_for(sender.app)
    _await_started(sender.request)
    attempts = getattr(sender.request, "inferq_attempts", None) or []
    requests = _requests(args)
    failed: Outcome = {"state": "FAILURE", "error": describe_error(retval)}
    polled_at: dict[str, int] = {}  # task id -> reply index of its "client polls" mark
    ended: list[Outcome] = []  # the requests' outcomes, when they end with this attempt
    keep_all = False
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            for attempt in attempts:
                add_attempt(services, pipe, attempt)
            failures_at = len(pipe.command_stack) - 2  # the last attempt's breaker count
            services.gpus.add_finished(pipe, _queue(sender), sender.request.hostname or "")
            outcomes: list[Outcome] | None = getattr(sender.request, "inferq_outcomes", None)
            if state == states.SUCCESS and outcomes is None:  # sent to another GPU: not over yet
                rerouted = getattr(sender.request, "inferq_rerouted", "?")
                note: TaskError = {
                    "code": "rerouted",
                    "message": f"sent to gpu.{rerouted} after a failed attempt",
                }
                for request in requests:
                    services.tasks.add_retrying(pipe, request["task_id"], note)
            elif state in (states.SUCCESS, states.FAILURE) and requests:  # the requests end here
                answered = outcomes if state == states.SUCCESS else None  # a failure fails them all
                ended = answered if answered is not None else [failed] * len(requests)
                latency = attempts[-1].latency_ms if attempts and answered is not None else 0.0
                add_tenant_outcomes(pipe, args[0], answered, latency)
                for request, outcome in zip(requests, ended, strict=True):
                    services.tasks.add_outcome(pipe, request["task_id"], outcome, _owner(args, request))
                    polled_at[request["task_id"]] = services.tasks.add_polled_check(pipe, request["task_id"])
            replies = pipe.execute()
        if attempts:
            settle_breaker(services, attempts[-1], replies[failures_at])
    except RedisError as exc:  # the waiter falls back to 202; the client polls
        log.warning("task %s: outcome not recorded: %s", task_id, exc)
        keep_all = True  # the object store's copy is the only one
    if ended:
        _drop_inputs(services, requests)  # the requests ended: their large inputs go
        polled = {tid for tid, at in polled_at.items() if keep_all or replies[at]}
        _keep_outcomes(services, args, requests, ended, polled)


def _keep_outcomes(
    services: Any,
    args: Any,
    requests: list[InferRequest],
    outcomes: list[Outcome],
    polled: Collection[str] = (),
) -> None:
    """Keep the outcomes nobody waits for in the object store too (``tasks.results``): sent with
    ``Prefer: respond-async``, or whose client was answered 202 and polls (``polled``)."""
    for request, outcome in zip(requests, outcomes, strict=True):
        owner = _owner(args, request)
        if (request.get("durable") or request["task_id"] in polled) and owner:
            results.keep(services.quick_store, owner, [(request["task_id"], outcome)])


def _drop_inputs(services: Any, requests: list[InferRequest]) -> None:
    """Delete the object-store inputs of requests that ended (after their waiters were woken)."""
    stashed = [request["task_id"] for request in requests if "inputs" not in request]
    if stashed:
        payloads.drop(services.quick_store, stashed)


@task_revoked.connect
def _revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    """A sync task past its deadline (``INFERQ_SYNC_DEADLINE``) or revoked is never run: its
    requests end as failed, visibly, instead of staying queued until their records expire."""
    if sender is None or getattr(sender, "name", "") != INFER_TASK or request is None:
        return
    services = services_for(sender.app)
    code = "expired" if expired else "cancelled"
    why = "not started before its deadline" if expired else "revoked before it ran"
    outcome: Outcome = {"state": "FAILURE", "error": {"code": code, "message": f"the inference was {why}"}}
    try:
        with services.redis.pipeline(transaction=False) as pipe:
            for item in _requests(getattr(request, "args", None)):
                owner = _owner(getattr(request, "args", None), item)
                services.tasks.add_outcome(pipe, item["task_id"], outcome, owner)
            pipe.execute()
    except RedisError as exc:
        log.warning("task %s: expiry not recorded: %s", getattr(request, "id", "?"), exc)
    items = _requests(getattr(request, "args", None))
    _drop_inputs(services, items)
    _keep_outcomes(services, getattr(request, "args", None), items, [outcome] * len(items))


@worker_ready.connect
def _announce_alive(sender: Any = None, **_: Any) -> None:
    # /readyz learns which workers are alive from Redis (workers.liveness), not by a broadcast.
    if sender is None:
        return
    queues = sorted(sender.app.amqp.queues.consume_from)
    services = services_for(sender.app)
    services.gpus.reset_worker(sender.hostname, queues)  # a restarted worker runs nothing yet
    start_announcing(services.redis, sender.hostname, queues)
    if services.settings.triton_sidecar:
        for gpu in (gpu_of_queue(queue) for queue in queues):
            if gpu is not None:
                sidecar.keep_loaded(services, gpu)


@worker_shutdown.connect
def _withdraw(sender: Any = None, **_: Any) -> None:
    stop_announcing()
    sidecar.stop()
