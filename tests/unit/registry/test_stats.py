from __future__ import annotations

from registry.stats import BUCKET_BOUNDS_MS, _summary, bucket_of


def test_buckets_are_log_spaced_and_cover_the_range() -> None:
    assert bucket_of(0.1) == 0 and bucket_of(0.25) == 0
    assert bucket_of(0.26) == 1
    assert BUCKET_BOUNDS_MS[bucket_of(10.0)] >= 10.0 > BUCKET_BOUNDS_MS[bucket_of(10.0) - 1]
    assert bucket_of(10**9) == len(BUCKET_BOUNDS_MS) - 1


def test_percentiles_from_buckets() -> None:
    buckets: dict[int, int] = {}
    for ms in [1.0] * 90 + [10.0] * 9 + [100.0]:
        buckets[bucket_of(ms)] = buckets.get(bucket_of(ms), 0) + 1
    summary = _summary({"requests": 102, "errors": 2, "latency_ms_sum": 271.0, "buckets": buckets})
    latency = summary["latency_ms"]
    assert 1.0 <= latency["p50"] < 1.25 * 1.0 + 0.01
    assert 10.0 <= latency["p95"] < 12.5
    assert 10.0 <= latency["p99"] < 12.5
    assert latency["mean"] == 2.71
    assert summary["error_rate"] == round(2 / 102, 6)


def test_no_traffic() -> None:
    summary = _summary({"requests": 0, "errors": 0, "latency_ms_sum": 0.0, "buckets": {}})
    assert summary == {
        "requests": 0,
        "errors": 0,
        "error_rate": 0.0,
        "attempts": 0,
        "failed_attempts": 0,
        "latency_ms": {"mean": None, "p50": None, "p95": None, "p99": None},
    }
