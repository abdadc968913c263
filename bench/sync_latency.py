"""Sync inference through inferq side by side with the same request sent straight to Triton.

Run against a running stack (``inferq up``):

    .venv/bin/python bench/sync_latency.py --key "$(cat ~/.local/share/inferq/dev-api-key)"

Both paths get the same Open Inference Protocol body (real digits rows), the same
number of requests and the same client concurrency, in one run; the report is a
Markdown table of latency percentiles and throughput. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from sklearn.datasets import load_digits


def body(rows: int) -> dict[str, Any]:
    data = load_digits().data[:rows].astype(np.float32)
    return {
        "inputs": [
            {"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": data.reshape(-1).tolist()}
        ]
    }


def run(send: Callable[[requests.Session], None], count: int, concurrency: int) -> dict[str, float]:
    sessions = [requests.Session() for _ in range(concurrency)]
    for session in sessions:  # warm connections and caches
        send(session)

    def worker(index: int) -> list[float]:
        session, timings = sessions[index], []
        for _ in range(count // concurrency):
            started = time.perf_counter()
            send(session)
            timings.append((time.perf_counter() - started) * 1000)
        return timings

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        timings = [t for chunk in pool.map(worker, range(concurrency)) for t in chunk]
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(timings, n=100)
    return {"p50": quantiles[49], "p95": quantiles[94], "p99": quantiles[98], "rps": len(timings) / elapsed}


ROLES = {
    "gunicorn": "API (gunicorn)",
    "celery": "Celery (workers, beat, Flower)",
    "tritonserver": "Triton",
    "triton_python_backend_stub": "Triton Python stubs",
    "redis-server": "Redis",
    "rclone": "S3 (rclone)",
}


def memory_by_role() -> dict[str, float]:
    """Resident memory (MiB) of the local stack's processes on this machine, by role."""
    totals: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss_pages = int((proc / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        for needle, role in ROLES.items():
            if needle in cmdline:
                totals[role] = totals.get(role, 0.0) + rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
                break
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--key", required=True)
    parser.add_argument("--triton", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()

    print("| rows | clients | path | p50 ms | p95 ms | p99 ms | req/s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        payload = body(rows)

        def via_inferq(session: requests.Session, payload: dict[str, Any] = payload) -> None:
            r = session.post(
                f"{args.url}/v1/models/digits/infer",
                json=payload,
                headers={"Authorization": f"Bearer {args.key}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text

        def via_triton(session: requests.Session, payload: dict[str, Any] = payload) -> None:
            r = session.post(f"{args.triton}/v2/models/digits/infer", json=payload, timeout=30)
            assert r.status_code == 200, r.text

        for concurrency in args.concurrency:
            for label, send in (("Triton direct", via_triton), ("inferq", via_inferq)):
                figures = run(send, args.requests, concurrency)
                print(
                    f"| {rows} | {concurrency} | {label} | {figures['p50']:.1f} | {figures['p95']:.1f} | "
                    f"{figures['p99']:.1f} | {figures['rps']:.0f} |",
                    flush=True,
                )
    print("\n| processes | resident MiB after the run |\n| --- | ---: |")
    for role, mib in sorted(memory_by_role().items()):
        print(f"| {role} | {mib:.0f} |")


if __name__ == "__main__":
    main()
