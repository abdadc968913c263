"""A 200,000-line batch (about 90 MB) with bounded memory: the upload streams through the API (its
growth is measured while the file goes through it), and no worker (GPU workers, the control
worker and its pool) goes over a fixed resident size while the batch is planned, run and merged."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fixtures import Stack
from tests.integration.batch_files import DIGITS, request_line, wait_for

pytestmark = pytest.mark.integration

LINES = 200_000
API_GROWTH_MB = 64  # the file is ~90 MB: holding it whole would break this
WORKER_MB = 400


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident size (or its peak, ``VmHWM``) of a process, in MB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a prefork worker's pool processes)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


class PeakSampler:
    """The highest resident size seen for each of some processes, sampled in a thread."""

    def __init__(self, pids: dict[str, list[int]], interval: float = 0.05) -> None:
        self.pids = pids
        self.peaks: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for name, pids in self.pids.items():
                self.peaks[name] = max(self.peaks[name], sum(rss_mb(pid) for pid in pids))
            self._stop.wait(interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def lines() -> Iterator[bytes]:
    """The input, made as it is sent (the test holds no copy of it)."""
    boundary = b"--memory-boundary"
    yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    batch: list[bytes] = []
    for i in range(LINES):
        batch.append(json.dumps(request_line(f"m-{i}", DIGITS[i % len(DIGITS)])).encode() + b"\n")
        if len(batch) == 500:
            yield b"".join(batch)
            batch.clear()
    yield b"".join(batch)
    yield b"\r\n" + boundary + b"--\r\n"


@pytest.mark.timeout(900)  # about a minute alone; the machine may be shared
def test_a_200k_line_batch_in_bounded_memory(stack: Stack, api_url: str) -> None:
    headers = {**stack.auth(), "Content-Type": "multipart/form-data; boundary=memory-boundary"}
    with PeakSampler({"api": [os.getpid()]}) as api:
        baseline = rss_mb(os.getpid())
        response = requests.post(f"{api_url}/v1/files", data=lines(), headers=headers, timeout=300)
    assert response.status_code == 201, response.text
    file = response.json()
    assert file["bytes"] > 80_000_000
    assert api.peaks["api"] - baseline < API_GROWTH_MB, (baseline, api.peaks)

    workers = {name: process_tree(process.pid) for name, process in stack.workers.items()}
    with PeakSampler(workers, interval=0.2) as sampler:
        created = requests.post(
            f"{api_url}/v1/batches",
            json={"model": "digits", "input_file_id": file["id"]},
            headers=stack.auth(),
            timeout=30,
        ).json()
        batch = wait_for(stack, created["id"], timeout=800)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    assert batch["error_file_id"] is None
    peaks = {
        name: max(peak, *(rss_mb(pid, "VmHWM") for pid in workers[name]))
        for name, peak in sampler.peaks.items()
    }
    print(f"peak resident MB: api +{api.peaks['api'] - baseline:.0f} (of {baseline:.0f}), workers {peaks}")
    print({k: batch[k] for k in ("created_at", "started_at", "finalizing_at", "completed_at")})
    assert all(peak < WORKER_MB for peak in peaks.values()), peaks

    content = stack.client().get(f"/v1/files/{batch['output_file_id']}/content", headers=stack.auth())
    seen: set[str] = set()
    count = 0
    started = time.monotonic()
    with requests.get(content.headers["Location"], stream=True, timeout=120) as output:
        for line in output.iter_lines():
            seen.add(json.loads(line)["custom_id"])
            count += 1
    assert count == len(seen) == LINES, (count, len(seen), time.monotonic() - started)
