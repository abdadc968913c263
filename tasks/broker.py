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

It also builds a task message as this transport keeps it in Redis (:func:`redis_message`), for
the API to push to a GPU queue with its own client, in a round trip it makes anyway.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu import serialization
from kombu.transport import redis as kombu_redis

from celeryconfig import EXCHANGE
from tasks import codec

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


@dataclass(frozen=True)
class QueuedMessage:
    """A task message as kombu's Redis transport keeps it: the list it goes to, and its envelope."""

    key: str
    payload: bytes


def redis_message(
    app: Celery, name: str, args: list[Any], queue: str, task_id: str, argsrepr: str, expires: datetime
) -> QueuedMessage:
    """The message ``tasks.publish.publish`` would push to a Redis broker for a task of no retries.

    Celery writes the message (task protocol 2, ``as_task_v2``) and kombu serializes its body,
    as they do in a publish; the envelope is the one kombu's Redis transport pushes (anonymous
    exchange, routing key = queue = list, priority 0: the same bytes but for the delivery tag, a
    test compares them). What is left out is kombu's producer around a single LPUSH: the pool,
    the declaration of the queue, the retry wrapper and a round trip of its own, about 0.5 ms of
    CPU a publish here. The caller pushes it where the broker is its own Redis (the queues are
    lists there, declared by the workers that consume them); a list nobody consumes yet keeps the
    message until a worker does. The API does so in the wait's round trip (``tasks.bookkeeping``).
    """
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id,
        name,
        args=args,
        expires=expires,
        argsrepr=argsrepr,
        kwargsrepr="{}",
        ignore_result=True,
        reply_to=app.thread_oid,
    )
    content_type, encoding, data = serialization.dumps(body, serializer=codec.SERIALIZER)
    raw = data if isinstance(data, bytes) else data.encode(encoding or "utf-8")
    properties.update(
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=0,
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    envelope = {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    return QueuedMessage(queue, codec.dumps(envelope))


def add_push(pipe: Any, message: QueuedMessage) -> None:
    """Queue the push of ``message`` to its list on ``pipe`` (a pipeline of the broker's Redis)."""
    pipe.lpush(message.key, message.payload)
