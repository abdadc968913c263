"""Which chunks the recovery pass sends again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry.batches import Chunk
from tasks.batch_recovery import is_lost

NOW = datetime(2026, 1, 1, tzinfo=UTC)
AGE = timedelta(seconds=120)


def chunk(status: str = "queued", sent_ago: float | None = 300, queue: str | None = "gpu.0") -> Chunk:
    sent_at = NOW - timedelta(seconds=sent_ago) if sent_ago is not None else None
    return Chunk(status=status, sent_at=sent_at, queue=queue)


def test_a_chunk_never_sent_is_lost() -> None:
    assert is_lost(chunk("pending", None, None), {}, NOW, AGE)


def test_a_sent_chunk_is_lost_when_its_queue_is_empty() -> None:
    assert is_lost(chunk(), {"gpu.0": 0}, NOW, AGE)


def test_a_sent_chunk_waiting_in_a_busy_queue_is_not_lost() -> None:
    assert not is_lost(chunk(), {"gpu.0": 40}, NOW, AGE)
    assert not is_lost(chunk(), {}, NOW, AGE)  # depth unknown: wait


def test_a_chunk_waiting_ten_times_the_age_is_lost_whatever_its_queue() -> None:
    assert is_lost(chunk(sent_ago=1300), {"gpu.0": 40}, NOW, AGE)
