"""What Flower shows of inferq's tasks, from the workers' events as they really send them: buffered
and flushed together off the tasks' path (``tasks/events.py``), with short argument texts."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from launcher.localstack import ManagedProcess, free_port
from launcher.stack import flower_argv, worker_env
from registry.batches import list_chunks
from tests.fixtures import Stack
from tests.integration.batch_files import create_batch, make_input, upload, wait_for
from tests.integration.test_infer import digits_rows, infer_body

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flower(stack: Stack, workdir: Path) -> Iterator[tuple[str, tuple[str, str]]]:
    """Flower on the stack's broker, with a password, as ``inferq up`` and the compose file run it."""
    settings = dataclasses.replace(stack.settings, flower_port=free_port(), flower_host="127.0.0.1")
    auth = ("admin", uuid.uuid4().hex)
    env = {**worker_env(settings, None), "FLOWER_BASIC_AUTH": ":".join(auth)}
    process = ManagedProcess(
        "flower", flower_argv(settings), env=env, log_path=workdir / "flower.log"
    ).start()
    url = f"http://127.0.0.1:{settings.flower_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/workers", auth=auth, timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.alive(), process.log_tail()
            time.sleep(0.3)
        yield url, auth
    finally:
        process.stop()


def flower_task(url: str, auth: tuple[str, str], task_id: str, timeout: float = 15) -> dict[str, Any]:
    """Flower's view of a task once it shows the task succeeded (bounded)."""
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/api/task/info/{task_id}", auth=auth, timeout=5)
        if response.status_code == 200:
            info = response.json()
            if info.get("state") == "SUCCESS":
                return info
        time.sleep(0.1)
    raise AssertionError(f"Flower does not show task {task_id} succeeded after {timeout}s: {info}")


def test_flower_shows_sync_tasks_received_started_succeeded(
    stack: Stack, flower: tuple[str, tuple[str, str]]
) -> None:
    url, auth = flower
    rows, _ = digits_rows(0, 1)
    task_ids = []
    for _ in range(3):  # answered before their events are sent (at most one flush interval later)
        response = stack.client().post(
            "/v1/models/digits/infer",
            json=infer_body(rows),
            headers={**stack.auth(), "Prefer": "respond-async"},
        )
        assert response.status_code == 202, response.get_data(as_text=True)
        task_ids.append(response.get_json()["id"])
    for task_id in task_ids:
        info = flower_task(url, auth, task_id)
        assert info["name"] == "inferq.infer"
        assert info["args"] == "(digits:1, 1 request)", "Flower shows a summary, never the tensors"
        assert info["received"] and info["started"] and info["succeeded"]
        assert info["received"] <= info["started"] <= info["succeeded"]
        assert info["worker"].startswith("gpu"), info["worker"]
        assert info["routing_key"] in ("gpu.0", "gpu.1") or info["routing_key"] is None


def test_flower_shows_batch_chunks_by_batch_and_number(
    stack: Stack, flower: tuple[str, tuple[str, str]]
) -> None:
    url, auth = flower
    source = make_input(250)
    batch = create_batch(stack, upload(stack, source.data)["id"])
    assert wait_for(stack, batch["id"])["status"] == "completed"
    with stack.services.db.session() as session:
        expected = sorted(
            f"(batch={batch['id']!r}, chunk={c.index})" for c in list_chunks(session, batch["id"])
        )
    assert len(expected) > 1
    deadline = time.monotonic() + 15
    shown: list[str] = []
    while time.monotonic() < deadline:
        listed = requests.get(
            f"{url}/api/tasks", params={"taskname": "inferq.batch.chunk"}, auth=auth, timeout=5
        ).json()
        shown = sorted(
            info["args"]
            for info in listed.values()
            if batch["id"] in (info.get("args") or "") and info.get("state") == "SUCCESS"
        )
        if shown == expected:
            break
        time.sleep(0.2)
    assert shown == expected, "each chunk task shows its batch id and number, nothing larger"


COUNT = 20


def test_task_events_leave_a_worker_together(stack: Stack) -> None:
    """Workers flush their buffered task events on a timer (tasks/events.py): the events of several
    requests travel in a few messages, not one or two publishes per event on each request's path."""
    import redis

    db = int(stack.settings.broker_url.rsplit("/", 1)[1] or 0)
    listener = redis.Redis.from_url(stack.settings.broker_url).pubsub()
    listener.subscribe(f"/{db}.celeryev/task.multi")
    try:
        assert listener.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
        rows, _ = digits_rows(0, 1)
        ids = set()
        for _ in range(COUNT):
            response = stack.client().post(
                "/v1/models/digits/infer",
                json=infer_body(rows),
                headers={**stack.auth(), "Prefer": "respond-async"},
            )
            ids.add(response.get_json()["id"])
        messages, events = 0, []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(events) < 3 * COUNT:
            message = listener.get_message(timeout=0.5)
            if message and message["type"] == "message":
                messages += 1
                body = json.loads(message["data"])
                payload = json.loads(base64.b64decode(body["body"]))
                events += [e for e in payload if e.get("uuid") in ids]
        kinds = sorted(e["type"] for e in events)
        assert kinds == sorted(["task-received", "task-started", "task-succeeded"] * COUNT), kinds
        # Celery's own flush sends one or two messages per task (7 for 5 tasks, measured); on the
        # timer, a handful for the whole run whatever the number of tasks.
        assert messages < COUNT / 2, f"{len(events)} events in {messages} messages"
    finally:
        listener.close()
