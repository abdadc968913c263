"""Deploy: load a model on its GPUs' Tritons, on the control worker (loading can take minutes)."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from registry.deploy import load_deployments
from registry.models import get_model
from tasks.runtime import services_for

log = logging.getLogger(__name__)
DEPLOY_TASK = "inferq.deploy.load"


@shared_task(bind=True, name=DEPLOY_TASK, acks_late=True, max_retries=0, soft_time_limit=600, time_limit=660)
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
