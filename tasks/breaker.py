"""Per-GPU circuit breakers, shared by every process through Redis.

A worker counts consecutive failures to reach its GPU's Triton; at
``threshold`` the breaker opens for ``cooldown`` seconds and the router sends
nothing there (a request whose GPUs are all open fails fast with 503). After the
cool-down the breaker is half-open: requests flow again, one more failure opens
it at once, one success closes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from inferq.settings import gpu_queue

KEY = "inferq:breaker:{}"


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int
    cooldown: float


def key(gpu: int) -> str:
    return KEY.format(gpu_queue(gpu))


def add_outcome(pipe: Any, gpu: int, ok: bool, policy: BreakerPolicy) -> None:
    """Queue the breaker update of one attempt on ``pipe``: a success closes, a failure counts."""
    if ok:
        pipe.delete(key(gpu))
    else:
        pipe.hincrby(key(gpu), "failures", 1)
        pipe.expire(key(gpu), int(policy.cooldown * 10) + 60)


def open_if_tripped(
    client: Any, gpu: int, failures: int, policy: BreakerPolicy, now: float | None = None
) -> bool:
    """Open the breaker when ``failures`` (the count after this failure) reached the threshold."""
    if failures < policy.threshold:
        return False
    client.hset(key(gpu), "open_until", f"{(now or time.time()) + policy.cooldown:.3f}")
    return True


def open_for(raw_open_until: bytes | str | None, now: float | None = None) -> float:
    """Seconds the breaker stays open (0 when closed or half-open)."""
    if raw_open_until is None:
        return 0.0
    return max(0.0, float(raw_open_until) - (now or time.time()))
