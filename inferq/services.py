"""Redis clients for the modules that own a Redis key family, with timeouts that degrade, never hang.

Only the owners call these (``tasks.bookkeeping``, ``workers.gpu_state``,
``registry.cache``, ``registry.stats``); nothing else talks to Redis or knows a
key name. ``RedisError`` is what those owners catch. Nothing connects at import.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis

RedisError = redis.RedisError
Redis = redis.Redis
ResponseError = redis.ResponseError
NoScriptError = redis.exceptions.NoScriptError


def redis_client(url: str, timeout: float, connect_timeout: float | None = None, **options: Any) -> Redis:
    """A client whose commands give up after ``timeout`` seconds (connecting: ``connect_timeout``)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout if connect_timeout is None else connect_timeout,
        **options,
    )


def close_quietly(client: Redis | None) -> None:
    """Close a client's connections, ignoring a Redis that is already gone."""
    if client is not None:
        with contextlib.suppress(RedisError):
            client.close()


# A long-lived server allocates many small objects per request (parsed bodies, Redis replies):
# at the default threshold (700 allocations) the youngest generation is collected several times
# a request, and the older ones walk the whole heap of imported modules. Objects made at start
# are frozen (no longer walked) and the youngest generation collected every GC_FIRST_THRESHOLD.
GC_FIRST_THRESHOLD = 10_000


def tune_gc() -> None:
    """Freeze what the process made so far and collect less often (call once, after start-up)."""
    import gc

    gc.freeze()
    gc.set_threshold(GC_FIRST_THRESHOLD, *gc.get_threshold()[1:])
