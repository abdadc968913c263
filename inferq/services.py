"""The outside systems a process talks to, built lazily from settings (nothing connects at import).

The API and the workers each hold one :class:`Services`; tests build their own
from test settings.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from inferq.settings import Settings

if TYPE_CHECKING:
    from registry.cache import RegistryCache
    from registry.db import Database
    from webapp.ratelimit import KeyRateLimiter
    from workers.storage import ObjectStore
    from workers.triton import TritonEndpoint


class Services:
    """Registry database, Redis, object store and one Triton endpoint per GPU."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._tritons: dict[int, TritonEndpoint] = {}

    @cached_property
    def db(self) -> Database:
        from registry.db import Database

        return Database(self.settings.database_url)

    @cached_property
    def redis(self) -> Any:
        """Redis for short commands: short timeouts so that an outage degrades, never hangs."""
        import redis

        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            health_check_interval=30,
        )

    @cached_property
    def blocking_redis(self) -> Any:
        """Redis for blocking waits (BLPOP), whose socket timeout must outlast the wait."""
        import redis

        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.sync_timeout_max + 5,
            socket_connect_timeout=1.0,
        )

    @cached_property
    def cache(self) -> RegistryCache:
        """Registry cache-aside; its Redis client gives up fast so an outage falls back to the database."""
        import redis

        from registry.cache import RegistryCache

        client = redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.cache_timeout,
            socket_connect_timeout=self.settings.cache_timeout,
        )
        return RegistryCache(client, self.settings.cache_ttl)

    @cached_property
    def rate_limiter(self) -> KeyRateLimiter:
        from webapp.ratelimit import KeyRateLimiter

        s = self.settings
        return KeyRateLimiter(s.redis_url, s.rate_limit, s.cache_timeout)

    @cached_property
    def store(self) -> ObjectStore:
        from workers.storage import ObjectStore

        s = self.settings
        return ObjectStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.s3_bucket, s.s3_region)

    def triton(self, gpu: int) -> TritonEndpoint:
        """The Triton endpoint that serves GPU ``gpu``."""
        with self._lock:
            endpoints = self._tritons
            if gpu not in endpoints:
                from workers.triton import TritonEndpoint

                endpoints[gpu] = TritonEndpoint(self.settings.triton_urls[gpu], self.settings.triton_timeout)
            return endpoints[gpu]

    def close(self) -> None:
        """Release connections (pools are not fork-safe: a forked child builds its own)."""
        for name in ("redis", "blocking_redis"):
            client = self.__dict__.pop(name, None)
            if client is not None:
                client.close()
        cache = self.__dict__.pop("cache", None)
        if cache is not None and cache.client is not None:
            cache.client.close()
        db = self.__dict__.pop("db", None)
        if db is not None:
            db.dispose()
        for endpoint in self._tritons.values():
            endpoint.close()
        self._tritons.clear()
        self.__dict__.pop("store", None)
