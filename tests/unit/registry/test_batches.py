from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from registry.batches import Batch, batch_prefix, check_idempotency_key, check_metadata, chunk_part_keys
from registry.files import clean_filename, file_object_key, tenant_prefix


def batch(**fields: Any) -> Batch:
    values: dict[str, Any] = dict(
        id="b" * 32,
        model_name="digits",
        model_version="1",
        status="in_progress",
        total_count=3,
        completed_count=0,
        failed_count=0,
        meta={},
        created_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        planned_at=datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC),
    )
    values.update(fields)
    return Batch(**values)


@pytest.mark.parametrize(
    ("fields", "progress"),
    [
        ({}, 0),
        ({"completed_count": 1}, 33),
        ({"completed_count": 1, "failed_count": 1}, 66),
        ({"completed_count": 2, "failed_count": 1}, 100),
        ({"total_count": 0}, 0),
        ({"total_count": 0, "status": "completed"}, 100),
    ],
)
def test_progress_counts_results_and_errors(fields: dict[str, Any], progress: int) -> None:
    assert batch(**fields).progress == progress


def test_progress_is_zero_while_the_file_is_planned() -> None:
    # Chunks run while the file is still planned: the total so far is not the batch's total.
    assert batch(planned_at=None, total_count=2, completed_count=2).progress == 0
    assert batch(planned_at=None, status="cancelled", total_count=2, completed_count=1).progress == 50


def test_timestamps_are_iso_and_errors_appear_when_failed() -> None:
    failed = batch(
        status="failed",
        failed_at=datetime(2026, 11, 28, 12, 5, tzinfo=UTC),
        error_code="input_unreadable",
        error_message="the input file is gone",
    ).as_dict()
    assert failed["created_at"] == "2026-11-28T12:00:00+00:00"
    assert failed["failed_at"] == "2026-11-28T12:05:00+00:00" and failed["started_at"] is None
    assert failed["errors"] == [{"code": "input_unreadable", "message": "the input file is gone"}]
    assert "errors" not in batch().as_dict()


def test_object_keys_are_under_the_tenants_own_prefix() -> None:
    assert file_object_key("acme", "f1") == "tenants/acme/files/f1"
    assert tenant_prefix("a/files") == "tenants/a%2Ffiles/"  # no tenant name reaches into another's keys
    assert batch_prefix("acme", "b1") == "tenants/acme/batches/b1/"
    assert chunk_part_keys("a b", "b1", 3) == (
        "tenants/a%20b/batches/b1/parts/00000003.output.jsonl",
        "tenants/a%20b/batches/b1/parts/00000003.error.jsonl",
    )


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("in.jsonl", "in.jsonl"),
        ("C:\\data\\in.jsonl", "in.jsonl"),
        ("../../etc/x", "x"),
        ("", "file"),
        ("a" * 300, "a" * 255),
    ],
)
def test_filenames_keep_their_last_component(given: str, kept: str) -> None:
    assert clean_filename(given) == kept


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        (None, []),
        ({"a": "b"}, []),
        ([], ["/metadata"]),
        ({"a": 1}, ["/metadata/a"]),
        ({"k" * 65: "v"}, ["/metadata/" + "k" * 65]),
        ({"": "v"}, ["/metadata/"]),
        ({"a": "v" * 513}, ["/metadata/a"]),
        ({str(i): "v" for i in range(17)}, ["/metadata"]),
    ],
)
def test_metadata_is_small(raw: Any, problems: list[str]) -> None:
    values, found = check_metadata(raw)
    assert [p.pointer for p in found] == problems
    assert values == ((raw or {}) if not problems else {})


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ünï"])
def test_idempotency_keys_are_printable_ascii(key: str) -> None:
    with pytest.raises(ValueError):
        check_idempotency_key(key)
    assert check_idempotency_key("req-2026-11-28/1") == "req-2026-11-28/1"
