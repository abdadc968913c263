"""The one place that reads the environment: every ``INFERQ_*`` setting, typed, with local defaults.

Everything else receives a :class:`Settings`. The table in ``docs/settings.md``
documents each variable; ``Settings.describe()`` prints the effective values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _default_data_dir() -> str:
    return str(Path.home() / ".local" / "share" / "inferq")


def _default_model_repository() -> str:
    # An editable install (the README's way) finds models/ beside the package.
    candidate = REPO_ROOT / "models"
    return str(candidate if candidate.is_dir() else Path.cwd() / "models")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Typed settings; field ``foo_bar`` is read from ``INFERQ_FOO_BAR``."""

    data_dir: str = dataclasses.field(default_factory=_default_data_dir)
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # default: redis_url
    result_backend: str = ""  # default: redis_url
    # RabbitMQ only: "quorum" (replicated, durable queues; delayed retries through RabbitMQ's
    # native delayed delivery) or "classic".
    broker_queue_type: str = "quorum"
    database_url: str = ""  # default: SQLite file in data_dir
    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_access_key: str = "inferq"
    s3_secret_key: str = "inferq-secret"
    s3_bucket: str = "inferq"
    s3_region: str = "us-east-1"
    gpus: tuple[int, ...] = (0, 1)
    # "0=http://host:8000,1=http://host:8010", or one URL for every GPU; default:
    # one local Triton per GPU on ports 8000+10*N (HTTP), +1 gRPC, +2 metrics.
    triton_urls: Mapping[int, str] = dataclasses.field(default_factory=dict)
    triton_timeout: float = 10.0  # one inference (or health) call
    triton_load_timeout: float = 540.0  # loading a model (shorter than the deploy task's 600 s limit)
    # Each GPU worker has a Triton of its own (a sidecar in its pod, Kubernetes): the worker loads
    # into it what the registry says its GPU serves, at start and when it misses a model.
    triton_sidecar: bool = False
    model_repository: str = dataclasses.field(default_factory=_default_model_repository)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_server: str = "gevent"  # gunicorn worker class: gevent, or gthread
    api_workers: int = 1  # gunicorn processes
    api_threads: int = 16  # gthread only
    api_connections: int = 1000  # gevent only: connections one process serves at once
    # Slow clients: a connection that has not sent a whole request head within api_keep_alive
    # seconds is closed (gunicorn --keep-alive; also how long an idle keep-alive connection
    # stays open); a body (or a reader of the answer) that stalls this long is dropped.
    api_keep_alive: int = 5
    api_read_timeout: float = 30.0
    # One line per request or task costs the path it is on (about 0.3 ms a line here, measured):
    # off by default, as in gunicorn and Celery; Prometheus and Flower count and show them instead.
    api_access_log: bool = False  # gunicorn's access log (the API's log file, common log format)
    log_tasks: bool = False  # Celery's "Task ... received" and "... succeeded in" lines (workers' logs)
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    sync_timeout: float = 5.0
    sync_timeout_max: float = 60.0
    # Dynamic batching of sync requests in each API process (tasks/coalesce.py): at most this many
    # requests per task message, this many messages per model out at once (the rest queue and go
    # out together), and a message's slot freed after this long at the latest.
    sync_batch_max: int = 32
    sync_batch_inflight: int = 2
    sync_batch_slot_timeout: float = 2.0
    max_redeliveries: int = 2  # a task whose worker died is run again at most this often (then fails)
    sync_deadline: float = 300.0  # a sync inference not started within this many seconds is dropped
    sync_waiting_per_tenant: int = 128  # sync requests of one tenant waiting at once; beyond: 429
    key_cache_ttl: float = 5.0  # seconds an API key's lookup is reused in-process (a revoke takes this long)
    max_request_bytes: int = 16 * 1024 * 1024
    inline_payload_max: int = 256 * 1024
    task_time_limit: int = 120  # tasks that set no limit of their own
    result_expires: int = 24 * 3600
    # Redis broker: a message taken by a worker that died returns to its queue after this long
    # (checked every broker_restore_interval seconds). Longer than any task that acknowledges late.
    visibility_timeout: int = 300
    broker_restore_interval: float = 10.0
    worker_concurrency: int = 2  # control worker (prefork): planning, finalizing, deploys, upkeep
    gpu_worker_pool: str = "threads"  # GPU workers: their tasks wait on Triton
    gpu_worker_concurrency: int = 8
    health_timeout: float = 2.0
    ready_cache_ttl: float = 2.0  # seconds each API process reuses its /readyz checks
    rate_limit: str = "100/minute"  # per API key unless the key has its own; empty: no limit
    # After the limiter's Redis fails, requests go unchecked for at most this many seconds
    # (counted in inferq_rate_limiter_open_total); then Redis is asked again.
    rate_limit_fail_open: float = 1.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    cache_ttl: int = 900
    cache_timeout: float = 0.25
    stats_flush_interval: float = 10.0
    reconcile_interval: float = 30.0  # seconds between checks that each Triton has what the registry says
    # Workers send their task events (Flower) at most this often, together, off a request's path.
    event_flush_interval: float = 0.25
    deploy_timeout: int = (
        900  # a deploy still loading after this is failed (longer than the load task's limit)
    )
    # Files and batches (docs/batches.md).
    max_file_bytes: int = 1024**3  # largest upload to POST /v1/files; beyond: 413
    batch_max_requests: int = 5_000_000  # request lines of one batch, at most (the planner's memory)
    batch_max_line_bytes: int = 4 * 1024 * 1024  # one input line, at most; longer: line_too_long
    batch_chunk_lines: int = 2000  # lines of a chunk (one GPU task), at most
    batch_chunk_max_bytes: int = 4 * 1024 * 1024  # bytes of a chunk, at most (also <= a tenth of the file)
    batch_micro_batch: int = 1024  # rows sent to Triton in one call
    batch_triton_retry_seconds: float = 30.0  # a chunk retries an unreachable Triton this long per attempt
    batch_chunk_max_attempts: int = 5  # sends of a chunk; the last one fails what Triton cannot serve
    batch_chunk_time_limit: int = 240  # hard limit of a chunk task (soft: 30 s less; prefork pools only)
    batch_plan_time_limit: int = 1800  # hard limit of planning (soft: 60 s less)
    batch_finalize_time_limit: int = 900  # hard limit of finalizing (soft: 60 s less)
    batch_reaper_interval: float = 30.0  # seconds between recovery passes (celery beat)
    batch_lost_chunk_age: float = 120.0  # a sent chunk not done after this long (its queue empty) is re-sent
    cuda_visible_devices: str = ""  # read from CUDA_VISIBLE_DEVICES, for reporting only
    # Tracing: OTLP/HTTP collector base URL (Jaeger: http://jaeger:4318), and/or a JSON-lines file.
    otlp_endpoint: str = ""
    trace_file: str = ""
    # For the client commands (inferq models, submit, ...): where the API is, and the key to use.
    url: str = "http://127.0.0.1:8080"
    api_key: str = ""

    def __post_init__(self) -> None:
        derived = {
            "broker_url": self.broker_url or self.redis_url,
            "result_backend": self.result_backend or self.redis_url,
            "database_url": self.database_url
            or f"sqlite:///{Path(self.data_dir).expanduser() / 'inferq.db'}",
            "triton_urls": dict(self.triton_urls)
            or {gpu: f"http://127.0.0.1:{8000 + 10 * gpu}" for gpu in self.gpus},
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        missing = [gpu for gpu in self.gpus if gpu not in self.triton_urls]
        if missing:
            raise SettingsError(f"INFERQ_TRITON_URLS names no Triton for GPU(s) {missing}")
        if not self.gpus:
            raise SettingsError("INFERQ_GPUS must name at least one GPU")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``INFERQ_*`` variables (``os.environ`` by default), then overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = (
                "CUDA_VISIBLE_DEVICES"
                if field.name == "cuda_visible_devices"
                else f"INFERQ_{field.name.upper()}"
            )
            raw = env.get(key)
            if raw is None or raw == "":
                continue
            values[field.name] = _coerce(field.name, key, raw)
        if "triton_urls" in values and isinstance(values["triton_urls"], str):
            gpus = values.get("gpus", cls.gpus)
            values["triton_urls"] = {gpu: values["triton_urls"] for gpu in gpus}
        values.update(overrides)
        return cls(**values)

    @property
    def redis_broker(self) -> bool:
        """Whether the broker is a Redis (served by inferq's kombu transport, ``tasks.broker``)."""
        return urlsplit(self.broker_url).scheme in ("redis", "rediss")

    @property
    def queues(self) -> list[str]:
        """Every Celery queue: one per GPU, then ``control``."""
        return [gpu_queue(gpu) for gpu in self.gpus] + [CONTROL_QUEUE]

    def as_env(self) -> dict[str, str]:
        """These settings as ``INFERQ_*`` variables, for child processes."""
        env: dict[str, str] = {}
        for field in dataclasses.fields(self):
            if field.name in ("cuda_visible_devices", "api_key"):
                continue
            value = getattr(self, field.name)
            if field.name == "gpus":
                text = ",".join(str(g) for g in value)
            elif field.name == "triton_urls":
                text = ",".join(f"{gpu}={url}" for gpu, url in sorted(value.items()))
            else:
                text = str(value)
            env[f"INFERQ_{field.name.upper()}"] = text
        return env

    def describe(self) -> str:
        """Effective settings, one per line, secrets masked (passwords inside URLs too)."""
        lines = []
        for key, value in sorted(self.as_env().items()):
            if any(word in key for word in SECRET_WORDS):
                value = "***"
            lines.append(f"{key}={mask_secrets(value)}")
        return "\n".join(lines)


SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "API_KEY")
# scheme://user:password@host -> scheme://user:***@host; ?password=... -> ?password=***
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^\s,/]*@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|secret|token|sslpassword)=)[^&\s,]*", re.I)


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it (and secret query parameters) masked."""
    return _QUERY_SECRET.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>:***@", text))


CONTROL_QUEUE = "control"


def gpu_queue(gpu: int) -> str:
    """The Celery queue pinned to GPU ``gpu``."""
    return f"gpu.{gpu}"


def gpu_of_queue(queue: str) -> int | None:
    """The GPU index a ``gpu.N`` queue is pinned to, or None for other queues."""
    prefix, _, index = queue.partition(".")
    if prefix != "gpu" or not index.isdigit():
        return None
    return int(index)


def _coerce(name: str, key: str, raw: str) -> Any:
    field_type = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    try:
        if name == "gpus":
            return tuple(int(part) for part in raw.split(",") if part.strip())
        if name == "triton_urls":
            if "=" not in raw:
                return raw.strip()
            mapping = {}
            for part in raw.split(","):
                gpu, _, url = part.partition("=")
                mapping[int(gpu)] = url.strip()
            return mapping
        if field_type == "bool":
            word = raw.strip().lower()
            if word not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                raise ValueError("expected true or false")
            return word in ("1", "true", "yes", "on")
        if field_type == "int":
            return int(raw)
        if field_type == "float":
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{key}={raw!r} is not valid: {exc}") from None
    return raw


def load_settings() -> Settings:
    """Settings from the process environment."""
    return Settings.from_env()
