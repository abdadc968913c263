"""The model registry API (the old metadata service): CRUD, filters, deploy and undeploy, statistics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from sqlalchemy.exc import IntegrityError

from inferq.settings import CONTROL_QUEUE
from registry import stats
from registry.catalog import model_by_id, model_by_version, model_page
from registry.deploy import remove_deployments, start_deploy
from registry.models import (
    LOADING,
    MAX_LIMIT,
    MODEL_STATUSES,
    Model,
    ModelFilter,
    apply_fields,
    get_model,
    set_deployment,
    settle_status,
    validate_model_fields,
)
from registry.signatures import Problem
from tasks.deploy import DEPLOY_TASK, unload
from tasks.pipeline import PipelineError
from webapp import db_session, parse_json_body, send_task, services
from webapp.auth import admin_required, current_principal
from webapp.errors import ApiError, validation_error

bp = Blueprint("models", __name__)


def not_found(model_id: str) -> ApiError:
    return ApiError(404, "model-not-found", "Model not found", f"no model with id {model_id!r}")


def duplicate(values: dict[str, Any]) -> ApiError:
    return ApiError(
        409,
        "model-exists",
        "Model already exists",
        f"a model {values.get('name')!r} version {values.get('version')!r} already exists",
    )


def load_for_write(model_id: str) -> Model:
    model = get_model(db_session(), model_id)
    if model is None:
        raise not_found(model_id)
    return model


def commit_and_invalidate() -> None:
    """Commit the request's session, then invalidate the registry cache (never before the commit)."""
    db_session().commit()
    services().cache.invalidate()


MAX_QUERY_TEXT = 256  # characters of a text filter
MAX_LABEL_FILTERS = 16


def parse_filter() -> ModelFilter:
    args = request.args
    problems = []

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = args.get(name)
        if raw is None:
            return default
        # ASCII digits only: '²' passes str.isdigit() but not int().
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or not low <= int(raw) <= high:
            problems.append(Problem(f"?{name}", f"must be an integer from {low} to {high}"))
            return default
        return int(raw)

    for name in ("name", "status", "framework", "label"):
        if any(len(value) > MAX_QUERY_TEXT for value in args.getlist(name)):
            problems.append(Problem(f"?{name}", f"must be at most {MAX_QUERY_TEXT} characters"))
    if len(args.getlist("label")) > MAX_LABEL_FILTERS:
        problems.append(Problem("?label", f"at most {MAX_LABEL_FILTERS} label filters"))

    limit = integer("limit", 20, 1, MAX_LIMIT)
    offset = integer("offset", 0, 0, 10**9)
    status = args.get("status")
    if status is not None and status not in MODEL_STATUSES:
        problems.append(Problem("?status", f"must be one of {', '.join(MODEL_STATUSES)}"))
    labels = []
    for raw in args.getlist("label"):
        key, sep, value = raw.partition(":")
        if not sep or not key:
            problems.append(Problem("?label", f"{raw!r} is not key:value"))
        else:
            labels.append((key, value))
    if problems:
        raise validation_error(problems, "Invalid query parameters")
    return ModelFilter(args.get("name"), status, args.get("framework"), tuple(sorted(labels)), limit, offset)


@bp.get("/models")
def list_all() -> Any:
    """Models filtered by name, status, framework and ``label=key:value`` (repeatable), paginated."""
    return jsonify(model_page(services().db, services().cache, parse_filter()))


@bp.post("/models")
@admin_required
def create() -> Any:
    """Register a model version; 409 when (name, version) exists (a unique constraint decides)."""
    values, problems = validate_model_fields(parse_json_body(), partial=False)
    if problems:
        raise validation_error(problems, "The model is not valid")
    model = Model()
    apply_fields(model, values)
    session = db_session()
    session.add(model)
    try:
        session.flush()
        commit_and_invalidate()
    except IntegrityError:
        session.rollback()
        raise duplicate(values) from None
    response = jsonify(get_model(session, model.id).as_dict())  # type: ignore[union-attr]
    response.status_code = 201
    response.headers["Location"] = url_for("v1.models.get_one", model_id=model.id)
    return response


@bp.get("/models/<model_id>")
def get_one(model_id: str) -> Any:
    model = model_by_id(services().db, services().cache, model_id)
    if model is None:
        raise not_found(model_id)
    return jsonify(model)


@bp.get("/models/by-name/<name>/<version>")
def get_by_name(name: str, version: str) -> Any:
    model = model_by_version(services().db, services().cache, name, version)
    if model is None:
        raise ApiError(404, "model-not-found", "Model not found", f"no model {name!r} version {version!r}")
    return jsonify(model)


@bp.put("/models/<model_id>")
@admin_required
def update(model_id: str) -> Any:
    """Change a model's fields (any of the create fields, and ``status``: retired or registered)."""
    values, problems = validate_model_fields(parse_json_body(), partial=True)
    if problems:
        raise validation_error(problems, "The model is not valid")
    model = load_for_write(model_id)
    if "status" in values and model.deployments:
        raise ApiError(
            409, "model-deployed", "Model is deployed", "undeploy the model before changing its status"
        )
    # A numeric version is also the Triton version asked for, so it is pinned while deployed too.
    if model.deployments and ({"inputs", "outputs", "triton_name", "version"} & values.keys()):
        raise ApiError(
            409,
            "model-deployed",
            "Model is deployed",
            "undeploy the model before changing its signature, version or Triton name",
        )
    apply_fields(model, values)
    session = db_session()
    try:
        session.flush()
        commit_and_invalidate()
    except IntegrityError:
        session.rollback()
        raise duplicate(
            {"name": values.get("name", model.name), "version": values.get("version", model.version)}
        ) from None
    return jsonify(load_for_write(model_id).as_dict())


@bp.delete("/models/<model_id>")
@admin_required
def delete(model_id: str) -> Any:
    """Delete a model version that is not deployed (its statistics go with it)."""
    model = load_for_write(model_id)
    if model.deployments:
        gpus = ", ".join(str(d.gpu) for d in model.deployments)
        raise ApiError(409, "model-deployed", "Model is deployed", f"undeploy it first (GPUs {gpus})")
    db_session().delete(model)
    commit_and_invalidate()
    return Response(status=204)


def parse_gpus(body: Any, required: bool) -> list[int]:
    configured = services().settings.gpus
    if body is None or (isinstance(body, dict) and "gpus" not in body and not required):
        return list(configured)
    if not isinstance(body, dict) or "gpus" not in body:
        raise validation_error([Problem("/gpus", "is required: a list of GPU indexes")])
    gpus = body["gpus"]
    problems = []
    if not isinstance(gpus, list) or not gpus:
        problems.append(Problem("/gpus", "must be a non-empty list of GPU indexes"))
    else:
        for index, gpu in enumerate(gpus):
            if not isinstance(gpu, int) or isinstance(gpu, bool) or gpu not in configured:
                problems.append(
                    Problem(f"/gpus/{index}", f"{gpu!r} is not a configured GPU ({list(configured)})")
                )
            elif gpus.index(gpu) != index:
                problems.append(Problem(f"/gpus/{index}", f"GPU {gpu} is listed twice"))
    if problems:
        raise validation_error(problems)
    return list(gpus)


@bp.post("/models/<model_id>/deploy")
@admin_required
def deploy(model_id: str) -> Any:
    """Load the model on ``gpus`` (each GPU's Triton); 202 while the control worker loads it."""
    gpus = parse_gpus(parse_json_body(), required=True)
    model = load_for_write(model_id)
    if model.status == "retired":
        raise ApiError(
            409, "model-retired", "Model is retired", "set its status to 'registered' to deploy it"
        )
    if any(deployment.status in LOADING for deployment in model.deployments):
        raise ApiError(409, "deploy-in-progress", "Deploy in progress", "wait until the current deploy ends")
    start_deploy(db_session(), model, gpus)
    commit_and_invalidate()
    try:
        send_task(DEPLOY_TASK, [model.id], CONTROL_QUEUE)
    except PipelineError:
        for gpu in gpus:
            set_deployment(db_session(), model, gpu, "failed", "the deploy could not be queued")
        settle_status(model)
        commit_and_invalidate()
        raise
    response = jsonify(load_for_write(model_id).as_dict())
    response.status_code = 202
    response.headers["Location"] = url_for("v1.models.get_one", model_id=model_id)
    return response


@bp.post("/models/<model_id>/undeploy")
@admin_required
def undeploy(model_id: str) -> Any:
    """Stop routing to the model on ``gpus`` (all by default), then unload it from their Tritons."""
    gpus = parse_gpus(parse_json_body(optional=True), required=False)
    model = load_for_write(model_id)
    session = db_session()
    remove_deployments(session, model, gpus)
    commit_and_invalidate()  # the router stops sending here before Triton unloads
    warnings = unload(session, model, gpus, services().triton)
    body = load_for_write(model_id).as_dict()
    if warnings:
        body["warnings"] = warnings
    return jsonify(body)


@bp.get("/models/<model_id>/stats")
def model_stats(model_id: str) -> Any:
    """Requests, errors, error rate and latency p50/p95/p99: an admin key reads the platform's,
    overall and per GPU (or, with ``?scope=tenant``, its own tenant's); a tenant key those of its
    own traffic only."""
    model = model_by_id(services().db, services().cache, model_id)
    if model is None:
        raise not_found(model_id)
    principal = current_principal()
    wanted = request.args.get("scope", "platform" if principal.admin else "tenant")
    if wanted not in ("platform", "tenant"):
        raise validation_error([Problem("?scope", "must be platform or tenant")], "Invalid query parameters")
    if wanted == "platform" and not principal.admin:
        raise ApiError(403, "forbidden", "Admin key required", "the platform's figures need an admin API key")
    if wanted == "platform":
        scope = {"scope": "platform"}
        figures = stats.read(db_session(), services().redis, model_id, services().settings.gpus)
    else:
        scope = {"scope": "tenant", "tenant": principal.tenant}
        figures = stats.read_tenant(db_session(), services().redis, model_id, principal.tenant)
    return jsonify(
        {"model_id": model_id, "name": model["name"], "version": model["version"], **scope, **figures}
    )
