"""Celery settings for inferq: broker, backend, queues, routes, acknowledgement, prefetch, limits.

``celery_settings(settings)`` is applied by ``tasks.create_celery_app``; every
value here derives from :class:`inferq.settings.Settings`, so the environment
is read in one place only.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from inferq.settings import CONTROL_QUEUE, Settings, gpu_queue

EXCHANGE = "inferq"  # the exchange every inferq queue is bound to, by its own name

# Tasks that never touch a GPU run on the control queue.
CONTROL_TASKS = (
    "inferq.maintenance.*",
    "inferq.deploy.*",
    "inferq.batch.plan",
    "inferq.batch.finalize",
    "inferq.batch.reap",
)


def batch_time_limits(settings: Settings) -> dict[str, dict[str, int]]:
    """Soft and hard time limits of the batch tasks (soft: a little before the hard one)."""
    limits = {
        "inferq.batch.chunk": (settings.batch_chunk_time_limit, 30),
        "inferq.batch.plan": (settings.batch_plan_time_limit, 60),
        "inferq.batch.finalize": (settings.batch_finalize_time_limit, 60),
    }
    return {
        name: {"time_limit": hard, "soft_time_limit": max(1, hard - margin)}
        for name, (hard, margin) in limits.items()
    }


def celery_settings(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    redis_broker = settings.redis_broker
    queue_type = "classic" if redis_broker else settings.broker_queue_type
    if queue_type not in ("quorum", "classic"):
        raise ValueError(f"INFERQ_BROKER_QUEUE_TYPE={queue_type!r}: expected quorum or classic")
    # Quorum queues (RabbitMQ): durable and replicated. A retry's countdown then goes through
    # RabbitMQ's native delayed delivery, which binds only to topic exchanges; with names
    # for routing keys a topic exchange routes exactly as a direct one does.
    exchange_type = "topic" if queue_type == "quorum" else "direct"
    exchange = Exchange(EXCHANGE, type=exchange_type, durable=True)
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    queues = [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)
        for name in [*(gpu_queue(gpu) for gpu in settings.gpus), CONTROL_QUEUE]
    ]
    return {
        "broker_url": settings.broker_url,
        # kombu's Redis transport, keeping one client per channel (see tasks/broker.py).
        "broker_transport": "tasks.broker:Transport" if redis_broker else None,
        "result_backend": settings.result_backend,
        "broker_connection_retry_on_startup": True,
        # An unacknowledged message returns to its queue after this long (Redis broker).
        # Longer than any task's time limit, so a slow task is not run twice.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.broker_restore_interval,
            "unacked_restore_throttle": 1,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        "result_backend_transport_options": {"socket_timeout": 5, "socket_connect_timeout": 5},
        "task_queues": queues,
        "task_default_queue": CONTROL_QUEUE,
        "task_default_exchange": EXCHANGE,
        "task_default_exchange_type": exchange_type,
        "task_default_queue_type": queue_type,
        "task_default_routing_key": CONTROL_QUEUE,
        # inferq.infer has no static route: the router picks a gpu.N queue per request.
        "task_routes": {pattern: {"queue": CONTROL_QUEUE} for pattern in CONTROL_TASKS},
        "task_serializer": "json",
        "result_serializer": "json",
        # Task messages are JSON written by orjson (tasks.codec) under their own content type.
        "accept_content": ["json", "application/x-inferq-json"],
        # Acknowledge after the task ran, and give the message back if the worker
        # process dies, so a crash loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(1, settings.task_time_limit - 10),
        # Nothing reads a STARTED state (a sync task's state is kept by tasks.bookkeeping),
        # nor the task's arguments in its result (they would keep inputs for result_expires).
        "task_track_started": False,
        "result_expires": settings.result_expires,
        "result_extended": False,
        # Events for Flower: a worker's received/started/succeeded/failed. No task-sent event from
        # the API (one more publish per request; Flower lists a task once a worker receives it).
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_concurrency": settings.worker_concurrency,
        # celery beat (``inferq up`` runs it; in production run one ``celery -A tasks beat``).
        "beat_schedule": {
            "flush-stats": {
                "task": "inferq.maintenance.flush_stats",
                "schedule": settings.stats_flush_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.stats_flush_interval * 2},
            },
            # The registry kept true to what each Triton has loaded (tasks/maintenance.py).
            "reconcile-tritons": {
                "task": "inferq.maintenance.reconcile",
                "schedule": settings.reconcile_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.reconcile_interval * 2},
            },
            # Stashed inputs left in the object store by a crash (tasks/payloads.py), and outcomes
            # kept there past INFERQ_RESULT_EXPIRES (tasks/results.py).
            "expire-stored": {
                "task": "inferq.maintenance.expire_stored",
                "schedule": 600.0,
                "options": {"queue": CONTROL_QUEUE, "expires": 600},
            },
            "expire-deploys": {
                "task": "inferq.maintenance.expire_deploys",
                "schedule": 60.0,
                "options": {"queue": CONTROL_QUEUE, "expires": 120},
            },
            # Batch recovery: lost chunk messages, lost plan and finalize tasks (tasks/batches.py).
            "reap-batches": {
                "task": "inferq.batch.reap",
                "schedule": settings.batch_reaper_interval,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.batch_reaper_interval * 2},
            },
        },
        # Batch task time limits, from the settings (a task decorator cannot read them).
        "task_annotations": batch_time_limits(settings),
    }
