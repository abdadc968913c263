"""``GET /v1/tasks/{id}``: the state and result of an inference task, for its own tenant only."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, url_for

from tasks import pipeline
from webapp import services
from webapp.auth import current_principal

bp = Blueprint("tasks", __name__)


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
    record = pipeline.task_status(services(), current_principal().tenant, task_id)
    body: dict[str, Any] = {
        "id": task_id,
        "status": record.status,
        "model": record.model,
        "version": record.version,
        "created_at": record.created_at.isoformat(),
    }
    if record.completed_at is not None:
        body["completed_at"] = record.completed_at.isoformat()
    if record.outcome is not None:
        if record.outcome["state"] == "SUCCESS":
            body["result"] = record.outcome["result"]
        else:
            body["error"] = record.outcome["error"]
    elif record.note is not None:
        body["error"] = record.note
    return jsonify(body)
