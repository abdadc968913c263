"""Sync inference (Open Inference Protocol body): HTTP in, the request pipeline, HTTP out."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Blueprint, Response, g, request

from inferq.metrics import INFER_REQUESTS
from tasks import pipeline
from webapp import celery_app, parse_json_body, services
from webapp.auth import counts_in_pipeline, current_principal
from webapp.errors import ApiError
from webapp.task_status import accepted

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


def counted_infer(name: str, version: str | None, body: Any, timeout: float) -> pipeline.InferResult:
    """``tasks.pipeline.infer`` for the caller's tenant, counted in ``inferq_infer_requests_total``
    by outcome (/v1 and /v2 alike; an unknown model's name is not a label value)."""
    hit = g.get("pipeline_hit")
    try:
        result = pipeline.infer(
            services(),
            celery_app(),
            current_principal().tenant,
            name,
            version,
            body,
            timeout,
            admit=hit.admit if hit is not None else None,
        )
    except pipeline.PipelineError as exc:
        if exc.status < 500:
            outcome = "invalid" if exc.code == "invalid-request" else "rejected"
        else:
            outcome = "failed"
        INFER_REQUESTS.labels(name if exc.code != "model-not-found" else "unknown", outcome).inc()
        raise
    outcome = "accepted" if result.answer is None else "succeeded"
    INFER_REQUESTS.labels(result.model.name, outcome).inc()
    return result


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
@counts_in_pipeline
def infer(name: str, version: str | None = None) -> Any:
    """Run one inference; 200 with the outputs when done within the wait, else 202 + Location."""
    settings = services().settings
    body = parse_json_body()
    timeout = parse_timeout(settings.sync_timeout, settings.sync_timeout_max)
    if prefers_async():
        timeout = 0.0
    result = counted_infer(name, version, body, timeout)
    if result.answer is None:
        return accepted(result.task_id)
    return Response(json.dumps(result.answer, separators=(",", ":")), 200, mimetype="application/json")
