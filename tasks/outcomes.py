"""Task bookkeeping in Redis: who owns a task, and a wake-up for the request waiting on it.

The result itself lives in the Celery result backend. Ownership lets a tenant
see only its own tasks; the wake-up list lets a waiting API thread block on
BLPOP instead of polling, one connection per waiter, safe across threads.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

OWNER_KEY = "inferq:task:{}"
OUTCOME_KEY = "inferq:outcome:{}"
PAYLOAD_KEY = "inferq:payload:{}"
INFLIGHT_KEY = "inferq:inflight:{}"
OUTCOME_TTL = 120


class BookkeepingUnavailable(RuntimeError):
    """Redis, which holds task ownership and wake-ups, cannot be reached."""


def record_task(
    client: Any,
    task_id: str,
    tenant: str,
    fields: dict[str, str],
    ttl: int,
    payload: bytes | None = None,
) -> None:
    """Remember that ``tenant`` owns ``task_id`` (and stash a large payload) for ``ttl`` seconds."""
    try:
        with client.pipeline(transaction=False) as pipe:
            record: dict[Any, Any] = {"tenant": tenant, "created": f"{time.time():.3f}", **fields}
            pipe.hset(OWNER_KEY.format(task_id), mapping=record)
            pipe.expire(OWNER_KEY.format(task_id), ttl)
            if payload is not None:
                pipe.set(PAYLOAD_KEY.format(task_id), payload, ex=ttl)
            pipe.execute()
    except redis.RedisError as exc:
        raise BookkeepingUnavailable(str(exc)) from exc


def task_record(client: Any, task_id: str) -> dict[str, str] | None:
    """The ownership record of a task, or None when unknown or expired."""
    try:
        raw: dict[bytes, bytes] = client.hgetall(OWNER_KEY.format(task_id))
    except redis.RedisError as exc:
        raise BookkeepingUnavailable(str(exc)) from exc
    return {k.decode(): v.decode() for k, v in raw.items()} or None


def describe_error(exc: BaseException) -> dict[str, str]:
    """``{code, message}`` for a task's exception, as the API shows it."""
    code = getattr(exc, "code", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    return {"code": str(code), "message": str(message)}


def load_payload(client: Any, task_id: str) -> Any:
    raw = client.get(PAYLOAD_KEY.format(task_id))
    if raw is None:
        raise LookupError(f"the inputs of task {task_id} expired before it ran")
    return json.loads(raw)


def finish_task(client: Any, task_id: str, queue: str, outcome: dict[str, Any] | None) -> None:
    """One round trip when a task attempt ends: its GPU's in-flight count goes down and,
    when the task is done (``outcome`` given), the request waiting for it wakes up."""
    with client.pipeline(transaction=False) as pipe:
        pipe.decr(INFLIGHT_KEY.format(queue))
        if outcome is not None:
            key = OUTCOME_KEY.format(task_id)
            pipe.rpush(key, json.dumps(outcome, separators=(",", ":")))
            pipe.expire(key, OUTCOME_TTL)
        pipe.execute()


def wait_outcome(client: Any, task_id: str, timeout: float) -> dict[str, Any] | None:
    """Block up to ``timeout`` seconds for the outcome of ``task_id``; None when it is not done."""
    if timeout <= 0:
        return None
    try:
        item = client.blpop([OUTCOME_KEY.format(task_id)], timeout=timeout)
    except redis.RedisError as exc:
        raise BookkeepingUnavailable(str(exc)) from exc
    return None if item is None else json.loads(item[1])
