"""Files: ``POST /v1/files`` (multipart, streamed to the object store), list, get, content, delete.

The upload is parsed as a stream (werkzeug's sans-IO multipart decoder over the
request body): the file's bytes go to the object store as they arrive, never
whole in memory nor spooled to disk. The upload has its own size limit
(``INFERQ_MAX_FILE_BYTES``), not the API's request limit: over it, 413 problem+json,
whether the client announced the size (``Content-Length``) or not (chunked).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from flask import Blueprint, jsonify, redirect, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from registry.signatures import Problem
from tasks import files
from tasks.pipeline import PipelineError, invalid
from webapp import services
from webapp.auth import current_principal

bp = Blueprint("files", __name__)

READ_SIZE = 256 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart framing and small fields, beyond the file's own limit
MAX_FIELD_BYTES = 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_PARTS = 16


def too_large(limit: int) -> PipelineError:
    return PipelineError(
        413,
        "file-too-large",
        "File too large",
        f"a file may have at most {limit} bytes (INFERQ_MAX_FILE_BYTES)",
    )


def malformed(detail: str) -> PipelineError:
    return invalid([Problem("/file", detail)], "Malformed multipart body")


class StreamedForm:
    """A ``multipart/form-data`` body read as a stream: small fields are kept, the file is yielded
    piece by piece as it arrives."""

    def __init__(self, stream: IO[bytes], boundary: bytes, max_file: int) -> None:
        self.stream = stream
        # The decoder's buffer holds at most a read and a part's headers.
        self.decoder = MultipartDecoder(boundary, READ_SIZE + MAX_HEADER_BYTES, max_parts=MAX_PARTS)
        self.max_file = max_file
        self.boundary = boundary
        self.fields: dict[str, str] = {}
        self._held = b""
        self._ended = False

    def _events(self) -> Iterator[Any]:
        while True:
            try:
                event = self.decoder.next_event()
            except ValueError as exc:
                raise malformed(str(exc)) from None
            if isinstance(event, NeedData):
                if self._ended:
                    raise malformed("the body ends before the multipart form does")
                self._feed()
                continue
            yield event
            if isinstance(event, Epilogue):
                return

    def _feed(self) -> None:
        """Give the decoder the next piece of the body (None at its end)."""
        window = len(self.boundary) + 8
        while True:
            piece = self.stream.read(READ_SIZE)
            data, self._held = self._held + piece, b""
            if not piece:
                self._ended = not data
                self.decoder.receive_data(data or None)
                return
            # werkzeug's decoder (3.1) lets the CR before a boundary slip into the data when a
            # piece ends inside the boundary or right after it: a piece never ends within a
            # boundary's length after a line break here (that tail waits for the next read).
            tail = max(0, len(data) - window)
            breaks = [i for i in (data.find(b"\r", tail), data.find(b"\n", tail)) if i != -1]
            if breaks:
                cut = min(breaks)
                data, self._held = data[:cut], data[cut:]
            if data:
                self.decoder.receive_data(data)
                return

    def _skip(self, events: Iterator[Any]) -> None:
        for event in events:
            if isinstance(event, Data) and not event.more_data:
                return

    def _field(self, name: str, events: Iterator[Any]) -> None:
        value = bytearray()
        for event in events:
            if isinstance(event, Data):
                value += event.data
                if len(value) > MAX_FIELD_BYTES:
                    raise malformed(f"the field {name!r} is longer than {MAX_FIELD_BYTES} bytes")
                if not event.more_data:
                    break
        self.fields[name] = value.decode(errors="replace")

    def file(self, name: str) -> tuple[str, Iterator[bytes]]:
        """Advance to the file field ``name``: its filename and its bytes, to be read before anything else."""
        self._iter = self._events()
        for event in self._iter:
            if isinstance(event, File) and event.name == name:
                return event.filename, self._file_data()
            if isinstance(event, File):
                self._skip(self._iter)
            elif isinstance(event, Field):
                self._field(event.name, self._iter)
        raise invalid([Problem(f"/{name}", "required: the file, as the multipart form field 'file'")])

    def _file_data(self) -> Iterator[bytes]:
        size = 0
        for event in self._iter:
            if not isinstance(event, Data):
                continue
            size += len(event.data)
            if size > self.max_file:
                raise RequestEntityTooLarge()
            if event.data:
                yield event.data
            if not event.more_data:
                return

    def rest(self) -> None:
        """Read what follows the file (fields after it are kept too)."""
        for event in self._iter:
            if isinstance(event, Field):
                self._field(event.name, self._iter)
            elif isinstance(event, File):
                self._skip(self._iter)


@bp.post("/files")
def upload() -> Any:
    """Upload a JSONL file (multipart form, field ``file``); 201 with the file object."""
    settings = services().settings
    limit = settings.max_file_bytes
    request.max_content_length = limit + FORM_OVERHEAD  # this view's own limit (Flask 3.1)
    boundary = request.mimetype_params.get("boundary", "")
    if request.mimetype != "multipart/form-data" or not boundary:
        raise PipelineError(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "send the file as multipart/form-data, in the field 'file'",
        )
    try:
        form = StreamedForm(request.stream, boundary.encode("latin-1"), limit)
        filename, data = form.file("file")
        purpose = form.fields.get("purpose", files.UPLOAD_PURPOSE)
        if purpose != files.UPLOAD_PURPOSE:
            raise invalid([Problem("/purpose", f"must be {files.UPLOAD_PURPOSE!r} (or left out)")])
        record = files.upload(services(), current_principal().tenant, filename, data)
        form.rest()
    except RequestEntityTooLarge:
        raise too_large(limit) from None
    response = jsonify(record)
    response.status_code = 201
    response.headers["Location"] = url_for("v1.files.get_one", file_id=record["id"])
    return response


@bp.get("/files")
def list_all() -> Any:
    """The tenant's files, newest first: ``?after=<last id>&limit=&purpose=``."""
    page = files.list_page(
        services(),
        current_principal().tenant,
        request.args.get("purpose"),
        request.args.get("after"),
        page_limit(),
    )
    return jsonify(page)


def page_limit() -> int | None:
    """``?limit=`` (1 to 100), or None for the default."""
    raw = request.args.get("limit")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:  # "²" is a digit, not an int
        raise invalid([Problem("?limit", "must be an integer from 1 to 100")], "Invalid query parameters")
    return int(raw)


@bp.get("/files/<file_id>")
def get_one(file_id: str) -> Any:
    return jsonify(files.get(services(), current_principal().tenant, file_id))


@bp.get("/files/<file_id>/content")
def content(file_id: str) -> Any:
    """302 to a presigned URL of the file's bytes (good for an hour)."""
    return redirect(files.content_url(services(), current_principal().tenant, file_id), 302)


@bp.delete("/files/<file_id>")
def delete(file_id: str) -> Any:
    return jsonify(files.delete(services(), current_principal().tenant, file_id))
