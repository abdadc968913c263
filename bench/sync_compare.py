"""Sync inference three ways, side by side: Triton direct, a hand-written Flask + Celery app, inferq.

Run against a running stack (``inferq up``); this script starts the hand-written app
(``bench/handwritten``: gunicorn gthread 1x16 and one prefork Celery worker with
concurrency 2) against the same Triton and Redis, and stops it at the end:

    .venv/bin/python bench/sync_compare.py --key "$(cat ~/.local/share/inferq/dev-api-key)"

Every path gets the same Open Inference Protocol body (real digits rows), the same
request count and client concurrency. Each cell is measured in rounds, the paths
interleaved (order rotated per round) so that a noisy neighbour hurts them alike.
Reports latency percentiles, throughput, inferq's ratios to the other two paths,
and resident memory by process role. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import requests
from sync_latency import body

HANDWRITTEN_DIR = Path(__file__).resolve().with_name("handwritten")
PATHS = ("direct", "handwritten", "inferq")
LABELS = {"direct": "Triton direct", "handwritten": "hand-written", "inferq": "inferq"}
REQUEST_TIMEOUT = 30.0


# --- processes we start ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when this script dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, cwd: Path, env: dict[str, str]) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # prefork children that outlived the parent
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class HandWritten:
    """bench/handwritten under gunicorn (gthread 1x16) plus one prefork Celery worker (concurrency 2)."""

    def __init__(self, redis_url: str, triton_url: str, logs: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/infer"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_") and k != "PYTHONPATH"}
        self.env |= {"HANDWRITTEN_REDIS_URL": redis_url, "HANDWRITTEN_TRITON_URL": triton_url}
        gunicorn = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--workers", "1", "--threads", "16"]
        gunicorn += ["--bind", f"127.0.0.1:{self.port}"]
        if gunicorn_has_control_socket():  # do not take over the control socket of inferq's gunicorn
            gunicorn += ["--no-control-socket"]
        worker = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--concurrency", "2"]
        worker += ["--loglevel", "WARNING", "-n", f"handwritten-{self.port}@%h"]
        self.api = Child("hand-written API", [*gunicorn, "app:app"], logs / "handwritten-api.log")
        self.worker = Child("hand-written worker", worker, logs / "handwritten-worker.log")

    def start(self) -> None:
        for child in (self.worker, self.api):
            child.start(HANDWRITTEN_DIR, self.env)

    def check_alive(self) -> None:
        for child in (self.api, self.worker):
            if not child.alive():
                raise RuntimeError(f"{child.name} exited; its log ({child.log}) ends:\n{child.tail()}")

    def stop(self) -> None:
        for child in (self.api, self.worker):
            child.stop()

    def pids(self) -> dict[str, int]:
        return {c.name: c.popen.pid for c in (self.api, self.worker) if c.popen is not None}


def gunicorn_has_control_socket() -> bool:
    try:
        from gunicorn.config import Config

        return "control_socket_disable" in Config().settings
    except ImportError:
        return False


# --- measuring ---------------------------------------------------------------------


Send = Callable[[requests.Session], requests.Response]


def sender(url: str, payload: bytes, key: str | None = None) -> Send:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    def send(session: requests.Session) -> requests.Response:
        response = session.post(url, data=payload, headers=headers, timeout=REQUEST_TIMEOUT)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        return response

    return send


def wait_ready(check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        alive()
        try:
            if check():
                return
        except (requests.RequestException, RuntimeError) as exc:
            last = str(exc)[:300]
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s: {last}")


@dataclass
class Cell:
    timings: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def figures(self) -> dict[str, float]:
        q = statistics.quantiles(self.timings, n=100)
        return {
            "p50": q[49],
            "p95": q[94],
            "p99": q[98],
            "rps": len(self.timings) / self.elapsed,
            "requests": len(self.timings),
        }


def measure_cell(
    sends: dict[str, Send], count: int, clients: int, rounds: int, warmup: int, deadline: float
) -> dict[str, dict[str, float]]:
    """``count`` requests per path with ``clients`` concurrent clients, in ``rounds`` interleaved rounds."""
    sessions = {path: [requests.Session() for _ in range(clients)] for path in sends}
    cells = {path: Cell() for path in sends}
    per_client = max(rounds, count // clients)  # split over the rounds, as evenly as it goes
    per_round = [per_client // rounds + (1 if i < per_client % rounds else 0) for i in range(rounds)]
    with ThreadPoolExecutor(clients) as pool:

        def burst(path: str, n: int) -> tuple[list[float], float]:
            def client(index: int) -> list[float]:
                session, send, timings = sessions[path][index], sends[path], []
                for _ in range(n):
                    started = time.perf_counter()
                    send(session)
                    timings.append((time.perf_counter() - started) * 1000)
                return timings

            started = time.perf_counter()
            timings = [t for chunk in pool.map(client, range(clients)) for t in chunk]
            return timings, time.perf_counter() - started

        for path in sends:  # warm connections, caches, worker processes
            burst(path, max(1, math.ceil(warmup / clients)))
        order = list(sends)
        for round_index in range(rounds):
            if time.monotonic() > deadline:
                raise TimeoutError("--deadline reached; stopping")
            rotated = order[round_index % len(order) :] + order[: round_index % len(order)]
            for path in rotated:
                timings, elapsed = burst(path, per_round[round_index])
                cells[path].timings += timings
                cells[path].elapsed += elapsed
    for path_sessions in sessions.values():
        for session in path_sessions:
            session.close()
    return {path: cell.figures() for path, cell in cells.items()}


def same_answers(sends: dict[str, Send]) -> None:
    """All paths must return the same labels for the same body before anything is timed."""
    with requests.Session() as session:
        labels = {}
        for path, send in sends.items():
            outputs = {o["name"]: o["data"] for o in send(session).json()["outputs"]}
            labels[path] = outputs["label"]
    if len({json.dumps(v) for v in labels.values()}) != 1:
        raise RuntimeError(f"the paths disagree: {labels}")


# --- memory by process role (from /proc; psutil is not a dependency) -------------


@dataclass
class Proc:
    pid: int
    ppid: int
    cmdline: str
    rss_mib: float
    pss_mib: float | None


def processes() -> dict[int, Proc]:
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            rss = int((entry / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        pss = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
                    break
        if cmdline:
            found[int(entry.name)] = Proc(int(entry.name), ppid, cmdline, rss, pss)
    return found


def descendants(procs: dict[int, Proc], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def listening_pids(port: int) -> set[int]:
    """Processes holding a listening TCP socket on ``port`` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        pids.add(int(entry.name))
                        break
    return pids


def inferq_root(procs: dict[int, Proc], api_port: int) -> int | None:
    """The ``inferq up`` process that owns the API on ``api_port`` (the parent of its gunicorn master)."""
    for pid in listening_pids(api_port):
        while pid in procs and "gunicorn" in procs[pid].cmdline:
            pid = procs[pid].ppid
        if pid in procs and "inferq" in procs[pid].cmdline:
            return pid
    return None


def inferq_role(cmdline: str) -> str:
    argv = cmdline.split()
    if "gunicorn" in cmdline:
        return "inferq API (gunicorn)"
    if "celery" in cmdline:
        if "-Q" in argv:
            queue = argv[argv.index("-Q") + 1]
            if queue.startswith("gpu."):
                return f"inferq GPU worker {queue}"
            return f"inferq {queue} worker"
        if "beat" in argv:
            return "inferq beat"
        if "flower" in argv:
            return "inferq Flower"
        return "inferq Celery (other)"
    if "triton_python_backend_stub" in cmdline:
        return "Triton Python stubs (all paths)"
    if "tritonserver" in cmdline:
        return "Triton (all paths)"
    if "rclone" in cmdline:
        return "inferq S3 (rclone)"
    if "redis-server" in cmdline:
        return "Redis (all paths)"
    if "inferq" in cmdline:
        return "inferq up (launcher)"
    return "inferq other"


INFERQ_PLATFORM = (
    "inferq API",
    "inferq GPU",
    "inferq control",
    "inferq beat",
    "inferq Flower",
    "inferq Celery",
)


def memory_by_role(api_port: int, redis_port: int, ours: dict[str, int]) -> list[dict[str, Any]]:
    """Resident memory by role: the hand-written app (``ours``: name -> pid), the ``inferq up`` stack
    serving ``api_port`` and the Redis on ``redis_port``. Prefork children count with their parent."""
    procs = processes()
    roles: dict[str, list[Proc]] = {}
    mine: set[int] = set()
    for name, pid in ours.items():
        tree = descendants(procs, pid)
        mine |= tree
        roles[name] = [procs[p] for p in tree]
    root = inferq_root(procs, api_port)
    stack = descendants(procs, root) - mine if root is not None else set()
    if root is None:  # not started by ``inferq up`` here: match command lines instead
        needles = ("webapp:create_app", "-A tasks", "tritonserver", "triton_python_backend_stub")
        stack = {p for p, proc in procs.items() if p not in mine and any(n in proc.cmdline for n in needles)}
    stack |= listening_pids(redis_port) & set(procs)
    for pid in stack:
        roles.setdefault(inferq_role(procs[pid].cmdline), []).append(procs[pid])

    def order(role: str) -> tuple[int, str]:
        return (0 if role.startswith("hand-written") else 1 if role.startswith("inferq") else 2), role

    def row(role: str, members: list[Proc]) -> dict[str, Any]:
        pss = [m.pss_mib for m in members if m.pss_mib is not None]
        return {
            "role": role,
            "processes": len(members),
            "rss_mib": sum(m.rss_mib for m in members),
            "pss_mib": sum(pss) if len(pss) == len(members) else None,
        }

    rows = [row(role, roles[role]) for role in sorted(roles, key=order)]
    totals = {
        "hand-written, total": [m for r in ours for m in roles[r]],
        "inferq API + Celery (workers, beat, Flower), total": [
            m for r, ms in roles.items() if r.startswith(INFERQ_PLATFORM) for m in ms
        ],
    }
    rows += [row(role, members) for role, members in totals.items() if members]
    return rows


# --- report ------------------------------------------------------------------------


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def redact_key(argv: list[str]) -> list[str]:
    """The command line without the API key."""
    out = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--key":
            out.append("***")
        elif arg.startswith("--key="):
            out.append("--key=***")
        else:
            out.append(arg)
    return out


def print_tables(results: list[dict[str, Any]], memory: list[dict[str, Any]]) -> None:
    print("\n| rows | clients | path | p50 ms | p95 ms | p99 ms | req/s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['rows']} | {r['clients']} | {LABELS[r['path']]} | {r['p50']:.1f} | {r['p95']:.1f} | "
            f"{r['p99']:.1f} | {r['rps']:.0f} |"
        )
    by_cell: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for r in results:
        by_cell.setdefault((r["rows"], r["clients"]), {})[r["path"]] = r
    if any("inferq" in paths and len(paths) > 1 for paths in by_cell.values()):
        print(
            "\n| rows | clients | p50 inferq / hand-written | req/s inferq / hand-written "
            "| p50 inferq / direct | req/s inferq / direct | p50 hand-written / direct |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for (rows, clients), p in by_cell.items():
            cols = []
            for a, b, key in (
                ("inferq", "handwritten", "p50"),
                ("inferq", "handwritten", "rps"),
                ("inferq", "direct", "p50"),
                ("inferq", "direct", "rps"),
                ("handwritten", "direct", "p50"),
            ):
                cols.append(fmt_ratio(p[a][key], p[b][key]) if a in p and b in p else "-")
            print(f"| {rows} | {clients} | " + " | ".join(cols) + " |")
    print("\n| processes | count | resident MiB (RSS) | proportional MiB (PSS) |")
    print("| --- | ---: | ---: | ---: |")
    for m in memory:
        pss = "-" if m["pss_mib"] is None else f"{m['pss_mib']:.0f}"
        print(f"| {m['role']} | {m['processes']} | {m['rss_mib']:.0f} | {pss} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inferq API")
    parser.add_argument("--key", default=os.environ.get("INFERQ_API_KEY"), help="inferq API key")
    parser.add_argument("--triton", default="http://127.0.0.1:8000", help="Triton HTTP, for both baselines")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5", help="hand-written app's Redis")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per path and cell")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell")
    parser.add_argument("--warmup", type=int, default=32, help="untimed requests per path and cell")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--only", default=",".join(PATHS), help="subset of " + ",".join(PATHS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--deadline", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--logs", type=Path, help="hand-written app logs (default: a temp folder)")
    args = parser.parse_args()
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(only) - set(PATHS):
        parser.error(f"--only: unknown {sorted(unknown)}")
    if "inferq" in only and not args.key:
        parser.error("--key (or INFERQ_API_KEY) is needed for the inferq path")
    deadline = time.monotonic() + args.deadline
    logs = args.logs or Path(tempfile.mkdtemp(prefix="inferq-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    api_port = urlsplit(args.url).port or 80

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started in the background with SIGINT ignored
    hand = HandWritten(args.redis, args.triton, logs) if "handwritten" in only else None
    results: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    started_at = datetime.now(UTC)
    try:
        triton = args.triton.rstrip("/")
        if "direct" in only or hand:
            ready = f"{triton}/v2/models/{args.model}/ready"
            wait_ready(lambda: requests.get(ready, timeout=2).ok, 60, "Triton", lambda: None)
        if "inferq" in only:
            readyz = f"{args.url.rstrip('/')}/readyz"
            wait_ready(lambda: requests.get(readyz, timeout=10).ok, 90, "inferq", lambda: None)
        if hand:
            hand.start()
            print(f"hand-written app on {hand.url} (logs {logs})", file=sys.stderr)
            probe = sender(hand.url, json.dumps(body(1)).encode())
            wait_ready(lambda: bool(probe(requests.Session())), 90, "hand-written app", hand.check_alive)
        for rows in args.rows:
            payload = json.dumps(body(rows)).encode()
            sends: dict[str, Send] = {}
            if "direct" in only:
                sends["direct"] = sender(f"{triton}/v2/models/{args.model}/infer", payload)
            if hand:
                sends["handwritten"] = sender(hand.url, payload)
            if "inferq" in only:
                url = f"{args.url.rstrip('/')}/v1/models/{args.model}/infer"
                sends["inferq"] = sender(url, payload, args.key)
            same_answers(sends)
            for clients in args.clients:
                figures = measure_cell(sends, args.requests, clients, args.rounds, args.warmup, deadline)
                for path, f in figures.items():
                    results.append({"rows": rows, "clients": clients, "path": path, **f})
                    print(
                        f"rows {rows:>3} clients {clients:>2} {LABELS[path]:<14} p50 {f['p50']:7.1f} "
                        f"p95 {f['p95']:7.1f} p99 {f['p99']:7.1f} ms {f['rps']:6.0f} req/s",
                        file=sys.stderr,
                        flush=True,
                    )
        memory = memory_by_role(api_port, urlsplit(args.redis).port or 6379, hand.pids() if hand else {})
    except KeyboardInterrupt:
        print("interrupted; stopping the hand-written app", file=sys.stderr)
        return 130
    finally:
        if hand:
            hand.stop()
    print_tables(results, memory)
    if args.json:
        meta = {
            "started": started_at.isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "argv": redact_key(sys.argv),
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results, "memory": memory}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
