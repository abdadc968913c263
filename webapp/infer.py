"""Sync inference (Open Inference Protocol body): validate, route to a GPU queue, wait a bounded time."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from flask import Blueprint, Response, request

from inferq.metrics import INFER_REQUESTS
from inferq.settings import gpu_queue
from registry.models import pick_version, ready_gpus
from registry.signatures import Problem, check_inference_request, specs_from_json
from tasks.infer import INFER_TASK
from tasks.outcomes import BookkeepingUnavailable, record_task, wait_outcome
from tasks.routing import NoRoute, route_request
from webapp import parse_json_body, send_task, services
from webapp.auth import current_principal
from webapp.errors import ApiError, ServiceUnavailable, validation_error
from webapp.registry import model_by_version, serving_versions
from webapp.task_status import accepted, error_status

bp = Blueprint("infer", __name__)


def parse_timeout(default: float, maximum: float) -> float:
    """``?timeout=`` in seconds (0 to ``maximum``), or ``default``."""
    raw = request.args.get("timeout")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise ApiError(
            400,
            "invalid-parameter",
            "Invalid query parameter",
            f"timeout must be a number of seconds from 0 to {maximum:g}, not {raw!r}",
        )
    return value


def prefers_async() -> bool:
    """``Prefer: respond-async`` (RFC 7240)."""
    prefer = request.headers.get("Prefer", "")
    return any(token.strip().lower() == "respond-async" for token in prefer.split(","))


def resolve_model(name: str, version: str | None) -> dict[str, Any]:
    """The model version to run (through the registry cache): the one named, or one of the ready
    versions (the newest, or by canary traffic weights)."""
    if version is not None:
        model = model_by_version(name, version)
        if model is None:
            raise ApiError(
                404, "model-not-found", "Model not found", f"no model {name!r} version {version!r}"
            )
    else:
        found = serving_versions(name)
        model = pick_version(found["versions"])
        if model is None:
            if not found["exists"]:
                raise ApiError(404, "model-not-found", "Model not found", f"no model named {name!r}")
            raise ApiError(409, "model-not-ready", "Model not ready", f"no version of {name!r} is deployed")
    if model["status"] != "ready" or not ready_gpus(model):
        raise ApiError(
            409,
            "model-not-ready",
            "Model not ready",
            f"{name!r} version {model['version']!r} is {model['status']}, not deployed and ready",
        )
    return model


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Any:
    """Run one inference; 200 with the outputs when done within the wait, else 202 + Location."""
    settings = services().settings
    body = parse_json_body()
    timeout = parse_timeout(settings.sync_timeout, settings.sync_timeout_max)
    model = resolve_model(name, version)
    inputs, outputs, problems = check_inference_request(
        body, specs_from_json(model["inputs"]), specs_from_json(model["outputs"])
    )
    if problems:
        INFER_REQUESTS.labels(model["name"], "invalid").inc()
        raise validation_error(problems, "The inference request does not match the model's signature")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise validation_error([Problem("/id", "must be a string")])

    redis = services().redis
    try:
        gpu = route_request(redis, ready_gpus(model), settings.gpus)
    except NoRoute as exc:
        retry = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after is not None else {}
        raise ApiError(
            503, "no-gpu-available", "No GPU can serve this model", str(exc), headers=retry
        ) from None

    task_id = uuid.uuid4().hex
    message: dict[str, Any] = {
        "model_id": model["id"],
        "model_name": model["name"],
        "model_version": model["version"],
        "triton_name": model["triton_name"],
        "triton_version": model["triton_version"],
        "outputs": outputs,
        "id": request_id,
    }
    encoded_inputs = [tensor.as_dict() for tensor in inputs]
    stash = None
    # A JSON number takes at most ~24 bytes: only encode to measure when the inputs may be large.
    if sum(len(t.data) for t in inputs) * 24 > settings.inline_payload_max:
        encoded = json.dumps(encoded_inputs, separators=(",", ":")).encode()
        if len(encoded) > settings.inline_payload_max:
            stash = encoded  # the task message carries a reference, not megabytes of tensors
    if stash is None:
        message["inputs"] = encoded_inputs
    try:
        record_task(
            redis,
            task_id,
            current_principal().tenant,
            {"model": model["name"], "version": model["version"], "kind": "infer"},
            settings.result_expires,
            payload=stash,
        )
    except BookkeepingUnavailable as exc:
        raise ServiceUnavailable("cache", f"Redis cannot be reached: {exc}") from None
    queue = gpu_queue(gpu)
    send_task(INFER_TASK, [message], queue, task_id=task_id)

    if prefers_async() or timeout == 0:
        INFER_REQUESTS.labels(model["name"], "accepted").inc()
        return accepted(task_id)
    try:
        outcome = wait_outcome(services().blocking_redis, task_id, timeout)
    except BookkeepingUnavailable:
        outcome = None  # the task still runs; the client polls its Location
    if outcome is None:
        INFER_REQUESTS.labels(model["name"], "accepted").inc()
        return accepted(task_id)
    if outcome["state"] == "SUCCESS":
        INFER_REQUESTS.labels(model["name"], "succeeded").inc()
        return Response(
            json.dumps(outcome["result"], separators=(",", ":")), 200, mimetype="application/json"
        )
    INFER_REQUESTS.labels(model["name"], "failed").inc()
    error = outcome["error"]
    raise ApiError(
        error_status(error["code"]),
        error["code"].replace("_", "-"),
        "Inference failed",
        f"task {task_id}: {error['message']}",
    )
