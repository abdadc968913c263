"""Celery's line per task in the workers' logs follows INFERQ_LOG_TASKS (tasks/signals.py)."""

from __future__ import annotations

import logging

import pytest

import tasks
from inferq.settings import Settings
from tasks.signals import TASK_LINE_LOGGERS, _task_lines


@pytest.mark.parametrize(("log_tasks", "level"), [(False, logging.WARNING), (True, logging.NOTSET)])
def test_task_lines_follow_the_setting(monkeypatch: pytest.MonkeyPatch, log_tasks: bool, level: int) -> None:
    loggers = [logging.getLogger(name) for name in TASK_LINE_LOGGERS]
    saved = [logger.level for logger in loggers]
    app = tasks.create_celery_app(Settings(log_tasks=log_tasks))
    monkeypatch.setattr(tasks, "_app", app)
    try:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        _task_lines()
        assert [logger.level for logger in loggers] == [level] * len(loggers)
    finally:
        for logger, old in zip(loggers, saved, strict=True):
            logger.setLevel(old)


def test_a_retry_is_logged_as_a_warning_whatever_the_task_lines(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from tasks.signals import _log_retry

    with caplog.at_level(logging.WARNING, logger="tasks.signals"):
        _log_retry(request=SimpleNamespace(task="inferq.batch.plan", id="abc"), reason=OSError("db down"))
    assert any(
        r.levelno == logging.WARNING and "inferq.batch.plan[abc] will be retried: db down" in r.getMessage()
        for r in caplog.records
    )
