"""``inferq up``: the whole local stack starts, serves a real inference, restarts a process that dies,
and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from launcher.localstack import free_port, port_open

pytestmark = pytest.mark.integration


def triton_http_port() -> int:
    """A free port whose next two (gRPC, metrics) are free too."""
    while True:
        port = free_port()
        if port < 65000 and not any(port_open("127.0.0.1", p) for p in (port + 1, port + 2)):
            return port


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_and_ctrl_c_stops_everything(tmp_path: Path, redis_url: str) -> None:
    api_port = free_port()
    env = {
        **os.environ,
        "INFERQ_DATA_DIR": str(tmp_path / "data"),
        "INFERQ_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/9",
        "INFERQ_DATABASE_URL": "",
        "INFERQ_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "INFERQ_TRITON_URLS": ",".join(f"{gpu}=http://127.0.0.1:{triton_http_port()}" for gpu in (0, 1)),
        "INFERQ_API_PORT": str(api_port),
        "INFERQ_FLOWER_PORT": str(free_port()),
        "INFERQ_WORKER_CONCURRENCY": "1",
    }
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in log.read_text():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        banner = log.read_text()
        key = banner.split("API key", 1)[1].split()[0]
        assert (tmp_path / "data/dev-api-key").read_text().strip() == key
        assert "digits v1 ready (gpu 0: ready, gpu 1: ready)" in banner

        base = f"http://127.0.0.1:{api_port}"
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        response = requests.post(
            f"{base}/v1/models/digits/infer",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["parameters"]["queue"] in {"gpu.0", "gpu.1"}
        ready = requests.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}  # the details need an admin key

        # What the stack wrote is its owner's alone; the S3 key is on no command line.
        data = tmp_path / "data"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for private in (data / "dev-api-key", data / "inferq.db", *sorted((data / "logs").iterdir())):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        assert not any("inferq-secret" in cmdline(pid) for pid in descendants(up.pid))

        # A worker that dies (SIGKILL) is started again; the stack does not stop.
        [worker] = [pid for pid in descendants(up.pid) if "-Q gpu.0" in cmdline(pid)]
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            again = [pid for pid in descendants(up.pid) if "-Q gpu.0" in cmdline(pid) and pid != worker]
            if again and requests.get(f"{base}/readyz", timeout=10).status_code == 200:
                break
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert "worker-gpu0 exited" in log.read_text() and "worker-gpu0 restarted" in log.read_text()
        for _ in range(4):  # both GPUs serve again
            response = requests.post(
                f"{base}/v1/models/digits/infer",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text

        started = descendants(up.pid)
        assert len(started) >= 7  # servers, workers (and their pool processes), API, Flower
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, log.read_text()
        time.sleep(0.5)
        left = sorted(pid for pid in started if alive(pid))
        assert left == [], f"processes left behind: {left}"
        assert not port_open("127.0.0.1", api_port)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
