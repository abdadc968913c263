"""Batch inference side by side: inferq's batches against a hand-written script, and inferq's scaling.

Run against a running stack (``inferq up``); loopback only, bounded by ``--deadline``:

    .venv/bin/python bench/batch_compare.py --key "$(cat ~/.local/share/inferq/dev-api-key)"

0. With ``--warmup N``, one untimed batch of N lines through each path first.
1. Compare (``--compare-lines``, 100,000 by default, ``--rounds`` times, the two paths
   alternating which goes first): the same JSONL of real digits rows (one row a line,
   input ``input`` FP32 [1, 64]) through
   - inferq: upload (the SDK, streamed), create the batch, wait, download the output file;
     timed from the start of the upload to the output file being ready (batch ``completed``);
   - ``bench/handwritten/batch_script.py``: read the JSONL, ``tritonclient.http`` to the same
     Triton at micro-batch 1024, write the output JSONL; timed by the script from opening the
     input to closing the output.
   Both outputs are checked to hold every line with the same labels.
2. Scaling (``--scaling``, 10k, 100k and 1M lines): inferq alone, with the resident memory of
   the API, the control worker (planner, finalizer) and the GPU workers sampled from /proc
   during the run (per process and per role), and where the time went: upload, planning,
   chunk execution, finalize (from the batch's timestamps), Triton's own compute time (its
   metrics), chunk task time (the GPU workers' logs, with ``--stack-logs``) and CPU seconds
   by process role.

Files it makes are removed at the end, and so are the files and batches' output it made in
inferq (deleted through the API). The script it starts is stopped if this one is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests
from sync_compare import descendants, inferq_role, inferq_root, processes, redact_key

from inferq.client import Client, ClientError, WaitTimeout

SCRIPT = Path(__file__).resolve().with_name("handwritten") / "batch_script.py"
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_MIB = 300


class DeadlineReached(Exception):
    pass


# --- input files ---------------------------------------------------------------------------


def write_input(path: Path, lines: int) -> int:
    """``lines`` requests of digits rows (cycled), one row a line; the file's size."""
    from sklearn.datasets import load_digits

    rows = load_digits().data.astype(np.float32)
    tensors = [
        json.dumps([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]).encode()
        for row in rows
    ]
    with path.open("wb") as out:
        for i in range(lines):
            out.write(b'{"custom_id": "row-%d", "inputs": %s}\n' % (i, tensors[i % len(tensors)]))
    return path.stat().st_size


def labels_of(path: Path) -> Iterator[tuple[str, int]]:
    """(custom_id, label) of each line of an output file."""
    with path.open("rb") as lines:
        for line in lines:
            value = json.loads(line)
            label = next(o for o in value["outputs"] if o["name"] == "label")["data"][0]
            yield value["custom_id"], label


def same_outputs(a: Path, b: Path, lines: int) -> None:
    """Both output files hold ``lines`` lines, in input order, with the same labels."""
    count = 0
    for (id_a, label_a), (id_b, label_b) in zip(labels_of(a), labels_of(b), strict=True):
        if (id_a, label_a) != (id_b, label_b) or id_a != f"row-{count}":
            raise RuntimeError(f"outputs differ at line {count + 1}: {id_a}={label_a} vs {id_b}={label_b}")
        count += 1
    if count != lines:
        raise RuntimeError(f"{count} output lines, not {lines}")


# --- memory and CPU by process role, sampled from /proc ----------------------------------


def read_rss_cpu(pid: int) -> tuple[float, float] | None:
    """(resident MiB, CPU seconds) of a process, None if it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MIB
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return rss, (int(fields[11]) + int(fields[12])) / TICKS


def stack_roles(api_port: int) -> dict[int, str]:
    """pid -> role of every process of the ``inferq up`` stack serving ``api_port``."""
    procs = processes()
    root = inferq_root(procs, api_port)
    if root is None:
        return {}
    return {pid: inferq_role(procs[pid].cmdline) for pid in descendants(procs, root)}


@dataclass
class RoleFigures:
    peak_process_mib: float = 0.0  # the largest single process of the role, at its largest
    peak_role_mib: float = 0.0  # the role's processes together, at their largest
    cpu_seconds: float = 0.0
    processes: int = 0


class Sampler:
    """Samples RSS and CPU time of the stack's processes (and ``extra`` ones) every ``interval``."""

    def __init__(self, api_port: int, interval: float = 0.5, extra: dict[int, str] | None = None) -> None:
        self.api_port, self.interval = api_port, interval
        self.extra = extra or {}
        self.roles: dict[int, str] = {}
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.figures: dict[str, RoleFigures] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.roles = {**stack_roles(self.api_port), **self.extra}
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sample()
        for pid, last in self.cpu_last.items():
            role = self.roles.get(pid)
            if role is not None:
                self.figures.setdefault(role, RoleFigures()).cpu_seconds += last - self.cpu_first.get(
                    pid, 0.0
                )

    def _run(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - refreshed > 5:  # prefork children come and go
                refreshed = time.monotonic()
                found = stack_roles(self.api_port)
                for pid, role in found.items():
                    if pid not in self.roles:
                        self.roles[pid] = role
                        self.cpu_first.setdefault(pid, 0.0)  # started during the run
            self._sample()

    def _sample(self) -> None:
        totals: dict[str, float] = {}
        for pid, role in list(self.roles.items()):
            figures = read_rss_cpu(pid)
            if figures is None:
                continue
            rss, cpu = figures
            self.cpu_first.setdefault(pid, cpu)
            self.cpu_last[pid] = cpu
            role_figures = self.figures.setdefault(role, RoleFigures())
            role_figures.peak_process_mib = max(role_figures.peak_process_mib, rss)
            totals[role] = totals.get(role, 0.0) + rss
        for role, total in totals.items():
            self.figures[role].peak_role_mib = max(self.figures[role].peak_role_mib, total)
        for role in set(self.roles.values()):
            if role in self.figures:
                self.figures[role].processes = sum(
                    1 for pid, r in self.roles.items() if r == role and pid in self.cpu_last
                )

    def report(self) -> list[dict[str, Any]]:
        return [
            {"role": role, **vars(f)}
            for role, f in sorted(
                self.figures.items(), key=lambda item: (not item[0].startswith("inferq"), item[0])
            )
        ]


# --- where inferq's time goes ------------------------------------------------------------


def triton_counters(metrics_urls: list[str], model: str) -> dict[str, float]:
    """Triton's cumulative counters for ``model``, summed over its servers."""
    wanted = (
        "nv_inference_request_success",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_output_duration_us",
    )
    totals = dict.fromkeys(wanted, 0.0)
    for url in metrics_urls:
        with contextlib.suppress(requests.RequestException):
            for line in requests.get(url, timeout=5).text.splitlines():
                name = line.split("{", 1)[0]
                if name in totals and f'model="{model}"' in line:
                    totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


TASK_LINE = re.compile(r"Task (inferq\.batch\.\w+)\[[^\]]+\] succeeded in ([0-9.]+)s")


class TaskLog:
    """Durations of the batch tasks the workers logged after :meth:`mark`."""

    def __init__(self, logs: Path | None) -> None:
        self.files = sorted(logs.glob("worker-*.log")) if logs else []
        self.offsets: dict[Path, int] = {}

    def mark(self) -> None:
        self.offsets = {path: path.stat().st_size for path in self.files}

    def durations(self) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for path in self.files:
            with path.open("rb") as log:
                log.seek(self.offsets.get(path, 0))
                for line in log:
                    match = TASK_LINE.search(line.decode(errors="replace"))
                    if match:
                        found.setdefault(match.group(1), []).append(float(match.group(2)))
        return found


def seconds_between(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# --- the two paths -------------------------------------------------------------------------


@dataclass
class Bench:
    client: Client
    model: str
    triton: str
    metrics_urls: list[str]
    workdir: Path
    api_port: int
    stack_logs: Path | None
    deadline: float
    running: dict[str, Any] = field(default_factory=dict)  # what to stop if interrupted

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineReached("--deadline reached")
        return left

    def run_inferq(self, path: Path, lines: int, sample: bool = True) -> dict[str, Any]:
        """Upload, create, wait, download; timings, profile and memory."""
        client, out = self.client, self.workdir / f"inferq-{lines}.jsonl"
        tasks = TaskLog(self.stack_logs)
        tasks.mark()
        before = triton_counters(self.metrics_urls, self.model)
        made: list[str] = []
        seen: dict[str, float] = {}
        own = {os.getpid(): "bench client (SDK upload, wait, download)"}
        sampler = Sampler(self.api_port, extra=own) if sample else contextlib.nullcontext()
        with sampler:
            started = time.monotonic()
            file = client.files.upload(path)
            made.append(file["id"])
            uploaded = time.monotonic()
            batch = client.batches.create(self.model, file["id"], metadata={"bench": "batch_compare"})
            self.running["batch"] = batch["id"]

            def progress(b: Any) -> None:
                seen.setdefault(b["status"], time.monotonic())

            try:
                final = client.batches.wait(
                    batch["id"], poll=0.25, timeout=self.remaining(), progress=progress
                )
            except WaitTimeout:
                raise DeadlineReached(f"--deadline reached while batch {batch['id']} ran") from None
            ready = time.monotonic()
        self.running.pop("batch", None)
        after = triton_counters(self.metrics_urls, self.model)
        made += [f for f in (final["output_file_id"], final["error_file_id"]) if f]
        if final["status"] != "completed" or final["request_counts"]["completed"] != lines:
            raise RuntimeError(f"batch did not complete every line: {final}")
        with out.open("wb") as target:
            for piece in client.files.content(final["output_file_id"] or ""):
                target.write(piece)
        downloaded = time.monotonic()
        for file_id in made:
            with contextlib.suppress(Exception):
                client.files.delete(file_id)
        durations = tasks.durations()
        chunks = durations.get("inferq.batch.chunk", [])
        triton = {k: after[k] - before[k] for k in after}
        result = {
            "path": "inferq",
            "lines": lines,
            "bytes": path.stat().st_size,
            "seconds": ready - started,
            "lines_per_second": lines / (ready - started),
            "upload_s": uploaded - started,
            "planning_s": seconds_between(final["created_at"], final["started_at"]),
            "chunks_s": seconds_between(final["started_at"], final["finalizing_at"]),
            "finalize_s": seconds_between(final["finalizing_at"], final["completed_at"]),
            "download_s": downloaded - ready,
            "status_seen_s": {status: at - started for status, at in seen.items()},
            "chunk_tasks": len(chunks),
            "chunk_task_s_sum": sum(chunks),
            "chunk_task_s_median": statistics.median(chunks) if chunks else None,
            "plan_task_s": sum(durations.get("inferq.batch.plan", [])),
            "finalize_task_s": sum(durations.get("inferq.batch.finalize", [])),
            "triton_calls": triton["nv_inference_exec_count"],
            "triton_request_s": triton["nv_inference_request_duration_us"] / 1e6,
            "triton_compute_s": (
                triton["nv_inference_compute_input_duration_us"]
                + triton["nv_inference_compute_infer_duration_us"]
                + triton["nv_inference_compute_output_duration_us"]
            )
            / 1e6,
            "output": str(out),
        }
        if isinstance(sampler, Sampler):
            result["memory"] = sampler.report()
        return result

    def run_script(self, path: Path, lines: int) -> dict[str, Any]:
        """The hand-written script over the same file; its timing, and the CPU it and Triton used."""
        out = self.workdir / f"script-{lines}.jsonl"
        argv = [
            sys.executable,
            str(SCRIPT),
            str(path),
            str(out),
            "--triton",
            self.triton,
            "--model",
            self.model,
        ]
        started = time.monotonic()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.running["script"] = child
        with Sampler(self.api_port, extra={child.pid: "hand-written script"}) as sampler:
            try:
                stdout, stderr = child.communicate(timeout=self.remaining())
            except subprocess.TimeoutExpired:
                raise DeadlineReached("--deadline reached while the script ran") from None
        self.running.pop("script", None)
        if child.returncode != 0:
            raise RuntimeError(f"the script failed:\n{stderr.decode(errors='replace')[-2000:]}")
        stats = json.loads(stdout)
        if stats["lines"] != lines:
            raise RuntimeError(f"the script wrote {stats['lines']} lines, not {lines}")
        return {
            "path": "script",
            "lines": lines,
            "seconds": stats["seconds"],
            "lines_per_second": stats["lines_per_second"],
            "wall_s": time.monotonic() - started,
            "output": str(out),
            "cpu": {m["role"]: m["cpu_seconds"] for m in sampler.report()},
        }

    def stop(self) -> None:
        """Stop what is still running: the script, and a batch (cancelled)."""
        child = self.running.pop("script", None)
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            child.wait(10)
        batch_id = self.running.pop("batch", None)
        if batch_id:
            with contextlib.suppress(Exception):
                self.client.batches.cancel(batch_id)
                print(f"cancelled batch {batch_id}", file=sys.stderr)


# --- report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(compare: list[dict[str, Any]], scaling: list[dict[str, Any]]) -> None:
    """Markdown tables: the comparison, where inferq's time went, CPU by role, memory by role."""
    if compare:
        print("\n| round | path | lines | seconds | lines/s |")
        print("| ---: | --- | ---: | ---: | ---: |")
        for r in compare:
            label = "inferq (upload to output ready)" if r["path"] == "inferq" else "hand-written script"
            print(
                f"| {r['round']} | {label} | {r['lines']} | {r['seconds']:.1f} "
                f"| {r['lines_per_second']:.0f} |"
            )
        by_path: dict[str, list[float]] = {}
        for r in compare:
            by_path.setdefault(r["path"], []).append(r["lines_per_second"])
        if "inferq" in by_path and "script" in by_path:
            inferq, script = statistics.median(by_path["inferq"]), statistics.median(by_path["script"])
            print(
                f"\nmedian lines/s: inferq {inferq:.0f}, script {script:.0f}; "
                f"inferq / script = {inferq / script:.2f}x (target 1.0x)"
            )
    runs = [(f"compare {r['round']}", r) for r in compare if r["path"] == "inferq"]
    runs += [("scaling", r) for r in scaling]
    if runs:
        print(
            "\n| run | lines | MB in | upload s | planning s | chunks s | finalize s | upload to ready s "
            "| lines/s | s per 10k lines | download s |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in runs:
            print(
                f"| {name} | {r['lines']} | {r['bytes'] / 1e6:.0f} | {fmt(r['upload_s'])} "
                f"| {fmt(r['planning_s'])} | {fmt(r['chunks_s'])} | {fmt(r['finalize_s'])} "
                f"| {r['seconds']:.1f} | {r['lines_per_second']:.0f} | {r['seconds'] / r['lines'] * 1e4:.2f} "
                f"| {fmt(r['download_s'])} |"
            )
        print(
            "\n| run | lines | chunk tasks | chunk task s (sum, median) | plan task s | finalize task s "
            "| Triton calls | Triton request s | Triton compute s |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in runs:
            print(
                f"| {name} | {r['lines']} | {r['chunk_tasks']} "
                f"| {r['chunk_task_s_sum']:.1f}, {fmt(r['chunk_task_s_median'], 2)} "
                f"| {r['plan_task_s']:.1f} | {r['finalize_task_s']:.1f} | {r['triton_calls']:.0f} "
                f"| {r['triton_request_s']:.2f} | {r['triton_compute_s']:.2f} |"
            )
    every = [(f"script {r['round']}", r) for r in compare if r["path"] == "script"] + [
        (f"inferq {name.split()[-1] if name != 'scaling' else r['lines']}", r) for name, r in runs
    ]
    cpu: dict[str, dict[str, float]] = {}
    for name, r in every:
        figures = r.get("cpu") or {m["role"]: m["cpu_seconds"] for m in r.get("memory", [])}
        for role, seconds in figures.items():
            cpu.setdefault(role, {})[name] = seconds
    if cpu:
        print("\n| CPU seconds by process role | " + " | ".join(name for name, _ in every) + " |")
        print("| --- |" + " ---: |" * len(every))
        for role in sorted(cpu, key=lambda role: (not role.startswith(("hand", "inferq", "bench")), role)):
            print(f"| {role} | " + " | ".join(fmt(cpu[role].get(name)) for name, _ in every) + " |")
    roles = sorted({m["role"] for _, r in runs for m in r.get("memory", [])})
    if roles:
        print(
            "\n| peak resident MiB: largest process / whole role | "
            + " | ".join(f"{name}, {r['lines']} lines" for name, r in runs)
            + " |"
        )
        print("| --- |" + " ---: |" * len(runs))
        for role in roles:
            cells = []
            for _, r in runs:
                m = next((m for m in r.get("memory", []) if m["role"] == role), None)
                cells.append("-" if m is None else f"{m['peak_process_mib']:.0f} / {m['peak_role_mib']:.0f}")
            print(f"| {role} | " + " | ".join(cells) + " |")
        worst = [
            (m["peak_process_mib"], m["role"], r["lines"])
            for _, r in runs
            for m in r.get("memory", [])
            if m["role"].startswith(("inferq API", "inferq GPU", "inferq control"))
        ]
        if worst:
            peak, role, lines = max(worst)
            verdict = "under" if peak < TARGET_MIB else "OVER"
            print(
                f"\nlargest API/worker process: {peak:.0f} MiB ({role}, {lines} lines): "
                f"{verdict} {TARGET_MIB} MB"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inferq API")
    parser.add_argument("--key", default=os.environ.get("INFERQ_API_KEY"), help="inferq API key")
    parser.add_argument("--triton", default="http://127.0.0.1:8000", help="Triton HTTP for the script")
    parser.add_argument(
        "--triton-metrics",
        nargs="*",
        default=None,
        help="Triton metrics URLs of the stack (default: the --triton port + 2, and + 12)",
    )
    parser.add_argument("--model", default="digits")
    parser.add_argument("--compare-lines", type=int, default=100_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="compare rounds (paths alternate who goes first)"
    )
    parser.add_argument("--scaling", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="lines of one untimed inferq batch and one script run first (a stack just started "
        "pays its first batch's start-up: Triton's first calls on each GPU, connection pools)",
    )
    parser.add_argument(
        "--stack-logs", type=Path, help="the stack's log folder (worker-*.log): task durations"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where input and output files go (default: a temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the files made")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--deadline", type=float, default=3600, help="give up after this many seconds")
    args = parser.parse_args()
    if not args.key:
        parser.error("--key (or INFERQ_API_KEY) is needed")
    deadline = time.monotonic() + args.deadline
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="inferq-batch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    triton = urlsplit(args.triton)
    metrics = args.triton_metrics
    if metrics is None:
        port = triton.port or 8000
        metrics = [
            f"http://{triton.hostname}:{port + 2}/metrics",
            f"http://{triton.hostname}:{port + 12}/metrics",
        ]
    client = Client(args.url, args.key, timeout=120)
    bench = Bench(
        client,
        args.model,
        args.triton,
        metrics,
        workdir,
        urlsplit(args.url).port or 80,
        args.stack_logs,
        deadline,
    )

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    compare: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    started_at = datetime.now(UTC)
    inputs: dict[int, Path] = {}

    def input_file(lines: int) -> Path:
        if lines not in inputs:
            inputs[lines] = workdir / f"input-{lines}.jsonl"
            size = write_input(inputs[lines], lines)
            print(
                f"wrote {lines} lines ({size / 1e6:.0f} MB) to {inputs[lines]}", file=sys.stderr, flush=True
            )
        return inputs[lines]

    def say(r: dict[str, Any]) -> None:
        extra = (
            f" (upload {r['upload_s']:.1f}s, download {r['download_s']:.1f}s)"
            if r["path"] == "inferq"
            else ""
        )
        print(
            f"{r['path']:>7} {r['lines']:>8} lines {r['seconds']:8.1f}s "
            f"{r['lines_per_second']:8.0f} lines/s{extra}",
            file=sys.stderr,
            flush=True,
        )

    code = 0
    try:
        requests.get(f"{args.url.rstrip('/')}/readyz", timeout=10).raise_for_status()
        if args.warmup:
            warm = input_file(args.warmup)
            warm_runs: list[Callable[[Path, int], dict[str, Any]]] = [
                bench.run_script,
                partial(bench.run_inferq, sample=False),
            ]
            for warm_run in warm_runs:
                Path(warm_run(warm, args.warmup)["output"]).unlink(missing_ok=True)
            print(f"warmed up with {args.warmup} lines", file=sys.stderr, flush=True)
        for round_index in range(args.rounds if args.compare_lines else 0):
            path, lines = input_file(args.compare_lines), args.compare_lines
            order: list[Callable[[], dict[str, Any]]] = [
                partial(bench.run_script, path, lines),
                partial(bench.run_inferq, path, lines),
            ]
            if round_index % 2:
                order.reverse()
            pair = {}
            for run in order:
                result = run()
                say(result)
                pair[result["path"]] = result
                compare.append({"round": round_index + 1, **result})
            same_outputs(Path(pair["inferq"]["output"]), Path(pair["script"]["output"]), args.compare_lines)
        for lines in args.scaling:
            bench.remaining()
            result = bench.run_inferq(input_file(lines), lines)
            say(result)
            scaling.append(result)
            Path(result["output"]).unlink(missing_ok=True)
    except (DeadlineReached, ClientError, RuntimeError, requests.RequestException) as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        bench.stop()
        client.close()
        if not args.keep:
            for path in workdir.glob("*.jsonl"):
                path.unlink()
            with contextlib.suppress(OSError):
                workdir.rmdir()
    print_report(compare, scaling)
    if args.json:
        meta = {
            "started": started_at.isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "argv": redact_key(sys.argv),
        }
        args.json.write_text(json.dumps({"meta": meta, "compare": compare, "scaling": scaling}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
