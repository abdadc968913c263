"""Nothing kept longer than needed, and not in the broker's Redis: 1,000 large sync requests (inputs
over INFERQ_INLINE_PAYLOAD_MAX travel through the object store, not Redis) leave Redis's memory about
where it was, and no stashed input behind in the object store. What stays is each task's small
record, until INFERQ_RESULT_EXPIRES."""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures import Stack

pytestmark = pytest.mark.integration

REQUESTS = 1000
ROWS = 256  # 16,384 values: ~70 KB of JSON each, ~70 MB in all
INLINE_MAX = 16 * 1024
MiB = 1024 * 1024


def used_memory(stack: Stack) -> int:
    return int(stack.services.redis.info("memory")["used_memory"])


def stashed(stack: Stack) -> list[str]:
    """Stashed inputs in the object store."""
    from datetime import UTC, datetime, timedelta

    return stack.services.store.keys_older_than("internal/payloads/", datetime.now(UTC) + timedelta(days=1))


def test_large_requests_leave_redis_memory_where_it_was(stack: Stack) -> None:
    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, inline_payload_max=INLINE_MAX))
    data = [float(i % 17) for i in range(ROWS * 64)]
    body = json.dumps(
        {
            "inputs": [{"name": "input", "shape": [ROWS, 64], "datatype": "FP32", "data": data}],
            "outputs": [{"name": "label"}],
        }
    ).encode()
    assert len(body) > 4 * INLINE_MAX
    headers = {**stack.auth(), "Content-Type": "application/json"}

    def send(count: int) -> list[int]:
        client = app.test_client()
        statuses = []
        for _ in range(count):
            response = client.post("/v1/models/digits/infer?timeout=30", data=body, headers=headers)
            statuses.append(response.status_code)
        return statuses

    try:
        assert set(send(10)) == {200}  # warm: connections, caches, the model
        store = app.extensions["inferq"].quick_store
        put_bytes, written = store.put_bytes, []

        def spy(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
            written.append(len(data))  # and on to the real S3 server
            put_bytes(key, data, content_type)

        store.put_bytes = spy
        before = used_memory(stack)
        with ThreadPoolExecutor(8) as pool:
            statuses = [s for part in pool.map(send, [REQUESTS // 8] * 8) for s in part]
        assert len(statuses) == REQUESTS and set(statuses) == {200}, set(statuses)
        # Each request's inputs by reference (a write the S3 server refused with a 500 is tried again).
        assert len(written) >= REQUESTS and min(written) > INLINE_MAX
        deadline = time.monotonic() + 30
        while stashed(stack) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stashed(stack) == [], "a stashed input outlived its task"
        grown = used_memory(stack) - before
        # ~70 MB of inputs went through; what stays is a task record each (~1 KB).
        assert grown < 8 * MiB, f"Redis grew by {grown / MiB:.1f} MiB"
    finally:
        app.extensions["inferq"].close()
