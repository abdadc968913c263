"""Property-based requests generated from the OpenAPI document (schemathesis): no answer is a server error.

Bounded and deterministic: a fixed number of examples per operation, derandomized,
against the in-process app (the workers, Redis, PostgreSQL/SQLite and Triton are real).
503 is allowed: it is the documented answer when a backing service or every GPU is down.

Two runs: requests that fit the document (positive), and requests that do not (negative:
wrong types, missing fields, values out of range, in bodies, paths and query strings). Every
body is also sent once more as ``text/plain``. Each 4xx of the API is problem+json.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.fixtures import Stack
from webapp.docs import openapi_document

pytestmark = pytest.mark.integration
EXAMPLES = 25


def media_type(response: Any) -> str:
    """The answer's media type (schemathesis keeps headers lower-cased, as lists)."""
    values = response.headers.get("content-type") or [""]
    return str(values[0]).split(";")[0].strip()


def run_schema(stack: Stack, mode: GenerationMode) -> tuple[Counter[int], list[tuple[Any, ...]]]:
    schema = schemathesis.openapi.from_dict(openapi_document())
    statuses: Counter[int] = Counter()
    failures: list[tuple[Any, ...]] = []

    def verdict(case: Any, response: Any, how: str) -> None:
        statuses[response.status_code] += 1
        where = (how, case.operation.method, case.operation.path, response.status_code)
        if response.status_code >= 500 and response.status_code != 503:
            failures.append((*where, case.body, response.text[:300]))
        elif (
            400 <= response.status_code < 500
            and not case.operation.path.startswith("/v2")  # Triton's own error shape there
            and media_type(response) != "application/problem+json"
        ):
            failures.append((*where, "not problem+json", response.text[:300]))

    def check(case: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {stack.admin_key}"}
        verdict(case, case.call(app=stack.app), mode.value)
        if case.media_type == "application/json" and case.operation.method.upper() in ("POST", "PUT"):
            hostile = case.call(app=stack.app, headers={"Content-Type": "text/plain"})
            verdict(case, hostile, "text/plain")
            if hostile.status_code < 400 and not case.operation.path.startswith("/v2"):
                failures.append(("text/plain accepted", case.operation.path, hostile.status_code))

    bounded = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    for result in schema.get_all_operations():
        try:
            bounded(given(case=result.ok().as_strategy(generation_mode=mode))(check))()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters)
            continue
    return statuses, failures


def test_generated_requests_never_get_a_5xx(stack: Stack) -> None:
    statuses, failures = run_schema(stack, GenerationMode.POSITIVE)
    assert sum(statuses.values()) > 100, statuses
    assert not failures, failures[:5]


def test_requests_that_break_the_schema_get_a_4xx_problem(stack: Stack) -> None:
    statuses, failures = run_schema(stack, GenerationMode.NEGATIVE)
    assert sum(statuses.values()) > 100, statuses
    assert sum(n for status, n in statuses.items() if 400 <= status < 500) > 50, statuses
    assert not failures, failures[:5]
