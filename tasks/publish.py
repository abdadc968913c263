"""Publishing a task: a broker that will not take it is a 503, and nobody subscribes to a result."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.exceptions import OperationalError

from tasks.codec import SERIALIZER
from tasks.errors import unavailable

# Publishing gives up fast: a request must not hang on a broker that is down.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

# A delayed message on RabbitMQ quorum queues (native delayed delivery) arrives with its delay in
# 28 binary levels before the routing key: "0.0.[...].1.1.gpu.7".
DELAYED_ROUTING_KEY = re.compile(r"(?:[01]\.){28}(.+)")


def _worker_sees_expired(app: Celery) -> bool:
    """Whether an expired message still reaches a worker, which then records it as expired.

    Celery turns ``expires`` into the message's TTL on RabbitMQ, which then deletes it unseen: the
    request would stay ``queued`` until its record expires. There, the infer task checks the
    deadline in its message (``InferMessage.deadline``) instead."""
    return urlsplit(str(app.conf.broker_url or "")).scheme in ("redis", "rediss", "")


def delivered_queue(delivery_info: Mapping[str, Any] | None) -> str:
    """The queue a task message was routed to (its routing key: every inferq queue is bound by its
    own name), also when it came through RabbitMQ's delayed delivery."""
    key = str((delivery_info or {}).get("routing_key", ""))
    delayed = DELAYED_ROUTING_KEY.fullmatch(key)
    return delayed.group(1) if delayed else key


def publish(
    app: Celery,
    name: str,
    args: list[Any],
    queue: str,
    task_id: str | None = None,
    argsrepr: str | None = None,
    expires: datetime | None = None,
    retries: int = 0,
    countdown: float | None = None,
) -> None:
    """Queue a task by name on ``queue``; a broker that cannot take it is a 503 ``broker-unavailable``.

    ``argsrepr`` is what Flower and the logs show of the arguments (never tensors);
    ``expires``: a worker that receives the task later discards it (a sync request's
    deadline); ``retries``: attempts already made (a task routed again carries its count). Nobody
    waits on a result through Celery (the outcome of an inference is kept by
    ``tasks.bookkeeping``, the rest by the database), so the publisher does not subscribe
    to one (with the Redis result backend that is two more commands per task). ``countdown``:
    seconds before a worker may start it (at least 1 on RabbitMQ quorum queues, whose delayed
    delivery counts whole seconds).
    """
    if expires is not None and not _worker_sees_expired(app):
        expires = None  # the task checks the deadline its message carries instead
    try:
        app.send_task(
            name,
            args=args,
            task_id=task_id,
            queue=queue,
            retry=True,
            retry_policy=PUBLISH_RETRY,
            argsrepr=argsrepr,
            ignore_result=True,
            expires=expires,
            retries=retries,
            countdown=countdown,
            serializer=SERIALIZER,
        )
    except OperationalError as exc:
        raise unavailable("broker", f"the task could not be queued: {exc}") from None
