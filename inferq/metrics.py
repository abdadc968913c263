"""Prometheus metrics of inferq processes, in one registry that ``GET /metrics`` serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

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
REGISTRY_CACHE = Counter(
    "inferq_registry_cache_total",
    "Registry cache lookups: hit, miss, or error (Redis unavailable, answered from the database)",
    ["result"],
    registry=REGISTRY,
)
RATE_LIMITER_OPEN = Counter(
    "inferq_rate_limiter_open_total",
    "Requests let through without a rate-limit check because the limiter's Redis failed"
    " (for at most INFERQ_RATE_LIMIT_FAIL_OPEN seconds after each failure)",
    registry=REGISTRY,
)
RATE_LIMITER_FAILURES = Counter(
    "inferq_rate_limiter_failures_total",
    "Rate-limit checks that failed because Redis did not answer in time",
    registry=REGISTRY,
)
