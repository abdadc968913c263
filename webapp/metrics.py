"""Prometheus metrics of the API: requests by endpoint and status, latency, inference outcomes."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "inferq_http_requests_total",
    "HTTP requests answered",
    ["method", "endpoint", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "inferq_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
INFER_REQUESTS = Counter(
    "inferq_infer_requests_total",
    "Sync inference requests by how they were answered",
    ["model", "outcome"],
    registry=REGISTRY,
)


def init_app(app: Flask) -> None:
    """Time every request and serve ``GET /metrics``."""

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Any) -> Any:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        if endpoint != "/metrics":
            HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
            started = g.get("started")
            if started is not None:
                HTTP_LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)
