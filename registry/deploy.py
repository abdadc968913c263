"""Registering repository models, and deploying them on GPUs through each GPU's Triton.

A deploy has two halves: ``start_deploy`` records a ``loading`` deployment per GPU
(the API commits it, then queues the load on the control worker), and
``load_deployments`` asks each GPU's Triton to load the model (explicit model
control) and settles the status: ``ready`` when a GPU loaded it, ``failed`` with
Triton's message when none did. ``deploy`` runs both halves at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import utcnow
from registry.models import Deployment, Model, get_model_version, set_deployment, settle_status
from registry.triton_repository import describe_model_dir, model_dirs
from workers.triton import TritonEndpoint, TritonError

TritonFor = Callable[[int], TritonEndpoint]


def register_repository(session: Session, repository: Path) -> list[Model]:
    """Register every model version found in a Triton repository (those not registered yet)."""
    registered = []
    for model_dir in model_dirs(repository):
        for entry in describe_model_dir(model_dir):
            model = get_model_version(session, entry["name"], entry["version"])
            if model is None:
                model = Model(**entry)
                session.add(model)
                session.flush()
            registered.append(model)
    return registered


def start_deploy(session: Session, model: Model, gpus: Sequence[int]) -> None:
    """Mark ``model`` as loading on ``gpus`` (its other deployments stay as they are)."""
    for gpu in gpus:
        set_deployment(session, model, gpu, "loading")
    settle_status(model)
    session.flush()


def load_deployments(session: Session, model: Model, triton: TritonFor) -> Model:
    """Load ``model`` on every GPU where it is ``loading``, then settle its status."""
    for deployment in [d for d in model.deployments if d.status == "loading"]:
        endpoint = triton(deployment.gpu)
        try:
            endpoint.load_model(model.triton_name)
            if not endpoint.model_ready(model.triton_name, model.triton_version):
                raise TritonError(
                    f"Triton loaded {model.triton_name!r} but version "
                    f"{model.triton_version or 'latest'} is not ready"
                )
            set_deployment(session, model, deployment.gpu, "ready")
        except TritonError as exc:
            set_deployment(session, model, deployment.gpu, "failed", str(exc))
    settle_status(model)
    session.flush()
    return model


def deploy(session: Session, model: Model, gpus: Sequence[int], triton: TritonFor) -> Model:
    """Load ``model`` on ``gpus`` now (both halves of a deploy, for the local launcher and tests)."""
    start_deploy(session, model, gpus)
    return load_deployments(session, model, triton)


def expire_stale_deploys(session: Session, older_than: timedelta, now: datetime | None = None) -> list[Model]:
    """Fail deployments still ``loading`` after ``older_than`` (their load was lost); return their models.

    The deploy task's own time limit is shorter, so a deploy that is still
    running is never expired under it.
    """
    cutoff = (now or utcnow()) - older_than
    stale = session.scalars(
        select(Deployment).where(Deployment.status == "loading", Deployment.updated_at < cutoff)
    ).all()
    models = []
    for deployment in stale:
        deployment.status = "failed"
        deployment.message = (
            f"no load result after {older_than.total_seconds():.0f}s (is a control worker running?)"
        )
        if deployment.model not in models:
            models.append(deployment.model)
    for model in models:
        settle_status(model)
    session.flush()
    return models


def remove_deployments(session: Session, model: Model, gpus: Sequence[int]) -> list[Deployment]:
    """Drop the deployments of ``model`` on ``gpus`` so the router stops sending there; the caller commits."""
    removed = [d for d in model.deployments if d.gpu in gpus]
    for deployment in removed:
        model.deployments.remove(deployment)
    settle_status(model)
    session.flush()
    return removed


def unload(session: Session, model: Model, gpus: Sequence[int], triton: TritonFor) -> list[str]:
    """Unload ``model`` from ``gpus``' Tritons unless a remaining deployment there serves the same name.

    Call after ``remove_deployments`` committed. Several GPUs may share one Triton
    (and one Triton name may serve several registry versions), so a Triton is
    asked to unload only when no deployment left in the registry still uses it.
    Returns warnings (Triton errors); the deployments are gone whatever Triton says.
    """
    warnings = []
    still_used = session.execute(
        select(Deployment.gpu)
        .join(Model)
        .where(Model.triton_name == model.triton_name, Deployment.status != "failed")
    ).scalars()
    busy_urls = set()
    for gpu in still_used:
        try:
            busy_urls.add(triton(gpu).url)
        except KeyError:
            continue  # a GPU no longer configured
    done: set[str] = set()
    for gpu in gpus:
        try:
            endpoint = triton(gpu)
        except KeyError:
            continue
        if endpoint.url in busy_urls or endpoint.url in done:
            continue
        try:
            endpoint.unload_model(model.triton_name)
            done.add(endpoint.url)
        except TritonError as exc:
            warnings.append(f"gpu {gpu}: {exc}")
    return warnings
