"""The router: which ``gpu.N`` queue gets a request for a model.

Only GPUs where the model is deployed and ready are candidates; among them the
least loaded wins, load being messages waiting in the GPU's queue plus tasks
running on it. A slow or dead GPU therefore drains instead of piling up.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import redis

from inferq.settings import gpu_queue
from tasks.outcomes import INFLIGHT_KEY


class NoRoute(Exception):
    """No GPU can take the request."""


def choose_gpu(candidates: Sequence[int], load: Mapping[int, int], rng: random.Random | None = None) -> int:
    """The least loaded candidate; ties broken at random so equal GPUs share the work."""
    if not candidates:
        raise NoRoute("the model is not deployed on any GPU")
    lowest = min(load.get(gpu, 0) for gpu in candidates)
    tied = [gpu for gpu in candidates if load.get(gpu, 0) == lowest]
    return tied[0] if len(tied) == 1 else (rng or random).choice(tied)


def gpu_load(client: redis.Redis, gpus: Sequence[int]) -> dict[int, int]:
    """Queue depth plus in-flight tasks per GPU, in one round trip; zeros when Redis cannot say."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for gpu in gpus:
                # With the Redis transport a queue is a list named after it.
                pipe.llen(gpu_queue(gpu))
                pipe.get(INFLIGHT_KEY.format(gpu_queue(gpu)))
            replies = pipe.execute()
    except redis.RedisError:
        return {}
    load = {}
    for index, gpu in enumerate(gpus):
        depth, inflight = replies[2 * index], replies[2 * index + 1]
        load[gpu] = int(depth or 0) + max(0, int(inflight or 0))
    return load


def route_request(client: redis.Redis, ready_gpus: Sequence[int], configured_gpus: Sequence[int]) -> int:
    """Pick the GPU for one request among ``ready_gpus`` that this deployment knows of."""
    candidates = [gpu for gpu in ready_gpus if gpu in configured_gpus]
    if not candidates:
        raise NoRoute("the model is not deployed and ready on any configured GPU")
    if len(candidates) == 1:
        return candidates[0]
    return choose_gpu(candidates, gpu_load(client, candidates))
