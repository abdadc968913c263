"""Per-process services for task code: one :class:`Services` per worker process, rebuilt after a fork."""

from __future__ import annotations

import os

from celery import Celery

from inferq.services import Services

_services: dict[tuple[int, int], Services] = {}


def services_for(app: Celery) -> Services:
    """The services of this process for ``app`` (connection pools never cross a fork)."""
    key = (os.getpid(), id(app))
    services = _services.get(key)
    if services is None:
        services = _services[key] = Services(app.inferq_settings)
    return services
