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

- every message received is recorded as unacknowledged (ack emulation: a worker that dies
  leaves it there, and it is delivered again) in a MULTI/EXEC round trip before the worker may
  start it. :class:`QoS` sends that record at once and reads Redis's reply later, before the
  next record or the message's acknowledgement: the bytes are in Redis's socket before the
  task starts (also when the worker is then killed), and the task does not wait for the reply.

Otherwise it is kombu's. Celery picks it for ``redis://`` brokers (see ``celeryconfig``);
other brokers are untouched.

It also builds a task message as this transport keeps it in Redis (:func:`redis_message`), for
the API to push to a GPU queue with its own client, in a round trip it makes anyway.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu import serialization
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps as kombu_dumps

from celeryconfig import EXCHANGE
from tasks import codec

BINDINGS_TTL = 1.0  # seconds an exchange's bindings are reused
log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, with the unacknowledged record of a message received sent without
    waiting for its reply (on a connection of its own); the reply is read before the next record
    is sent, and before any acknowledgement, rejection or restore (which then find the record)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record_lock = threading.Lock()
        self._record_connection: Any = None
        # The record sent whose replies are not read yet: its tag and commands (ZADD, HSET).
        self._unread: tuple[str, list[tuple[Any, ...]]] | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:  # keys written raw here would miss kombu's prefix
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        record = kombu_dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        writes: list[tuple[Any, ...]] = [
            ("ZADD", self.unacked_index_key, time.time(), delivery_tag),
            ("HSET", self.unacked_key, delivery_tag, record),
        ]
        with self._record_lock:
            self._read_replies()
            try:
                connection = self._record_connection
                if connection is None:
                    # Not from the channel's pools (whose count of connections made never goes
                    # down): a connection of its own, with the same parameters.
                    pool = self.channel.pool
                    connection = self._record_connection = pool.connection_class(**pool.connection_kwargs)
                # A connection idle past its health-check interval is checked first (a PING): a
                # server or proxy may have closed it, and a record sent into it would be lost.
                connection.send_packed_command(connection.pack_commands([("MULTI",), *writes, ("EXEC",)]))
                self._unread = (delivery_tag, writes)
            except Exception:  # noqa: BLE001 - kombu's own round trip below raises what Redis says
                self._drop_connection()
                super().append(message, delivery_tag)
                return
        virtual.QoS.append(self, message, delivery_tag)

    def _read_replies(self) -> None:
        """With the lock held: read the replies to the last record sent. When they cannot be read
        (the connection broke, Redis stalled past the socket timeout, an error reply) the record is
        written again in a round trip (ZADD and HSET of the same values: harmless twice), before
        the message can be acknowledged; if that fails too it is logged: the message runs, and
        would not come back if this worker died before acknowledging it."""
        unread, self._unread = self._unread, None
        if unread is None:
            return
        try:
            for _ in range(len(unread[1]) + 2):  # MULTI, each write queued, EXEC
                self._record_connection.read_response()
        except Exception as exc:  # noqa: BLE001 - the message runs; only its redelivery is at stake
            self._drop_connection()
            self._record_again(*unread, exc)

    def _record_again(self, delivery_tag: str, writes: list[tuple[Any, ...]], cause: BaseException) -> None:
        try:
            with self.channel.conn_or_acquire() as client, client.pipeline() as pipe:
                for command in writes:
                    pipe.execute_command(*command)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001
            log.error(
                "message %s: its unacknowledged record may be missing (%s; again: %s)",
                delivery_tag,
                cause,
                exc,
            )

    def _drop_connection(self) -> None:
        connection, self._record_connection, self._unread = self._record_connection, None, None
        if connection is not None:
            connection.disconnect()

    def settle(self) -> None:
        """Read what Redis answered to the records sent so far."""
        with self._record_lock:
            self._read_replies()

    def ack(self, delivery_tag: str) -> None:
        self.settle()
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.settle()
        super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> None:
        self.settle()
        super().restore_unacked(client)

    def close(self) -> None:
        with self._record_lock:
            self._read_replies()
            self._drop_connection()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def close(self) -> None:
        try:
            super().close()  # gives back what was received and not acknowledged (after our records)
        finally:
            qos = getattr(self, "_qos", None)
            if isinstance(qos, QoS):
                qos.close()

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
    # The time limits of a task registered in this app, as send_task takes them (its registry as it
    # is: looking it up must not finalize the app).
    task = app._tasks.get(name)
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id,
        name,
        args=args,
        expires=expires,
        time_limit=getattr(task, "time_limit", None),
        soft_time_limit=getattr(task, "soft_time_limit", None),
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
