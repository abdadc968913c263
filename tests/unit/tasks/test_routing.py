from __future__ import annotations

import random

import pytest

from tasks.routing import NoRoute, candidates, choose_gpu
from workers.gpu_state import BreakerPolicy, GpuLoad, GpuStates, open_for


def test_least_loaded_gpu_wins() -> None:
    assert choose_gpu([0, 1, 2], {0: GpuLoad(5), 1: GpuLoad(1), 2: GpuLoad(3)}) == 1


def test_ties_are_shared() -> None:
    rng = random.Random(1)
    picks = {choose_gpu([0, 1], {0: GpuLoad(2), 1: GpuLoad(2)}, rng) for _ in range(50)}
    assert picks == {0, 1}


def test_unknown_state_counts_as_idle_and_closed() -> None:
    assert choose_gpu([0, 1], {0: GpuLoad(1)}) == 1


def test_an_open_breaker_drains_its_gpu_even_when_idle() -> None:
    assert choose_gpu([0, 1], {0: GpuLoad(0, open_for=12.0), 1: GpuLoad(40)}) == 1


def test_all_breakers_open_fails_fast_with_the_shortest_wait() -> None:
    with pytest.raises(NoRoute) as error:
        choose_gpu([0, 1], {0: GpuLoad(0, open_for=12.0), 1: GpuLoad(0, open_for=3.0)})
    assert error.value.retry_after == 3.0 and "breakers open" in str(error.value)


def test_no_candidates() -> None:
    with pytest.raises(NoRoute):
        choose_gpu([], {})


def test_only_configured_ready_gpus_are_candidates() -> None:
    with pytest.raises(NoRoute):
        candidates(ready_gpus=[7], configured_gpus=[0, 1])


class FakeHash:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def hset(self, key: str, field: str, value: str) -> None:
        self.values[field] = value


def test_breaker_opens_at_the_threshold_for_the_cooldown() -> None:
    policy = BreakerPolicy(threshold=3, cooldown=30)
    client = FakeHash()
    states = GpuStates(client, None, policy)  # type: ignore[arg-type]
    assert not states.open_if_tripped(0, 2, now=1000.0)
    assert states.open_if_tripped(0, 3, now=1000.0)
    assert open_for(client.values["open_until"], now=1010.0) == pytest.approx(20.0)
    assert open_for(client.values["open_until"], now=1031.0) == 0.0  # half-open: traffic flows again
    assert open_for(None) == 0.0


def test_a_half_open_breaker_lets_exactly_one_trial_through() -> None:
    loads = {0: GpuLoad(0, half_open=True), 1: GpuLoad(5)}
    claimed: list[int] = []

    def claim(gpu: int) -> bool:
        claimed.append(gpu)
        return len(claimed) == 1  # the first caller gets the trial, later ones do not

    assert choose_gpu([0, 1], loads, claim_trial=claim) == 0, "the trial goes to the half-open GPU"
    assert choose_gpu([0, 1], loads, claim_trial=claim) == 1, "the rest avoid it until it closes"
    with pytest.raises(NoRoute):
        choose_gpu([0], {0: GpuLoad(0, half_open=True)}, claim_trial=lambda gpu: False)


def test_a_gpu_that_lost_the_model_gets_nothing() -> None:
    assert choose_gpu([0, 1], {0: GpuLoad(0, missing=True), 1: GpuLoad(9)}) == 1
    with pytest.raises(NoRoute) as error:
        choose_gpu([0], {0: GpuLoad(0, missing=True)})
    assert "reloaded" in str(error.value) and error.value.retry_after


def test_in_flight_counts_only_workers_alive_so_a_dead_one_heals() -> None:
    from workers.gpu_state import running

    counts = {b"gpu0@a": b"3", b"gpu0@dead": b"7", b"": b"1", b"gpu0@b": b"-2"}
    workers = [(b"gpu0@a", 1010.0), (b"gpu0@dead", 990.0), (b"gpu0@b", 1010.0)]
    assert running(counts, workers, now=1000.0) == 3 + 1, (
        "the dead worker's 7 and a negative count do not count"
    )


def test_the_delivered_queue_is_the_routing_key_also_after_a_delayed_delivery() -> None:
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    from tasks.publish import delivered_queue

    assert delivered_queue({"routing_key": "gpu.7"}) == "gpu.7"
    assert delivered_queue({"routing_key": calculate_routing_key(3, "gpu.7")}) == "gpu.7"
    assert delivered_queue({"routing_key": calculate_routing_key(1, "control")}) == "control"
    assert delivered_queue({"routing_key": "0.1.gpu.7"}) == "0.1.gpu.7"  # not 28 levels: as it is
    assert delivered_queue(None) == delivered_queue({}) == ""


def test_back_off_is_whole_seconds_growing_to_five() -> None:
    from tasks.infer import back_off

    assert [back_off(n) for n in range(6)] == [1.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_large_string_inputs_travel_by_reference_too() -> None:
    """A BYTES input is measured by its strings, not its element count: one 300 kB string is over
    a 256 KiB inline limit."""
    from registry.signatures import CheckedTensor
    from tasks.pipeline import CheckedRequest, prepare

    big = CheckedRequest([CheckedTensor("text", "BYTES", (1,), ["x" * 300_000])], None, None)
    pending = prepare(big, "acme", False, 256 * 1024)
    assert pending.inputs is None and pending.stash is not None and len(pending.stash) > 300_000
    small = CheckedRequest([CheckedTensor("text", "BYTES", (2,), ["short", "strings"])], None, None)
    assert prepare(small, "acme", False, 256 * 1024).stash is None
