"""A Redis that loses its data (FLUSHDB: a restart without persistence, an operator's mistake):
later requests are neither dropped nor left hanging, and the platform serves again by itself."""

from __future__ import annotations

import time

import pytest

from tasks.broker import BINDINGS_TTL
from tests.fixtures import Stack

pytestmark = pytest.mark.integration

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_after_flushdb_requests_are_delivered_and_answered(stack: Stack) -> None:
    client = stack.client()
    assert client.post("/v1/models/digits/infer", json=BODY, headers=stack.auth()).status_code == 200
    stack.services.redis.flushdb()  # broker queues, kombu's bindings, records, cache: all gone
    time.sleep(BINDINGS_TTL + 0.5)  # past the bindings each publisher reuses
    statuses = [
        client.post("/v1/models/digits/infer?timeout=20", json=BODY, headers=stack.auth()).status_code
        for _ in range(6)
    ]
    assert statuses == [200] * 6, statuses
