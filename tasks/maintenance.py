"""Periodic upkeep on the control queue (scheduled by celery beat): statistics flush."""

from __future__ import annotations

from celery import Task, shared_task

from registry import stats
from tasks.runtime import services_for

FLUSH_STATS_TASK = "inferq.maintenance.flush_stats"


@shared_task(bind=True, name=FLUSH_STATS_TASK, acks_late=True, max_retries=0, time_limit=120, expires=60)
def flush_stats(self: Task) -> int:
    """Move inference counts from Redis into the database; returns how many counters moved."""
    services = services_for(self.app)
    return stats.flush(services.redis, services.db)
