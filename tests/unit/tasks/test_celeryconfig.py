"""The Celery contract DESIGN.md asks for: GPU queues, control, late acks, prefetch 1, limits, expiry."""

from __future__ import annotations

from celeryconfig import celery_settings
from inferq.settings import Settings
from tasks import create_celery_app


def test_queues_acks_and_limits() -> None:
    conf = celery_settings(Settings.from_env({"INFERQ_GPUS": "0,1,2", "INFERQ_TRITON_URLS": "http://t:8000"}))
    assert [q.name for q in conf["task_queues"]] == ["gpu.0", "gpu.1", "gpu.2", "control"]
    assert all(q.routing_key == q.name for q in conf["task_queues"])
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_time_limit"] > conf["task_soft_time_limit"] > 0
    assert conf["result_expires"] > 0
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_default_queue"] == "control"


def test_app_registers_the_infer_task_without_connecting() -> None:
    app = create_celery_app(Settings.from_env({"INFERQ_REDIS_URL": "redis://nowhere.invalid:1/0"}))
    app.loader.import_default_modules()
    task = app.tasks["inferq.infer"]
    assert task.acks_late and task.max_retries == 3


def test_tasks_that_outlive_the_visibility_timeout_are_acknowledged_on_receipt() -> None:
    """A late-acknowledged task still running when the Redis broker's visibility timeout passes is
    handed to a second worker; the long batch tasks are acknowledged when received instead (the
    recovery pass re-sends them if their worker dies), every late-acknowledged one fits."""
    from celeryconfig import batch_time_limits
    from inferq.settings import Settings
    from tasks import create_celery_app

    settings = Settings.from_env({"INFERQ_REDIS_URL": "redis://nowhere.invalid:1/0"})
    app = create_celery_app(settings)
    app.loader.import_default_modules()
    limits = batch_time_limits(settings)
    for name in ("inferq.batch.plan", "inferq.batch.finalize", "inferq.batch.chunk", "inferq.infer"):
        task = app.tasks[name]
        limit = limits.get(name, {}).get("time_limit") or task.time_limit or settings.task_time_limit
        if task.acks_late:
            assert limit < settings.visibility_timeout, (name, limit)
        else:
            assert name in ("inferq.batch.plan", "inferq.batch.finalize"), name
