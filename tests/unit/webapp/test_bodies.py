"""Reading JSON bodies: nesting depth without parsing, and which media types are JSON."""

from __future__ import annotations

import json

import pytest

from webapp.bodies import MAX_JSON_DEPTH, is_json_media_type, json_depth_exceeds


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("raw", "deeper"),
    [
        (b'{"inputs": [{"data": [[1, 2], [3, 4]]}]}', False),
        (nested(MAX_JSON_DEPTH), False),
        (nested(MAX_JSON_DEPTH + 1), True),
        (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), True),
        (b"[" + b"[1]," * 100_000 + b"[1]]", False),  # many brackets, shallow
        (json.dumps({"id": "[" * 1000}).encode(), False),  # brackets inside a string
        (json.dumps({"id": '\\"[' * 1000 + "{" * 100}).encode(), False),  # escaped quotes too
        (b'["' + b"[" * 1000, False),  # an unterminated string swallows the rest
        (b'["\\' + b"]" * 100, False),  # a lone backslash at the end
        (nested(100_000), True),
        (b"[" * 2_000_000, True),
    ],
    ids=[
        "inference",
        "at-the-limit",
        "one-over",
        "objects",
        "wide",
        "in-string",
        "escaped-quotes",
        "unterminated",
        "lone-backslash",
        "100k",
        "unclosed-2M",
    ],
)
def test_json_depth(raw: bytes, deeper: bool) -> None:
    assert json_depth_exceeds(raw) is deeper


def test_depth_scan_of_hostile_quoting_is_linear() -> None:
    # Every quote escaped and the string never closed: a backtracking scan would be quadratic.
    assert json_depth_exceeds(b'"' + b'\\"[' * 2_000_000 + b"\\") is False
    assert json_depth_exceeds(b'"' * 4_000_000 + nested(64)) is True
    assert json_depth_exceeds(b'["' + b"[" * 16_000_000) is False
    assert json_depth_exceeds(b'"' * 16_000_000) is False


@pytest.mark.parametrize(
    ("mimetype", "params", "accepted"),
    [
        ("application/json", {}, True),
        ("application/json", {"charset": "UTF-8"}, True),
        ("application/merge-patch+json", {}, True),
        ("application/json", {"charset": "latin-1"}, False),
        ("text/plain", {}, False),
        ("application/x-www-form-urlencoded", {}, False),
        ("", {}, False),
        ("application/jsonl", {}, False),
        ("text/json", {}, False),
    ],
)
def test_json_media_types(mimetype: str, params: dict[str, str], accepted: bool) -> None:
    assert is_json_media_type(mimetype, params) is accepted
