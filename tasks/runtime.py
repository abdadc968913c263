"""The outside systems a process talks to, built lazily from settings (nothing connects at import).

The API holds one :class:`Services`; each worker process holds one per Celery app
(``services_for``), rebuilt after a fork; tests build their own from test settings.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from inferq import tracing
from inferq.services import Redis, close_quietly, redis_client
from inferq.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from registry.cache import RegistryCache
    from registry.db import Database
    from tasks.bookkeeping import TaskBook
    from tasks.coalesce import Coalescer
    from tasks.resolved import ResolvedModels
    from workers.gpu_state import GpuStates
    from workers.storage import ObjectStore
    from workers.triton import TritonEndpoint


class Services:
    """Registry database and cache, Redis bookkeeping, GPU state, object store, one Triton per GPU."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._tritons: dict[int, TritonEndpoint] = {}

    @cached_property
    def db(self) -> Database:
        from registry.db import Database

        return Database(self.settings.database_url)

    @cached_property
    def redis(self) -> Redis:
        """Redis for short commands: short timeouts so that an outage degrades, never hangs."""
        return redis_client(self.settings.redis_url, 1.0, health_check_interval=30)

    @cached_property
    def tasks(self) -> TaskBook:
        """Sync task records, wake-ups and stashed inputs."""
        from tasks.bookkeeping import TaskBook

        blocking = redis_client(self.settings.redis_url, self.settings.sync_timeout_max + 5, 1.0)
        return TaskBook(self.redis, blocking, self.settings.result_expires)

    @cached_property
    def gpus(self) -> GpuStates:
        """Breakers, in-flight counts and queue depths of the GPUs."""
        from workers.gpu_state import BreakerPolicy, GpuStates, QueueDepths

        s = self.settings
        same = self.redis if s.broker_url == s.redis_url else None
        depths = QueueDepths(s.broker_url, same_redis=same)
        return GpuStates(self.redis, depths, BreakerPolicy(s.breaker_threshold, s.breaker_cooldown))

    @cached_property
    def pushes_tasks(self) -> bool:
        """Whether sync task messages are pushed to the broker's lists by this process's own Redis
        client (``tasks.broker.redis_message``): the broker is that same Redis, and tracing is off
        (its Celery instrumentation sees a publish only through Celery's ``send_task``)."""
        s = self.settings
        return s.redis_broker and s.broker_url == s.redis_url and not tracing.enabled(s)

    @cached_property
    def coalescer(self) -> Coalescer[Any]:
        """Merges concurrent sync requests for one model into one task message (API side)."""
        from tasks.coalesce import Coalescer

        s = self.settings
        return Coalescer(s.sync_batch_max, s.sync_batch_inflight, s.sync_batch_slot_timeout)

    @cached_property
    def models(self) -> ResolvedModels:
        """Models this process resolved, reused by sync requests while the registry is unchanged."""
        from tasks.resolved import ResolvedModels

        return ResolvedModels()

    @cached_property
    def cache(self) -> RegistryCache:
        """Registry cache-aside; its Redis client gives up fast so an outage falls back to the database."""
        from registry.cache import RegistryCache

        timeout = self.settings.cache_timeout
        return RegistryCache(redis_client(self.settings.redis_url, timeout), self.settings.cache_ttl)

    @cached_property
    def store(self) -> ObjectStore:
        from workers.storage import ObjectStore

        s = self.settings
        return ObjectStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.s3_bucket, s.s3_region)

    @cached_property
    def quick_store(self) -> ObjectStore:
        """The same bucket for small objects on a request's path (stashed inputs, kept outcomes):
        short timeouts and one retry, so a stalled store costs a request seconds, not minutes."""
        from workers.storage import ObjectStore

        s = self.settings
        return ObjectStore(
            s.s3_endpoint,
            s.s3_access_key,
            s.s3_secret_key,
            s.s3_bucket,
            s.s3_region,
            timeout=2.0,
            read_timeout=5.0,
            retries=1,
        )

    def triton(self, gpu: int) -> TritonEndpoint:
        """The Triton endpoint that serves GPU ``gpu``."""
        with self._lock:
            endpoints = self._tritons
            if gpu not in endpoints:
                from workers.triton import TritonEndpoint

                s = self.settings
                endpoints[gpu] = TritonEndpoint(s.triton_urls[gpu], s.triton_timeout, s.triton_load_timeout)
            return endpoints[gpu]

    def close(self) -> None:
        """Release connections (pools are not fork-safe: a forked child builds its own)."""
        close_quietly(self.__dict__.pop("redis", None))
        book = self.__dict__.pop("tasks", None)
        if book is not None:
            close_quietly(book.blocking)
        gpus = self.__dict__.pop("gpus", None)
        if gpus is not None:
            gpus.depths.close()
        cache = self.__dict__.pop("cache", None)
        if cache is not None:
            close_quietly(cache.client)
        db = self.__dict__.pop("db", None)
        if db is not None:
            db.dispose()
        for endpoint in self._tritons.values():
            endpoint.close()
        self._tritons.clear()
        self.__dict__.pop("store", None)
        self.__dict__.pop("quick_store", None)


_services: dict[tuple[int, int], Services] = {}


def services_for(app: Celery) -> Services:
    """The services of this process for ``app`` (connection pools never cross a fork)."""
    key = (os.getpid(), id(app))
    services = _services.get(key)
    if services is None:
        services = _services[key] = Services(app.inferq_settings)
    return services
