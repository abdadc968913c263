"""The coalescer: alone when idle; while a model's messages are all out, requests queue and go out
together when a slot frees; errors per item; a slot never held for good."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from tasks.coalesce import Coalescer, Ticket


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, batch: Sequence[int]) -> list[None]:
        self.batches.append(list(batch))
        return [None] * len(batch)


def submit_in_threads(
    coalescer: Coalescer[int], items: range, flush: Recorder
) -> tuple[list, dict[int, Ticket]]:
    tickets: dict[int, Ticket] = {}

    def submit(item: int) -> None:
        tickets[item] = coalescer.submit("m", item, flush)

    threads = [threading.Thread(target=submit, args=(i,)) for i in items]
    for thread in threads:
        thread.start()
    return threads, tickets


def wait_queued(coalescer: Coalescer[int], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(coalescer._lines["m"].queue) < count:
        assert time.monotonic() < deadline, "requests did not queue"
        time.sleep(0.005)


def test_a_lone_request_publishes_alone_at_once_and_leaves_nothing_behind() -> None:
    coalescer: Coalescer[int] = Coalescer(max_batch=8)
    flush = Recorder()
    ticket = coalescer.submit("m", 1, flush)
    assert ticket.batch_size == 1 and flush.batches == [[1]]
    coalescer.done("m", ticket)
    coalescer.done("m", ticket)  # twice is harmless
    assert not coalescer._lines


def test_while_the_slots_are_out_requests_queue_and_go_together_when_one_frees() -> None:
    coalescer: Coalescer[int] = Coalescer(max_batch=3, max_inflight=1, slot_timeout=30)
    flush = Recorder()
    first = coalescer.submit("m", 0, flush)  # holds the only slot until answered
    threads, tickets = submit_in_threads(coalescer, range(1, 6), flush)
    wait_queued(coalescer, 5)
    assert flush.batches == [[0]], "nothing else goes out while the slot is held"
    coalescer.done("m", first)
    deadline = time.monotonic() + 5
    while len(flush.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sorted(flush.batches[1]) == flush.batches[1] and len(flush.batches[1]) == 3, (
        "up to max_batch, in order"
    )
    coalescer.done("m", tickets[flush.batches[1][0]])
    for thread in threads:
        thread.join(5)
    assert flush.batches[2] == [4, 5]
    assert {tickets[i].batch_size for i in (1, 2, 3)} == {3} and tickets[5].batch_size == 2
    coalescer.done("m", tickets[4])
    assert not coalescer._lines


def test_a_slot_not_given_back_frees_itself_after_the_timeout() -> None:
    coalescer: Coalescer[int] = Coalescer(max_inflight=1, slot_timeout=0.2)
    flush = Recorder()
    coalescer.submit("m", 0, flush)  # never answered
    started = time.monotonic()
    ticket = coalescer.submit("m", 1, flush)
    assert ticket.batch_size == 1 and flush.batches == [[0], [1]]
    assert time.monotonic() - started >= 0.15


def test_requests_nobody_waits_for_hold_no_slot() -> None:
    coalescer: Coalescer[int] = Coalescer(max_inflight=1, slot_timeout=30)
    flush = Recorder()
    for item in range(3):
        assert coalescer.submit("m", item, flush, waits=False).slot is None
    assert flush.batches == [[0], [1], [2]]


def test_each_item_gets_its_own_error_and_other_keys_are_independent() -> None:
    coalescer: Coalescer[int] = Coalescer()
    with pytest.raises(ValueError, match="odd"):
        coalescer.submit("a", 3, lambda batch: [ValueError("odd") if x % 2 else None for x in batch])
    assert coalescer.submit("b", 2, lambda batch: [None for _ in batch]).batch_size == 1


def test_a_flush_that_raises_fails_its_batch_and_gives_its_slot_back() -> None:
    coalescer: Coalescer[int] = Coalescer(max_inflight=1, slot_timeout=30)

    def broken(batch: Sequence[int]) -> list[None]:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        coalescer.submit("m", 1, broken)
    started = time.monotonic()
    assert coalescer.submit("m", 2, Recorder()).batch_size == 1
    assert time.monotonic() - started < 1, "the failed publish holds no slot"


def test_a_newcomer_that_leads_while_older_requests_queue_goes_out_itself() -> None:
    """A slot freed by its timeout lets the next request to arrive lead at once; with more than a
    message's worth of older requests queued it must still publish itself (it returned a ticket for
    a message it was not in, and the line stayed led for good)."""
    coalescer: Coalescer[int] = Coalescer(max_batch=2, max_inflight=1, slot_timeout=30)
    flush = Recorder()
    coalescer.submit("m", 0, flush)  # holds the only slot, never answered
    threads, tickets = submit_in_threads(coalescer, range(1, 3), flush)
    wait_queued(coalescer, 2)
    line = coalescer._lines["m"]
    line.slots[0].taken_at -= 60  # the slot times out (the queued poll only every 7.5 s)
    newcomer = coalescer.submit("m", 3, flush)
    assert 3 in flush.batches[1] and len(flush.batches[1]) == 2 and newcomer.batch_size == 2
    coalescer.done("m", newcomer)  # its message answered: the one left queued goes next
    for thread in threads:
        thread.join(5)
    assert sorted(item for batch in flush.batches for item in batch) == [0, 1, 2, 3]  # each once
    for item in (1, 2):
        coalescer.done("m", tickets[item])
    assert not line.leading and not line.queue
