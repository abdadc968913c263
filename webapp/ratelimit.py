"""Per-API-key rate limits (sliding window counters in Redis, by the ``limits`` library).

The limit is the key's own (``inferq keys create --rate-limit``) or
``INFERQ_RATE_LIMIT`` (100/minute). Over it: 429 problem+json with ``Retry-After``.
When Redis cannot answer, requests are let through: a rate limit must not turn a cache
outage into an API outage. So that a stalled Redis does not cost every request a timeout,
the limiter is then skipped, for ``INFERQ_RATE_LIMIT_FAIL_OPEN`` seconds (1) at most; each
request let through unchecked counts in ``inferq_rate_limiter_open_total``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from inferq.metrics import RATE_LIMITER_FAILURES, RATE_LIMITER_OPEN
from inferq.services import NoScriptError
from registry.apikeys import Principal
from webapp.errors import ApiError

log = logging.getLogger(__name__)


def _admitted(replies: list[Any]) -> None:
    return None


def _windows(storage: Any) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """The previous and current window keys of the limits library's sliding-window counter (what
    ``RedisStorage.acquire_sliding_window_entry`` passes its script; pinned in constraints.txt)."""
    return storage._previous_window_key, storage._current_window_key


@lru_cache(maxsize=256)
def parse_rates(text: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(text))


class KeyRateLimiter:
    """Checks and counts one request of an API key against its limits."""

    def __init__(self, redis_url: str, default: str, timeout: float, backoff: float = 1.0) -> None:
        self.default = default
        self.backoff = backoff  # seconds the limiter stays open after a Redis failure, at most
        self._skip_until = 0.0
        self._lock = threading.Lock()
        storage = storage_from_string(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, key_prefix="inferq:ratelimit"
        )
        self._storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    def check(self, principal: Principal) -> None:
        """Count the request; raise a 429 :class:`ApiError` when the key is over a limit."""
        text = principal.rate_limit or self.default
        if not text:
            return
        if time.monotonic() < self._skip_until:
            RATE_LIMITER_OPEN.inc()
            return
        try:
            for rate in parse_rates(text):
                if not self._limiter.hit(rate, principal.key_id):
                    raise self._too_many(rate, principal.key_id)
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure: let the request through
            self._open(exc)

    def _open(self, exc: Exception) -> None:
        """Redis failed the limiter: let requests through, unchecked, for ``backoff`` seconds."""
        with self._lock:
            self._skip_until = time.monotonic() + self.backoff
        RATE_LIMITER_FAILURES.inc()
        RATE_LIMITER_OPEN.inc()
        log.warning("rate limiter unavailable, open for %gs: %s", self.backoff, exc)

    def add_hit(self, pipe: Any, principal: Principal) -> Callable[[list[Any]], ApiError | None]:
        """Count the request on ``pipe`` (a pipeline of the same Redis) instead of in a round trip of
        its own, for a caller that makes one anyway (the sync pipeline's record); returns how to
        read the verdict from the pipeline's replies: the 429 to answer, or None.

        The same window and keys as :meth:`check`: the limits library's own sliding-window script,
        queued on ``pipe``. A limiter left open after a failure queues nothing."""
        text = principal.rate_limit or self.default
        if not text:
            return _admitted
        if time.monotonic() < self._skip_until:
            RATE_LIMITER_OPEN.inc()
            return _admitted
        storage: Any = self._storage
        script = storage.lua_acquire_sliding_window
        queued: list[tuple[int, RateLimitItem, list[Any]]] = []
        for rate in parse_rates(text):
            key = rate.key_for(principal.key_id)
            keys = [storage.prefixed_key(window(key)) for window in _windows(storage)]
            args = [*keys, rate.amount, rate.get_expiry(), 1]
            queued.append((len(pipe.command_stack), rate, args))
            # EVALSHA queued as is: a redis-py Script on a pipeline asks SCRIPT EXISTS first, a
            # round trip more. The replies are read with errors in place (``raise_on_error=False``).
            pipe.evalsha(script.sha, len(keys), *args)

        def verdict(replies: list[Any]) -> ApiError | None:
            refused = None
            for at, rate, args in queued:
                reply = replies[at]
                if isinstance(reply, Exception):
                    reply = replies[at] = self._again(script, args, reply)
                if not reply and refused is None:
                    refused = self._too_many(rate, principal.key_id)
            return refused

        return verdict

    def _again(self, script: Any, args: list[Any], error: Exception) -> Any:
        """A pipelined hit that failed: Redis lost its scripts (restart, SCRIPT FLUSH), so run it
        alone (the script loads itself); any other failure lets the request through, as :meth:`check`."""
        try:
            if not isinstance(error, NoScriptError):
                raise error
            return script(args[:2], args[2:])
        except Exception as exc:  # noqa: BLE001 - any storage failure: let the request through
            self._open(exc)
            return True

    def _too_many(self, rate: RateLimitItem, key_id: str) -> ApiError:
        stats: Any = self._limiter.get_window_stats(rate, key_id)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        return ApiError(
            429,
            "rate-limited",
            "Too many requests",
            f"this API key may send {rate}; try again in {retry_after}s",
            headers={
                "Retry-After": str(retry_after),
                "X-RateLimit-Limit": str(rate.amount),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(math.ceil(stats.reset_time)),
            },
        )
