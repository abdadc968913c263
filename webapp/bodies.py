"""Reading a JSON request body safely: its media type (415), its size whether announced or chunked
(413), how long it takes to arrive (408), how deeply it nests (400), and whether it is JSON (400).

Every check runs before the body is parsed, so no body costs more than reading it once.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from inferq import jsonio
from registry.signatures import Problem
from webapp.errors import ApiError

MAX_JSON_DEPTH = 32  # an inference body needs ~4 + the rank of its tensors
READ_SIZE = 64 * 1024

_SCAN_CHUNK = 1 << 20
_QUOTE, _OPENERS, _CLOSERS = ord('"'), (ord("["), ord("{")), (ord("]"), ord("}"))


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit``.

    Brackets inside strings do not count. Linear in the body's size and vectorised (a 16 MiB
    body of brackets or quotes is scanned in tens of milliseconds), in bounded memory.
    Text that is not JSON may be misjudged; the parser rejects it next anyway.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # Escapes go first, left to right as a JSON lexer pairs them: then every quote left opens
    # or closes a string, and a bracket is inside one when an odd number of quotes precede it.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = np.frombuffer(text, np.uint8)
    quotes, level = 0, 0
    for start in range(0, len(data), _SCAN_CHUNK):
        piece = data[start : start + _SCAN_CHUNK]
        is_quote = piece == _QUOTE
        # uint8 sums wrap around, keeping their parity: one byte per position.
        inside = (np.cumsum(is_quote, dtype=np.uint8) + quotes) & 1
        steps = ((piece == _OPENERS[0]) | (piece == _OPENERS[1])).view(np.int8) - (
            (piece == _CLOSERS[0]) | (piece == _CLOSERS[1])
        ).view(np.int8)
        steps[inside == 1] = 0
        levels = np.cumsum(steps, dtype=np.int32) + level
        if int(levels.max()) > limit:
            return True
        level, quotes = int(levels[-1]), (quotes + int(np.count_nonzero(is_quote))) & 1
    return False


def is_json_media_type(mimetype: str, params: dict[str, str]) -> bool:
    """``application/json`` or ``application/*+json``, in UTF-8 (the only charset JSON has)."""
    kind, _, subtype = mimetype.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return False
    return params.get("charset", "utf-8").lower() in ("utf-8", "utf8")


def unsupported_media_type(mimetype: str) -> ApiError:
    shown = mimetype[:64] or "no Content-Type"
    return ApiError(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        f"send the body as application/json (Content-Type: application/json), not {shown}",
        headers={"Accept-Post": "application/json"},
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "request-too-large",
        "Request body too large",
        f"a request body may have at most {limit} bytes (INFERQ_MAX_REQUEST_BYTES)",
    )


def malformed(detail: str) -> ApiError:
    return ApiError(400, "malformed-json", "Malformed JSON", detail)


def _announced_empty(request: Request) -> bool:
    if request.content_length is not None:
        return request.content_length == 0
    return "chunked" not in request.headers.get("Transfer-Encoding", "").lower()


def read_body(request: Request, limit: int, read_timeout: float) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond, announced or not), arriving within
    ``read_timeout`` seconds (408 beyond)."""
    # One byte more than allowed may be read, so that a chunked body of exactly the limit
    # is told apart from a longer one (werkzeug's own limit truncates silently).
    request.max_content_length = limit + 1
    started = time.monotonic()
    pieces: list[bytes] = []
    size = 0
    try:
        stream = request.stream
        while True:
            piece = stream.read(min(READ_SIZE, limit + 1 - size))
            if not piece:
                break
            size += len(piece)
            if size > limit:
                raise too_large(limit)
            pieces.append(piece)
            if time.monotonic() - started > read_timeout:
                raise _timed_out(read_timeout)
    except RequestEntityTooLarge:
        raise too_large(limit) from None
    except ClientDisconnected:
        if time.monotonic() - started >= read_timeout * 0.9:
            raise _timed_out(read_timeout) from None
        raise ApiError(
            400, "incomplete-body", "Incomplete request body", "the connection ended before the body did"
        ) from None
    return b"".join(pieces)


def _timed_out(read_timeout: float) -> ApiError:
    return ApiError(
        408,
        "request-timeout",
        "Request timeout",
        f"the request body did not arrive within {read_timeout:g}s (INFERQ_API_READ_TIMEOUT)",
    )


def parse_json(
    request: Request,
    limit: int,
    read_timeout: float,
    optional: bool = False,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """The request's JSON body, or an :class:`ApiError` (415, 413, 408 or 400) that says why not.

    ``optional``: a request without a body gives None (whatever its Content-Type).
    """
    if optional and _announced_empty(request):
        return None
    if not _announced_empty(request) and not is_json_media_type(request.mimetype, request.mimetype_params):
        raise unsupported_media_type(request.mimetype)
    raw = read_body(request, limit, read_timeout)
    if not raw:
        if optional:
            return None
        raise malformed("the request body is empty; send a JSON object")
    if not is_json_media_type(request.mimetype, request.mimetype_params):
        raise unsupported_media_type(request.mimetype)
    if json_depth_exceeds(raw, max_depth):
        raise ApiError(
            400,
            "json-too-deep",
            "JSON nested too deeply",
            f"arrays and objects may nest at most {max_depth} levels deep",
            errors=[Problem("/", f"nested deeper than {max_depth} levels")],
        )
    try:
        return jsonio.loads(raw)  # orjson where it reads the text as the json module does
    except RecursionError:  # cannot happen below max_depth; kept as a guard
        raise malformed("the request body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise malformed(f"the request body is not valid JSON: {str(exc)[:200]}") from None
