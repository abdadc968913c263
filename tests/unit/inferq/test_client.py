"""The SDK without the platform: retries (Retry-After), the streamed multipart body, redirects to
the object store without the key, line decoding and tensor conversion, against tiny local servers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.client import (
    ApiError,
    ApiUnreachable,
    BadRequest,
    BatchNotFinished,
    Client,
    MultipartFile,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    WaitTimeout,
    datatype_of,
    decode_lines,
    decode_outputs,
    encode_inputs,
    parse_retry_after,
)

# (status, headers, body) for each request in turn; the last one repeats.
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Server:
    url: str
    seen: list[Seen] = field(default_factory=list)


@contextmanager
def serve(answer: Callable[[Seen, int], Answer | None]) -> Iterator[Server]:
    """A local HTTP server thread: ``answer(request, index)`` says what to reply (None: drop the
    connection without a word)."""
    server_state = Server("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def handle_one(self) -> None:
            length = self.headers.get("Content-Length")
            if length is not None:
                body = self.rfile.read(int(length))
            elif self.headers.get("Transfer-Encoding") == "chunked":
                body = b""
                while size := int(self.rfile.readline().strip(), 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
            else:
                body = b""
            seen = Seen(self.command, self.path, dict(self.headers), body, time.monotonic())
            server_state.seen.append(seen)
            reply = answer(seen, len(server_state.seen) - 1)
            if reply is None:
                self.close_connection = True
                return
            status, headers, content = reply
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_DELETE = handle_one

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def problem(status: int, title: str, retry_after: str | None = None, **extra: Any) -> Answer:
    headers = {"Content-Type": "application/problem+json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"type": f"urn:inferq:problem:{title.lower().replace(' ', '-')}", "title": title, "status": status}
    return status, headers, json.dumps({**body, **extra}).encode()


def ok(body: Any) -> Answer:
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def test_importing_the_sdk_pulls_in_neither_flask_nor_celery() -> None:
    code = (
        "import sys, inferq.client\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'celery', 'kombu', 'sqlalchemy', 'werkzeug', 'redis', 'tasks', 'webapp', 'registry'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_429_is_retried_after_its_retry_after() -> None:
    def answer(seen: Seen, index: int) -> Answer:
        return problem(429, "Rate limited", "1") if index == 0 else ok({"data": []})

    with serve(answer) as server:
        assert Client(server.url, "k").get("/v1/models") == {"data": []}
    first, second = server.seen
    assert second.at - first.at >= 0.95  # Retry-After: 1, honoured
    assert first.headers["Authorization"] == "Bearer k"


def test_503_is_retried_a_bounded_number_of_times_also_for_a_post() -> None:
    unavailable = problem(503, "Broker unavailable", "0")
    with serve(lambda seen, index: unavailable) as server, pytest.raises(ServiceUnavailable) as caught:
        Client(server.url, "k", retries=2).post("/v1/batches", {"model": "m"})
    assert len(server.seen) == 3
    error = caught.value
    assert error.status == 503 and error.title == "Broker unavailable" and error.retry_after == 0
    assert error.code == "broker-unavailable" and isinstance(error, ApiError)


def test_a_retry_after_beyond_the_retry_time_is_not_waited_for() -> None:
    with serve(lambda seen, index: problem(429, "Rate limited", "120", detail="100 per 1 minute")) as server:
        started = time.monotonic()
        with pytest.raises(RateLimited) as caught:
            Client(server.url, "k", retry_time=5).get("/v1/models")
    assert time.monotonic() - started < 2 and len(server.seen) == 1
    assert caught.value.retry_after == 120
    assert caught.value.describe() == "429 Rate limited: 100 per 1 minute"


def test_other_errors_are_not_retried_and_carry_the_problem() -> None:
    errors = [{"pointer": "/inputs/0/shape", "detail": "must be [-1, 64]"}]
    answer = problem(400, "The request is not valid", detail="bad shape", errors=errors, request_id="r1")
    with serve(lambda seen, index: answer) as server, pytest.raises(BadRequest) as caught:
        Client(server.url, "k").post("/v1/models/digits/infer", {})
    assert len(server.seen) == 1
    error = caught.value
    assert error.errors == errors and error.request_id == "r1" and error.problem["detail"] == "bad shape"
    assert error.describe() == "400 The request is not valid: bad shape\n  /inputs/0/shape: must be [-1, 64]"


def test_a_dropped_connection_is_retried_for_a_get_only() -> None:
    def answer(seen: Seen, index: int) -> Answer | None:
        return None if index == 0 else ok({"id": "b1"})

    with serve(answer) as server:
        assert Client(server.url, "k").get("/v1/batches/b1") == {"id": "b1"}
    assert len(server.seen) == 2
    with serve(answer) as server, pytest.raises(ApiUnreachable):
        Client(server.url, "k").post("/v1/batches", {"model": "m", "input_file_id": "f"})
    assert len(server.seen) == 1
    # With an Idempotency-Key a create is safe to send again.
    with serve(answer) as server:
        client = Client(server.url, "k")
        assert client.batches.create("m", "f", idempotency_key="key-1") == {"id": "b1"}
    assert len(server.seen) == 2 and server.seen[1].headers["Idempotency-Key"] == "key-1"


def test_an_api_that_is_down_is_one_short_line() -> None:
    with pytest.raises(ApiUnreachable) as caught:
        Client("http://127.0.0.1:9", "k", retries=1).get("/v1/models")
    assert caught.value.status == 0
    assert caught.value.describe() == "API unreachable: http://127.0.0.1:9: [Errno 111] Connection refused"


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    from email.utils import formatdate

    assert 8 < (parse_retry_after(formatdate(time.time() + 10, usegmt=True)) or 0) <= 10


class CountingFile(io.BytesIO):
    """Records each read's size: the encoder must never read without one."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)


def test_an_upload_is_streamed_in_pieces_with_a_content_length_and_progress(tmp_path: Path) -> None:
    data = b"".join(b'{"custom_id": "%d"}\n' % i for i in range(200_000))  # about 4 MB
    path = tmp_path / 'in "put".jsonl'
    path.write_bytes(data)
    calls: list[tuple[int, int | None]] = []
    created = {"id": "f1", "bytes": len(data)}
    with serve(
        lambda seen, index: (201, {"Content-Type": "application/json"}, json.dumps(created).encode())
    ) as s:
        assert Client(s.url, "k").files.upload(path, progress=lambda a, b: calls.append((a, b))) == created
    (seen,) = s.seen
    assert seen.headers["Content-Length"] == str(len(seen.body))
    boundary = seen.headers["Content-Type"].split("boundary=", 1)[1]
    parts = parse_multipart(seen.body, boundary)
    assert parts["purpose"] == (None, b"batch_input")
    assert parts["file"] == ("in %22put%22.jsonl", data)
    assert list(parts) == ["purpose", "file"], "fields come before the file"
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data)) and len(calls) > 3
    assert [a for a, _ in calls] == sorted(a for a, _ in calls)

    counting = CountingFile(data)
    with serve(lambda seen, index: (201, {}, b'{"id": "f2"}')) as s:
        Client(s.url, "k").files.upload(counting, filename="x.jsonl")
    assert -1 not in counting.reads and max(counting.reads) <= 1024 * 1024
    assert not counting.closed, "the caller's file object is the caller's to close"


def test_an_upload_answered_503_is_sent_again_whole_and_a_pipe_is_sent_once(tmp_path: Path) -> None:
    data = b'{"custom_id": "a"}\n' * 1000
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)

    def answer(seen: Seen, index: int) -> Answer:
        return problem(503, "Object store unavailable", "0") if index == 0 else (201, {}, b'{"id": "f"}')

    with serve(answer) as server:
        Client(server.url, "k").files.upload(path)
    assert len(server.seen) == 2 and server.seen[0].body == server.seen[1].body

    class Pipe(io.RawIOBase):  # cannot seek back: no second try, and no Content-Length
        def __init__(self) -> None:
            self.left = data

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            piece, self.left = self.left[:size], self.left[size:]
            return piece

    with serve(answer) as server, pytest.raises(ServiceUnavailable):
        Client(server.url, "k").files.upload(Pipe(), filename="in.jsonl")  # type: ignore[arg-type]
    (seen,) = server.seen
    assert seen.headers.get("Transfer-Encoding") == "chunked"
    assert parse_multipart(seen.body, seen.headers["Content-Type"].split("boundary=")[1])["file"][1] == data


def parse_multipart(body: bytes, boundary: str) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, value) of a multipart/form-data body, strictly as RFC 7578 frames it."""
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(f"--{boundary}".encode())[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, value = chunk[2:-2].partition(b"\r\n\r\n")
        disposition = next(
            line for line in head.decode().split("\r\n") if line.startswith("Content-Disposition")
        )
        params = dict(item.strip().split("=", 1) for item in disposition.split(";")[1:] if "=" in item)
        filename = params["filename"].strip('"') if "filename" in params else None
        parts[params["name"].strip('"')] = (filename, value)
    return parts


def test_multipart_body_is_the_same_each_time_it_is_iterated() -> None:
    body = MultipartFile({"purpose": "batch_input"}, "file", "a.jsonl", lambda: io.BytesIO(b"x\n"), 2)
    first, second = b"".join(body), b"".join(body)
    assert first == second and len(body) == len(first)


def test_content_follows_the_redirect_without_the_api_key() -> None:
    lines = b"".join(json.dumps({"custom_id": f"r{i}", "outputs": []}).encode() + b"\n" for i in range(5000))
    with serve(lambda seen, index: (200, {"Content-Type": "application/jsonl"}, lines)) as store:

        def api(seen: Seen, index: int) -> Answer:
            if seen.path == "/v1/batches/b1":
                return ok({"id": "b1", "status": "completed", "output_file_id": "f9", "error_file_id": None})
            assert seen.path == "/v1/files/f9/content"
            return 302, {"Location": f"{store.url}/bucket/key?X-Amz-Signature=abc"}, b""

        with serve(api) as server:
            client = Client(server.url, "secret-key")
            received: list[int] = []
            decoded = list(client.results("b1", progress=lambda n, total: received.append(n)))
            assert list(client.results("b1", kind="error")) == []
    assert [line["custom_id"] for line in decoded] == [f"r{i}" for i in range(5000)]
    assert received[-1] == len(lines)
    (download,) = store.seen
    assert download.path == "/bucket/key?X-Amz-Signature=abc"
    assert "Authorization" not in download.headers
    assert all(seen.headers["Authorization"] == "Bearer secret-key" for seen in server.seen)


def test_results_of_a_batch_still_running_say_so() -> None:
    batch = {
        "id": "b1",
        "status": "in_progress",
        "request_counts": {"total": 10, "completed": 2, "failed": 0},
    }
    with serve(lambda seen, index: ok(batch)) as server, pytest.raises(BatchNotFinished) as caught:
        Client(server.url, "k").results("b1")
    assert "in_progress" in str(caught.value)


def test_wait_polls_to_the_end_or_times_out() -> None:
    def batch(status: str, done: int) -> dict[str, Any]:
        return {"id": "b1", "status": status, "request_counts": {"total": 4, "completed": done, "failed": 0}}

    statuses = [
        batch("validating", 0),
        batch("in_progress", 2),
        batch("finalizing", 4),
        batch("completed", 4),
    ]
    with serve(lambda seen, index: ok(statuses[min(index, 3)])) as server:
        seen: list[str] = []
        final = Client(server.url, "k").batches.wait(
            "b1", poll=0.05, progress=lambda b: seen.append(b["status"])
        )
    assert final["status"] == "completed" and seen == ["validating", "in_progress", "finalizing", "completed"]
    with serve(lambda seen, index: ok(batch("in_progress", 1))) as server:
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as caught:
            Client(server.url, "k").batches.wait("b1", poll=0.1, timeout=0.5)
    assert 0.45 < time.monotonic() - started < 2
    assert caught.value.batch["status"] == "in_progress" and "1 of 4 lines done" in str(caught.value)


def test_iterating_pages_follows_the_cursor() -> None:
    def answer(seen: Seen, index: int) -> Answer:
        if "after=b2" in seen.path:
            return ok({"data": [{"id": "b3"}], "has_more": False, "last_id": "b3"})
        return ok({"data": [{"id": "b1"}, {"id": "b2"}], "has_more": True, "last_id": "b2"})

    with serve(answer) as server:
        assert [b["id"] for b in Client(server.url, "k").batches.iter(status="completed", page_size=2)] == [
            "b1",
            "b2",
            "b3",
        ]
    assert "status=completed" in server.seen[0].path and "limit=2" in server.seen[0].path


def test_not_found_is_a_not_found() -> None:
    missing = problem(404, "Batch not found", detail="no batch 'x'")
    with serve(lambda seen, index: missing) as server, pytest.raises(NotFound) as caught:
        Client(server.url, "k").batches.get("x")
    assert caught.value.status == 404 and str(caught.value) == "404 Batch not found: no batch 'x'"


def test_numpy_inputs_become_protocol_tensors_and_outputs_arrays() -> None:
    tensors = encode_inputs(
        {"input": np.arange(6, dtype=np.float32).reshape(2, 3), "mask": np.array([True, False])}
    )
    assert tensors[0] == {"name": "input", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
    assert tensors[1]["datatype"] == "BOOL"
    assert encode_inputs([("ids", np.array([[1, 2]], dtype=np.int64))])[0]["datatype"] == "INT64"
    assert (
        encode_inputs([{"name": "raw", "datatype": "FP32", "shape": [1], "data": [1.0]}])[0]["name"] == "raw"
    )
    assert datatype_of(np.array(["a"]).dtype) == "BYTES"
    assert datatype_of(np.dtype("float16")) == "FP16" and datatype_of(np.dtype("uint8")) == "UINT8"
    with pytest.raises(ValueError, match="complex"):
        datatype_of(np.dtype("complex64"))
    outputs = decode_outputs(
        {
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 4]},
                {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2]},
            ]
        }
    )
    assert outputs["label"].dtype == np.int64 and outputs["label"].tolist() == [3, 4]
    assert outputs["probabilities"].shape == (2, 2) and outputs["probabilities"].dtype == np.float32


def test_lines_are_decoded_across_pieces() -> None:
    pieces = [b'{"a": 1}\n{"b"', b": 2}\n\n", b'{"c": 3}']
    assert list(decode_lines(pieces)) == [{"a": 1}, {"b": 2}, {"c": 3}]
