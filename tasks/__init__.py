"""The Celery app and every inferq task. ``celery -A tasks ...`` finds ``app`` here.

``app`` is built on first use, once, from the settings (``inferq.settings``);
importing this package reads nothing and connects to nothing. The API and the
tests build their own with :func:`create_celery_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferq.settings import Settings, load_settings

if TYPE_CHECKING:
    from celery import Celery

TASK_MODULES = ("tasks.infer", "tasks.deploy", "tasks.maintenance", "tasks.signals", "tasks.batch")

_app: Celery | None = None


def create_celery_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (the environment by default). Connects to nothing."""
    from celery import Celery

    import celeryconfig
    from tasks import codec, events

    settings = settings or load_settings()
    codec.install()
    app = Celery("inferq", set_as_current=False)
    app.conf.update(celeryconfig.celery_settings(settings))
    app.conf.include = list(TASK_MODULES)
    app.inferq_settings = settings
    events.install(app)
    return app


def __getattr__(name: str) -> Any:
    # ``tasks.app``: the process's app, built from the environment's settings on first use.
    global _app
    if name == "app":
        if _app is None:
            _app = create_celery_app()
        return _app
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
