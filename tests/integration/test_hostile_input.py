"""Hostile and careless requests to the real API: each a small 4xx problem+json naming what is
wrong (never a 500), nothing queued, and nothing shown that should not be (metric labels,
readiness details, secrets)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time
from typing import Any

import pytest

from launcher.localstack import free_port, redis_process
from tests.fixtures import Stack

pytestmark = pytest.mark.integration

ROW = [0.0] * 64
INFER = "/v1/models/digits/infer"
MiB = 1024 * 1024


def tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW, **overrides}


def queued_task_count(stack: Stack) -> int:
    return sum(1 for _ in stack.services.redis.scan_iter("inferq:task:*"))


def post_raw(stack: Stack, path: str, raw: bytes, content_type: str | None, **headers: str) -> Any:
    sent = {**stack.auth(stack.admin_key), **headers}
    if content_type is not None:
        sent["Content-Type"] = content_type
    return stack.client().post(path, data=raw, headers=sent)


def assert_problem(response: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    problem: dict[str, Any] = response.get_json()
    assert problem["status"] == status
    if kind is not None:
        assert problem["type"].endswith(kind), problem
    return problem


# --- nesting depth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"inputs": ' + b"[" * 33 + b"]" * 33 + b"}",
        b"[" * 2_000_000,  # unterminated too
    ],
    ids=["arrays-100k", "objects-50k", "just-over", "unterminated-2M"],
)
def test_deeply_nested_json_is_a_400(stack: Stack, raw: bytes) -> None:
    before = queued_task_count(stack)
    problem = assert_problem(post_raw(stack, INFER, raw, "application/json"), 400, "json-too-deep")
    assert "32 levels" in problem["detail"]
    assert queued_task_count(stack) == before


def test_brackets_inside_strings_do_not_count(stack: Stack) -> None:
    body = {"id": "[{" * 100 + '\\"[' * 10, "inputs": [tensor()], "outputs": [{"name": "label"}]}
    response = stack.client().post(INFER, json=body, headers=stack.auth())
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["id"] == body["id"]


# --- bounded problem documents and strings --------------------------------------------------


def test_many_mismatches_answer_a_small_problem(stack: Stack) -> None:
    # The case: 100,000 unknown tensors in a small body answered 9.7 MB of errors.
    raw = b'{"inputs": [' + b",".join([b'{"name":"x"}'] * 100_000) + b"]}"
    problem = assert_problem(post_raw(stack, INFER, raw, "application/json"), 400, "invalid-request")
    assert len(json.dumps(problem)) < 2_000 and "at most 256" in problem["errors"][0]["detail"]
    # Within the tensor bound, still only the first problems and a count of the rest.
    body = {"inputs": [tensor(name=f"x{i}") for i in range(200)]}
    response = stack.client().post(INFER, json=body, headers=stack.auth())
    problem = assert_problem(response, 400, "invalid-request")
    assert len(problem["errors"]) == 20 and problem["errors_omitted"] == 181  # 200 unknown + 1 missing
    assert len(response.get_data()) < 10_000


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"id": "x" * MiB, "inputs": [tensor()]}, "/id"),
        ({"inputs": [tensor(name="n" * MiB)]}, "/inputs/0/name"),
        ({"inputs": [tensor(datatype="F" * MiB)]}, "/inputs/0/datatype"),
        ({"inputs": [tensor()], "outputs": [{"name": "o" * MiB}]}, "/outputs/0/name"),
    ],
    ids=["id", "input-name", "datatype", "output-name"],
)
def test_a_megabyte_string_is_refused_not_echoed(stack: Stack, body: Any, pointer: str) -> None:
    before = queued_task_count(stack)
    response = stack.client().post(INFER, json=body, headers=stack.auth())
    problem = assert_problem(response, 400)
    assert any(e["pointer"] == pointer for e in problem["errors"]), problem
    assert len(response.get_data()) < 4_000, "the value is not echoed back"
    assert queued_task_count(stack) == before


def test_a_megabyte_model_field_is_refused(stack: Stack) -> None:
    body = {"name": "m" * MiB, "version": "1", "inputs": [], "outputs": []}
    response = stack.client().post("/v1/models", json=body, headers=stack.auth(stack.admin_key))
    assert len(response.get_data()) < 4_000
    assert any(e["pointer"] == "/name" for e in assert_problem(response, 400)["errors"])


# --- wrong types anywhere ---------------------------------------------------------------------


SIGNATURE = [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
WRONG_TYPES = [
    (
        "output name a list",
        INFER,
        {"inputs": [tensor()], "outputs": [{"name": ["label"]}]},
        "/outputs/0/name",
    ),
    ("output a list", INFER, {"inputs": [tensor()], "outputs": [["label"]]}, "/outputs/0/name"),
    ("outputs an object", INFER, {"inputs": [tensor()], "outputs": {"name": "label"}}, "/outputs"),
    ("input name a dict", INFER, {"inputs": [tensor(name={"a": 1})]}, "/inputs/0/name"),
    ("datatype a list", INFER, {"inputs": [tensor(datatype=["FP32"])]}, "/inputs/0/datatype"),
    ("shape a string", INFER, {"inputs": [tensor(shape="1,64")]}, "/inputs/0/shape"),
    ("shape of floats", INFER, {"inputs": [tensor(shape=[1.0, 64.0])]}, "/inputs/0/shape"),
    ("shape of 33 dims", INFER, {"inputs": [tensor(shape=[1] * 33)]}, "/inputs/0/shape"),
    ("data an object", INFER, {"inputs": [tensor(data={"a": 1})]}, "/inputs/0/data"),
    ("data of objects", INFER, {"inputs": [tensor(data=[{}] * 64)]}, "/inputs/0/data"),
    ("data of huge ints", INFER, {"inputs": [tensor(data=[10**400] * 64)]}, "/inputs/0/data"),
    ("inputs a string", INFER, {"inputs": "input"}, "/inputs"),
    ("body a number", INFER, 7, "/"),
    (
        "model datatype a list",
        "/v1/models",
        {
            "name": "m",
            "version": "1",
            "inputs": [{**SIGNATURE[0], "datatype": ["FP32"]}],
            "outputs": SIGNATURE,
        },
        "/inputs/0/datatype",
    ),
    (
        "model name a list",
        "/v1/models",
        {"name": ["m"], "version": "1", "inputs": SIGNATURE, "outputs": SIGNATURE},
        "/name",
    ),
    (
        "model tensor name a dict",
        "/v1/models",
        {"name": "m", "version": "1", "inputs": [{**SIGNATURE[0], "name": {}}], "outputs": SIGNATURE},
        "/inputs/0/name",
    ),
    (
        "model labels a list",
        "/v1/models",
        {"name": "m", "version": "1", "inputs": SIGNATURE, "outputs": SIGNATURE, "labels": ["a"]},
        "/labels",
    ),
    ("batch body a list", "/v1/batches", [], "/"),
]


@pytest.mark.parametrize(
    ("path", "body", "pointer"), [c[1:] for c in WRONG_TYPES], ids=[c[0] for c in WRONG_TYPES]
)
def test_wrong_types_are_a_400_naming_the_field(stack: Stack, path: str, body: Any, pointer: str) -> None:
    raw = json.dumps(body).encode()
    problem = assert_problem(post_raw(stack, path, raw, "application/json"), 400)
    assert any(e["pointer"] == pointer for e in problem.get("errors", [])), problem


@pytest.mark.parametrize(
    "query",
    [
        "/v1/models?limit=²",
        "/v1/models?offset=¹",
        "/v1/models?limit=٣",  # an Arabic-Indic digit
        "/v1/models?limit=99999999999999999999999",
        "/v1/models?limit=-1",
        "/v1/models?label=" + "k:v&label=" * 20 + "k:v",
        "/v1/models?name=" + "n" * 10_000,
    ],
    ids=["superscript-2", "superscript-1", "arabic-3", "huge", "negative", "17-labels", "long-name"],
)
def test_bad_query_parameters_are_a_400(stack: Stack, query: str) -> None:
    assert_problem(stack.client().get(query, headers=stack.auth()), 400, "invalid-request")


@pytest.mark.parametrize("timeout", ["²", "1e999", "-0.5", "inf", "0x10"])
def test_bad_timeout_is_a_400(stack: Stack, timeout: str) -> None:
    response = stack.client().post(
        f"{INFER}?timeout={timeout}", json={"inputs": [tensor()]}, headers=stack.auth()
    )
    assert_problem(response, 400)


# --- media types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", json.dumps({"inputs": [tensor()]}).encode()),
        ("application/x-www-form-urlencoded", b"inputs=1"),
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100),
        (None, json.dumps({"inputs": [tensor()]}).encode()),
        ("application/json; charset=latin-1", json.dumps({"inputs": [tensor()]}).encode()),
        ("multipart/form-data; boundary=x", b"--x--\r\n"),
    ],
    ids=["text-plain", "form", "png", "missing", "latin-1", "multipart"],
)
def test_non_json_media_types_are_a_415(stack: Stack, content_type: str | None, raw: bytes) -> None:
    before = queued_task_count(stack)
    for path in (INFER, "/v1/models", "/v1/batches"):
        problem = assert_problem(post_raw(stack, path, raw, content_type), 415, "unsupported-media-type")
        assert "application/json" in problem["detail"]
    assert queued_task_count(stack) == before


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/JSON;charset=UTF-8",
        "application/vnd.inferq+json",
    ],
)
def test_json_media_types_are_accepted(stack: Stack, content_type: str) -> None:
    raw = json.dumps({"inputs": [tensor()]}).encode()
    response = stack.client().post(INFER, data=raw, headers={**stack.auth(), "Content-Type": content_type})
    assert response.status_code == 200, response.get_data(as_text=True)


# --- sizes --------------------------------------------------------------------------------------


def big_json(size: int) -> bytes:
    """A valid inference body of about ``size`` bytes."""
    head, tail = b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [', b"]}]}"
    count = max(1, (size - len(head) - len(tail)) // 4)
    return head + b",".join([b"0.0"] * count) + tail


def test_body_over_the_limit_with_content_length_is_a_413(stack: Stack) -> None:
    raw = big_json(stack.settings.max_request_bytes + MiB)
    problem = assert_problem(post_raw(stack, INFER, raw, "application/json"), 413, "request-too-large")
    assert str(stack.settings.max_request_bytes) in problem["detail"]


def test_chunked_body_over_the_limit_is_a_413_not_truncated(stack: Stack) -> None:
    """As a server that de-chunks (gunicorn, werkzeug) hands it over: no Content-Length, the
    stream marked terminated. The first 16 MiB are valid JSON; the body goes on for 20 MiB."""
    limit = stack.settings.max_request_bytes
    valid = big_json(limit - 64)
    assert json.loads(valid) and len(valid) <= limit
    for body, expected in ((valid + b" " * (20 * MiB - len(valid)), 413), (valid, 400)):
        response = stack.client().post(
            INFER,
            input_stream=io.BytesIO(body),
            headers={**stack.auth(), "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        # The valid body fits: it is read whole and checked (its data does not match its shape).
        assert response.status_code == expected, response.get_data(as_text=True)[:300]
        if expected == 400:
            assert response.get_json()["errors"][0]["pointer"] == "/inputs/0/data"


def test_a_body_of_exactly_the_limit_is_read(stack: Stack) -> None:
    small = dataclasses.replace(stack.settings, max_request_bytes=4096)
    from webapp import create_app

    app = create_app(small)
    try:
        raw = json.dumps({"inputs": [tensor()]}).encode()
        raw += b" " * (4096 - len(raw))
        headers = {**stack.auth(), "Content-Type": "application/json"}
        assert app.test_client().post(INFER, data=raw, headers=headers).status_code == 200
        assert app.test_client().post(INFER, data=raw + b" ", headers=headers).status_code == 413
    finally:
        app.extensions["inferq"].close()


# --- what is shown ------------------------------------------------------------------------------


def test_made_up_methods_and_paths_add_no_metric_series(stack: Stack) -> None:
    client = stack.client()
    for index in range(30):
        client.open(f"/v1/models/x{index}/nothing-{index}", method=f"BREW{index}")
        client.open(f"/random/{index}", method="GET")
        client.open("/healthz", method=f"PROPFIND{index}")
    text = client.get("/metrics").get_data(as_text=True)
    methods = set(re.findall(r'inferq_http_requests_total\{[^}]*method="([^"]+)"', text))
    endpoints = set(re.findall(r'inferq_http_requests_total\{[^}]*endpoint="([^"]+)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert "other" in methods
    assert not any("random" in endpoint or "nothing" in endpoint for endpoint in endpoints), endpoints
    assert "unmatched" in endpoints


def test_readyz_shows_no_url_host_or_error_to_the_public(stack: Stack) -> None:
    from webapp import create_app

    down = dataclasses.replace(
        stack.settings, s3_endpoint=f"http://127.0.0.1:{free_port()}", ready_cache_ttl=0
    )
    app = create_app(down)
    try:
        public = app.test_client().get("/readyz")
        assert public.status_code == 503 and public.get_json() == {"status": "unavailable"}
        admin = app.test_client().get("/readyz", headers=stack.auth(stack.admin_key)).get_json()
        assert (
            admin["checks"]["object_store"]["status"] == "fail" and admin["checks"]["object_store"]["error"]
        )
    finally:
        app.extensions["inferq"].close()


# --- the rate limiter after a Redis stall ---------------------------------------------------------


def test_rate_limiter_fails_open_within_its_bound_and_counts_it(stack: Stack, tmp_path: Any) -> None:
    """Its own Redis (frozen with SIGSTOP for a moment): requests go through unchecked for at most
    INFERQ_RATE_LIMIT_FAIL_OPEN seconds, counted in inferq_rate_limiter_open_total; then the limit
    holds again."""
    import signal
    import uuid

    from launcher.localstack import port_open
    from registry.apikeys import create_key
    from webapp import create_app

    port = free_port()
    redis = redis_process(port, tmp_path / "redis-rl", tmp_path / "redis-rl.log").start()
    try:
        redis.wait_until(lambda: port_open("127.0.0.1", port), 20, "listening")
        settings = dataclasses.replace(
            stack.settings,
            redis_url=f"redis://127.0.0.1:{port}/0",
            broker_url=stack.settings.broker_url,
            result_backend=stack.settings.result_backend,
            rate_limit_fail_open=1.0,
        )
        app = create_app(settings)
        with stack.services.db.session() as session:
            _, key = create_key(session, f"rl-{uuid.uuid4().hex[:6]}", rate_limit="2/minute")
        client, headers = app.test_client(), stack.auth(key)

        def opened() -> float:
            text = client.get("/metrics").get_data(as_text=True)
            found = re.search(r"^inferq_rate_limiter_open_total (\S+)$", text, re.M)
            return float(found.group(1)) if found else 0.0

        url = "/v1/models/by-name/digits/1"  # the registry cache falls back to the database
        try:
            assert [client.get(url, headers=headers).status_code for _ in range(3)] == [200, 200, 429]
            before = opened()
            redis.signal(signal.SIGSTOP)
            try:
                stalled = [client.get(url, headers=headers).status_code for _ in range(3)]
            finally:
                redis.signal(signal.SIGCONT)
            assert stalled == [200, 200, 200]  # let through, not a 5xx, while Redis is stalled
            assert opened() - before == 3
            time.sleep(settings.rate_limit_fail_open + 0.2)  # the documented bound, and a margin
            assert client.get(url, headers=headers).status_code == 429
            assert opened() - before == 3
        finally:
            app.extensions["inferq"].close()
    finally:
        redis.signal(signal.SIGCONT)
        redis.stop()


def test_the_s3_server_takes_its_key_from_its_environment_and_enforces_it(stack: Stack) -> None:
    from pathlib import Path

    from workers.storage import ObjectStore, StorageError

    s = stack.settings
    command_lines = [_read(entry) for entry in Path("/proc").glob("[0-9]*/cmdline")]
    servers = [argv.split(b"\0") for argv in command_lines if b"serve\0s3" in argv]
    assert servers, "the stack's rclone serve s3 runs here"
    assert not any(s.s3_secret_key.encode() in part for argv in servers for part in argv)
    ObjectStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.s3_bucket, s.s3_region).ping()
    wrong = ObjectStore(s.s3_endpoint, s.s3_access_key, "not-the-secret", s.s3_bucket, s.s3_region)
    with pytest.raises(StorageError):
        wrong.ping()


def _read(path: Any) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError:
        return b""
