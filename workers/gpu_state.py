"""What the router knows of each GPU: its circuit breaker, tasks in flight, and its queue's depth.

Breakers and in-flight counts are shared by every process through Redis (this
module owns those keys); queue depth is asked of the broker itself, so it is
right when the broker is RabbitMQ or another Redis than the cache.

Breaker: a worker counts consecutive failures to reach its GPU's Triton; at
``threshold`` the breaker opens for ``cooldown`` seconds and the router sends
nothing there. After the cool-down it is half-open: requests flow again, one more
failure opens it at once, one success closes it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from inferq.services import Redis, RedisError, redis_client
from inferq.settings import gpu_queue
from workers.liveness import WORKERS_KEY

log = logging.getLogger(__name__)

BREAKER_KEY = "inferq:breaker:{}"
TRIAL_KEY = "inferq:breaker-trial:{}"
INFLIGHT_KEY = "inferq:running:{}"  # a hash per queue: worker name -> tasks it runs
MISSING_KEY = "inferq:missing:{}:{}"  # model id, queue: its Triton said it does not have the model
MISSING_TTL = 60  # the reconciler reloads it within a minute; until then the router sends nothing there
INFLIGHT_TTL = 600


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int
    cooldown: float


@dataclass(frozen=True)
class GpuLoad:
    """One GPU as the router sees it: waiting plus running tasks, how long its breaker stays
    open, whether the breaker is half-open (cool-down over, not yet closed by a success), and
    whether its Triton said lately that it does not have the model."""

    load: int = 0
    open_for: float = 0.0
    half_open: bool = False
    missing: bool = False


def open_for(raw_open_until: bytes | str | None, now: float | None = None) -> float:
    """Seconds a breaker stays open (0 when closed or half-open)."""
    if raw_open_until is None:
        return 0.0
    return max(0.0, float(raw_open_until) - (now or time.time()))


def running(counts: dict[Any, Any], workers: list[tuple[Any, float]], now: float) -> int:
    """Tasks in flight on a queue: the counts of the workers alive at ``now`` (Redis time), and
    those counted without a worker name."""
    alive = {_text(member) for member, until in workers if float(until) > now} | {""}
    return sum(max(0, int(count)) for worker, count in counts.items() if _text(worker) in alive)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class QueueDepths:
    """Messages waiting in each ``gpu.N`` queue, asked of the broker.

    A Redis broker keeps a queue as a list named after it (one pipelined LLEN);
    any other broker (RabbitMQ) answers a passive queue declaration, which costs
    a round trip per queue, so its answers are reused for ``max_age`` seconds.
    """

    def __init__(self, broker_url: str, same_redis: Redis | None = None, max_age: float = 0.5) -> None:
        self.broker_url = broker_url
        self.is_redis = urlsplit(broker_url).scheme in ("redis", "rediss", "unix")
        self._redis = same_redis
        self._max_age = max_age
        self._cached: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = threading.Lock()
        self._connection: Any = None

    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = redis_client(self.broker_url, 1.0)
        return self._redis

    def add_to(self, pipe: Any, queues: Sequence[str]) -> bool:
        """Queue the depth reads on a pipeline of the same Redis; False when the broker is elsewhere."""
        if not self.is_redis or self._redis is None:
            return False
        for queue in queues:
            pipe.llen(queue)
        return True

    def depths(self, queues: Sequence[str]) -> dict[str, int]:
        """Depth of each queue; queues the broker cannot say are left out."""
        if self.is_redis:
            try:
                with self.redis().pipeline(transaction=False) as pipe:
                    for queue in queues:
                        pipe.llen(queue)
                    return {q: int(n or 0) for q, n in zip(queues, pipe.execute(), strict=True)}
            except RedisError as exc:
                log.warning("queue depth unknown: %s", exc)
                return {}
        with self._lock:
            stamp, cached = self._cached
            if time.monotonic() - stamp < self._max_age and set(queues) <= set(cached):
                return {q: cached[q] for q in queues}
            found = self._declare_passive(queues)
            self._cached = (time.monotonic(), found)
            return found

    def _declare_passive(self, queues: Sequence[str]) -> dict[str, int]:
        from kombu import Connection

        found: dict[str, int] = {}
        try:
            if self._connection is None:
                self._connection = Connection(self.broker_url, connect_timeout=1)
            channel = self._connection.default_channel
            for queue in queues:
                found[queue] = int(channel.queue_declare(queue, passive=True).message_count)
        except Exception as exc:  # noqa: BLE001 - any broker error: depth unknown, routing goes on
            log.warning("queue depth unknown: %s", exc)
            if self._connection is not None:
                self._connection.release()
            self._connection = None
        return found

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None


class GpuStates:
    """Breakers and in-flight counts in Redis, and queue depths from the broker."""

    def __init__(self, client: Redis, depths: QueueDepths, policy: BreakerPolicy) -> None:
        self.client = client
        self.depths = depths
        self.policy = policy

    def add_loads(
        self, pipe: Any, gpus: Sequence[int], model_id: str | None = None
    ) -> Callable[[list[Any]], dict[int, GpuLoad]]:
        """Queue the reads of each GPU's load, breaker (and, for ``model_id``, whether its Triton
        lost the model) on ``pipe``; returns the parser of the pipeline's replies (which asks the
        broker itself when it is not this Redis)."""
        queues = [gpu_queue(gpu) for gpu in gpus]
        start = len(pipe.command_stack)
        pipe.time()
        for queue in queues:
            pipe.hgetall(INFLIGHT_KEY.format(queue))
            pipe.zrange(WORKERS_KEY.format(queue), 0, -1, withscores=True)
            pipe.hmget(BREAKER_KEY.format(queue), "open_until", "failures")
            if model_id is not None:
                pipe.exists(MISSING_KEY.format(model_id, queue))
        per_gpu = 4 if model_id is not None else 3
        inline = self.depths.add_to(pipe, queues)

        def parse(replies: list[Any]) -> dict[int, GpuLoad]:
            own = replies[start : start + 1 + per_gpu * len(gpus) + (len(gpus) if inline else 0)]
            redis_now = int(own[0][0]) + int(own[0][1]) / 1e6
            own = own[1:]
            depth = dict(zip(queues, own[per_gpu * len(gpus) :], strict=True)) if inline else {}
            if not inline:
                depth = self.depths.depths(queues)
            now = time.time()
            found = {}
            for i, (gpu, queue) in enumerate(zip(gpus, queues, strict=True)):
                counts, workers = own[per_gpu * i], own[per_gpu * i + 1]
                open_until, failures = own[per_gpu * i + 2]
                tripped = open_until is not None and int(failures or 0) >= self.policy.threshold
                found[gpu] = GpuLoad(
                    int(depth.get(queue) or 0) + running(counts, workers, redis_now),
                    open_for(open_until, now),
                    half_open=tripped and open_for(open_until, now) <= 0,
                    missing=bool(own[per_gpu * i + 3]) if model_id is not None else False,
                )
            return found

        return parse

    def claim_trial(self, gpu: int) -> bool:
        """Take the one trial request a half-open breaker lets through (per cool-down); False if taken."""
        try:
            key = TRIAL_KEY.format(gpu_queue(gpu))
            return bool(self.client.set(key, "1", nx=True, ex=max(1, int(self.policy.cooldown))))
        except RedisError:
            return False

    def mark_missing(self, model_id: str, gpu: int) -> None:
        """GPU ``gpu``'s Triton does not have the model: route nothing of it there for a while."""
        try:
            self.client.set(MISSING_KEY.format(model_id, gpu_queue(gpu)), "1", ex=MISSING_TTL)
        except RedisError as exc:
            log.warning("gpu %s: model %s not marked missing: %s", gpu, model_id, exc)

    def clear_missing(self, model_id: str, gpu: int) -> None:
        """The model is loaded on ``gpu`` again (the reconciler reloaded it)."""
        with contextlib.suppress(RedisError):
            self.client.delete(MISSING_KEY.format(model_id, gpu_queue(gpu)))

    def loads(self, gpus: Sequence[int], model_id: str | None = None) -> dict[int, GpuLoad]:
        """Load and breaker of each GPU in one round trip (two when the broker is elsewhere).

        Empty when Redis cannot say: the router then treats every GPU as idle and closed.
        """
        try:
            with self.client.pipeline(transaction=False) as pipe:
                parse = self.add_loads(pipe, gpus, model_id)
                return parse(pipe.execute())
        except RedisError:
            return {}

    # In flight: counted per worker around each task attempt. A worker that dies leaves its
    # count behind, but only workers alive (workers.liveness) are summed, and a worker that
    # starts again under the same name begins from zero: the figure heals by itself.

    def add_started(self, pipe: Any, queue: str, worker: str) -> None:
        key = INFLIGHT_KEY.format(queue)
        pipe.hincrby(key, worker, 1)
        pipe.expire(key, INFLIGHT_TTL)

    def add_finished(self, pipe: Any, queue: str, worker: str) -> None:
        pipe.hincrby(INFLIGHT_KEY.format(queue), worker, -1)

    def reset_worker(self, worker: str, queues: Sequence[str]) -> None:
        """A worker (re)starts: nothing of it is in flight."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.hdel(INFLIGHT_KEY.format(queue), worker)
                pipe.execute()
        except RedisError as exc:
            log.warning("in-flight counts of %s not reset: %s", worker, exc)

    # Breakers: one update per attempt, pipelined with the attempt's statistics.

    def add_attempt(self, pipe: Any, gpu: int, reachable: bool) -> None:
        """Queue the breaker update of one attempt: a success closes, a failure to reach Triton counts."""
        key = BREAKER_KEY.format(gpu_queue(gpu))
        if reachable:
            pipe.delete(key)
        else:
            pipe.hincrby(key, "failures", 1)
            pipe.expire(key, int(self.policy.cooldown * 10) + 60)

    def open_if_tripped(self, gpu: int, failures: int, now: float | None = None) -> bool:
        """Open the breaker when ``failures`` (the count after this failure) reached the threshold."""
        if failures < self.policy.threshold:
            return False
        self.client.hset(
            BREAKER_KEY.format(gpu_queue(gpu)),
            "open_until",
            f"{(now or time.time()) + self.policy.cooldown:.3f}",
        )
        return True
