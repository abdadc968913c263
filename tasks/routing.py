"""The router: which ``gpu.N`` queue gets a request for a model.

Only GPUs where the model is deployed and ready, and whose circuit breaker is
not open, are candidates; among them the least loaded wins, load being messages
waiting in the GPU's queue plus tasks running on it. A slow or dead GPU
therefore drains instead of piling up, and one whose Triton cannot be reached
gets nothing until its breaker's cool-down ends. One Redis round trip.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from inferq.settings import gpu_queue
from tasks import breaker
from tasks.outcomes import INFLIGHT_KEY


class NoRoute(Exception):
    """No GPU can take the request; ``retry_after`` says when one may (seconds), if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class GpuState:
    load: int = 0
    open_for: float = 0.0  # seconds its breaker stays open


def choose_gpu(
    candidates: Sequence[int], states: Mapping[int, GpuState], rng: random.Random | None = None
) -> int:
    """The least loaded candidate whose breaker is not open; ties broken at random."""
    if not candidates:
        raise NoRoute("the model is not deployed on any GPU")
    usable = [gpu for gpu in candidates if states.get(gpu, GpuState()).open_for <= 0]
    if not usable:
        wait = min(states[gpu].open_for for gpu in candidates)
        raise NoRoute(
            f"the Triton of every GPU serving the model is failing (GPUs {list(candidates)}); "
            f"circuit breakers open for {wait:.0f}s more",
            retry_after=wait,
        )
    lowest = min(states.get(gpu, GpuState()).load for gpu in usable)
    tied = [gpu for gpu in usable if states.get(gpu, GpuState()).load == lowest]
    return tied[0] if len(tied) == 1 else (rng or random).choice(tied)


def gpu_states(client: redis.Redis, gpus: Sequence[int]) -> dict[int, GpuState]:
    """Load and breaker of each GPU, in one round trip; all idle and closed when Redis cannot say."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for gpu in gpus:
                # With the Redis transport a queue is a list named after it.
                pipe.llen(gpu_queue(gpu))
                pipe.get(INFLIGHT_KEY.format(gpu_queue(gpu)))
                pipe.hget(breaker.key(gpu), "open_until")
            replies = pipe.execute()
    except redis.RedisError:
        return {}
    now = time.time()
    states = {}
    for index, gpu in enumerate(gpus):
        depth, inflight, open_until = replies[3 * index : 3 * index + 3]
        states[gpu] = GpuState(
            int(depth or 0) + max(0, int(inflight or 0)), breaker.open_for(open_until, now)
        )
    return states


def route_request(client: redis.Redis, ready_gpus: Sequence[int], configured_gpus: Sequence[int]) -> int:
    """Pick the GPU for one request among ``ready_gpus`` that this deployment knows of."""
    candidates = [gpu for gpu in ready_gpus if gpu in configured_gpus]
    if not candidates:
        raise NoRoute("the model is not deployed and ready on any configured GPU")
    return choose_gpu(candidates, gpu_states(client, candidates))
