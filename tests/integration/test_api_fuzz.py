"""Property-based requests generated from the OpenAPI document (schemathesis): no answer is a server error.

Bounded and deterministic: a fixed number of examples per operation, derandomized,
against the in-process app (the workers, Redis, PostgreSQL/SQLite and Triton are real).
503 is allowed: it is the documented answer when a backing service or every GPU is down.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fixtures import Stack
from webapp.docs import openapi_document

pytestmark = pytest.mark.integration
EXAMPLES = 25


def test_generated_requests_never_get_a_5xx(stack: Stack) -> None:
    schema = schemathesis.openapi.from_dict(openapi_document())
    statuses: Counter[int] = Counter()
    failures: list[tuple[str, str, int, Any, str]] = []

    def check(case: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {stack.admin_key}"}
        response = case.call(app=stack.app)
        statuses[response.status_code] += 1
        if response.status_code >= 500 and response.status_code != 503:
            where = (case.operation.method, case.operation.path)
            failures.append((*where, response.status_code, case.body, response.text[:300]))

    bounded = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    for result in schema.get_all_operations():
        bounded(given(case=result.ok().as_strategy())(check))()
    assert sum(statuses.values()) > 100, statuses
    assert not failures, failures[:5]
