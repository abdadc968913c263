"""Inference statistics per model version and GPU, and per model version and tenant: counted in Redis
on the hot path, flushed to the database.

Each inference costs one pipelined Redis round trip (HINCRBY on a hash per model
and GPU). ``flush`` moves the counts into the database atomically (RENAME, so two
flushers never count the same hash twice); ``read`` adds what is still in Redis
to what is in the database, so the figures are exact at any moment. Latency goes
into log-spaced buckets (each 25% wider than the last, from 0.25 ms), which bounds
a percentile's error to one bucket width.

Per GPU is the platform's view (an admin key); per tenant is what a tenant key may read: the
requests, errors and latency of its own traffic, nothing of other tenants' or of the GPUs.
"""

from __future__ import annotations

import bisect
import logging
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from inferq.services import Redis, RedisError, ResponseError
from registry.db import Base

log = logging.getLogger(__name__)

KEY = "inferq:stats:{}:{}"
SCAN_PATTERN = "inferq:stats:*"
TENANT_KEY = "inferq:tstats:{}:{}"  # model id, tenant (the tenant last: it may hold ":")
TENANT_SCAN_PATTERN = "inferq:tstats:*"
BUCKET_BOUNDS_MS = [0.25 * 1.25**i for i in range(64)]  # up to about 400 s
PERCENTILES = (50, 95, 99)


class InferenceStats(Base):
    __tablename__ = "inference_stats"

    model_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    gpu: Mapped[int] = mapped_column(Integer, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    # Triton calls made for those requests: a request tried on two GPUs is one request, two attempts.
    attempts: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    failed_attempts: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class InferenceLatency(Base):
    __tablename__ = "inference_latency"

    model_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    gpu: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class TenantInferenceStats(Base):
    __tablename__ = "tenant_inference_stats"

    model_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)


class TenantInferenceLatency(Base):
    __tablename__ = "tenant_inference_latency"

    model_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


def bucket_of(latency_ms: float) -> int:
    """Index of the first bucket whose upper bound is at least ``latency_ms``."""
    return min(bisect.bisect_left(BUCKET_BOUNDS_MS, latency_ms), len(BUCKET_BOUNDS_MS) - 1)


def add_inference(pipe: Any, model_id: str, gpu: int, latency_ms: float, ok: bool, count: int = 1) -> None:
    """Queue the counts of ``count`` inferences that took ``latency_ms`` each on a Redis pipeline
    (the caller executes it)."""
    _add(pipe, KEY.format(model_id, gpu), latency_ms, ok, count)


def add_tenant_inference(
    pipe: Any, model_id: str, tenant: str, latency_ms: float, ok: bool, count: int = 1
) -> None:
    """The same counts for ``tenant``'s own figures."""
    _add(pipe, TENANT_KEY.format(model_id, tenant), latency_ms, ok, count)


def _add(pipe: Any, key: str, latency_ms: float, ok: bool, count: int) -> None:
    pipe.hincrby(key, "requests", count)
    if ok:
        pipe.hincrbyfloat(key, "latency_ms_sum", latency_ms * count)
        pipe.hincrby(key, f"b{bucket_of(latency_ms)}", count)
    else:
        pipe.hincrby(key, "errors", count)


def add_attempts(pipe: Any, model_id: str, gpu: int, count: int, failed: int) -> None:
    """Queue ``count`` Triton attempts on ``gpu`` (``failed`` of them failed) on a Redis pipeline.

    Requests count once, when they end; attempts count every try, so a request retried on
    another GPU shows as one request and two attempts."""
    key = KEY.format(model_id, gpu)
    pipe.hincrby(key, "attempts", count)
    if failed:
        pipe.hincrby(key, "failed_attempts", failed)


def record(client: Redis, model_id: str, gpu: int, latency_ms: float, ok: bool) -> None:
    """Count one inference (one pipelined round trip); never raises."""
    try:
        with client.pipeline(transaction=False) as pipe:
            add_inference(pipe, model_id, gpu, latency_ms, ok)
            pipe.execute()
    except RedisError as exc:
        log.warning("statistics of model %s not recorded: %s", model_id, exc)


def _parse(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    counts: dict[str, Any] = _empty()
    for field, value in raw.items():
        name = field.decode()
        if name.startswith("b"):
            counts["buckets"][int(name[1:])] = int(value)
        elif name == "latency_ms_sum":
            counts[name] = float(value)
        else:
            counts[name] = int(value)
    return counts


def _upsert(session: Session, table: Any, keys: dict[str, Any], increments: dict[str, Any]) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(**keys, **increments)
    statement = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={column: getattr(table.c, column) + statement.excluded[column] for column in increments},
    )
    session.execute(statement)


def _write(session: Session, model_id: str, gpu: int, counts: Mapping[str, Any]) -> None:
    from registry.models import Model

    if session.get(Model, model_id) is None:
        return  # the model was deleted: its counts go with it
    _upsert(
        session,
        InferenceStats.__table__,
        {"model_id": model_id, "gpu": gpu},
        {
            "requests": counts["requests"],
            "errors": counts["errors"],
            "latency_ms_sum": counts["latency_ms_sum"],
            "attempts": counts["attempts"],
            "failed_attempts": counts["failed_attempts"],
        },
    )
    for bucket, count in counts["buckets"].items():
        _upsert(
            session,
            InferenceLatency.__table__,
            {"model_id": model_id, "gpu": gpu, "bucket": bucket},
            {"count": count},
        )


def _write_tenant(session: Session, model_id: str, tenant: str, counts: Mapping[str, Any]) -> None:
    from registry.models import Model

    if session.get(Model, model_id) is None:
        return
    keys = {"model_id": model_id, "tenant": tenant}
    _upsert(
        session,
        TenantInferenceStats.__table__,
        keys,
        {
            "requests": counts["requests"],
            "errors": counts["errors"],
            "latency_ms_sum": counts["latency_ms_sum"],
        },
    )
    for bucket, count in counts["buckets"].items():
        _upsert(session, TenantInferenceLatency.__table__, {**keys, "bucket": bucket}, {"count": count})


def _writer(key: str) -> Any:
    """How the counts of hash ``key`` go to the database: a function of a session and the counts."""
    _, kind, model_id, rest = key.split(":", 3)
    if kind == "tstats":
        return lambda session, counts: _write_tenant(session, model_id, rest, counts)
    return lambda session, counts: _write(session, model_id, int(rest), counts)


def flush(client: Redis, database: Any) -> int:
    """Move every pending count from Redis into the database; returns how many hashes moved."""
    moved = 0
    keys = [*client.scan_iter(SCAN_PATTERN, count=500), *client.scan_iter(TENANT_SCAN_PATTERN, count=500)]
    for key in keys:
        write = _writer(key.decode())
        claimed = f"inferq:statsflush:{uuid.uuid4().hex}"
        try:
            client.rename(key, claimed)  # atomic: later counts start a new hash
        except ResponseError:
            continue  # another flusher took it
        counts = _parse(client.hgetall(claimed))  # type: ignore[arg-type]
        try:
            with database.session() as session:
                write(session, counts)
        except Exception:
            _give_back(client, key, counts)
            raise
        finally:
            client.delete(claimed)
        moved += 1
    return moved


def _give_back(client: Redis, key: Any, counts: Mapping[str, Any]) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, "requests", counts["requests"])
        pipe.hincrby(key, "errors", counts["errors"])
        pipe.hincrbyfloat(key, "latency_ms_sum", counts["latency_ms_sum"])
        if counts["attempts"] or counts["failed_attempts"]:
            pipe.hincrby(key, "attempts", counts["attempts"])
            pipe.hincrby(key, "failed_attempts", counts["failed_attempts"])
        for bucket, count in counts["buckets"].items():
            pipe.hincrby(key, f"b{bucket}", count)
        pipe.execute()


def _summary(counts: Mapping[str, Any]) -> dict[str, Any]:
    requests, errors = counts["requests"], counts["errors"]
    succeeded = requests - errors
    buckets = counts["buckets"]
    latency: dict[str, float | None] = {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    total = sum(buckets.values())
    if total:
        latency["mean"] = round(counts["latency_ms_sum"] / max(succeeded, 1), 3)
        for p in PERCENTILES:
            rank, seen = math.ceil(total * p / 100), 0
            for bucket in sorted(buckets):
                seen += buckets[bucket]
                if seen >= rank:
                    latency[f"p{p}"] = round(BUCKET_BOUNDS_MS[bucket], 3)
                    break
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 6) if requests else 0.0,
        "attempts": counts.get("attempts", 0),
        "failed_attempts": counts.get("failed_attempts", 0),
        "latency_ms": latency,
    }


def _merge(into: dict[str, Any], counts: Mapping[str, Any]) -> None:
    for name in ("requests", "errors", "latency_ms_sum", "attempts", "failed_attempts"):
        into[name] += counts[name]
    for bucket, count in counts["buckets"].items():
        into["buckets"][bucket] = into["buckets"].get(bucket, 0) + count


def _empty() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "latency_ms_sum": 0.0,
        "attempts": 0,
        "failed_attempts": 0,
        "buckets": {},
    }


def read(session: Session, client: Redis | None, model_id: str, gpus: Iterable[int]) -> dict[str, Any]:
    """Requests, errors, error rate and latency mean/p50/p95/p99, overall and per GPU."""
    per_gpu: dict[int, dict[str, Any]] = {}
    for row in session.scalars(select(InferenceStats).where(InferenceStats.model_id == model_id)):
        per_gpu[row.gpu] = {
            "requests": row.requests,
            "errors": row.errors,
            "latency_ms_sum": row.latency_ms_sum,
            "attempts": row.attempts,
            "failed_attempts": row.failed_attempts,
            "buckets": {},
        }
    for bucket in session.scalars(select(InferenceLatency).where(InferenceLatency.model_id == model_id)):
        per_gpu.setdefault(bucket.gpu, _empty())["buckets"][bucket.bucket] = bucket.count
    pending = True
    if client is not None:
        try:
            with client.pipeline(transaction=False) as pipe:
                gpu_list = sorted(set(gpus) | set(per_gpu))
                for gpu in gpu_list:
                    pipe.hgetall(KEY.format(model_id, gpu))
                for gpu, raw in zip(gpu_list, pipe.execute(), strict=True):
                    if raw:
                        _merge(per_gpu.setdefault(gpu, _empty()), _parse(raw))
        except RedisError as exc:
            log.warning("pending statistics unavailable: %s", exc)
            pending = False
    overall = _empty()
    for counts in per_gpu.values():
        _merge(overall, counts)
    return {
        **_summary(overall),
        "gpus": {str(gpu): _summary(per_gpu[gpu]) for gpu in sorted(per_gpu)},
        "complete": pending,
    }


def read_tenant(session: Session, client: Redis | None, model_id: str, tenant: str) -> dict[str, Any]:
    """``tenant``'s own requests, errors, error rate and latency mean/p50/p95/p99 (no GPUs, no attempts:
    those are the platform's)."""
    counts = _empty()
    keys = (TenantInferenceStats.model_id == model_id, TenantInferenceStats.tenant == tenant)
    row = session.scalars(select(TenantInferenceStats).where(*keys)).first()
    if row is not None:
        counts.update(requests=row.requests, errors=row.errors, latency_ms_sum=row.latency_ms_sum)
    for bucket in session.scalars(
        select(TenantInferenceLatency).where(
            TenantInferenceLatency.model_id == model_id, TenantInferenceLatency.tenant == tenant
        )
    ):
        counts["buckets"][bucket.bucket] = bucket.count
    pending = True
    if client is not None:
        try:
            raw = client.hgetall(TENANT_KEY.format(model_id, tenant))
            if raw:
                _merge(counts, _parse(raw))  # type: ignore[arg-type]
        except RedisError as exc:
            log.warning("pending statistics unavailable: %s", exc)
            pending = False
    summary = _summary(counts)
    del summary["attempts"], summary["failed_attempts"]
    return {**summary, "gpus": {}, "complete": pending}
