"""The router: which ``gpu.N`` queue gets a request for a model.

Only GPUs where the model is deployed and ready, and whose circuit breaker is
not open, are candidates; among them the least loaded wins, load being messages
waiting in the GPU's queue plus tasks running on it. A slow or dead GPU
therefore drains instead of piling up, and one whose Triton cannot be reached
gets nothing until its breaker's cool-down ends.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from workers.gpu_state import GpuLoad


class NoRoute(Exception):
    """No GPU can take the request; ``retry_after`` says when one may (seconds), if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def choose_gpu(
    candidates: Sequence[int],
    loads: Mapping[int, GpuLoad],
    rng: random.Random | None = None,
    claim_trial: Callable[[int], bool] | None = None,
) -> int:
    """The least loaded candidate whose breaker is closed; ties broken at random.

    A GPU whose breaker is half-open gets one trial request (``claim_trial`` hands it
    out once per cool-down): a success closes the breaker, a failure opens it again. A
    GPU whose Triton lately did not have the model gets nothing.
    """
    if not candidates:
        raise NoRoute("the model is not deployed on any GPU")
    present = [gpu for gpu in candidates if not loads.get(gpu, GpuLoad()).missing]
    if not present:
        raise NoRoute(
            f"the Triton of every GPU serving the model lost it (GPUs {list(candidates)}); "
            "it is being reloaded",
            retry_after=5,
        )
    usable = [gpu for gpu in present if loads.get(gpu, GpuLoad()).open_for <= 0]
    if claim_trial is not None:
        for gpu in usable:
            if loads.get(gpu, GpuLoad()).half_open and claim_trial(gpu):
                return gpu
        usable = [gpu for gpu in usable if not loads.get(gpu, GpuLoad()).half_open]
    if not usable:
        wait = min(max(loads[gpu].open_for, 1.0) for gpu in present)
        raise NoRoute(
            f"the Triton of every GPU serving the model is failing (GPUs {list(candidates)}); "
            f"circuit breakers open for {wait:.0f}s more",
            retry_after=wait,
        )
    lowest = min(loads.get(gpu, GpuLoad()).load for gpu in usable)
    tied = [gpu for gpu in usable if loads.get(gpu, GpuLoad()).load == lowest]
    return tied[0] if len(tied) == 1 else (rng or random).choice(tied)


def candidates(
    ready_gpus: Sequence[int], configured_gpus: Sequence[int], exclude: int | None = None
) -> list[int]:
    """The GPUs a request of a model may go to: ready for it and known to this deployment (and
    not ``exclude``, the one an attempt just failed on). NoRoute when there is none."""
    found = [gpu for gpu in ready_gpus if gpu in configured_gpus and gpu != exclude]
    if not found:
        raise NoRoute("the model is not deployed and ready on any configured GPU")
    return found
