"""Which workers are alive, per queue: each worker refreshes its entry every few seconds, and
``/readyz`` reads them in one round trip instead of broadcasting to every worker.

This module owns the key family ``inferq:workers:{queue}``: a sorted set whose members are
worker names, scored with the time (Redis's own clock, so hosts' clocks do not matter) until
which the worker counts as alive. A worker that stops refreshing (killed, frozen, cut off)
drops out after ``ALIVE_FOR`` seconds; one that shuts down cleanly withdraws at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from inferq.services import Redis, RedisError

log = logging.getLogger(__name__)

WORKERS_KEY = "inferq:workers:{}"
ANNOUNCE_EVERY = 5.0  # seconds between a worker's refreshes
ALIVE_FOR = 15.0  # a worker not heard of for this long is not alive


def _now(replies: tuple[int, int] | list[int]) -> float:
    seconds, micros = replies
    return int(seconds) + int(micros) / 1e6


def announce(client: Redis, worker: str, queues: Sequence[str], alive_for: float = ALIVE_FOR) -> None:
    """Say that ``worker`` consumes ``queues`` and is alive for the next ``alive_for`` seconds."""
    now = _now(client.time())  # type: ignore[arg-type]
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            key = WORKERS_KEY.format(queue)
            pipe.zadd(key, {worker: now + alive_for})
            pipe.zremrangebyscore(key, "-inf", now)  # those who stopped saying so
            pipe.expire(key, max(60, int(alive_for * 4)))
        pipe.execute()


def withdraw(client: Redis, worker: str, queues: Sequence[str]) -> None:
    """``worker`` stops: it no longer counts for ``queues``."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zrem(WORKERS_KEY.format(queue), worker)
        pipe.execute()


def live_workers(client: Redis, queues: Sequence[str]) -> dict[str, list[str]]:
    """The workers alive on each of ``queues`` (one round trip). Raises ``RedisError``."""
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        for queue in queues:
            pipe.zrange(WORKERS_KEY.format(queue), 0, -1, withscores=True)
        replies = pipe.execute()
    now = _now(replies[0])
    return {
        queue: sorted(
            (member.decode() if isinstance(member, bytes) else str(member))
            for member, until in members
            if float(until) > now
        )
        for queue, members in zip(queues, replies[1:], strict=True)
    }


class Announcer:
    """A daemon thread in a worker's main process that keeps announcing it until stopped."""

    def __init__(
        self, client: Redis, worker: str, queues: Sequence[str], every: float = ANNOUNCE_EVERY
    ) -> None:
        self.client, self.worker, self.queues, self.every = client, worker, list(queues), every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inferq-liveness", daemon=True)

    def start(self) -> Announcer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                announce(self.client, self.worker, self.queues, max(ALIVE_FOR, 3 * self.every))
            except RedisError as exc:  # Redis is back soon or /readyz says it is not
                log.warning("worker liveness not refreshed: %s", exc)
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        """Stop announcing and withdraw (best effort: the entry expires anyway)."""
        self._stop.set()
        try:
            withdraw(self.client, self.worker, self.queues)
        except RedisError as exc:
            log.warning("worker liveness not withdrawn: %s", exc)


_announcers: dict[int, Announcer] = {}  # per process (pid): started once, whatever the signals


def start_announcing(client: Redis, worker: str, queues: Sequence[str]) -> None:
    """Start this process's announcer, once (a consumer that reconnects is ready again)."""
    if os.getpid() not in _announcers:
        _announcers[os.getpid()] = Announcer(client, worker, queues).start()


def stop_announcing() -> None:
    """Stop this process's announcer, if it has one."""
    announcer = _announcers.pop(os.getpid(), None)
    if announcer is not None:
        announcer.stop()
