"""Broker memory per queued message, and per million queued batch lines, on Redis and RabbitMQ.

The messages are the ones inferq sends, built and published by inferq's own code through a
Celery app made with ``tasks.create_celery_app`` from ``Settings.from_env``:

- a batch chunk: ``tasks.batches.send_chunk`` (what the planner calls), ``inferq.batch.chunk``
  with the arguments ``[batch_id, chunk_index]``: the lines stay in S3, the message names a
  chunk row, whose byte range is in the database. A batch of L lines is ceil(L / 1000) such
  messages (``INFERQ_BATCH_CHUNK_LINES``; fewer lines per chunk when 1000 lines pass
  ``INFERQ_BATCH_CHUNK_MAX_BYTES``). Chunk records and progress counters are database rows,
  not Redis keys: the run checks that a queued chunk adds nothing to Redis but its message.
- a sync inference: ``tasks.pipeline.publish_requests`` (what the API calls), one request of
  one digits row (64 FP32 values) in an ``inferq.infer`` message, plus the task record it
  writes in Redis (``tasks.bookkeeping``); also the same record once the worker has stored its
  outcome (``TaskBook.add_outcome``, with the digits model's real answer from onnxruntime), and a
  message of 32 coalesced requests (``INFERQ_SYNC_BATCH_MAX``), the shape under load.

Redis: a fresh ``redis-server`` on a free port (no persistence), so ``INFO memory``'s
``used_memory`` moves only with what this script writes; publish N messages to a queue nobody
consumes, read ``used_memory`` before and after. RabbitMQ (``--amqp``; run as root, for
``rabbitmqctl``): a virtual host of this run's own (deleted at the end, with its queues and
exchange), classic then quorum queues ``gpu.9000``..``gpu.9003`` declared by the app as inferq
declares them; before and after each publish: the queue's memory from ``rabbitmqctl
list_queues``, its process's heap and the binaries it holds (garbage collected first, read with
``rabbitmqctl eval``), and the node's ``rabbitmq-diagnostics memory_breakdown`` (node-wide: other
clients of the broker move it too). PostgreSQL
(``--postgres``): a database of this run's own, migrated as ``inferq init`` does, one batch
row and N chunk rows inserted by ``registry.batches.add_chunks`` as the planner inserts them;
its size read back, the database dropped.

    .venv/bin/python bench/queue_memory.py --out /tmp/queue-memory.json

Bounded by ``--deadline`` (publishing stops early and the counts say how many went); cleans up
after itself, also when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import redis

from inferq.settings import Settings, gpu_queue
from inferq.tensors import from_numpy
from registry.signatures import specs_from_json
from tasks import create_celery_app
from tasks.batches import celery_dispatch, new_task_id, send_chunk
from tasks.pipeline import ResolvedModel, check_request, prepare, publish_requests
from tasks.runtime import Services

REPO = Path(__file__).resolve().parents[1]
# The "0" of the README's first request: scikit-learn's first digits image, 8x8 flattened.
DIGIT_ZERO = [
    0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
    0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0,
]  # fmt: skip
DIGITS_INPUTS = [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
DIGITS_OUTPUTS = [
    {"name": "label", "datatype": "INT64", "shape": [-1]},
    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
]
TENANT = "acme"
CHUNK_LINES = 1000  # INFERQ_BATCH_CHUNK_LINES default: one chunk message per 1000 lines
CHUNKS_PER_BATCH = 1000  # a new batch id every million lines, as batches of 1M lines would have
COALESCED = 32  # INFERQ_SYNC_BATCH_MAX default
GPU_BASE = 9000  # queues gpu.9000+: nobody else's


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Deadline:
    """The run's time budget: publishing loops stop when it is spent."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[redis.Redis]:
    """A fresh redis-server of this run's own (no persistence), stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    try:
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        else:
            raise SystemExit("redis-server did not start")
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def used_memory(client: Any) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


def bench_settings(
    redis_url: str, broker_url: str, gpus: tuple[int, ...], data_dir: Path, queue_type: str = "classic"
) -> Settings:
    """inferq's settings for this run, read as a deployment's environment would be."""
    env = {
        "INFERQ_REDIS_URL": redis_url,
        "INFERQ_BROKER_URL": broker_url,
        "INFERQ_BROKER_QUEUE_TYPE": queue_type,  # RabbitMQ only (where the setting exists)
        "INFERQ_RESULT_BACKEND": redis_url,
        "INFERQ_GPUS": ",".join(str(gpu) for gpu in gpus),
        "INFERQ_TRITON_URLS": "http://127.0.0.1:9",  # never called
        "INFERQ_DATA_DIR": str(data_dir),
        "INFERQ_DATABASE_URL": f"sqlite:///{data_dir / 'unused.db'}",
    }
    return Settings.from_env(env)


def digits_model(gpu: int) -> ResolvedModel:
    """The digits model as the registry resolves it, deployed and ready on ``gpu`` only."""
    return ResolvedModel(
        id=uuid.uuid4().hex,
        name="digits",
        version="1",
        triton_name="digits",
        triton_version="1",
        inputs=specs_from_json(DIGITS_INPUTS),
        outputs=specs_from_json(DIGITS_OUTPUTS),
        gpus=[gpu],
    )


def digits_body() -> dict[str, Any]:
    """A one-row request as the SDK sends it (float32 values through ``from_numpy``)."""
    row = np.asarray(DIGIT_ZERO, dtype=np.float32).reshape(1, 64)
    return {"inputs": [from_numpy("input", "FP32", row)]}


def digits_outputs() -> list[dict[str, Any]]:
    """What Triton answers for the row (the digits model run by onnxruntime), as protocol tensors."""
    row = np.asarray(DIGIT_ZERO, dtype=np.float32).reshape(1, 64)
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(REPO / "models" / "digits" / "1" / "model.onnx"))
        label, probabilities = session.run(["label", "probabilities"], {"input": row})
    except Exception as exc:  # noqa: BLE001 - any failure: a stand-in of the same shape
        say(f"onnxruntime could not run the digits model ({exc}); a stand-in answer is used")
        label = np.zeros(1, dtype=np.int64)
        probabilities = np.full((1, 10), 0.1, dtype=np.float32)
    return [
        from_numpy("label", "INT64", np.asarray(label, dtype=np.int64)),
        from_numpy("probabilities", "FP32", np.asarray(probabilities, dtype=np.float32)),
    ]


@dataclass
class Publisher:
    """inferq's own publishing code, bound to one Celery app and its services."""

    settings: Settings
    app: Any
    services: Services

    @classmethod
    def make(cls, settings: Settings, queue_type: str = "classic") -> Publisher:
        """The app as ``tasks.create_celery_app`` builds it; quorum queues declared as inferq's
        settings declare them (``INFERQ_BROKER_QUEUE_TYPE``), or, with settings that do not know
        that variable, with the same queue arguments added here."""
        app = create_celery_app(settings)
        if queue_type == "quorum" and not all(
            (q.queue_arguments or {}).get("x-queue-type") == "quorum" for q in app.conf.task_queues
        ):
            from kombu import Exchange, Queue

            import celeryconfig

            exchange = Exchange(celeryconfig.EXCHANGE, type="direct", durable=True)
            app.conf.task_queues = [
                Queue(q, exchange, routing_key=q, durable=True, queue_arguments={"x-queue-type": "quorum"})
                for q in settings.queues
            ]
        return cls(settings, app, Services(settings))

    def chunks(self, queue: str, count: int, deadline: Deadline) -> int:
        """``count`` chunk messages as the planner sends them (a new batch every 1000 chunks)."""
        dispatch = celery_dispatch(self.app)
        batch_id = ""
        for index in range(count):
            if deadline.left() <= 0:
                return index
            if index % CHUNKS_PER_BATCH == 0:
                batch_id = uuid.uuid4().hex
            send_chunk(dispatch, batch_id, index % CHUNKS_PER_BATCH, queue, new_task_id())
        return count

    def sync(self, model: ResolvedModel, count: int, per_message: int, deadline: Deadline) -> list[str]:
        """``count`` sync requests, ``per_message`` to a message, published as the API does; their ids."""
        checked = check_request(model, digits_body())
        inline = self.settings.inline_payload_max
        task_ids: list[str] = []
        while len(task_ids) < count and deadline.left() > 0:
            batch = [prepare(checked, TENANT, False, inline) for _ in range(per_message)]
            errors = publish_requests(self.services, self.app, model, None, batch)
            if any(error is not None for error in errors):
                raise SystemExit(f"publish failed: {errors}")
            task_ids += [pending.task_id for pending in batch]
        return task_ids

    def sync_count(self, model: ResolvedModel, count: int, deadline: Deadline) -> int:
        return len(self.sync(model, count, 1, deadline))

    def close(self) -> None:
        # The app's connections stay: kombu's pools are shared by apps on the same broker URL, and
        # this process ends soon (RabbitMQ's virtual host is deleted with them).
        self.services.close()


def per(delta: int, count: int) -> float:
    return round(delta / count, 1) if count else 0.0


# --- Redis -------------------------------------------------------------------------------


def measure_redis(client: Any, workdir: Path, args: argparse.Namespace, deadline: Deadline) -> dict:
    port = client.connection_pool.connection_kwargs["port"]
    url = f"redis://127.0.0.1:{port}/0"
    chunk_gpu, sync_gpu = GPU_BASE, GPU_BASE + 1
    chunk_queue, sync_queue = gpu_queue(chunk_gpu), gpu_queue(sync_gpu)
    publisher = Publisher.make(bench_settings(url, url, (chunk_gpu, sync_gpu), workdir))
    model = digits_model(sync_gpu)
    out: dict[str, Any] = {"server": client.info("server")["redis_version"]}
    try:
        # Warm-up: bindings, the first connection's buffers; then back to an empty queue.
        publisher.chunks(chunk_queue, 1, deadline)
        publisher.sync(model, 1, 1, deadline)
        client.delete(chunk_queue, sync_queue)
        for key in client.scan_iter("inferq:task:*"):
            client.delete(key)

        # Chunk messages.
        keys0, m0 = client.dbsize(), used_memory(client)
        sent = publisher.chunks(chunk_queue, args.chunks, deadline)
        m1, keys1 = used_memory(client), client.dbsize()
        raw: Any = client.lindex(chunk_queue, 0)
        envelope = json.loads(raw)
        out["chunk"] = {
            "messages": sent,
            "queue_length": client.llen(chunk_queue),
            "used_memory_before": m0,
            "used_memory_after": m1,
            "bytes_per_message": per(m1 - m0, sent),
            "keys_added": keys1 - keys0,  # 1: the queue's list, nothing per chunk
            "stored_message_bytes": len(raw),
            "body_bytes": len(envelope["body"]) * 3 // 4,  # base64 in the Redis envelope
            "sample_args": json.loads(_b64(envelope["body"]))[0],
        }
        out["chunk"]["bytes_per_million_lines"] = round(out["chunk"]["bytes_per_message"] * 1e6 / CHUNK_LINES)
        client.delete(chunk_queue)
        say(f"redis chunk: {sent} messages, {out['chunk']['bytes_per_message']} B each")

        # Sync messages, one request each; then the records as the worker leaves them.
        m0 = used_memory(client)
        task_ids = publisher.sync(model, args.sync, 1, deadline)
        m1 = used_memory(client)
        raw = client.lindex(sync_queue, 0)
        envelope = json.loads(raw)
        sample_record = client.memory_usage(f"inferq:task:{task_ids[0]}")
        client.delete(sync_queue)
        m2 = used_memory(client)
        n = len(task_ids)
        out["sync"] = {
            "messages": n,
            "requests": n,
            "used_memory_before": m0,
            "used_memory_after": m1,
            "bytes_per_request_total": per(m1 - m0, n),
            "bytes_per_message": per(m1 - m2, n),
            "bytes_per_queued_record": per(m2 - m0, n),
            "memory_usage_of_one_queued_record": sample_record,
            "stored_message_bytes": len(raw),
            "body_bytes": len(envelope["body"]) * 3 // 4,
        }
        outputs = digits_outputs()
        book = publisher.services.tasks
        for start in range(0, n, 500):
            with client.pipeline(transaction=False) as pipe:
                for task_id in task_ids[start : start + 500]:
                    result = {
                        "model_name": "digits",
                        "model_version": "1",
                        "id": task_id,
                        "outputs": outputs,
                        "parameters": {
                            "gpu": sync_gpu,
                            "batch_size": 1,
                            "latency_ms": 1.234,
                            "queue": sync_queue,
                            "worker": f"gpu{sync_gpu}@{socket.gethostname()}",
                            "cuda_visible_devices": str(sync_gpu),
                        },
                    }
                    owner = {"tenant": TENANT, "model": "digits", "version": "1"}
                    book.add_outcome(pipe, task_id, {"state": "SUCCESS", "result": result}, False, owner)
                pipe.execute()
        m3 = used_memory(client)
        sample_done = client.memory_usage(f"inferq:task:{task_ids[0]}")
        for start in range(0, n, 1000):
            client.delete(*[f"inferq:outcome:{t}" for t in task_ids[start : start + 1000]])
        m4 = used_memory(client)
        out["sync"].update(
            {
                "bytes_per_finished_record": per(m4 - m0, n),
                "bytes_per_wakeup_list": per(m3 - m4, n),
                "memory_usage_of_one_finished_record": sample_done,
                "record_ttl_s": publisher.settings.result_expires,
            }
        )
        for start in range(0, n, 1000):
            client.delete(*[f"inferq:task:{t}" for t in task_ids[start : start + 1000]])
        say(
            f"redis sync: {n} messages, {out['sync']['bytes_per_message']} B each "
            f"+ record {out['sync']['bytes_per_queued_record']} B"
        )

        # Coalesced sync messages: 32 requests in one.
        m0 = used_memory(client)
        task_ids = publisher.sync(model, args.sync, COALESCED, deadline)
        m1 = used_memory(client)
        messages = client.llen(sync_queue)
        raw = client.lindex(sync_queue, 0)
        client.delete(sync_queue)
        m2 = used_memory(client)
        n = len(task_ids)
        out["sync32"] = {
            "messages": messages,
            "requests": n,
            "bytes_per_request_total": per(m1 - m0, n),
            "bytes_per_message": per(m1 - m2, messages),
            "bytes_per_request_in_queue": per(m1 - m2, n),
            "stored_message_bytes": len(raw),
        }
        for start in range(0, n, 1000):
            client.delete(*[f"inferq:task:{t}" for t in task_ids[start : start + 1000]])
        say(f"redis sync x32: {messages} messages, {out['sync32']['bytes_per_message']} B each")
    finally:
        publisher.close()
    return out


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


# --- RabbitMQ ----------------------------------------------------------------------------


def rabbitmqctl(*argv: str, timeout: float = 60) -> Any:
    """A rabbitmqctl / rabbitmq-diagnostics command's JSON answer."""
    done = subprocess.run(
        [*argv, "-q", "--formatter", "json"], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)


def ctl(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


def queue_memory(vhost: str, queue: str) -> dict[str, Any]:
    rows = rabbitmqctl("rabbitmqctl", "list_queues", "-p", vhost, "name", "messages", "memory", "type")
    found: dict[str, Any] = next(row for row in rows if row["name"] == queue)
    return found


# The queue's process (a classic queue's, or a quorum queue's Ra server on this node), garbage
# collected first: its memory, and the off-heap binaries (message bodies, headers) it holds.
QUEUE_PROCESS = """
{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"VHOST">>, queue, <<"QUEUE">>)),
P = case amqqueue:get_pid(Q) of {Name, _Node} -> whereis(Name); Pid -> Pid end,
erlang:garbage_collect(P),
{memory, M} = erlang:process_info(P, memory),
{binary, Bs} = erlang:process_info(P, binary),
[M, lists:sum([S || {_, S, _} <- lists:usort(Bs)])].
"""


def queue_process(vhost: str, queue: str) -> tuple[int, int]:
    """(heap and stack, referenced binaries) of the queue's process, in bytes."""
    code = QUEUE_PROCESS.replace("VHOST", vhost).replace("QUEUE", queue)
    done = subprocess.run(["rabbitmqctl", "eval", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl eval: {done.stderr.strip() or done.stdout.strip()}")
    heap, binaries = json.loads(done.stdout.strip())
    return int(heap), int(binaries)


def node_memory() -> dict[str, int]:
    breakdown = rabbitmqctl("rabbitmq-diagnostics", "memory_breakdown", "--unit", "bytes")
    found = {name: int(item["bytes"]) for name, item in breakdown.items()}
    found["total"] = sum(found.values())
    return found


def queue_count(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).message_count)


def wait_count(channel: Any, queue: str, want: int, seconds: float = 30) -> int:
    """Publishes are not confirmed: wait (bounded) until the queue holds what was sent."""
    end = time.monotonic() + seconds
    count = queue_count(channel, queue)
    while count < want and time.monotonic() < end:
        time.sleep(0.2)
        count = queue_count(channel, queue)
    return count


def measure_rabbitmq(
    redis_url: str,
    workdir: Path,
    args: argparse.Namespace,
    deadline: Deadline,
    cleanup: list[Callable[[], None]],
) -> dict:
    """A classic and a quorum queue pair (chunk, sync) in a virtual host of this run's own."""
    from kombu import Connection

    import celeryconfig

    vhost = f"inferq-qmem-{os.getpid()}"
    version = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        raise RuntimeError(f"rabbitmqctl: {version.stderr.strip()}")
    out: dict[str, Any] = {"server": version.stdout.strip(), "vhost": vhost}
    ctl("rabbitmqctl", "add_vhost", vhost)
    cleanup.append(lambda: ctl("rabbitmqctl", "delete_vhost", vhost))  # its queues and exchanges too
    user = urlsplit(args.amqp).username or "guest"
    ctl("rabbitmqctl", "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    parts = urlsplit(args.amqp)
    broker_url = urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))
    admin = Connection(broker_url, connect_timeout=5)
    cleanup.append(admin.release)
    channel = admin.default_channel
    for kind in ("classic", "quorum"):
        chunk_gpu, sync_gpu = (GPU_BASE, GPU_BASE + 1) if kind == "classic" else (GPU_BASE + 2, GPU_BASE + 3)
        chunk_queue, sync_queue = gpu_queue(chunk_gpu), gpu_queue(sync_gpu)
        settings = bench_settings(redis_url, broker_url, (chunk_gpu, sync_gpu), workdir, kind)
        publisher = Publisher.make(settings, kind)
        model = digits_model(sync_gpu)
        try:
            publisher.chunks(chunk_queue, 1, deadline)  # declares the queues (and exchange) of this app
            publisher.sync(model, 1, 1, deadline)
            wait_count(channel, chunk_queue, 1)
            wait_count(channel, sync_queue, 1)
            send_chunks = partial(publisher.chunks, chunk_queue, args.chunks, deadline)
            out[f"{kind}_chunk"] = measure_queue(vhost, channel, chunk_queue, send_chunks)
            send_sync = partial(publisher.sync_count, model, args.sync, deadline)
            out[f"{kind}_sync"] = measure_queue(vhost, channel, sync_queue, send_sync)
            out[f"{kind}_exchange_type"] = publisher.app.amqp.queues[chunk_queue].exchange.type
        finally:
            publisher.close()
        # Quorum settings may declare the exchange with another type (topic): start afresh, as a
        # deployment switching queue types must (queues and the exchange deleted).
        for queue in (*settings.queues,):
            channel.queue_delete(queue)
        channel.exchange_delete(celeryconfig.EXCHANGE)
    return out


def measure_queue(vhost: str, channel: Any, queue: str, send: Callable[[], int]) -> dict[str, Any]:
    """Queue and node memory before and after ``send()`` publishes to ``queue`` (then emptied)."""
    before_q, before_p, before_node = queue_memory(vhost, queue), queue_process(vhost, queue), node_memory()
    started = time.monotonic()
    sent = send()
    count = wait_count(channel, queue, sent + 1)
    seconds = time.monotonic() - started
    after_q, after_p, after_node = queue_memory(vhost, queue), queue_process(vhost, queue), node_memory()
    process_delta = after_p[0] + after_p[1] - before_p[0] - before_p[1]
    node_delta = {name: after_node[name] - before_node.get(name, 0) for name in after_node}
    found = {
        "queue": queue,
        "type": after_q.get("type"),
        "messages": sent,
        "messages_in_queue": count,
        "publish_seconds": round(seconds, 1),
        "queue_memory_before": before_q["memory"],
        "queue_memory_after": after_q["memory"],
        "queue_bytes_per_message": per(int(after_q["memory"]) - int(before_q["memory"]), sent),
        "process_before": {"heap": before_p[0], "binaries": before_p[1]},
        "process_after": {"heap": after_p[0], "binaries": after_p[1]},
        "process_bytes_per_message": per(process_delta, sent),
        "process_binary_bytes_per_message": per(after_p[1] - before_p[1], sent),
        "node_delta": node_delta,
        "node_binary_bytes_per_message": per(node_delta.get("binary", 0), sent),
        "node_total_bytes_per_message": per(node_delta.get("total", 0), sent),
        # Quorum queues: the Raft log's in-memory tables (node-wide, so other quorum queues count too).
        "node_quorum_ets_bytes_per_message": per(node_delta.get("quorum_ets", 0), sent),
    }
    say(
        f"rabbitmq {found['type']} {queue}: {sent} messages, queue {found['queue_bytes_per_message']} B each,"
        f" process with binaries {found['process_bytes_per_message']} B,"
        f" node quorum_ets {found['node_quorum_ets_bytes_per_message']} B,"
        f" node binary {found['node_binary_bytes_per_message']} B,"
        f" node total {found['node_total_bytes_per_message']} B"
    )
    channel.queue_purge(queue)
    return found


# --- PostgreSQL --------------------------------------------------------------------------


def measure_postgres(url: str, count: int, cleanup: list[Callable[[], None]]) -> dict:
    """One batch row and ``count`` chunk rows in a migrated database of this run's own."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from registry.batch_input import ChunkSpec
    from registry.batches import Batch, add_chunks
    from registry.db import Database, make_engine, upgrade

    name = f"inferq_qmem_{os.getpid()}"
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    cleanup.append(drop)
    db_url = make_url(url).set(database=name).render_as_string(hide_password=False)
    upgrade(db_url)
    db = Database(db_url)
    try:
        line_bytes = 444  # the digits lines of docs/benchmarks.md
        with db.session() as session:
            batch = Batch(
                tenant=TENANT,
                model_id=None,
                model_name="digits",
                model_version="1",
                input_file_id=None,
                meta={"run": "nightly"},
            )
            session.add(batch)
            session.flush()
            specs = (
                ChunkSpec(
                    i,
                    i * CHUNK_LINES * line_bytes,
                    (i + 1) * CHUNK_LINES * line_bytes,
                    i * CHUNK_LINES + 1,
                    CHUNK_LINES,
                )
                for i in range(count)
            )
            sends = {i: (gpu_queue(i % 8), new_task_id()) for i in range(count)}
            add_chunks(session, batch.id, specs, sends=sends)
        with db.session() as session:
            session.execute(text("ANALYZE chunks"))
            sizes = {
                table: int(session.execute(text(f"SELECT pg_total_relation_size('{table}')")).scalar_one())
                for table in ("chunks", "batches")
            }
            heap = int(session.execute(text("SELECT pg_relation_size('chunks')")).scalar_one())
        return {
            "server": url.rsplit("@", 1)[-1],
            "chunk_rows": count,
            "chunks_total_bytes": sizes["chunks"],
            "chunks_heap_bytes": heap,
            "bytes_per_chunk_row": per(sizes["chunks"], count),
            "bytes_per_million_lines": round(sizes["chunks"] / count * (1e6 / CHUNK_LINES)),
        }
    finally:
        db.dispose()


# --- the run -----------------------------------------------------------------------------


def table(results: dict) -> str:
    rows = [("broker", "queue", "message", "count", "B per message", "B per 1M batch lines")]
    r = results.get("redis", {})
    if "chunk" in r:
        c = r["chunk"]
        rows.append(
            (
                "redis",
                "list",
                "chunk [batch_id, index]",
                c["messages"],
                c["bytes_per_message"],
                c["bytes_per_million_lines"],
            )
        )
    if "sync" in r:
        s = r["sync"]
        rows.append(("redis", "list", "sync, 1 row (message)", s["messages"], s["bytes_per_message"], "-"))
        rows.append(
            ("redis", "hash", "sync task record, queued", s["requests"], s["bytes_per_queued_record"], "-")
        )
        rows.append(
            (
                "redis",
                "hash",
                "sync task record, finished",
                s["requests"],
                s["bytes_per_finished_record"],
                "-",
            )
        )
    if "sync32" in r:
        s = r["sync32"]
        rows.append(
            (
                "redis",
                "list",
                f"sync, {COALESCED} requests (message)",
                s["messages"],
                s["bytes_per_message"],
                "-",
            )
        )
    for key, m in results.get("rabbitmq", {}).items():
        if not isinstance(m, dict):
            continue
        # A classic queue holds its messages in its process; a quorum queue's process holds an
        # index, and the entries sit in the Raft log's tables (quorum_ets) until written to disk.
        held = m["process_bytes_per_message"]
        if m["type"] == "quorum":
            held += m["node_quorum_ets_bytes_per_message"]
        million = round(held * 1e6 / CHUNK_LINES) if key.endswith("chunk") else "-"
        what = "process" if m["type"] == "classic" else "process + quorum_ets"
        rows.append(
            ("rabbitmq", m["type"], f"{key.split('_')[1]} ({what})", m["messages"], round(held, 1), million)
        )
    p = results.get("postgres")
    if p and "chunk_rows" in p:
        rows.append(
            (
                "postgres",
                "chunks",
                "chunk row (+ indexes)",
                p["chunk_rows"],
                p["bytes_per_chunk_row"],
                p["bytes_per_million_lines"],
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows)


def main() -> int:
    # The router's depth check on a RabbitMQ queue not declared yet (the first publish declares it).
    logging.getLogger("workers.gpu_state").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the figures as JSON")
    parser.add_argument("--chunks", type=int, default=20_000, help="chunk messages per queue")
    parser.add_argument("--sync", type=int, default=10_000, help="sync requests per queue")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//", help="RabbitMQ; empty: skip")
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", help="PostgreSQL; empty: skip"
    )
    parser.add_argument("--deadline", type=float, default=170, help="seconds for the whole run")
    args = parser.parse_args()

    deadline = Deadline(args.deadline)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.machine()}",
        "load_average_at_start": os.getloadavg(),
        "chunk_lines": CHUNK_LINES,
    }
    cleanup: list[Callable[[], None]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="inferq-qmem-") as tmp:
        workdir = Path(tmp)
        try:
            with redis_server(workdir) as client:
                results["redis"] = measure_redis(client, workdir, args, deadline)
                # Bookkeeping of the RabbitMQ runs goes to the same private Redis (not measured again).
                port = client.connection_pool.connection_kwargs["port"]
                if args.amqp:
                    try:
                        results["rabbitmq"] = measure_rabbitmq(
                            f"redis://127.0.0.1:{port}/0", workdir, args, deadline, cleanup
                        )
                    except Exception as exc:  # noqa: BLE001 - report it, keep the other figures
                        results["rabbitmq"] = {"error": str(exc)}
                        say(f"rabbitmq not measured: {exc}")
            if args.postgres and deadline.left() > 10:
                try:
                    results["postgres"] = measure_postgres(args.postgres, args.chunks, cleanup)
                except Exception as exc:  # noqa: BLE001 - an unreachable database: say so, keep the rest
                    results["postgres"] = {"error": str(exc).splitlines()[0]}
                    say(f"postgres not measured: {results['postgres']['error']}")
        finally:
            for step in reversed(cleanup):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - clean up as much as possible
                    say(f"cleanup step failed: {exc}")
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_average_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    say("")
    say(table(results))
    say(f"\n{results['seconds']} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
