"""Deployments in the registry: registering repository models, recording and settling deploys.

A deploy has two halves: ``start_deploy`` records a ``loading`` deployment per GPU
(the API commits it, then queues the load on the control worker); the load itself
talks to Triton and lives in ``tasks.deploy``. Nothing here talks to Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import utcnow
from registry.models import (
    LOADING,
    SERVING,
    Deployment,
    Model,
    get_model_version,
    set_deployment,
    settle_status,
)
from registry.triton_repository import describe_model_dir, model_dirs


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
    """Mark ``model`` as loading on ``gpus`` (its other deployments stay as they are).

    A GPU where the model is ready already is marked ``reloading``: it keeps serving (Triton
    serves the loaded copy while it loads the new one), so a redeploy under traffic fails nothing.
    """
    ready = {d.gpu for d in model.deployments if d.status in SERVING}
    for gpu in gpus:
        set_deployment(session, model, gpu, "reloading" if gpu in ready else "loading")
    settle_status(model)
    session.flush()


def expire_stale_deploys(session: Session, older_than: timedelta, now: datetime | None = None) -> list[Model]:
    """Fail deployments still ``loading`` after ``older_than`` (their load was lost); return their models.

    The deploy task's own time limit is shorter, so a deploy that is still
    running is never expired under it.
    """
    cutoff = (now or utcnow()) - older_than
    stale = session.scalars(
        select(Deployment).where(Deployment.status.in_(LOADING), Deployment.updated_at < cutoff)
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
