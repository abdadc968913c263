"""Slow and half-sent requests against the API under gunicorn, started exactly as ``inferq up``
starts it (gevent workers): they hold a greenlet each, not a worker others need, and they are
dropped: a request head not complete within ``--keep-alive`` seconds (INFERQ_API_KEEP_ALIVE),
a body that stalls for INFERQ_API_READ_TIMEOUT seconds (408). Bodies over the limit are a 413
there too, chunked or not."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from launcher.localstack import ManagedProcess, free_port
from tests.fixtures import Stack
from tests.integration.test_waiting import serve

pytestmark = pytest.mark.integration

HALF_SENT = 64
KEEP_ALIVE = 2  # seconds, for this test (the default is 5)
READ_TIMEOUT = 2.0
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
).encode()


@dataclasses.dataclass
class Api:
    process: ManagedProcess
    host: str
    port: int
    key: str

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = dataclasses.replace(
        stack.settings,
        api_port=free_port(),
        api_server="gevent",
        api_keep_alive=KEEP_ALIVE,
        api_read_timeout=READ_TIMEOUT,
    )
    process = serve(settings, tmp_path_factory.mktemp("slow-clients"), "api-slow-clients")
    try:
        yield Api(process, settings.api_host, settings.api_port, stack.user_key)
    finally:
        process.stop()


def connect(api: Api) -> socket.socket:
    sock = socket.create_connection((api.host, api.port), timeout=10)
    sock.settimeout(10)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (or answered and closed); False while it waits."""
    sock.setblocking(False)
    try:
        sock.recv(65536)  # b"" once it closed; an answer, had there been one, means the same
        return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def response_head(sock: socket.socket, deadline: float) -> bytes:
    """Bytes the server sends, up to the end of the response head (or until it closes)."""
    received = b""
    while b"\r\n\r\n" not in received and time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not piece:
            break
        received += piece
    return received


def test_half_sent_requests_do_not_stop_the_api_and_are_dropped(api: Api) -> None:
    half = b"POST /v1/models/digits/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bea"
    slow = [connect(api) for _ in range(HALF_SENT)]
    try:
        for sock in slow:
            sock.sendall(half)
        started = time.monotonic()
        for _ in range(3):
            begun = time.perf_counter()
            health = requests.get(f"{api.base}/healthz", timeout=10)
            elapsed = time.perf_counter() - begun
            assert health.status_code == 200 and elapsed < 1.0, elapsed
        answer = requests.post(
            f"{api.base}/v1/models/digits/infer",
            data=BODY,
            headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        # Each half-sent request is dropped once --keep-alive has passed (bounded wait).
        deadline = started + KEEP_ALIVE + 20
        open_ = list(slow)
        while open_ and time.monotonic() < deadline:
            open_ = [sock for sock in open_ if not closed_by_server(sock)]
            time.sleep(0.2)
        assert not open_, f"{len(open_)} of {HALF_SENT} half-sent requests still held"
    finally:
        for sock in slow:
            sock.close()


def test_a_stalled_body_is_dropped_with_a_408(api: Api) -> None:
    sock = connect(api)
    try:
        sock.sendall(
            b"POST /v1/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {api.key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + BODY[:10]
        )
        head = response_head(sock, time.monotonic() + READ_TIMEOUT + 20)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
    finally:
        sock.close()


def send_chunked(sock: socket.socket, api: Api, body: bytes, failures: list[BaseException]) -> None:
    try:
        sock.sendall(
            b"POST /v1/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {api.key}\r\n".encode()
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        step = 256 * 1024
        for start in range(0, len(body), step):
            piece = body[start : start + step]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
    except OSError as exc:  # the server may stop reading once it has answered
        failures.append(exc)


def test_chunked_body_over_the_limit_is_a_413(api: Api, stack: Stack) -> None:
    """20 MiB, chunked, whose first 16 MiB are valid JSON: 413, not truncated and run."""
    from tests.integration.test_hostile_input import big_json

    limit = stack.settings.max_request_bytes
    valid = big_json(limit - 64)
    body = valid + b" " * (20 * 1024 * 1024 - len(valid))
    sock = connect(api)
    failures: list[BaseException] = []
    sender = threading.Thread(target=send_chunked, args=(sock, api, body, failures), daemon=True)
    sender.start()
    try:
        head = response_head(sock, time.monotonic() + 60)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
    finally:
        sock.close()
        sender.join(10)
