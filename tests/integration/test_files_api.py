"""Files: streamed multipart upload with its own size limit (413 with or without Content-Length),
list with a cursor, get, content by presigned URL, delete (not while a batch reads the file)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from launcher.localstack import free_port
from registry.files import file_object_key
from tests.fixtures import Stack
from tests.integration.batch_files import make_input, multipart, upload
from tests.integration.test_openapi import assert_matches

pytestmark = pytest.mark.integration


def tenant_objects(stack: Stack, tenant: str) -> set[str]:
    from registry.files import tenant_prefix

    listing = stack.services.store._client.list_objects(
        stack.settings.s3_bucket, prefix=f"{tenant_prefix(tenant)}files/", recursive=True
    )
    return {item.object_name for item in listing}


def test_upload_get_list_content_delete(stack: Stack) -> None:
    client, auth = stack.client(), stack.auth()
    data = make_input(30, prefix="files").data
    body, content_type = multipart(data, "uploads/2026/batch.jsonl", purpose="batch_input")
    response = client.post("/v1/files", data=body, content_type=content_type, headers=auth)
    assert response.status_code == 201, response.get_data(as_text=True)
    file = response.get_json()
    assert_matches("File", file)
    assert response.headers["Location"] == f"/v1/files/{file['id']}"
    assert (file["filename"], file["bytes"], file["purpose"]) == ("batch.jsonl", len(data), "batch_input")
    assert client.get(f"/v1/files/{file['id']}", headers=auth).get_json() == file
    content = client.get(f"/v1/files/{file['id']}/content", headers=auth)
    assert content.status_code == 302
    assert requests.get(content.headers["Location"], timeout=10).content == data

    ids = [upload(stack, b'{"custom_id": "x"}\n', name=f"{i}.jsonl")["id"] for i in range(3)]
    page = client.get("/v1/files?limit=2", headers=auth).get_json()
    assert_matches("FilePage", page)
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get(f"/v1/files?limit=2&after={page['last_id']}", headers=auth).get_json()
    assert [f["id"] for f in rest["data"]] == [ids[0], file["id"]]
    assert client.get("/v1/files?purpose=batch_output&limit=100", headers=auth).status_code == 200
    for query in ("purpose=other", "limit=0", "after=nope"):
        assert client.get(f"/v1/files?{query}", headers=auth).status_code == 400, query

    deleted = client.delete(f"/v1/files/{ids[0]}", headers=auth)
    assert deleted.status_code == 200 and deleted.get_json() == {
        "id": ids[0],
        "object": "file",
        "deleted": True,
    }
    assert_matches("FileDeleted", deleted.get_json())
    assert client.get(f"/v1/files/{ids[0]}", headers=auth).status_code == 404
    assert client.delete(f"/v1/files/{ids[0]}", headers=auth).status_code == 404
    assert not any(key.endswith(ids[0]) for key in tenant_objects(stack, "acme"))


@pytest.mark.parametrize(
    ("body", "content_type", "status", "pointer"),
    [
        (b'{"a": 1}', "application/json", 415, None),
        (*multipart(b"x\n", purpose="fine-tune"), 400, "/purpose"),
        (*multipart(b""), 400, "/file"),
        (
            b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            400,
            "/file",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nunfinished',
            "multipart/form-data; boundary=b",
            400,
            "/file",
        ),
    ],
    ids=["not-multipart", "purpose", "empty", "no-file-field", "truncated"],
)
def test_uploads_that_are_not_a_file_are_refused(
    stack: Stack, body: bytes, content_type: str, status: int, pointer: str | None
) -> None:
    before = tenant_objects(stack, "acme")
    response = stack.client().post("/v1/files", data=body, content_type=content_type, headers=stack.auth())
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    if pointer is not None:
        assert response.get_json()["errors"][0]["pointer"] == pointer
    assert tenant_objects(stack, "acme") == before, "nothing stored"


@pytest.fixture
def small_limit(stack: Stack) -> Iterator[tuple[Any, str]]:
    """The API with a 64 KiB file limit, in process and over HTTP (for chunked uploads)."""
    from werkzeug.serving import make_server

    from webapp import create_app

    app = create_app(dataclasses.replace(stack.settings, max_file_bytes=64 * 1024))
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["inferq"].close()


def test_over_the_size_limit_is_413_with_or_without_content_length(
    stack: Stack, small_limit: tuple[Any, str]
) -> None:
    app, url = small_limit
    client, auth = app.test_client(), stack.auth()
    before = tenant_objects(stack, "acme")
    for size in (64 * 1024 + 1, 300 * 1024):  # over the file limit; over the request limit too
        body, content_type = multipart(b"x" * size)
        response = client.post("/v1/files", data=body, content_type=content_type, headers=auth)
        assert response.status_code == 413, (size, response.get_data(as_text=True))
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["type"].endswith("file-too-large")
    body, content_type = multipart(b"x" * 64 * 1024)  # exactly the limit is not over it
    exact = client.post("/v1/files", data=body, content_type=content_type, headers=auth)
    assert exact.status_code == 201, exact.get_data(as_text=True)

    def chunked(size: int) -> Iterator[bytes]:
        body, _ = multipart(b"y" * size, boundary="chunked-boundary")
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    headers = {**auth, "Content-Type": "multipart/form-data; boundary=chunked-boundary"}
    response = requests.post(f"{url}/v1/files", data=chunked(200 * 1024), headers=headers, timeout=30)
    assert response.status_code == 413, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    fits = requests.post(f"{url}/v1/files", data=chunked(60 * 1024), headers=headers, timeout=30)
    assert fits.status_code == 201, fits.text
    assert fits.json()["bytes"] == 60 * 1024
    stored = {file_object_key("acme", exact.get_json()["id"]), file_object_key("acme", fits.json()["id"])}
    assert tenant_objects(stack, "acme") - before == stored, "the refused uploads left nothing"


def test_a_file_a_running_batch_reads_cannot_be_deleted(stack: Stack) -> None:
    from tasks import batch_finalize, batch_planning, batches

    dispatch = batches.Dispatch(lambda *_: None, lambda ids: None)  # nothing runs: it stays validating
    file = upload(stack, make_input(3, prefix="in-use").data)
    batch, _ = batches.create(
        stack.services, dispatch, "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    client, auth = stack.client(), stack.auth()
    response = client.delete(f"/v1/files/{file['id']}", headers=auth)
    assert response.status_code == 409 and batch["id"] in response.get_json()["detail"]
    batches.cancel(stack.services, dispatch, "acme", batch["id"])
    # The plan task (queued at creation) runs after the cancel: every line is recorded cancelled.
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "planning"
    assert batch_planning.plan_batch(stack.services, dispatch, batch["id"]) == "queued"
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "cancelled"
    cancelled = client.get(f"/v1/batches/{batch['id']}", headers=auth).get_json()
    counts = cancelled["request_counts"]
    assert cancelled["status"] == "cancelled" and counts["total"] == counts["failed"] == 3
    assert client.delete(f"/v1/files/{file['id']}", headers=auth).status_code == 200
