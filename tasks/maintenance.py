"""Periodic upkeep on the control queue (scheduled by celery beat): statistics flush, stale deploys,
and the reconciler that keeps the registry true to what each Triton has loaded."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import timedelta

from celery import Task, shared_task
from sqlalchemy import select

from registry import stats
from registry.deploy import expire_stale_deploys
from registry.models import SERVING, Deployment, Model
from tasks import payloads, results
from tasks.runtime import Services, services_for
from workers.triton import TritonError

FLUSH_STATS_TASK = "inferq.maintenance.flush_stats"
EXPIRE_STORED_TASK = "inferq.maintenance.expire_stored"
# A stashed input is needed until its task ends: it starts within INFERQ_SYNC_DEADLINE or is
# dropped, then runs (retries included) well within this margin.
PAYLOAD_MARGIN = timedelta(minutes=10)
EXPIRE_DEPLOYS_TASK = "inferq.maintenance.expire_deploys"
RECONCILE_TASK = "inferq.maintenance.reconcile"
log = logging.getLogger(__name__)


@shared_task(bind=True, name=FLUSH_STATS_TASK, acks_late=True, max_retries=0, time_limit=120, expires=60)
def flush_stats(self: Task) -> int:
    """Move inference counts from Redis into the database; returns how many counters moved."""
    services = services_for(self.app)
    return stats.flush(services.redis, services.db)


@shared_task(bind=True, name=EXPIRE_STORED_TASK, acks_late=True, max_retries=0, time_limit=300, expires=600)
def expire_stored(self: Task) -> dict[str, int]:
    """Delete from the object store the stashed inputs no task can need any more (what a crash
    left) and the kept outcomes older than INFERQ_RESULT_EXPIRES; returns how many of each."""
    services = services_for(self.app)
    settings = services.settings
    removed = {
        "inputs": services.store.delete_older_than(
            payloads.PREFIX, timedelta(seconds=settings.sync_deadline) + PAYLOAD_MARGIN
        ),
        "results": services.store.delete_older_than(
            results.PREFIX, timedelta(seconds=settings.result_expires)
        ),
    }
    if removed["inputs"]:
        log.warning(
            "expire_stored: removed %s stashed inputs left by tasks that never ended", removed["inputs"]
        )
    return removed


@shared_task(bind=True, name=EXPIRE_DEPLOYS_TASK, acks_late=True, max_retries=0, time_limit=120, expires=120)
def expire_deploys(self: Task) -> list[str]:
    """Fail deploys whose load never reported back; returns the ids of the models concerned."""
    services = services_for(self.app)
    with services.db.session() as session:
        models = expire_stale_deploys(session, timedelta(seconds=services.settings.deploy_timeout))
        ids = [model.id for model in models]
    if ids:
        services.cache.invalidate()
    return ids


def reconcile(services: Services, gpus: Collection[int] | None = None, mark: bool = True) -> list[str]:
    """Compare each GPU's Triton (or those of ``gpus``) with the deployments the registry says
    serve there; reload what Triton lost (a restart, an unload by hand). Returns what it did, one
    line each.

    While a model is missing on a GPU the router sends it nothing there (``workers.gpu_state``);
    once reloaded it is routed to again. A Triton that cannot be reached is left to its breaker.
    ``mark=False``: do not mark the model missing meanwhile (a sidecar Triton is one replica of
    the GPU's queue among several; the others may have it).
    """
    with services.db.session() as session:
        rows = session.execute(
            select(Deployment.gpu, Model.id, Model.triton_name)
            .join(Model)
            .where(Deployment.status.in_(SERVING))
        ).all()
    wanted: dict[int, dict[str, str]] = {}
    for gpu, model_id, triton_name in rows:
        if gpu in services.settings.gpus and (gpus is None or gpu in gpus):
            wanted.setdefault(gpu, {})[model_id] = triton_name
    actions = []
    for gpu, models in sorted(wanted.items()):
        endpoint = services.triton(gpu)
        try:
            loaded = endpoint.loaded_models()
        except TritonError as exc:
            log.info("reconcile: gpu %s: Triton not answering (%s); its breaker decides", gpu, exc)
            continue
        for model_id, triton_name in sorted(models.items(), key=lambda item: item[1]):
            if triton_name in loaded:
                continue
            if mark:
                services.gpus.mark_missing(model_id, gpu)
            try:
                endpoint.load_model(triton_name)
            except TritonError as exc:
                actions.append(f"gpu {gpu}: {triton_name} missing, reload failed: {exc}")
                continue
            loaded.add(triton_name)
            for other_id, other_name in models.items():
                if other_name == triton_name:
                    services.gpus.clear_missing(other_id, gpu)
            actions.append(f"gpu {gpu}: {triton_name} was missing, reloaded")
    for action in actions:
        log.warning("reconcile: %s", action)
    return actions


@shared_task(bind=True, name=RECONCILE_TASK, acks_late=False, max_retries=0, time_limit=600, expires=60)
def reconcile_tritons(self: Task) -> list[str]:
    """Reload on each Triton the models the registry says it serves and it does not have.

    With sidecar Tritons (INFERQ_TRITON_SIDECAR) the GPU's URL reaches one replica of several:
    one that lacks a model (still loading it) must not mark the model missing for the whole
    GPU class, so the pass only loads; each worker keeps its own Triton (``tasks.sidecar``)."""
    services = services_for(self.app)
    return reconcile(services, mark=not services.settings.triton_sidecar)
