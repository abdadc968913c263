"""Batches end to end: upload, create, plan, chunks on the GPU queues, finalize, results; idempotency,
cancel, tenants, and a chunk run twice that is written once."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest

from tests.fixtures import Stack
from tests.integration.batch_files import (
    create_batch,
    download,
    get_batch,
    make_input,
    upload,
    wait_for,
)
from tests.integration.test_infer import local_onnx

pytestmark = pytest.mark.integration


def check_partition(stack: Stack, batch: dict[str, Any], expected: Any) -> tuple[list[Any], list[Any]]:
    """Every request line in exactly one of the two files, once; outputs equal onnxruntime's."""
    outputs = download(stack, batch["output_file_id"])
    errors = download(stack, batch["error_file_id"])
    ids = [line["custom_id"] for line in outputs]
    assert len(ids) == len(set(ids)) == len(expected.rows)
    assert set(ids) == set(expected.rows)
    assert ids == list(expected.rows), "the output file is in input order"
    rows = np.stack([expected.rows[i] for i in ids])
    labels, probabilities = local_onnx(rows)
    by_name = [{o["name"]: o for o in line["outputs"]} for line in outputs]
    assert [o["label"]["data"] for o in by_name] == [[int(v)] for v in labels]
    assert all(o["label"]["shape"] == [1] and o["probabilities"]["shape"] == [1, 10] for o in by_name)
    np.testing.assert_allclose(
        np.array([o["probabilities"]["data"] for o in by_name]), probabilities, rtol=1e-5, atol=1e-6
    )
    invalid = [line for line in errors if line["error"]["code"] != "cancelled"]
    assert len(invalid) == len(expected.errors)
    # Invalid lines carry their line number when their custom_id does not identify them.
    numbered = {line["line"]: line for line in invalid if "line" in line}
    for number, code in expected.errors.items():
        if expected.error_ids[number] is None or code == "duplicate_custom_id":
            line = numbered[number]
            assert line["error"]["code"] == code and line["custom_id"] == expected.error_ids[number]
    by_id = {line["custom_id"]: line for line in invalid if "line" not in line}
    for number, code in expected.errors.items():
        if code == "invalid_input":
            assert by_id[expected.error_ids[number]]["error"]["code"] == code
    assert all(line["error"]["message"] for line in errors)
    return outputs, errors


def test_a_file_with_bad_lines_gives_exact_output_and_error_files(stack: Stack) -> None:
    expected = make_input(10_000, bad_every=33)
    assert 200 < len(expected.errors) < 450, len(expected.errors)  # about 3%
    file = upload(stack, expected.data, name="digits.jsonl")
    assert file["bytes"] == len(expected.data) and file["purpose"] == "batch_input"
    created = create_batch(stack, file["id"], metadata={"run": "nightly"})
    assert created["status"] == "validating" and created["metadata"] == {"run": "nightly"}
    batch = wait_for(stack, created["id"])
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {
        "total": expected.total,
        "completed": len(expected.rows),
        "failed": len(expected.errors),
    }
    assert batch["progress"] == 100 and batch["version"] == "1" and batch["model"] == "digits"
    stamps = [batch[k] for k in ("created_at", "started_at", "finalizing_at", "completed_at")]
    assert all(stamps) and stamps == sorted(stamps)
    _, errors = check_partition(stack, batch, expected)
    numbers = [line["line"] for line in errors if "line" in line]
    assert numbers == sorted(numbers), "the error file is in input order"
    client, auth = stack.client(), stack.auth()
    output = client.get(f"/v1/files/{batch['output_file_id']}", headers=auth).get_json()
    assert output["purpose"] == "batch_output" and output["line_count"] == len(expected.rows)
    error = client.get(f"/v1/files/{batch['error_file_id']}", headers=auth).get_json()
    assert error["purpose"] == "batch_error" and error["line_count"] == len(expected.errors)
    planned = client.get(f"/v1/files/{file['id']}", headers=auth).get_json()
    assert planned["line_count"] == expected.data.count(b"\n")
    # The working parts are gone once the result files exist.
    from registry.batches import batch_prefix

    leftovers = list(
        stack.services.store._client.list_objects(
            stack.settings.s3_bucket, prefix=batch_prefix("acme", batch["id"]), recursive=True
        )
    )
    assert leftovers == []


def test_the_same_idempotency_key_gives_the_same_batch(stack: Stack) -> None:
    expected = make_input(50, prefix="idem")
    file = upload(stack, expected.data)
    client = stack.client()
    headers = {**stack.auth(), "Idempotency-Key": f"nightly-{file['id']}"}
    body = {"model": "digits", "input_file_id": file["id"], "metadata": {"a": "b"}}
    first = client.post("/v1/batches", json=body, headers=headers)
    assert first.status_code == 202, first.get_data(as_text=True)
    assert first.headers["Location"] == f"/v1/batches/{first.get_json()['id']}"
    again = client.post("/v1/batches", json=body, headers=headers)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    # The key stays bound to its batch: naming the version it resolved to is the same request.
    assert client.post("/v1/batches", json={**body, "version": "1"}, headers=headers).status_code == 200
    other = client.post("/v1/batches", json={**body, "metadata": {"a": "c"}}, headers=headers)
    assert other.status_code == 422 and other.mimetype == "application/problem+json"
    assert other.get_json()["type"].endswith("idempotency-key-reused")
    # Without a key, or with another tenant's same key, a new batch.
    assert (
        client.post("/v1/batches", json=body, headers=stack.auth()).get_json()["id"] != first.get_json()["id"]
    )
    assert wait_for(stack, first.get_json()["id"])["status"] == "completed"
    bad = client.post("/v1/batches", json=body, headers={**stack.auth(), "Idempotency-Key": "é" * 3})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        ({"input_file_id": "x"}, 400, "/model"),
        ({"model": "digits"}, 400, "/input_file_id"),
        ({"model": "digits", "input_file_id": "nope"}, 400, "/input_file_id"),
        ({"model": "digits", "input_file_id": "x", "extra": 1}, 400, "/extra"),
        ({"model": "digits", "input_file_id": "x", "metadata": {"k": 1}}, 400, "/metadata/k"),
        ({"model": "no-such-model", "input_file_id": "x"}, 404, None),
        ({"model": "digits", "version": "9", "input_file_id": "x"}, 404, None),
        ({"model": "iris", "input_file_id": "x"}, 409, None),  # registered, not deployed
    ],
)
def test_a_batch_that_cannot_run_is_refused_naming_why(
    stack: Stack, body: dict[str, Any], status: int, pointer: str | None
) -> None:
    response = stack.client().post("/v1/batches", json=body, headers=stack.auth())
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    if pointer is not None:
        assert pointer in [e["pointer"] for e in response.get_json()["errors"]]


def test_files_and_batches_are_their_tenant_s_only(stack: Stack) -> None:
    expected = make_input(20, prefix="tenant")
    file = upload(stack, expected.data)
    batch = create_batch(stack, file["id"])
    other, client = stack.auth(stack.other_tenant_key), stack.client()
    for path in (f"/v1/files/{file['id']}", f"/v1/files/{file['id']}/content", f"/v1/batches/{batch['id']}"):
        response = client.get(path, headers=other)
        assert response.status_code == 404 and response.mimetype == "application/problem+json", path
    assert client.delete(f"/v1/files/{file['id']}", headers=other).status_code == 404
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=other).status_code == 404
    refused = client.post("/v1/batches", json={"model": "digits", "input_file_id": file["id"]}, headers=other)
    assert refused.status_code == 400 and refused.get_json()["errors"][0]["pointer"] == "/input_file_id"
    assert file["id"] not in [
        f["id"] for f in client.get("/v1/files?limit=100", headers=other).get_json()["data"]
    ]
    theirs = client.get("/v1/batches?limit=100", headers=other).get_json()["data"]
    assert batch["id"] not in [b["id"] for b in theirs]
    cursor = client.get(f"/v1/batches?after={batch['id']}", headers=other)
    assert cursor.status_code == 400 and cursor.get_json()["errors"][0]["pointer"] == "?after"
    # The same tenant (an admin key of it) sees both.
    assert client.get(f"/v1/batches/{batch['id']}", headers=stack.auth(stack.admin_key)).status_code == 200
    done = wait_for(stack, batch["id"])
    assert client.get(f"/v1/files/{done['output_file_id']}", headers=other).status_code == 404


def test_batches_are_listed_newest_first_with_a_status_filter_and_a_cursor(stack: Stack) -> None:
    expected = make_input(5, prefix="list")
    file = upload(stack, expected.data)
    ids = [create_batch(stack, file["id"])["id"] for _ in range(3)]
    for batch_id in ids:
        wait_for(stack, batch_id)
    client, auth = stack.client(), stack.auth()
    page = client.get("/v1/batches?limit=2&status=completed", headers=auth).get_json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"]
    assert page["object"] == "list" and page["last_id"] == ids[1] and page["limit"] == 2
    rest = client.get(
        f"/v1/batches?limit=2&status=completed&after={page['last_id']}", headers=auth
    ).get_json()
    assert rest["data"][0]["id"] == ids[0]
    assert all(b["status"] == "completed" for b in page["data"] + rest["data"])
    for query in ("status=done", "limit=0", "limit=101", "limit=x"):
        response = client.get(f"/v1/batches?{query}", headers=auth)
        assert response.status_code == 400, query


def test_cancel_mid_way_keeps_what_finished_and_reports_the_rest_as_cancelled(stack: Stack) -> None:
    expected = make_input(20_000, bad_every=50, prefix="cancel")
    file = upload(stack, expected.data)
    batch = create_batch(stack, file["id"])
    wait_for(stack, batch["id"], ("in_progress",), timeout=60)
    # Chunks run while the file is planned; progress moves once the whole file is: cancel then,
    # so that every line is in a chunk (a cancel during planning: test_cancel_during_planning_stops_it).
    deadline = time.monotonic() + 60
    while get_batch(stack, batch["id"])["progress"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    client, auth = stack.client(), stack.auth()
    response = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    at_cancel = response.get_json()
    assert at_cancel["status"] == "cancelling" and at_cancel["cancelled_at"]
    again = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    assert again.status_code == 200 and again.get_json()["status"] in ("cancelling", "cancelled")
    done = wait_for(stack, batch["id"])
    assert done["status"] == "cancelled" and done["completed_at"] is None
    assert done["cancelled_at"] == at_cancel["cancelled_at"]
    counts = done["request_counts"]
    assert counts["total"] == expected.total and counts["completed"] + counts["failed"] == expected.total
    assert counts["completed"] >= at_cancel["request_counts"]["completed"], "what finished stays"
    outputs, errors = check_partition_cancelled(stack, done, expected)
    assert len(outputs) == counts["completed"] and len(errors) == counts["failed"]
    cancelled = [line for line in errors if line["error"]["code"] == "cancelled"]
    assert cancelled and outputs, "cancelled mid-way: some lines ran, some did not"
    finished = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    assert finished.status_code == 200 and finished.get_json()["status"] == "cancelled"
    completed = create_batch(stack, upload(stack, make_input(3, prefix="late").data)["id"])
    wait_for(stack, completed["id"])
    late = client.post(f"/v1/batches/{completed['id']}/cancel", headers=auth)
    assert late.status_code == 409 and late.mimetype == "application/problem+json"


def check_partition_cancelled(
    stack: Stack, batch: dict[str, Any], expected: Any
) -> tuple[list[Any], list[Any]]:
    """A cancelled batch: every request line once in one file; valid lines that did not run are errors
    with code ``cancelled``; those that ran have onnxruntime's labels."""
    outputs = download(stack, batch["output_file_id"])
    errors = download(stack, batch["error_file_id"])
    ran = [line["custom_id"] for line in outputs]
    not_run = [line["custom_id"] for line in errors if line["error"]["code"] == "cancelled"]
    assert len(ran) + len(not_run) == len(set(ran) | set(not_run)) == len(expected.rows)
    assert set(ran) | set(not_run) == set(expected.rows)
    labels, _ = local_onnx(np.stack([expected.rows[i] for i in ran]))
    assert [line["outputs"][0]["data"] for line in outputs] == [[int(v)] for v in labels]
    invalid = [line for line in errors if line["error"]["code"] != "cancelled"]
    assert len(invalid) == len(expected.errors)
    return outputs, errors


def test_a_chunk_run_twice_at_once_is_written_once(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two executions of one chunk (a redelivery racing a re-send): both run, one counts, its parts
    are the ones merged; the other's parts are removed."""
    from tasks import batch_chunks, batch_finalize, batch_planning, batches

    sent: list[tuple[str, list[Any], str]] = []
    dispatch = batches.Dispatch(
        lambda name, args, queue, *_: sent.append((name, args, queue)), lambda ids: None
    )
    expected = make_input(300, bad_every=20, prefix="twice")
    file = upload(stack, expected.data)
    batch, created = batches.create(
        stack.services, dispatch, "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    assert created and sent[-1][0] == batches.PLAN_TASK
    assert batch_planning.plan_batch(stack.services, dispatch, batch["id"]) == "queued"
    chunks = [(args, queue) for name, args, queue in sent if name == batches.CHUNK_TASK]
    indexes = [args[1] for args, _ in chunks]
    assert indexes == list(range(len(indexes))) and len(indexes) >= 10  # a tenth of the file at most
    assert {queue for _, queue in chunks} == {"gpu.0", "gpu.1"}, "spread over the GPUs"

    barrier = threading.Barrier(2)
    original = batch_chunks.complete

    def complete_together(*args: Any, **kwargs: Any) -> bool:
        barrier.wait(30)  # both executions have written their parts before either counts
        return original(*args, **kwargs)

    monkeypatch.setattr(batch_chunks, "complete", complete_together)
    outcomes: list[str] = []

    def run(run_name: str) -> None:
        outcomes.append(batch_chunks.run_chunk(stack.services, dispatch, batch["id"], 0, 0, run_name))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    monkeypatch.setattr(batch_chunks, "complete", original)
    assert sorted(outcomes) == ["done", "duplicate"]
    assert batch_chunks.run_chunk(stack.services, dispatch, batch["id"], 0, 1, "third") == "skipped"
    assert get_batch(stack, batch["id"])["status"] == "in_progress"
    for index in indexes[1:]:
        assert (
            batch_chunks.run_chunk(stack.services, dispatch, batch["id"], index, index % 2, "only") == "done"
        )
    assert sent[-1][0] == batches.FINALIZE_TASK
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "completed"
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "nothing to do: completed"
    done = get_batch(stack, batch["id"])
    assert done["request_counts"] == {
        "total": expected.total,
        "completed": len(expected.rows),
        "failed": len(expected.errors),
    }
    check_partition(stack, done, expected)


def test_progress_moves_as_chunks_finish(stack: Stack) -> None:
    """Progress is written chunk by chunk: with chunks of at most a tenth of the file, a batch shows
    at least ten steps (polled in process, chunk by chunk)."""
    from tasks import batch_chunks, batch_planning, batches

    sent: list[tuple[str, list[Any], str]] = []
    dispatch = batches.Dispatch(
        lambda name, args, queue, *_: sent.append((name, args, queue)), lambda ids: None
    )
    expected = make_input(95, prefix="progress")  # fewer lines than a chunk holds
    file = upload(stack, expected.data)
    batch, _ = batches.create(
        stack.services, dispatch, "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    batch_planning.plan_batch(stack.services, dispatch, batch["id"])
    indexes = [args[1] for name, args, _ in sent if name == batches.CHUNK_TASK]
    assert len(indexes) >= 10
    seen = [get_batch(stack, batch["id"])["progress"]]
    for index in indexes:
        batch_chunks.run_chunk(stack.services, dispatch, batch["id"], index, 0, "r")
        seen.append(get_batch(stack, batch["id"])["progress"])
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen)
    assert max(b - a for a, b in itertools.pairwise(seen)) <= 11


def test_a_model_undeployed_before_planning_fails_the_batch(stack: Stack) -> None:
    from tasks import batch_planning, batches

    dispatch = batches.Dispatch(lambda *_: None, lambda ids: None)
    file = upload(stack, make_input(3, prefix="gone").data)
    batch, _ = batches.create(
        stack.services, dispatch, "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    services = type(stack.services)(
        dataclasses.replace(stack.settings, gpus=(7,), triton_urls={7: "http://x:1"})
    )
    try:
        assert batch_planning.plan_batch(services, dispatch, batch["id"]) == "failed"
    finally:
        services.close()
    failed = get_batch(stack, batch["id"])
    assert failed["status"] == "failed" and failed["errors"][0]["code"] == "model_not_ready"
    assert failed["failed_at"] and failed["output_file_id"] is None


def test_an_empty_input_fails_the_batch(stack: Stack) -> None:
    file = upload(stack, b"\n  \n\n")
    batch = wait_for(stack, create_batch(stack, file["id"])["id"])
    assert batch["status"] == "failed" and batch["errors"][0]["code"] == "empty_input"
    assert batch["request_counts"]["total"] == 0


# --- planning streams its chunks -------------------------------------------------------------------


def recording_dispatch(sent: list[tuple[str, list[Any], str]], on_send: Any = None) -> Any:
    """A dispatch that records what is sent (and calls ``on_send(name, args, queue)`` first)."""
    from tasks import batches

    def send(name: str, args: list[Any], queue: str, *_: Any) -> None:
        if on_send is not None:
            on_send(name, args, queue)
        sent.append((name, args, queue))

    return batches.Dispatch(send, lambda ids: None)


def chunk_indexes(sent: list[tuple[str, list[Any], str]]) -> list[int]:
    from tasks import batches

    return [args[1] for name, args, _ in sent if name == batches.CHUNK_TASK]


def recorded_chunks(stack: Stack, batch_id: str) -> list[Any]:
    from registry.batches import list_chunks

    with stack.services.db.session() as session:
        chunks = list_chunks(session, batch_id)
        session.expunge_all()
    return chunks


def assert_one_set_of_chunks(stack: Stack, batch_id: str, expected: Any) -> list[Any]:
    """Chunks numbered 0..n-1, their byte ranges one after another, every request line in one."""
    chunks = recorded_chunks(stack, batch_id)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(a.end_byte <= b.start_byte for a, b in itertools.pairwise(chunks))
    assert sum(c.line_count for c in chunks) == expected.total
    return chunks


def test_a_plan_run_again_after_a_crash_midway_records_and_sends_each_chunk_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import batch_chunks, batch_finalize, batch_planning, batches

    monkeypatch.setattr(batch_planning, "PLAN_GROUP_CHUNKS", 2)
    monkeypatch.setattr(batch_planning, "PLAN_GROUP_SECONDS", 3600.0)

    class Crash(Exception):
        pass

    first: list[tuple[str, list[Any], str]] = []

    def crash_at_the_fourth_chunk(name: str, args: list[Any], queue: str) -> None:
        if name == batches.CHUNK_TASK and len(chunk_indexes(first)) == 3:
            raise Crash  # chunks 3 and 4 recorded as sent, never sent: the planner died

    expected = make_input(400, bad_every=10, prefix="crash")
    assert expected.errors and any(code == "duplicate_custom_id" for code in expected.errors.values())
    file = upload(stack, expected.data)
    batch, _ = batches.create(
        stack.services, recording_dispatch([]), "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    with pytest.raises(Crash):
        batch_planning.plan_batch(
            stack.services, recording_dispatch(first, crash_at_the_fourth_chunk), batch["id"]
        )
    assert chunk_indexes(first) == [0, 1, 2]
    midway = get_batch(stack, batch["id"])
    assert midway["status"] == "queued" and midway["progress"] == 0
    recorded_before = recorded_chunks(stack, batch["id"])
    assert [c.index for c in recorded_before] == [0, 1, 2, 3, 4]
    assert midway["request_counts"]["total"] == sum(c.line_count for c in recorded_before)

    again: list[tuple[str, list[Any], str]] = []
    assert batch_planning.plan_batch(stack.services, recording_dispatch(again), batch["id"]) == "queued"
    assert chunk_indexes(again)[0] == 5, "the chunks recorded before are neither recorded nor sent again"
    assert batch_planning.plan_batch(stack.services, recording_dispatch([]), batch["id"]) == "not planning"
    chunks = assert_one_set_of_chunks(stack, batch["id"], expected)
    assert chunk_indexes(again) == list(range(5, len(chunks)))
    planned = get_batch(stack, batch["id"])
    assert planned["request_counts"]["total"] == expected.total
    for chunk in chunks:  # 3 and 4 were never sent: the reaper's job, done here by hand
        assert (
            batch_chunks.run_chunk(
                stack.services, recording_dispatch(again), batch["id"], chunk.index, 0, "r"
            )
            == "done"
        )
    assert again[-1][0] == batches.FINALIZE_TASK
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "completed"
    done = get_batch(stack, batch["id"])
    assert done["request_counts"] == {
        "total": expected.total,
        "completed": len(expected.rows),
        "failed": len(expected.errors),
    }
    check_partition(stack, done, expected)


def test_chunks_that_finish_before_planning_ends_still_complete_the_batch(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk runs as soon as it is sent, so every one is done before the plan ends: the chunks
    cannot finalize (planning has not ended), the planner does, once."""
    from tasks import batch_chunks, batch_finalize, batch_planning, batches

    monkeypatch.setattr(batch_planning, "PLAN_GROUP_CHUNKS", 1)
    sent: list[tuple[str, list[Any], str]] = []
    seen: list[dict[str, Any]] = []
    dispatch = recording_dispatch(sent)

    def run_at_once(name: str, args: list[Any], queue: str) -> None:
        if name == batches.CHUNK_TASK:
            gpu = int(queue.rsplit(".", 1)[1])
            assert batch_chunks.run_chunk(stack.services, dispatch, args[0], args[1], gpu, "now") == "done"
            seen.append(get_batch(stack, args[0]))

    expected = make_input(300, bad_every=15, prefix="early")
    file = upload(stack, expected.data)
    batch, _ = batches.create(
        stack.services, dispatch, "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    assert (
        batch_planning.plan_batch(stack.services, recording_dispatch(sent, run_at_once), batch["id"])
        == "queued"
    )
    assert len(seen) >= 10
    for during in seen:
        counts = during["request_counts"]
        assert during["status"] == "in_progress" and during["progress"] == 0 and not during["finalizing_at"]
        assert counts["total"] == counts["completed"] + counts["failed"], "total: the lines recorded so far"
    assert [c["total"] for c in (s["request_counts"] for s in seen)] == sorted(
        c["total"] for c in (s["request_counts"] for s in seen)
    )
    finalizes = [name for name, _, _ in sent if name == batches.FINALIZE_TASK]
    assert finalizes == [batches.FINALIZE_TASK], "queued by the planner, once"
    assert get_batch(stack, batch["id"])["status"] == "finalizing"
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "completed"
    done = get_batch(stack, batch["id"])
    assert done["request_counts"]["total"] == expected.total and done["progress"] == 100
    check_partition(stack, done, expected)


def test_cancel_during_planning_sends_nothing_more_and_every_line_ends_cancelled(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel while the file is planned: no chunk is sent after it, and the planner still reads to
    the end, recording the remaining chunks as cancelled, so every line is in the error file."""
    from tasks import batch_finalize, batch_planning, batches

    monkeypatch.setattr(batch_planning, "PLAN_GROUP_CHUNKS", 1)
    sent: list[tuple[str, list[Any], str]] = []
    dispatch = recording_dispatch(sent)

    def cancel_at_the_third_chunk(name: str, args: list[Any], queue: str) -> None:
        if name == batches.CHUNK_TASK and args[1] == 2:
            assert batches.cancel(stack.services, dispatch, "acme", args[0])["status"] == "cancelling"

    expected = make_input(300, prefix="cancel-plan")
    file = upload(stack, expected.data)
    batch, _ = batches.create(
        stack.services, dispatch, "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    # The cancel queued finalize; it waits while the batch is planned.
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "nothing to do: validating"
    outcome = batch_planning.plan_batch(
        stack.services, recording_dispatch(sent, cancel_at_the_third_chunk), batch["id"]
    )
    assert outcome == "queued"
    assert chunk_indexes(sent) == [0, 1, 2], "no chunk sent after the cancel"
    chunks = recorded_chunks(stack, batch["id"])
    assert (
        len(chunks) > 3
        and all(c.status == "cancelled" for c in chunks[3:])
        and not any(c.sent_at for c in chunks[3:])
    )
    assert [name for name, _, _ in sent].count(batches.FINALIZE_TASK) >= 1, "the planner queued finalize"
    assert batch_finalize.finalize_batch(stack.services, batch["id"]) == "cancelled"
    done = get_batch(stack, batch["id"])
    counts = done["request_counts"]
    assert done["status"] == "cancelled" and counts["total"] == expected.total
    assert counts["failed"] == counts["total"] and counts["completed"] == 0
    errors = download(stack, done["error_file_id"])
    assert sorted(e["custom_id"] for e in errors) == sorted(expected.rows)
    assert {e["error"]["code"] for e in errors} == {"cancelled"}
    assert batch_planning.plan_batch(stack.services, dispatch, batch["id"]) == "not planning"


def test_two_planners_at_once_record_one_set_of_chunks(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import batch_planning, batches

    monkeypatch.setattr(batch_planning, "PLAN_GROUP_CHUNKS", 1)
    expected = make_input(2000, bad_every=20, prefix="racing")
    file = upload(stack, expected.data)
    batch, _ = batches.create(
        stack.services, recording_dispatch([]), "acme", {"model": "digits", "input_file_id": file["id"]}
    )
    barrier = threading.Barrier(2)
    sends: list[list[tuple[str, list[Any], str]]] = [[], []]
    outcomes: list[str] = []

    def plan(which: int) -> None:
        barrier.wait(30)
        outcomes.append(
            batch_planning.plan_batch(stack.services, recording_dispatch(sends[which]), batch["id"])
        )

    threads = [threading.Thread(target=plan, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert "queued" in outcomes and len(outcomes) == 2, outcomes
    chunks = assert_one_set_of_chunks(stack, batch["id"], expected)
    both = chunk_indexes(sends[0]) + chunk_indexes(sends[1])
    assert sorted(both) == [c.index for c in chunks], "each chunk sent once, by the planner that recorded it"
    duplicates = sorted(line for c in chunks for line in (c.duplicate_lines or ()))
    assert duplicates == sorted(n for n, code in expected.errors.items() if code == "duplicate_custom_id")
    assert get_batch(stack, batch["id"])["request_counts"]["total"] == expected.total
