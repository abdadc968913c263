"""The Celery app and every inferq task. ``celery -A tasks ...`` finds ``app`` here."""

from __future__ import annotations

from celery import Celery

from inferq.settings import Settings, load_settings

TASK_MODULES = ("tasks.infer", "tasks.deploy", "tasks.maintenance", "tasks.signals")


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (the environment by default). Connects to nothing."""
    import celeryconfig

    settings = settings or load_settings()
    app = Celery("inferq", set_as_current=False)
    app.conf.update(celeryconfig.celery_settings(settings))
    app.conf.include = list(TASK_MODULES)
    app.inferq_settings = settings
    return app


app = create_celery_app()
