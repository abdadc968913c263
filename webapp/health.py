"""Liveness and readiness: ``/healthz`` answers while the process runs; ``/readyz`` checks each dependency.

``/readyz`` tells the public only ``{"status": "ready"|"unavailable"}`` (200 or 503); an admin
key (``Authorization: Bearer``, optional here) also gets each check's details. The checks run
at most once per ``INFERQ_READY_CACHE_TTL`` seconds in each API process, whoever asks, and ask
nothing of the workers: their liveness is read from Redis (``workers.liveness``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from inferq.settings import Settings, gpu_queue, mask_secrets
from webapp import celery_app, services
from webapp.errors import ApiError
from workers.liveness import live_workers

bp = Blueprint("health", __name__)

# Checks that make /readyz answer 503 when they fail.
REQUIRED = ("broker", "database", "object_store", "triton", "workers")
MAX_ERROR = 200  # characters of a failed check's error, shown to admins


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


def check_broker() -> dict[str, Any]:
    with celery_app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=services().settings.health_timeout)
        url = connection.as_uri()
    return {"status": "ok", "url": mask_secrets(url)}


def check_database() -> dict[str, Any]:
    services().db.ping()
    return {"status": "ok", "backend": services().db.engine.dialect.name}


def check_object_store() -> dict[str, Any]:
    services().store.ping()
    return {"status": "ok", "bucket": services().settings.s3_bucket}


def check_triton() -> dict[str, Any]:
    settings: Settings = services().settings
    gpus: dict[str, Any] = {}
    for gpu in settings.gpus:
        url = mask_secrets(settings.triton_urls[gpu])
        try:
            ready = services().triton(gpu).is_live()
            gpus[str(gpu)] = {"status": "ok" if ready else "fail", "url": url}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            gpus[str(gpu)] = {"status": "fail", "url": url, "error": _error(exc)}
    up = sum(1 for item in gpus.values() if item["status"] == "ok")
    status = "ok" if up == len(gpus) else ("degraded" if up else "fail")
    return {"status": status, "gpus": gpus}


def check_workers() -> dict[str, Any]:
    """Workers alive on each queue, as they announce themselves in Redis (no broadcast)."""
    settings: Settings = services().settings
    consumers = live_workers(services().redis, settings.queues)
    gpu_queues = [gpu_queue(gpu) for gpu in settings.gpus]
    served = [queue for queue in gpu_queues if consumers.get(queue)]
    status = (
        "ok"
        if len(served) == len(gpu_queues) and consumers.get("control")
        else ("degraded" if served else "fail")
    )
    workers = sorted({worker for names in consumers.values() for worker in names})
    return {"status": status, "workers": workers, "queues": consumers}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "broker": check_broker,
    "database": check_database,
    "object_store": check_object_store,
    "triton": check_triton,
    "workers": check_workers,
}


class Readiness:
    """The last readiness report of this process, refreshed at most every ``ttl`` seconds by one
    caller at a time (the others wait for it, then share it)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._taken = 0.0

    def report(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            if self._report is None or time.monotonic() - self._taken >= self.ttl:
                self._report = run()
                self._taken = time.monotonic()
            return self._report


def run_checks() -> dict[str, Any]:
    """Each dependency checked at once, in parallel, each bounded by the health timeout."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    timeout = services().settings.health_timeout + 1
    results: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz")
    futures = {name: pool.submit(_timed(app, check)) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)  # a hung check must not hold the answer
    for name, future in futures.items():
        if not future.done():
            results[name] = {"status": "fail", "error": f"no answer within {timeout:g}s"}
        elif future.exception() is not None:
            results[name] = {"status": "fail", "error": _error(future.exception())}
        else:
            results[name] = future.result()
    ready = all(results[name]["status"] != "fail" for name in REQUIRED)
    return {
        "status": "ready" if ready else "unavailable",
        "checked_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "checks": results,
    }


def wants_details() -> bool:
    """Whether the caller sent an admin key. No key, or a tenant's: the public answer; an
    unknown key: 401 (as on /v1). A registry that cannot say: the public answer."""
    header = request.headers.get("Authorization")
    if header is None:
        return False
    scheme, _, key = header.partition(" ")
    try:
        principal = (
            current_app.extensions["inferq.keys"].authenticate(services().db, key.strip())
            if scheme.lower() == "bearer" and key.strip()
            else None
        )
    except Exception:  # noqa: BLE001 - the database is down: /readyz says so without details
        return False
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "Invalid API key",
            "the API key is unknown or revoked; /readyz needs none (an admin key shows details)",
            headers={"WWW-Authenticate": 'Bearer realm="inferq", error="invalid_token"'},
        )
    return bool(principal.admin)


@bp.get("/readyz")
def readyz() -> Any:
    """200 when every required dependency answers, else 503; details for an admin key only."""
    details = wants_details()
    readiness = current_app.extensions.get("inferq.readiness")
    if readiness is None:
        readiness = current_app.extensions.setdefault(
            "inferq.readiness", Readiness(services().settings.ready_cache_ttl)
        )
    report = readiness.report(run_checks)
    body = report if details else {"status": report["status"]}
    response = jsonify(body)
    response.status_code = 200 if report["status"] == "ready" else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _timed(app: Any, check: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        started = time.perf_counter()
        with app.app_context():
            result = check()
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return result

    return run


def _error(exc: BaseException | None) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return mask_secrets(text)[:MAX_ERROR]
