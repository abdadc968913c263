"""Batches: ``POST /v1/batches`` (with ``Idempotency-Key``), list, get, cancel. HTTP in and out only;
the work is in :mod:`tasks.batches`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request, url_for

from tasks import batches
from webapp import celery_app, parse_json_body, services
from webapp.auth import current_principal
from webapp.files import page_limit

bp = Blueprint("batches", __name__)


def dispatch() -> batches.Dispatch:
    return batches.celery_dispatch(celery_app())


@bp.post("/batches")
def create() -> Any:
    """Create a batch: 202 with the batch (``validating``). The same ``Idempotency-Key`` again with
    the same parameters: 200 with that batch (``Idempotent-Replayed: true``); other parameters: 422."""
    body = parse_json_body()
    key = request.headers.get("Idempotency-Key")
    value, created = batches.create(services(), dispatch(), current_principal().tenant, body, key)
    response = jsonify(value)
    response.status_code = 202 if created else 200
    response.headers["Location"] = url_for("v1.batches.get_one", batch_id=value["id"])
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/batches")
def list_all() -> Any:
    """The tenant's batches, newest first: ``?status=&after=<last id>&limit=``."""
    tenant = current_principal().tenant
    args = request.args
    return jsonify(batches.list_page(services(), tenant, args.get("status"), args.get("after"), page_limit()))


@bp.get("/batches/<batch_id>")
def get_one(batch_id: str) -> Any:
    return jsonify(batches.get(services(), current_principal().tenant, batch_id))


@bp.post("/batches/<batch_id>/cancel")
def cancel(batch_id: str) -> Any:
    """Cancel: 200 with the batch (``cancelling``, then ``cancelled`` once finalized)."""
    return jsonify(batches.cancel(services(), dispatch(), current_principal().tenant, batch_id))
