"""Nothing kept longer than needed: 1,000 large sync requests (inputs stashed in Redis because they
are over INFERQ_INLINE_PAYLOAD_MAX) leave Redis's memory about where it was, and no stashed
payload behind. What stays is each task's small record, until INFERQ_RESULT_EXPIRES."""

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


def set_calls(stack: Stack) -> int:
    """SET commands Redis ran so far (a stashed payload is one)."""
    return int(stack.services.redis.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


def payload_keys(stack: Stack) -> list[bytes]:
    return list(stack.services.redis.scan_iter("inferq:payload:*", count=1000))


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
        return [
            client.post("/v1/models/digits/infer?timeout=30", data=body, headers=headers).status_code
            for _ in range(count)
        ]

    try:
        assert set(send(10)) == {200}  # warm: connections, caches, the model
        before, sets = used_memory(stack), set_calls(stack)
        with ThreadPoolExecutor(8) as pool:
            statuses = [s for part in pool.map(send, [REQUESTS // 8] * 8) for s in part]
        assert len(statuses) == REQUESTS and set(statuses) == {200}, set(statuses)
        assert set_calls(stack) - sets >= REQUESTS, "the inputs were stashed in Redis, not inline"
        deadline = time.monotonic() + 30
        while payload_keys(stack) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert payload_keys(stack) == [], "a stashed payload outlived its task"
        grown = used_memory(stack) - before
        # ~70 MB of inputs went through; what stays is a task record each (~1 KB).
        assert grown < 16 * MiB, f"Redis grew by {grown / MiB:.1f} MiB"
    finally:
        app.extensions["inferq"].close()
