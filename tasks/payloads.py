"""Inputs too large to travel in a task message (over INFERQ_INLINE_PAYLOAD_MAX) go through the object
store, not Redis: the API writes them before it queues the task, the worker reads them, and they are
deleted when the task ends. So the Redis that is also the broker holds only small messages, however
large the tensors a tenant sends, and a stashed input outlives a Redis that lost its data.

What a crash leaves behind (an API process gone between writing and queueing, a message lost) is
removed by the periodic upkeep once no task can need it any more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from inferq.retries import call_retrying
from workers.storage import ObjectNotFound, ObjectStore, StorageError, StorageUnavailable

PREFIX = "internal/payloads/"
log = logging.getLogger(__name__)


def key_of(task_id: str) -> str:
    return f"{PREFIX}{task_id}.json"


def put(store: ObjectStore, task_id: str, data: bytes) -> None:
    """Write the encoded inputs of ``task_id`` (raises the store's errors), retrying a store that
    says "try again" for a second at most: a request is waiting."""
    call_retrying(
        lambda: store.put_bytes(key_of(task_id), data, "application/json"), StorageUnavailable, seconds=1.0
    )


def load(store: ObjectStore, task_id: str) -> Any:
    """The inputs of ``task_id``; LookupError when they are gone."""
    try:
        return json.loads(call_retrying(lambda: store.get_bytes(key_of(task_id)), StorageUnavailable))
    except ObjectNotFound:
        raise LookupError(
            f"the inputs of task {task_id} are gone (the task ended, or they expired)"
        ) from None


def drop(store: ObjectStore, task_ids: Iterable[str]) -> None:
    """Delete the inputs of tasks that ended; never raises (the upkeep removes what is left)."""
    for task_id in task_ids:
        try:
            store.delete(key_of(task_id))
        except StorageError as exc:
            log.warning("inputs of task %s not deleted (the upkeep will): %s", task_id, exc)
