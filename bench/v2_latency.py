"""The same digits inference through /v1 (JSON), /v2 (JSON and binary tensors) and straight to Triton.

Run against a running stack (``inferq up``):

    .venv/bin/python bench/v2_latency.py --key "$(cat ~/.local/share/inferq/dev-api-key)"

/v1 is sent as its users do (``requests``, JSON); /v2 and Triton direct with unmodified
``tritonclient.http`` code, JSON or binary both ways, the only difference between the two being
the URL and the Authorization header. Every path gets the same rows, request count and client
concurrency in one run, taking turns in rounds (so background load falls on all alike); each
answer is checked, and the report is a Markdown table of latency percentiles and throughput.
Loopback only, bounded (``--requests`` per row, 30 s per request).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
import tritonclient.http as httpclient
from sklearn.datasets import load_digits

TIMEOUT = 30.0


def digits(rows: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data[:rows].astype(np.float32), data.target[:rows]


class Route:
    """One way of sending the request; ``send`` runs on a worker thread, with its own client."""

    def __init__(self, label: str, make: Callable[[], Any], send: Callable[[Any], np.ndarray]) -> None:
        self.label, self._make, self._send = label, make, send
        self._local = threading.local()

    def client(self) -> Any:
        if getattr(self._local, "client", None) is None:
            self._local.client = self._make()
        return self._local.client

    def send(self) -> np.ndarray:
        return self._send(self.client())


def paths(args: argparse.Namespace, rows: np.ndarray) -> list[Route]:
    headers = {"Authorization": f"Bearer {args.key}"}
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "label"}, {"name": "probabilities"}],
    }

    def v1(session: requests.Session) -> np.ndarray:
        response = session.post(
            f"{args.url}/v1/models/digits/infer", json=body, headers=headers, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        label = next(o for o in response.json()["outputs"] if o["name"] == "label")
        return np.asarray(label["data"])

    def triton_call(binary: bool, with_key: bool) -> Callable[[httpclient.InferenceServerClient], np.ndarray]:
        def send(client: httpclient.InferenceServerClient) -> np.ndarray:
            item = httpclient.InferInput("input", list(rows.shape), "FP32")
            item.set_data_from_numpy(rows, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput(name, binary_data=binary)
                for name in ("label", "probabilities")
            ]
            # tritonclient writes Inference-Header-Content-Length into the dict it is given: a copy.
            result = client.infer(
                "digits", [item], outputs=outputs, headers=dict(headers) if with_key else None
            )
            label: np.ndarray = result.as_numpy("label")
            return label

        return send

    def client_for(url: str) -> Callable[[], httpclient.InferenceServerClient]:
        address = url.removeprefix("http://")
        return lambda: httpclient.InferenceServerClient(
            address, connection_timeout=TIMEOUT, network_timeout=TIMEOUT
        )

    return [
        Route("Triton direct, JSON", client_for(args.triton), triton_call(False, False)),
        Route("Triton direct, binary", client_for(args.triton), triton_call(True, False)),
        Route("inferq /v1, JSON", requests.Session, v1),
        Route("inferq /v2, JSON", client_for(args.url), triton_call(False, True)),
        Route("inferq /v2, binary", client_for(args.url), triton_call(True, True)),
    ]


def run(
    pool: ThreadPoolExecutor, path: Route, expected: np.ndarray, count: int, concurrency: int
) -> tuple[list[float], float]:
    """``count`` requests from ``concurrency`` client threads (each keeps its connection from one
    round to the next): each one's latency (ms), and the wall time."""

    def worker(_: int) -> list[float]:
        timings = []
        for _ in range(max(1, count // concurrency)):
            started = time.perf_counter()
            labels = path.send()
            timings.append((time.perf_counter() - started) * 1000)
            np.testing.assert_array_equal(labels, expected)
        return timings

    list(pool.map(lambda _: path.send(), range(concurrency)))  # connections open, caches warm
    started = time.perf_counter()
    timings = [t for chunk in pool.map(worker, range(concurrency)) for t in chunk]
    return timings, time.perf_counter() - started


def figures(timings: list[float], elapsed: float) -> dict[str, float]:
    quantiles = statistics.quantiles(timings, n=100)
    return {"p50": quantiles[49], "p95": quantiles[94], "p99": quantiles[98], "rps": len(timings) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inferq's API")
    parser.add_argument("--key", required=True, help="an inferq API key")
    parser.add_argument("--triton", default="http://127.0.0.1:8000", help="one of the stack's Tritons")
    parser.add_argument("--requests", type=int, default=400, help="per row of the table (at most 5000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=5, help="turns the paths take at each row")
    args = parser.parse_args()
    args.requests = max(1, min(args.requests, 5000))
    args.rounds = max(1, min(args.rounds, args.requests))

    print("| rows | clients | path | p50 ms | p95 ms | p99 ms | req/s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        data, _ = digits(rows)
        for concurrency in args.concurrency:
            routes = paths(args, data)
            expected = routes[0].send()  # what Triton computes for these rows: every answer is checked
            # The paths take turns, round after round, so a change in the machine's background load
            # falls on all of them alike.
            timings: dict[str, list[float]] = {route.label: [] for route in routes}
            elapsed = dict.fromkeys(timings, 0.0)
            with ThreadPoolExecutor(concurrency) as pool:
                for _ in range(args.rounds):
                    for route in routes:
                        taken, seconds = run(pool, route, expected, args.requests // args.rounds, concurrency)
                        timings[route.label] += taken
                        elapsed[route.label] += seconds
            for route in routes:
                result = figures(timings[route.label], elapsed[route.label])
                cells = [f"{result[k]:.1f}" for k in ("p50", "p95", "p99")] + [f"{result['rps']:.0f}"]
                print(f"| {rows} | {concurrency} | {route.label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
