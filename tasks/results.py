"""Outcomes of the requests nobody waits for (``Prefer: respond-async``), kept in the object store
too: the owner polls ``GET /v1/tasks/{id}`` later, and a Redis that lost its data (FLUSHDB, a restart
without persistence) or does not answer must not lose a result that was already computed.

The worker writes one small object per such request after it has recorded the outcome in Redis;
``GET /v1/tasks/{id}`` reads it when Redis has no record. They are deleted by the upkeep once older
than INFERQ_RESULT_EXPIRES, as the Redis records expire.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from tasks.bookkeeping import Outcome, TaskRecord
from workers.storage import ObjectNotFound, ObjectStore, StorageError

PREFIX = "internal/results/"
log = logging.getLogger(__name__)


def key_of(task_id: str) -> str:
    return f"{PREFIX}{task_id}.json"


def keep(store: ObjectStore, owner: dict[str, str], outcomes: Iterable[tuple[str, Outcome]]) -> None:
    """Write each ``(task_id, outcome)`` of ``owner``'s (tenant, model, version); never raises (the
    Redis record is the first copy)."""
    done = f"{datetime.now(UTC).timestamp():.3f}"
    for task_id, outcome in outcomes:
        status = "succeeded" if outcome["state"] == "SUCCESS" else "failed"
        body = {**owner, "status": status, "outcome": outcome, "done": done}
        try:
            store.put_bytes(
                key_of(task_id), json.dumps(body, separators=(",", ":")).encode(), "application/json"
            )
        except StorageError as exc:
            log.warning("task %s: outcome not kept in the object store: %s", task_id, exc)


def find(store: ObjectStore, task_id: str) -> TaskRecord | None:
    """The kept outcome of ``task_id`` as a record, or None (raises the store's errors)."""
    if not task_id.isalnum():
        return None  # never a key outside the prefix
    try:
        body = json.loads(store.get_bytes(key_of(task_id)))
    except ObjectNotFound:
        return None
    done = datetime.fromtimestamp(float(body["done"]), UTC)
    return TaskRecord(
        id=task_id,
        tenant=body["tenant"],
        model=body["model"],
        version=body["version"],
        status=body["status"],
        created_at=done,  # the queueing time was in the lost record
        completed_at=done,
        outcome=body["outcome"],
    )
