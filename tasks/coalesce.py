"""Merging concurrent sync requests for one model into one task message (dynamic batching).

Per key (a model version and its requested outputs) at most ``max_inflight`` messages
are out at once: published, and not yet answered. A request that finds a free slot
publishes at once, alone or with whatever queued; one that finds none queues, and when
a slot frees, the first in the queue publishes everything queued (up to ``max_batch``)
in one message. At low load every request goes alone and waits for nothing; under load
the batches grow by themselves, and one Celery message, one worker hand-off and one
Triton call serve many requests — as Triton's own dynamic batcher does.

A slot is freed when the message's first waiter is woken (:meth:`Coalescer.done`), or
when nobody waits on it (``Prefer: respond-async``) as soon as it is published, or after
``slot_timeout`` seconds in any case (a lost or slow message never blocks the queue for
long). Safe across threads and greenlets (the API runs under gevent).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Publishes a batch; returns, per item (same order), the exception that item failed with, or None.
Flush = Callable[[Sequence[T]], Sequence[BaseException | None]]


@dataclass
class Ticket:
    """What a request gets back: the size of its message, and the slot to give back."""

    batch_size: int
    slot: _Slot | None = None  # None: no slot held (nobody waits, or the publish failed)


@dataclass
class _Entry(Generic[T]):
    item: T
    waits: bool
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    error: BaseException | None = None
    ticket: Ticket | None = None


@dataclass
class _Slot:
    taken_at: float


@dataclass
class _Line(Generic[T]):
    slots: list[_Slot] = field(default_factory=list)
    queue: list[_Entry[T]] = field(default_factory=list)
    leading: bool = False  # a request is publishing (or about to) for this key


class Coalescer(Generic[T]):
    """Per key, at most ``max_inflight`` messages out; what arrives meanwhile goes out together."""

    def __init__(self, max_batch: int = 32, max_inflight: int = 2, slot_timeout: float = 2.0) -> None:
        self.max_batch = max(1, max_batch)
        self.max_inflight = max(1, max_inflight)
        self.slot_timeout = slot_timeout
        self._lock = threading.Lock()
        self._lines: dict[Hashable, _Line[T]] = {}

    def _free(self, line: _Line[T], now: float) -> bool:
        line.slots = [s for s in line.slots if now - s.taken_at < self.slot_timeout]
        return len(line.slots) < self.max_inflight

    def submit(self, key: Hashable, item: T, flush: Flush[T], waits: bool = True) -> Ticket:
        """Publish ``item`` (alone, or with others of ``key``); returns its :class:`Ticket`.

        ``waits``: the caller will wait for the answer and call :meth:`done` with the
        ticket when it comes. Raises the exception ``flush`` reported for this item.
        """
        entry: _Entry[T] = _Entry(item, waits)
        with self._lock:
            line = self._lines.setdefault(key, _Line())
            line.queue.append(entry)
            if not line.leading and self._free(line, time.monotonic()):
                line.leading = entry.lead = True
        while not entry.lead:
            # A slot may also free by timing out: look again now and then.
            if entry.done.wait(self.slot_timeout / 4):
                if not entry.lead:
                    break
            else:
                with self._lock:
                    if (
                        not line.leading
                        and line.queue
                        and line.queue[0] is entry
                        and self._free(line, time.monotonic())
                    ):
                        line.leading = entry.lead = True
        if not entry.lead:  # published by another request's batch
            if entry.error is not None:
                raise entry.error
            assert entry.ticket is not None
            return entry.ticket
        return self._lead(key, line, entry, flush)

    def _lead(self, key: Hashable, line: _Line[T], me: _Entry[T], flush: Flush[T]) -> Ticket:
        with self._lock:
            batch = line.queue[: self.max_batch]
            if me not in batch:
                # A newcomer found a slot freed by time while older requests queued past a
                # message's worth: it goes in this one (the last of them waits for the next).
                batch[-1] = me
            for entry in batch:
                line.queue.remove(entry)
            slot = _Slot(time.monotonic()) if any(entry.waits for entry in batch) else None
            if slot is not None:
                line.slots.append(slot)
        try:
            errors: Sequence[BaseException | None] = flush([entry.item for entry in batch])
        except BaseException as exc:  # noqa: BLE001 - every item fails alike; none is left waiting
            errors = [exc] * len(batch)
        if slot is not None and all(error is not None for error in errors):
            self.done(key, Ticket(len(batch), slot))  # nothing went out: nothing to wait for
            slot = None
        ticket = Ticket(len(batch), slot)
        for entry, error in zip(batch, errors, strict=True):
            entry.error, entry.ticket = error, ticket
            if entry is not me:
                entry.done.set()
        with self._lock:
            line.leading = False
            self._hand_over(key, line)
        if me.error is not None:
            raise me.error
        return ticket

    def done(self, key: Hashable, ticket: Ticket) -> None:
        """The message of ``ticket`` was answered: give its slot back (once; later calls do nothing)."""
        if ticket.slot is None:
            return
        with self._lock:
            line = self._lines.get(key)
            if line is not None and ticket.slot in line.slots:
                line.slots.remove(ticket.slot)
                self._hand_over(key, line)
        ticket.slot = None

    def _hand_over(self, key: Hashable, line: _Line[T]) -> None:
        """With the lock held: wake the first queued request to lead if a slot is free."""
        if line.leading:
            return
        if line.queue:
            if self._free(line, time.monotonic()):
                successor = line.queue[0]
                line.leading = successor.lead = True
                successor.done.set()
        elif not line.slots and self._lines.get(key) is line:
            del self._lines[key]
