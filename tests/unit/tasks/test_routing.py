from __future__ import annotations

import random

import pytest

from tasks.routing import NoRoute, choose_gpu, route_request


def test_least_loaded_gpu_wins() -> None:
    assert choose_gpu([0, 1, 2], {0: 5, 1: 1, 2: 3}) == 1


def test_ties_are_shared() -> None:
    rng = random.Random(1)
    picks = {choose_gpu([0, 1], {0: 2, 1: 2}, rng) for _ in range(50)}
    assert picks == {0, 1}


def test_unknown_load_counts_as_idle() -> None:
    assert choose_gpu([0, 1], {0: 1}) == 1


def test_no_candidates() -> None:
    with pytest.raises(NoRoute):
        choose_gpu([], {})


def test_only_configured_ready_gpus_are_candidates() -> None:
    # One candidate left: no Redis round trip is needed (client unused).
    assert route_request(None, ready_gpus=[1, 7], configured_gpus=[0, 1]) == 1  # type: ignore[arg-type]
    with pytest.raises(NoRoute):
        route_request(None, ready_gpus=[7], configured_gpus=[0, 1])  # type: ignore[arg-type]
