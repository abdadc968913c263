"""Liveness and readiness: ``/healthz`` answers while the process runs; ``/readyz`` checks each dependency."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from flask import Blueprint, jsonify

from inferq.settings import Settings, gpu_queue
from webapp import celery_app, services

bp = Blueprint("health", __name__)

# Checks that make /readyz answer 503 when they fail.
REQUIRED = ("broker", "database", "object_store", "triton", "workers")


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


def check_broker() -> dict[str, Any]:
    with celery_app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=services().settings.health_timeout)
    return {"status": "ok", "url": _redact(connection.as_uri())}


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
        url = settings.triton_urls[gpu]
        try:
            ready = services().triton(gpu).is_live()
            gpus[str(gpu)] = {"status": "ok" if ready else "fail", "url": url}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            gpus[str(gpu)] = {"status": "fail", "url": url, "error": str(exc)}
    up = sum(1 for item in gpus.values() if item["status"] == "ok")
    status = "ok" if up == len(gpus) else ("degraded" if up else "fail")
    return {"status": status, "gpus": gpus}


def check_workers() -> dict[str, Any]:
    settings: Settings = services().settings
    replies = celery_app().control.inspect(timeout=settings.health_timeout / 2).active_queues() or {}
    consumers: dict[str, list[str]] = {queue: [] for queue in settings.queues}
    for worker, queues in replies.items():
        for queue in queues or []:
            consumers.setdefault(queue["name"], []).append(worker)
    gpu_queues = [gpu_queue(gpu) for gpu in settings.gpus]
    served = [queue for queue in gpu_queues if consumers.get(queue)]
    status = (
        "ok"
        if len(served) == len(gpu_queues) and consumers.get("control")
        else ("degraded" if served else "fail")
    )
    return {"status": status, "workers": sorted(replies), "queues": consumers}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "broker": check_broker,
    "database": check_database,
    "object_store": check_object_store,
    "triton": check_triton,
    "workers": check_workers,
}


@bp.get("/readyz")
def readyz() -> Any:
    """Each dependency checked at once, in parallel, each bounded by the health timeout; 503 if one fails."""
    from flask import copy_current_request_context

    timeout = services().settings.health_timeout + 1
    results: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz")
    futures = {
        name: pool.submit(copy_current_request_context(_timed(check))) for name, check in CHECKS.items()
    }
    wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)  # a hung check must not hold the answer
    for name, future in futures.items():
        if not future.done():
            results[name] = {"status": "fail", "error": f"no answer within {timeout:g}s"}
        elif future.exception() is not None:
            results[name] = {"status": "fail", "error": str(future.exception()).splitlines()[0]}
        else:
            results[name] = future.result()
    ready = all(results[name]["status"] != "fail" for name in REQUIRED)
    response = jsonify({"status": "ready" if ready else "not ready", "checks": results})
    response.status_code = 200 if ready else 503
    return response


def _timed(check: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        started = time.perf_counter()
        result = check()
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return result

    return run


def _redact(uri: str) -> str:
    return uri.split("@")[-1] if "@" in uri else uri
