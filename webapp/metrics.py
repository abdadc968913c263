"""Prometheus metrics of the API: requests by endpoint and status, latency, inference outcomes."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferq.metrics import HTTP_LATENCY, HTTP_REQUESTS, REGISTRY

# Label values come from fixed sets, so that no request can add a series: any other method is
# "other", any path no route matches is "unmatched".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def init_app(app: Flask) -> None:
    """Time every request and serve ``GET /metrics``."""

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Any) -> Any:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        if endpoint != "/metrics":
            method = method_label(request.method)
            HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
            started = g.get("started")
            if started is not None:
                HTTP_LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
