"""The batch request body is checked field by field."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.batches import check_create_body
from tasks.pipeline import PipelineError


def pointers(body: Any) -> list[str]:
    with pytest.raises(PipelineError) as error:
        check_create_body(body)
    assert error.value.status == 400
    return [p.pointer for p in error.value.problems]


def test_a_good_body() -> None:
    body = check_create_body(
        {"model": "digits", "input_file_id": "f1", "version": "2", "metadata": {"k": "v"}}
    )
    assert (body.model, body.version, body.input_file_id, body.metadata) == ("digits", "2", "f1", {"k": "v"})
    assert check_create_body({"model": "digits", "input_file_id": "f1"}).metadata == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([], ["/"]),
        ({}, ["/model", "/input_file_id"]),
        ({"model": 3, "input_file_id": ""}, ["/model", "/input_file_id"]),
        ({"model": "m", "input_file_id": "f", "version": 1}, ["/version"]),
        ({"model": "m", "input_file_id": "f", "completion_window": "24h"}, ["/completion_window"]),
        ({"model": "m", "input_file_id": "f", "metadata": []}, ["/metadata"]),
    ],
)
def test_each_bad_field_is_named(body: Any, expected: list[str]) -> None:
    assert sorted(pointers(body)) == sorted(expected)
