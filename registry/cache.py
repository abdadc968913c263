"""Cache-aside in Redis for registry reads, with a generation counter for invalidation.

Every cached value lives under a key that embeds the registry's current
generation. A write commits, then bumps the generation: every older key is dead
at once, and a reader that loaded old rows just before the write can only fill
a dead key. So a read that starts after a write returns never sees the old value.
Reads cost one round trip (a small Lua script reads the generation and the value).

Redis is an optimisation only: when it is down or slow (short socket timeouts),
reads go to the database and the cache is skipped for a few seconds, so an
outage costs one timeout per process, not one per request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from inferq.metrics import REGISTRY_CACHE
from inferq.services import Redis, RedisError

log = logging.getLogger(__name__)

GENERATION_KEY = "inferq:registry:generation"
VALUE_KEY = "inferq:registry:{generation}:{name}"
_READ = """
local generation = redis.call('GET', KEYS[1]) or '0'
return {generation, redis.call('GET', 'inferq:registry:' .. generation .. ':' .. ARGV[1])}
"""
_MISSING = object()


class RegistryCache:
    """Cache-aside for JSON-serialisable registry reads."""

    def __init__(self, client: Redis | None, ttl: int, backoff: float = 5.0) -> None:
        self.client = client
        self.ttl = ttl
        self.backoff = backoff
        self._skip_until = 0.0
        self._lock = threading.Lock()
        self._script = client.register_script(_READ) if client is not None else None

    def _usable(self) -> bool:
        return self.client is not None and time.monotonic() >= self._skip_until

    def _failed(self, exc: Exception) -> None:
        REGISTRY_CACHE.labels("error").inc()
        with self._lock:
            self._skip_until = time.monotonic() + self.backoff
        log.warning("registry cache unavailable for %.0fs: %s", self.backoff, exc)

    def get(self, name: str, load: Callable[[], Any]) -> Any:
        """The cached value of ``name``, or ``load()`` (then cached for ``ttl`` seconds)."""
        return self.get_at(name, load)[1]

    def get_at(self, name: str, load: Callable[[], Any]) -> tuple[str | None, Any]:
        """:meth:`get`, with the generation the value belongs to (None when Redis did not say):
        the value is current for as long as :meth:`add_generation` reads that generation."""
        if not self._usable():
            REGISTRY_CACHE.labels("error").inc()
            return None, load()
        assert self.client is not None and self._script is not None
        try:
            generation, raw = self._script(keys=[GENERATION_KEY], args=[name])
        except RedisError as exc:
            self._failed(exc)
            return None, load()
        if raw is not None:
            REGISTRY_CACHE.labels("hit").inc()
            return generation.decode(), json.loads(raw)
        REGISTRY_CACHE.labels("miss").inc()
        value = load()
        key = VALUE_KEY.format(generation=generation.decode(), name=name)
        try:
            self.client.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl)
        except RedisError as exc:
            self._failed(exc)
        return generation.decode(), value

    @staticmethod
    def add_generation(pipe: Any) -> Callable[[list[Any]], str]:
        """Queue a read of the registry's generation on ``pipe`` (another client of the same Redis);
        returns how to find it in the pipeline's replies."""
        at = len(pipe.command_stack)
        pipe.get(GENERATION_KEY)

        def generation(replies: list[Any]) -> str:
            raw = replies[at]
            return raw.decode() if isinstance(raw, bytes) else str(raw or "0")

        return generation

    def invalidate(self) -> None:
        """Forget every cached value (call after the write committed)."""
        if self.client is None:
            return
        for attempt in range(3):
            try:
                self.client.incr(GENERATION_KEY)
                return
            except RedisError as exc:
                if attempt == 2:
                    # Readers cannot reach this Redis either; if it comes back with its data,
                    # values cached before this write live at most ``ttl`` more seconds.
                    self._failed(exc)
                else:
                    time.sleep(0.05)
