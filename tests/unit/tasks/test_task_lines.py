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
