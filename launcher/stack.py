"""``inferq up``: the whole local stack in the foreground, stopped as one by Ctrl-C.

Starts what is not already running: Redis, the S3 server, one Triton per GPU,
then registers and deploys the models of ``models/``, then the Celery workers
(one per GPU plus control), the API under gunicorn, and Flower.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from inferq.settings import CONTROL_QUEUE, Settings, gpu_queue, mask_secrets
from launcher.localstack import (
    ManagedProcess,
    StartupError,
    TritonPorts,
    is_local,
    port_open,
    private_dir,
    private_file,
    redis_process,
    s3_process,
    triton_process,
    url_host_port,
)
from tasks.runtime import Services

DEV_TENANT = "dev"
DEV_RATE_LIMIT = "100000/minute"


def http_ok(url: str) -> bool:
    return requests.get(url, timeout=1).ok


def celery_argv(*args: str) -> list[str]:
    """``celery -A tasks ARGS`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "tasks", *args]


def worker_argv(queue: str, concurrency: int, name: str, pool: str = "prefork") -> list[str]:
    """The celery command line of a worker consuming only ``queue``.

    No gossip or mingle: workers need nothing from each other, and gossip would have
    every worker decode every other worker's events.
    """
    return celery_argv(
        "worker",
        "-Q",
        queue,
        "-n",
        f"{name}@%h",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "-E",
    )


def gpu_worker_argv(settings: Settings, gpu: int, name: str) -> list[str]:
    """A GPU worker: the threads pool by default (its tasks wait on Triton; one process, one import)."""
    return worker_argv(gpu_queue(gpu), settings.gpu_worker_concurrency, name, settings.gpu_worker_pool)


def worker_env(settings: Settings, gpu: int | None) -> dict[str, str]:
    """Environment of a worker: the settings, and the GPU it is pinned to."""
    import os

    env = {**os.environ, **settings.as_env()}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the control worker never touches a GPU
    return env


def api_argv(settings: Settings) -> list[str]:
    """The API under gunicorn, as ``INFERQ_API_*`` say: gevent workers by default, so a request
    waiting for its result (or a client sending slowly) holds a greenlet, not a thread others need."""
    s = settings
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", s.api_server, "--workers", str(s.api_workers)]
    if s.api_server == "gthread":
        argv += ["--threads", str(s.api_threads)]
    elif s.api_server == "gevent":
        argv += ["--worker-connections", str(s.api_connections)]
    return [
        *argv,
        "--bind",
        f"{s.api_host}:{s.api_port}",
        "--timeout",
        str(int(s.sync_timeout_max) + 30),
        # A connection must send a whole request head within this long (gevent: also the
        # idle keep-alive wait); the app drops bodies that stall (INFERQ_API_READ_TIMEOUT).
        "--keep-alive",
        str(s.api_keep_alive),
        "--graceful-timeout",
        "10",
        *(["--access-logfile", "-"] if s.api_access_log else []),
        "webapp:serve()",
    ]


def beat_argv(settings: Settings) -> list[str]:
    """celery beat, its schedule file in the data directory."""
    schedule = Path(settings.data_dir).expanduser() / "celerybeat-schedule"
    return celery_argv("beat", "--loglevel", "INFO", "--schedule", str(schedule))


def flower_argv(settings: Settings) -> list[str]:
    """Flower on INFERQ_FLOWER_HOST:INFERQ_FLOWER_PORT (basic auth from FLOWER_BASIC_AUTH, Flower's own)."""
    return celery_argv("flower", f"--address={settings.flower_host}", f"--port={settings.flower_port}")


class Stack:
    """The processes ``inferq up`` started, stopped in reverse order."""

    def __init__(self, settings: Settings, say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.say = say
        self.data_dir = Path(settings.data_dir).expanduser()
        self.logs = self.data_dir / "logs"
        self.processes: list[ManagedProcess] = []

    def _start(self, process: ManagedProcess) -> ManagedProcess:
        process.start()
        self.processes.append(process)
        return process

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # -- infrastructure -------------------------------------------------------------

    def ensure_redis(self) -> None:
        host, port = url_host_port(self.settings.redis_url, 6379)
        if port_open(host, port):
            self.say(f"redis      reusing {host}:{port}")
            return
        if not is_local(host):
            raise StartupError(f"Redis at {host}:{port} is not reachable")
        process = self._start(
            redis_process(port, self.data_dir / "redis", self._log("redis"), persistent=True)
        )
        process.wait_until(lambda: port_open(host, port), 20, "listening")
        self.say(f"redis      started on {host}:{port}")

    def ensure_database(self) -> None:
        from sqlalchemy.engine import make_url

        from registry.db import upgrade

        url = make_url(self.settings.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # Created here with its final mode, before SQLite creates it world-readable.
            private_file(Path(str(url.database)))
        upgrade(self.settings.database_url)
        self.say(f"database   {mask_secrets(self.settings.database_url)} (migrated)")

    def ensure_s3(self, services: Services) -> None:
        host, port = url_host_port(self.settings.s3_endpoint, 9000)
        if not port_open(host, port):
            if not is_local(host):
                raise StartupError(f"S3 endpoint {self.settings.s3_endpoint} is not reachable")
            process = self._start(
                s3_process(
                    port,
                    self.data_dir / "s3",
                    self.settings.s3_access_key,
                    self.settings.s3_secret_key,
                    self._log("s3"),
                )
            )
            process.wait_until(lambda: port_open(host, port), 30, "listening")
        services.store.ensure_bucket()
        self.say(f"s3         {self.settings.s3_endpoint} bucket {self.settings.s3_bucket}")

    def ensure_tritons(self) -> None:
        by_url: dict[str, list[int]] = {}
        for gpu in self.settings.gpus:
            by_url.setdefault(self.settings.triton_urls[gpu], []).append(gpu)
        repository = Path(self.settings.model_repository)
        for url, gpus in by_url.items():
            host, port = url_host_port(url, 8000)
            if not port_open(host, port):
                if not is_local(host):
                    raise StartupError(f"Triton at {url} is not reachable")
                name = "triton-gpu" + "-".join(map(str, gpus))
                process = self._start(
                    triton_process(
                        self.data_dir / name,
                        repository,
                        TritonPorts.from_http_url(url),
                        gpu=gpus[0] if len(gpus) == 1 else None,
                        log_path=self._log(name),
                    )
                )
                health = f"{url.rstrip('/')}/v2/health/ready"
                process.wait_until(partial(http_ok, health), 120, "ready")
            self.say(f"triton     {url} for gpu {', '.join(map(str, gpus))}")

    def deploy_models(self, services: Services) -> None:
        from registry.deploy import register_repository
        from tasks.deploy import deploy

        with services.db.session() as session:
            for model in register_repository(session, Path(self.settings.model_repository)):
                deploy(session, model, self.settings.gpus, services.triton)
                where = ", ".join(f"gpu {d.gpu}: {d.status}" for d in model.deployments)
                self.say(f"model      {model.name} v{model.version} {model.status} ({where})")
        services.cache.invalidate()  # readers must not see the previous run's deployments

    # -- platform -------------------------------------------------------------------

    def start_workers(self) -> None:
        s = self.settings
        for gpu in s.gpus:
            name = f"gpu{gpu}"
            self._start(
                ManagedProcess(
                    f"worker-{name}",
                    gpu_worker_argv(s, gpu, name),
                    env=worker_env(s, gpu),
                    log_path=self._log(f"worker-{name}"),
                )
            )
        self._start(
            ManagedProcess(
                "worker-control",
                worker_argv(CONTROL_QUEUE, s.worker_concurrency, "control"),
                env=worker_env(s, None),
                log_path=self._log("worker-control"),
            )
        )

    def start_api(self) -> None:
        s = self.settings
        argv = api_argv(s)
        process = self._start(ManagedProcess("api", argv, env=worker_env(s, None), log_path=self._log("api")))
        url = f"http://{s.api_host}:{s.api_port}/healthz"
        process.wait_until(partial(http_ok, url), 60, "serving")

    def start_beat(self) -> None:
        """celery beat: schedules the periodic maintenance tasks (statistics flush)."""
        argv = beat_argv(self.settings)
        self._start(
            ManagedProcess("beat", argv, env=worker_env(self.settings, None), log_path=self._log("beat"))
        )

    def start_flower(self) -> None:
        argv = flower_argv(self.settings)
        self._start(
            ManagedProcess("flower", argv, env=worker_env(self.settings, None), log_path=self._log("flower"))
        )

    def dev_key(self, services: Services) -> str:
        """The development admin key: the one saved in the data dir if still valid, else a new one."""
        from registry.apikeys import create_key, key_is_valid

        path = self.data_dir / "dev-api-key"
        with services.db.session() as session:
            if path.exists() and key_is_valid(session, path.read_text().strip()):
                path.chmod(0o600)
                return path.read_text().strip()
            # High enough for benchmarks and load tests on the local stack.
            _, key = create_key(session, DEV_TENANT, admin=True, rate_limit=DEV_RATE_LIMIT)
        write_private(path, key + "\n")
        return key

    # -- lifecycle ------------------------------------------------------------------

    def up(self) -> str:
        """Start everything; return the development API key."""
        private_dir(self.data_dir)
        private_dir(self.logs)
        services = Services(self.settings)
        try:
            self.ensure_redis()
            self.ensure_database()
            self.ensure_s3(services)
            self.ensure_tritons()
            self.deploy_models(services)
            self.start_workers()
            self.start_beat()
            self.start_api()
            self.start_flower()
            key = self.dev_key(services)
            self.wait_ready(key)
            return key
        finally:
            services.close()

    def wait_ready(self, key: str, timeout: float = 90.0) -> None:
        """Wait until ``/readyz`` says ready (workers take a few seconds); say what is missing if not
        (the details need the admin ``key``)."""
        s = self.settings
        url = f"http://{s.api_host}:{s.api_port}/readyz"
        headers = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise StartupError(f"{process.name} exited during start-up:\n{process.log_tail()}")
            try:
                response = requests.get(url, headers=headers, timeout=10)
                if response.status_code == 200:
                    return
                body = response.json()
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        failing = {
            name: check for name, check in body.get("checks", {}).items() if check.get("status") != "ok"
        }
        self.say(f"warning: not ready after {timeout:.0f}s: {failing}")

    def watch(self, poll: float = 0.5) -> int:
        """Supervise until a signal arrives: a process that exits on its own is started again,
        after a back-off that doubles while it keeps dying (1 s up to 60 s) and resets once it
        has stayed up a minute. ``/readyz`` shows what is missing meanwhile; a Triton that comes
        back empty gets its models again from the reconciler (celery beat)."""
        supervisors = {process.name: Supervisor() for process in self.processes}
        while True:
            now = time.monotonic()
            for process in self.processes:
                state = supervisors.setdefault(process.name, Supervisor())
                if process.alive():
                    state.healthy(now)
                    continue
                if state.due is None:
                    state.due = now + state.backoff
                    self.say(
                        f"{process.name} exited (code {process.exit_code()}); restarting it in "
                        f"{state.backoff:.0f}s (restart {state.restarts + 1}). Its log ends:\n"
                        f"{process.log_tail(10)}"
                    )
                elif now >= state.due:
                    process.signal(signal.SIGKILL)  # what it left behind in its group goes too
                    process.start()
                    state.restarted(now)
                    self.say(f"{process.name} restarted (pid {process.pid})")
            time.sleep(poll)

    def down(self) -> None:
        """Stop everything: clients first (API, Flower, workers), then the servers they use."""
        clients = [p for p in self.processes if p.name.startswith(("api", "flower", "worker", "beat"))]
        servers = [p for p in self.processes if p not in clients]
        for group in (clients, servers):
            stop_all(group)
        self.processes.clear()


@dataclass
class Supervisor:
    """Restart bookkeeping of one process: back-off doubling from 1 s to 60 s, reset after a calm minute."""

    backoff: float = 1.0
    restarts: int = 0
    due: float | None = None  # when to start it again
    up_since: float = 0.0

    def restarted(self, now: float) -> None:
        self.restarts += 1
        self.due = None
        self.up_since = now
        self.backoff = min(60.0, self.backoff * 2)

    def healthy(self, now: float) -> None:
        if self.restarts and now - self.up_since > 60:
            self.backoff = 1.0


def stop_all(processes: list[ManagedProcess], timeout: float = 15.0) -> None:
    """SIGTERM all at once, then wait for each (SIGKILL after ``timeout``)."""
    for process in processes:
        if process.alive():
            process.signal(signal.SIGTERM)
    for process in processes:
        process.stop(timeout)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte (no window in
    which another user could open it): a new file created 0600, then renamed over ``path``."""
    import os

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def run_up(settings: Settings) -> int:
    """Run the local stack in the foreground until Ctrl-C (or SIGTERM)."""
    import os

    # What the stack writes (Redis's append-only file, S3 objects, Triton's work dirs, the
    # beat schedule, SQLite's journals) is its owner's alone.
    os.umask(0o077)
    stack = Stack(settings)

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Explicitly, also for SIGINT: a shell starting us in the background may have ignored it.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        key = stack.up()
        s = settings
        stack.say(
            "\ninferq is up.\n"
            f"  API      http://{s.api_host}:{s.api_port}   (try /readyz)\n"
            f"  Flower   http://127.0.0.1:{s.flower_port}\n"
            f"  S3       {s.s3_endpoint}  (key {s.s3_access_key})\n"
            f"  logs     {stack.logs}\n"
            f"  API key  {key}\n"
            "Ctrl-C stops everything.\n"
        )
        return stack.watch()
    except KeyboardInterrupt:
        stack.say("\nstopping ...")
        return 0
    except StartupError as exc:
        stack.say(f"start-up failed: {exc}")
        return 1
    finally:
        stack.down()
        stack.say("stopped.")
