"""The Redis broker transport (tasks/broker.py): what it reuses must not lose a message."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fixtures import Stack

pytestmark = pytest.mark.integration


def test_remote_control_replies_reach_every_new_client(stack: Stack) -> None:
    """``celery inspect``, Flower and health checks each bind a reply queue of their own; a worker
    that routed replies on a table of bindings it had read a moment before lost the reply to the
    next new client (a health check right after Flower's polling: "No nodes replied")."""
    from tasks import create_celery_app

    workers = len(stack.workers)
    for _ in range(4):  # new clients in quick succession, each within a second of the last reply
        app = create_celery_app(stack.settings)
        try:
            replies = app.control.broadcast("ping", reply=True, timeout=3, limit=workers)
        finally:
            app.close()
        assert len(replies) >= workers, replies


def test_a_pushed_task_message_is_the_one_celery_would_publish(stack: Stack) -> None:
    """The API pushes sync task messages itself (``tasks.broker.redis_message``): the same headers,
    body and envelope as Celery's ``send_task`` through kombu's Redis transport, but for the
    delivery tag and two properties nothing reads on Redis (the message's TTL and a copy of argsrepr)."""
    import json
    import uuid
    from datetime import UTC, datetime, timedelta

    import tasks.infer  # noqa: F401 - registers inferq.infer (and its time limits) with the app
    from tasks import create_celery_app
    from tasks.broker import add_push, redis_message
    from tasks.publish import publish

    app = create_celery_app(stack.settings)
    app.finalize()  # as in the API, whose app knows the task it sends
    redis = stack.services.redis
    queue = f"inferq-test-{uuid.uuid4().hex[:8]}"
    args = [{"model_id": "m", "requests": [{"task_id": "t1", "inputs": [{"data": [0.5, 1e300, "é"]}]}]}]
    expires = datetime.now(UTC) + timedelta(seconds=30)
    try:
        publish(app, "inferq.infer", args, queue, "t1", "(m:1, 1 request)", expires)
        queued = redis_message(app, "inferq.infer", args, queue, "t1", "(m:1, 1 request)", expires)
        with redis.pipeline(transaction=False) as pipe:
            add_push(pipe, queued)
            pipe.execute()
        pushed, published = (json.loads(raw) for raw in redis.lrange(queue, 0, -1))
    finally:
        redis.delete(queue)
        app.close()
    assert queued.key == queue
    ours, celerys = pushed.pop("properties"), published.pop("properties")
    # A tracing test earlier in this process installed OpenTelemetry's Celery instrumentation, which
    # adds its trace context to what send_task publishes (the API pushes only with tracing off).
    traced = set(published["headers"]) - set(pushed["headers"])
    assert traced <= {"traceparent", "tracestate"}, traced
    for key in traced:
        del published["headers"][key]
    assert pushed == published  # body, content type and encoding, every header
    assert pushed["headers"]["timelimit"] == [90, 60]  # the task's own, as send_task sends them
    assert ours.pop("delivery_tag") != celerys.pop("delivery_tag")
    assert {key: value for key, value in celerys.items() if key not in ("expiration", "argsrepr")} == ours
    assert ours["delivery_info"] == {"exchange": "", "routing_key": queue}


def test_a_received_message_is_recorded_unacknowledged_until_acknowledged(stack: Stack) -> None:
    """The worker's transport sends a received message's unacknowledged record without waiting for
    the reply (``tasks.broker.QoS``): the record is in Redis while the message runs, the
    acknowledgement removes it, and a channel closed with a message unacknowledged gives it back
    to its queue (a worker that stops mid-task loses nothing)."""
    import uuid

    from kombu import Connection, Consumer, Producer, Queue

    from tasks.broker import QoS

    redis = stack.services.redis
    name = f"inferq-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, routing_key=name)
    received: list[Any] = []
    with Connection(stack.settings.broker_url, transport="tasks.broker:Transport") as connection:
        channel = connection.channel()
        producer = Producer(channel)
        for number in range(3):
            producer.publish({"n": number}, routing_key=name, declare=[queue], serializer="json")
        consumer = Consumer(channel, [queue], callbacks=[lambda _, message: received.append(message)])
        consumer.consume()
        for _ in range(3):
            connection.drain_events(timeout=5)
        qos = channel.qos
        assert isinstance(qos, QoS)
        tags = [message.delivery_tag for message in received]
        assert [message.payload["n"] for message in received] == [0, 1, 2]
        qos.settle()
        assert all(redis.hexists(qos.unacked_key, tag) for tag in tags)
        received[0].ack()
        received[1].reject(requeue=False)
        assert not redis.hexists(qos.unacked_key, tags[0]) and not redis.hexists(qos.unacked_key, tags[1])
        assert redis.hexists(qos.unacked_key, tags[2])
        consumer.cancel()
        channel.close()  # the third, never acknowledged, goes back to its queue
    try:
        assert not redis.hexists(qos.unacked_key, tags[2])
        back = redis.lrange(name, 0, -1)
        assert len(back) == 1 and b'"delivery_tag": "' + tags[2].encode() in back[0]
    finally:
        redis.delete(name)


def test_a_record_whose_reply_cannot_be_read_is_written_again_before_the_ack(stack: Stack) -> None:
    """The record's connection broke before its reply was read (a server or proxy closing it, a
    stall past the socket timeout): the record is written again in a round trip of its own before
    the message can be acknowledged, so a worker dying then still gives the message back."""
    import uuid

    from kombu import Connection, Consumer, Producer, Queue

    redis = stack.services.redis
    name = f"inferq-test-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, routing_key=name)
    received: list[Any] = []
    try:
        with Connection(stack.settings.broker_url, transport="tasks.broker:Transport") as connection:
            channel = connection.channel()
            Producer(channel).publish({"n": 1}, routing_key=name, declare=[queue], serializer="json")
            consumer = Consumer(channel, [queue], callbacks=[lambda _, message: received.append(message)])
            consumer.consume()
            connection.drain_events(timeout=5)
            qos = channel.qos
            tag = received[0].delivery_tag
            deadline = time.monotonic() + 5
            while not redis.hexists(qos.unacked_key, tag):  # the record, sent without waiting, lands
                assert time.monotonic() < deadline
                time.sleep(0.01)
            redis.hdel(qos.unacked_key, tag)  # as if it had been lost
            redis.zrem(qos.unacked_index_key, tag)
            qos._record_connection.disconnect()  # and its reply cannot be read
            qos.settle()
            assert redis.hexists(qos.unacked_key, tag) and redis.zscore(qos.unacked_index_key, tag)
            received[0].ack()
            assert not redis.hexists(qos.unacked_key, tag)
            consumer.cancel()
            channel.close()
    finally:
        redis.delete(name)
