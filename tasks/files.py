"""Files of a tenant, plain Python: upload (streamed to the object store), list, read, link, delete.

An upload streams its bytes to the object store under the tenant's prefix (a
multipart upload, a part in memory at a time) and records the file only once the
object is complete, so a failed or refused upload leaves nothing behind. Another
tenant's file is "not found", never "forbidden".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from registry.batches import batch_reading
from registry.db import new_id
from registry.files import FILE_PURPOSES, create_file, delete_file, file_object_key, get_file, list_files
from registry.pagination import UnknownCursor, clamp_limit
from registry.signatures import Problem
from tasks.batches import page_body
from tasks.pipeline import PipelineError, invalid, unavailable
from tasks.runtime import Services
from workers.storage import StorageError, StorageUnavailable

UPLOAD_PURPOSE = "batch_input"
CONTENT_TYPE = "application/jsonl"
PRESIGNED_SECONDS = 3600


def not_found(file_id: str) -> PipelineError:
    return PipelineError(404, "file-not-found", "File not found", f"no file {file_id!r}")


def upload(services: Services, tenant: str, filename: str, pieces: Iterable[bytes]) -> dict[str, Any]:
    """Stream ``pieces`` to a new object of ``tenant`` and record it as a ``batch_input`` file.

    Whatever ``pieces`` raises (a size limit, a client that went away) aborts the
    upload and comes out unchanged; nothing is recorded. An empty file is a 400.
    """
    file_id = new_id()
    key = file_object_key(tenant, file_id)
    try:
        size = services.store.put_stream(key, pieces, content_type=CONTENT_TYPE)
    except StorageUnavailable as exc:
        raise unavailable("storage", str(exc)) from None
    except StorageError as exc:
        raise PipelineError(
            502, "object-store-error", "The object store refused the upload", str(exc)
        ) from None
    if size == 0:
        services.store.delete(key)
        raise invalid([Problem("/file", "the file is empty")], "Empty file")
    try:
        with services.db.session() as session:
            return create_file(session, tenant, UPLOAD_PURPOSE, filename, size, file_id=file_id).as_dict()
    except BaseException:
        services.store.delete(key)  # the object is no file of anybody's without its row
        raise


def get(services: Services, tenant: str, file_id: str) -> dict[str, Any]:
    """The tenant's file."""
    with services.db.session() as session:
        file = get_file(session, tenant, file_id)
        if file is None:
            raise not_found(file_id)
        return file.as_dict()


def list_page(
    services: Services, tenant: str, purpose: str | None, after: str | None, limit: int | None
) -> dict[str, Any]:
    """A page of the tenant's files, newest first (``after``: the last id of the previous page)."""
    if purpose is not None and purpose not in FILE_PURPOSES:
        raise invalid([Problem("?purpose", f"must be one of {', '.join(FILE_PURPOSES)}")])
    with services.db.session() as session:
        try:
            page = list_files(session, tenant, purpose=purpose, after=after, limit=limit)
        except UnknownCursor:
            raise invalid([Problem("?after", f"no file {after!r} to continue after")]) from None
        return page_body([f.as_dict() for f in page.items], page.total, page.has_more, clamp_limit(limit))


def content_url(services: Services, tenant: str, file_id: str) -> str:
    """A presigned URL of the file's bytes, good for an hour."""
    with services.db.session() as session:
        file = get_file(session, tenant, file_id)
        if file is None:
            raise not_found(file_id)
        key = file.object_key
    try:
        return services.store.presigned_get(key, PRESIGNED_SECONDS)
    except StorageUnavailable as exc:
        raise unavailable("storage", str(exc)) from None


def delete(services: Services, tenant: str, file_id: str) -> dict[str, Any]:
    """Delete the tenant's file (its row is kept, marked, for the batches that name it; the object
    goes after the commit). The input of a batch that is not final cannot be deleted: 409."""
    with services.db.session() as session:
        file = get_file(session, tenant, file_id)
        if file is None:
            raise not_found(file_id)
        reader = batch_reading(session, file_id)
        if reader is not None:
            raise PipelineError(
                409,
                "file-in-use",
                "File in use",
                f"batch {reader.id} ({reader.status}) reads this file; cancel it or wait for its end",
            )
        delete_file(session, tenant, file_id)
        key = file.object_key
    # The row says deleted; an orphan object costs space, not correctness.
    with contextlib.suppress(StorageError):
        services.store.delete(key)
    return {"id": file_id, "object": "file", "deleted": True}
