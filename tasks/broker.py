"""The Redis broker transport inferq runs on: kombu's, with two costs per message taken out.

- kombu's Redis channel builds a new ``redis.Redis`` object for every publish, ack and
  event (``conn_or_acquire``); with redis-py 7 each costs about as much CPU as the
  command it sends (it rebuilds its table of response callbacks). This channel keeps
  one client on its connection pool, which is thread-safe.
- every publish to a direct exchange first reads the exchange's bindings from Redis
  (SMEMBERS), a round trip per task; the task exchange's change only when a queue is
  declared, so they are reused for a second. Only the task exchange's: the reply exchange of
  remote control (``celery inspect``, Flower, health checks) gains a queue per new client, and
  a reply routed on a second-old table would be lost.

Otherwise it is kombu's. Celery picks it for ``redis://`` brokers (see ``celeryconfig``);
other brokers are untouched.
"""

from __future__ import annotations

import time
from typing import Any

from kombu.transport import redis as kombu_redis

from celeryconfig import EXCHANGE

BINDINGS_TTL = 1.0  # seconds an exchange's bindings are reused


class Channel(kombu_redis.Channel):
    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's own connection (BRPOP): kombu already keeps it
            return super()._create_client(asynchronous=True)
        client = self.__dict__.get("_inferq_client")
        if client is None:
            client = self.__dict__["_inferq_client"] = super()._create_client(asynchronous=False)
        return client

    def get_table(self, exchange: str) -> Any:
        if exchange != EXCHANGE:
            return super().get_table(exchange)
        cached = self.__dict__.setdefault("_inferq_tables", {})
        hit = cached.get(exchange)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        table = super().get_table(exchange)
        if table:  # an empty table is not kept: the first queue may be declared at any moment
            cached[exchange] = (now + BINDINGS_TTL, table)
        return table


class Transport(kombu_redis.Transport):
    Channel = Channel
