"""Deploy: load and unload a model on its GPUs' Tritons, on the control worker (loads can take minutes)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from celery import Task, shared_task
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.deploy import start_deploy
from registry.models import LOADING, Deployment, Model, get_model, set_deployment, settle_status
from tasks.runtime import services_for
from workers.triton import TritonEndpoint, TritonError

log = logging.getLogger(__name__)
DEPLOY_TASK = "inferq.deploy.load"
TritonFor = Callable[[int], TritonEndpoint]


def load_deployments(session: Session, model: Model, triton: TritonFor) -> Model:
    """Load ``model`` on every GPU where it is ``loading``, then settle its status."""
    for deployment in [d for d in model.deployments if d.status in LOADING]:
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


# Acknowledged early: a load may outlast the broker's visibility timeout, and a deploy whose
# worker died is not lost silently: expire_deploys (beat) fails it after INFERQ_DEPLOY_TIMEOUT.
@shared_task(bind=True, name=DEPLOY_TASK, acks_late=False, max_retries=0, soft_time_limit=600, time_limit=660)
def load_model(self: Task, model_id: str) -> dict[str, str]:
    """Load every ``loading`` deployment of a model and settle its status.

    Triton's own errors end as ``failed`` deployments with Triton's message (no
    retry: a missing model stays missing). The registry cache is invalidated after
    the commit, so readers see the outcome at once.
    """
    services = services_for(self.app)
    with services.db.session() as session:
        model = get_model(session, model_id)
        if model is None:
            log.info("model %s was deleted before its deploy ran", model_id)
            return {"status": "deleted"}
        load_deployments(session, model, services.triton)
        status = model.status
    services.cache.invalidate()
    return {"status": status}
