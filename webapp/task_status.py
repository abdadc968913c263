"""``GET /v1/tasks/{id}``: the state and result of an inference task, for its own tenant only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import states
from flask import Blueprint, jsonify, url_for

from tasks.outcomes import BookkeepingUnavailable, describe_error, task_record
from webapp import celery_app, services
from webapp.auth import current_principal
from webapp.errors import ApiError, ServiceUnavailable

bp = Blueprint("tasks", __name__)

STATUS = {
    states.PENDING: "queued",
    states.RECEIVED: "queued",
    states.STARTED: "running",
    states.RETRY: "running",
    states.SUCCESS: "succeeded",
    states.FAILURE: "failed",
    states.REVOKED: "failed",
}

# Error codes of failed inferences -> the HTTP status a waiting request gets.
ERROR_STATUS = {"invalid_request": 400, "backend_unavailable": 503, "model_not_loaded": 503}


def error_status(code: str) -> int:
    return ERROR_STATUS.get(code, 500)


def accepted(task_id: str) -> Any:
    """202 with ``Location`` of the task, for a request that did not finish within its wait."""
    location = url_for("v1.tasks.get_task", task_id=task_id)
    response = jsonify({"id": task_id, "status": "queued", "location": location})
    response.status_code = 202
    response.headers["Location"] = location
    response.headers["Retry-After"] = "1"
    return response


@bp.get("/tasks/<task_id>")
def get_task(task_id: str) -> Any:
    """A task's status (queued, running, succeeded, failed) with its result or error."""
    try:
        record = task_record(services().redis, task_id)
    except BookkeepingUnavailable as exc:
        raise ServiceUnavailable("cache", f"Redis cannot be reached: {exc}") from None
    if record is None or record.get("tenant") != current_principal().tenant:
        raise ApiError(404, "task-not-found", "Task not found", f"no task {task_id!r}")
    meta = celery_app().backend.get_task_meta(task_id)
    state = meta.get("status", states.PENDING)
    body: dict[str, Any] = {
        "id": task_id,
        "status": STATUS.get(state, "running"),
        "model": record.get("model"),
        "version": record.get("version"),
        "created_at": datetime.fromtimestamp(float(record["created"]), UTC).isoformat(),
    }
    if meta.get("date_done"):
        done = meta["date_done"]
        body["completed_at"] = done.isoformat() if isinstance(done, datetime) else str(done)
    if state == states.SUCCESS:
        body["result"] = meta["result"]
    elif state == states.FAILURE:
        body["error"] = describe_error(meta["result"])
    elif state == states.REVOKED:
        body["error"] = {"code": "cancelled", "message": "the task was revoked"}
    elif state == states.RETRY:
        body["error"] = {"code": "retrying", "message": str(meta.get("result"))}
    return jsonify(body)
