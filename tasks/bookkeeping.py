"""Task bookkeeping in Redis: who owns a sync task, its state and outcome,
the wake-up of the request waiting on it, and how many sync requests each tenant has waiting.

This module owns those keys. The outcome of an inference is stored here once (the
Celery result backend does not keep inference results): ``GET /v1/tasks/{id}``
reads it from the record, and the waiting request is handed it through a list it
blocks on (BLPOP), so it wakes at once without polling.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from inferq.services import Redis, RedisError

POLLED_FIELD = "polled"  # the owner was answered 202 and will poll
RECORD_KEY = "inferq:task:{}"
WAKE_KEY = "inferq:outcome:{}"
WAITING_KEY = "inferq:waiting:{}"
WAKE_TTL = 120
WAITING_TTL = 300  # a count left high by a killed API process heals after this long


class BookkeepingUnavailable(RuntimeError):
    """Redis, which holds task records and wake-ups, cannot be reached."""


class TaskError(TypedDict):
    code: str
    message: str


class Outcome(TypedDict, total=False):
    """How a task ended: ``state`` SUCCESS with ``result``, or FAILURE with ``error``."""

    state: Literal["SUCCESS", "FAILURE"]
    result: dict[str, Any]
    error: TaskError


TaskState = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class TaskRecord:
    """A sync task as its owner sees it."""

    id: str
    tenant: str
    model: str
    version: str
    status: TaskState
    created_at: datetime
    completed_at: datetime | None = None
    outcome: Outcome | None = None
    note: TaskError | None = None  # e.g. retrying after a failed attempt


def describe_error(exc: BaseException) -> TaskError:
    """``{code, message}`` for a task's exception, as the API shows it."""
    code = getattr(exc, "code", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    return {"code": str(code), "message": str(message)}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class TaskBook:
    """Task records, wake-ups and per-tenant waiting counts in one Redis (large inputs are in the
    object store: ``tasks.payloads``)."""

    def __init__(self, client: Redis, blocking_client: Redis, ttl: int) -> None:
        self.client = client
        self.blocking = blocking_client  # its socket timeout outlasts the longest wait
        self.ttl = ttl

    def add_open(
        self,
        pipe: Any,
        task_id: str,
        tenant: str,
        model: str,
        version: str,
        waiting: bool = False,
    ) -> int | None:
        """Queue the record of a new task of ``tenant`` on ``pipe``.

        With ``waiting`` the request will wait for its outcome and counts against the
        tenant's waiting requests: the index of that count's reply is returned, for
        :meth:`over_cap`. Call :meth:`stop_waiting` when the wait ends.
        """
        at = None
        if waiting:
            at = len(pipe.command_stack)
            pipe.incr(WAITING_KEY.format(tenant))
            pipe.expire(WAITING_KEY.format(tenant), WAITING_TTL)
        key = RECORD_KEY.format(task_id)
        record = {"tenant": tenant, "model": model, "version": version, "status": "queued"}
        record["created"] = f"{time.time():.3f}"
        pipe.hset(key, mapping=record)
        pipe.expire(key, self.ttl)
        return at

    @staticmethod
    def over_cap(replies: list[Any], at: int | None, cap: int) -> bool:
        """Whether the waiting count queued by :meth:`add_open` at ``at`` passed ``cap`` (0: no cap)."""
        return at is not None and cap > 0 and int(replies[at]) > cap

    def stop_waiting(self, tenant: str) -> None:
        """One waiting request of ``tenant`` is done waiting (never raises: the count heals by TTL)."""
        with contextlib.suppress(RedisError):
            self.client.decr(WAITING_KEY.format(tenant))

    def forget(self, task_id: str, tenant: str | None = None) -> None:
        """Drop the record of a task that was never queued (its publish failed)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(RECORD_KEY.format(task_id))
                if tenant is not None:
                    pipe.decr(WAITING_KEY.format(tenant))
                pipe.execute()
        except RedisError:
            pass

    def get(self, task_id: str) -> TaskRecord | None:
        """The record of a task, or None when unknown or expired."""
        try:
            raw: Any = self.client.hgetall(RECORD_KEY.format(task_id))
        except RedisError as exc:
            raise BookkeepingUnavailable(str(exc)) from exc
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        done = fields.get("done")
        return TaskRecord(
            id=task_id,
            tenant=fields.get("tenant", ""),
            model=fields.get("model", ""),
            version=fields.get("version", ""),
            status=fields.get("status", "queued"),
            created_at=datetime.fromtimestamp(float(fields.get("created", "0")), UTC),
            completed_at=datetime.fromtimestamp(float(done), UTC) if done else None,
            outcome=json.loads(fields["outcome"]) if "outcome" in fields else None,
            note=json.loads(fields["note"]) if fields.get("note") else None,
        )

    def mark_polled(self, task_id: str) -> Outcome | None:
        """The owner stopped waiting and will poll: mark the record so the worker keeps its outcome
        in the object store too (``tasks.results``). Returns the outcome if it is already there
        (then nothing needs keeping); None otherwise, or when Redis does not answer."""
        key = RECORD_KEY.format(task_id)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, POLLED_FIELD, "1")
                pipe.expire(key, self.ttl)
                pipe.hget(key, "outcome")
                _, _, raw = pipe.execute()
        except RedisError:
            return None
        if raw is None:
            return None
        outcome: Outcome = json.loads(raw)
        return outcome

    @staticmethod
    def add_polled_check(pipe: Any, task_id: str) -> int:
        """Queue the read of the mark :meth:`mark_polled` leaves; returns the index of its reply
        (truthy: keep the outcome). Queue it after :meth:`add_outcome`: with the API's write and
        read in the other order, one of the two sides always sees the other."""
        at = len(pipe.command_stack)
        pipe.hget(RECORD_KEY.format(task_id), POLLED_FIELD)
        return at

    def count_redelivery(self, task_id: str, attempt: int) -> int:
        """One more delivery of attempt ``attempt`` of ``task_id`` after its worker died; how many so far."""
        return int(self.client.hincrby(RECORD_KEY.format(task_id), f"redelivered:{attempt}", 1))  # type: ignore[arg-type]

    # Worker side: pipelined with the GPU's in-flight count (see ``tasks.signals``).

    def add_running(self, pipe: Any, task_id: str) -> None:
        pipe.hset(RECORD_KEY.format(task_id), "status", "running")

    def add_retrying(self, pipe: Any, task_id: str, note: TaskError) -> None:
        pipe.hset(RECORD_KEY.format(task_id), mapping={"status": "running", "note": _dumps(note)})

    def add_outcome(
        self,
        pipe: Any,
        task_id: str,
        outcome: Outcome,
        owner: dict[str, str] | None = None,
    ) -> None:
        """Store the outcome in the record (a retry's note is overwritten) and hand it to the waiting
        request.

        ``owner`` (tenant, model, version) is written again with it, so the record is whole even
        when Redis lost it meanwhile (FLUSHDB, a restart without persistence): the owner still
        gets the outcome, and no one else."""
        record = RECORD_KEY.format(task_id)
        encoded = _dumps(outcome)
        status = "succeeded" if outcome["state"] == "SUCCESS" else "failed"
        now = f"{time.time():.3f}"
        fields = {"status": status, "outcome": encoded, "done": now, "note": ""}
        if owner and owner.get("tenant"):
            fields = {**owner, **fields}
            pipe.hsetnx(record, "created", now)  # only when the record was lost
        pipe.hset(record, mapping=fields)
        pipe.expire(record, self.ttl)
        wake = WAKE_KEY.format(task_id)
        pipe.rpush(wake, encoded)
        pipe.expire(wake, WAKE_TTL)

    def wait(
        self,
        task_id: str,
        timeout: float,
        release: str | None = None,
        first: Sequence[Callable[[Any], None]] = (),
    ) -> Outcome | None:
        """Block up to ``timeout`` seconds for the outcome of ``task_id``; None when it is not done.

        ``release``: the tenant whose waiting count this wait held (:meth:`add_open`); it is given
        back in the same round trip as the wait (Redis runs the decrement once the wait ends),
        and by :meth:`stop_waiting` when Redis cannot be reached. ``first``: commands to send
        before the wait in its round trip (each queues its own on the pipeline: the task's
        message, where the broker is this Redis). An error reply to one of those (Redis out of
        memory, a read-only replica) is raised only when the wait ends."""
        if timeout <= 0 and not first:
            if release is not None:
                self.stop_waiting(release)
            return None
        try:
            with self.blocking.pipeline(transaction=False) as pipe:
                for add in first:
                    add(pipe)
                at = len(pipe.command_stack)
                pipe.blpop([WAKE_KEY.format(task_id)], timeout=max(timeout, 0.001))
                if release is not None:
                    pipe.decr(WAITING_KEY.format(release))
                item: Any = pipe.execute()[at]
        except RedisError as exc:
            if release is not None:
                self.stop_waiting(release)
            raise BookkeepingUnavailable(str(exc)) from exc
        if item is None:
            return None
        outcome: Outcome = json.loads(item[1])
        return outcome
