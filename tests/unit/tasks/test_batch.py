"""The batch tasks' contract: names, queues, late acknowledgement, limits from settings, the beat entry."""

from __future__ import annotations

from celeryconfig import celery_settings
from inferq.settings import Settings
from tasks import create_celery_app


def test_batch_tasks_declare_their_contract() -> None:
    settings = Settings.from_env(
        {"INFERQ_REDIS_URL": "redis://nowhere.invalid:1/0", "INFERQ_BATCH_CHUNK_TIME_LIMIT": "100"}
    )
    app = create_celery_app(settings)
    app.loader.import_default_modules()
    router = app.amqp.router
    for name in ("inferq.batch.plan", "inferq.batch.finalize", "inferq.batch.reap"):
        task = app.tasks[name]
        # Plan and finalize: acknowledged on receipt (the recovery pass re-sends them).
        assert task.acks_late == (name == "inferq.batch.reap") and task.ignore_result
        assert router.route({}, name)["queue"].name == "control"
    chunk = app.tasks["inferq.batch.chunk"]
    assert chunk.acks_late and chunk.max_retries == 0
    assert (chunk.time_limit, chunk.soft_time_limit) == (100, 70)
    assert app.tasks["inferq.batch.plan"].time_limit == settings.batch_plan_time_limit
    # Explicit queues win over routes: a chunk goes where the planner sends it.
    assert router.route({"queue": "gpu.1"}, "inferq.batch.chunk")["queue"].name == "gpu.1"


def test_recovery_runs_on_beat_every_interval() -> None:
    conf = celery_settings(Settings.from_env({"INFERQ_BATCH_REAPER_INTERVAL": "12"}))
    entry = conf["beat_schedule"]["reap-batches"]
    assert entry["task"] == "inferq.batch.reap" and entry["schedule"] == 12.0
    assert entry["options"] == {"queue": "control", "expires": 24.0}
