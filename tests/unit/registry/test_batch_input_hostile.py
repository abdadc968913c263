"""Hostile batch lines: JSON nested far too deep is an invalid_json line error, not a crash."""

from __future__ import annotations

from registry.batch_input import INVALID_JSON, LineError, _read_head


def test_a_line_nested_100000_deep_is_an_invalid_json_error() -> None:
    raw = b'{"custom_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error = _read_head(raw, 3, 10_000_000)
    assert isinstance(error, LineError) and error.code == INVALID_JSON and error.line == 3
    assert "nested too deeply" in error.message
