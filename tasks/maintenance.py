"""Periodic upkeep on the control queue (scheduled by celery beat): statistics flush, stale deploys."""

from __future__ import annotations

from datetime import timedelta

from celery import Task, shared_task

from registry import stats
from registry.deploy import expire_stale_deploys
from tasks.runtime import services_for

FLUSH_STATS_TASK = "inferq.maintenance.flush_stats"
EXPIRE_DEPLOYS_TASK = "inferq.maintenance.expire_deploys"


@shared_task(bind=True, name=FLUSH_STATS_TASK, acks_late=True, max_retries=0, time_limit=120, expires=60)
def flush_stats(self: Task) -> int:
    """Move inference counts from Redis into the database; returns how many counters moved."""
    services = services_for(self.app)
    return stats.flush(services.redis, services.db)


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
