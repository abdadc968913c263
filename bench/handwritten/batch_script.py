"""The hand-written batch baseline: what a user writes instead of a batch platform.

Reads a JSONL file of requests (``{"custom_id", "inputs": [{name, shape, datatype, data}]}``),
sends them to Triton with ``tritonclient.http`` in micro-batches of 1024 rows (binary tensors),
and writes one output line per request in the same format as inferq's output file
(``{"custom_id", "outputs": [{name, datatype, shape, data}]}``). One process, one thread, no
retries, no validation beyond what numpy does, nothing durable.

    python bench/handwritten/batch_script.py requests.jsonl output.jsonl \\
        --triton http://127.0.0.1:8000 --model digits --micro-batch 1024

Prints ``{"lines", "seconds", "lines_per_second"}`` as JSON on stdout (seconds: from opening the
input to the output file closed, interpreter start-up and imports excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import triton_to_np_dtype


def batches(path: str, size: int) -> Iterator[list[dict[str, Any]]]:
    """The requests of ``path`` in lists of up to ``size`` rows."""
    batch: list[dict[str, Any]] = []
    with open(path, "rb") as lines:
        for line in lines:
            if line.strip():
                batch.append(json.loads(line))
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def infer(client: httpclient.InferenceServerClient, model: str, batch: list[dict[str, Any]]) -> list[bytes]:
    """One Triton call for the batch (inputs stacked on their first dimension); an output line each."""
    inputs = []
    for spec in batch[0]["inputs"]:
        dtype = triton_to_np_dtype(spec["datatype"])
        rows = [np.asarray(_named(r, spec["name"]), dtype) for r in batch]
        array = np.stack(rows).reshape(len(batch) * spec["shape"][0], *spec["shape"][1:])
        tensor = httpclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    outputs = [
        (o["name"], o["datatype"], result.as_numpy(o["name"])) for o in result.get_response()["outputs"]
    ]
    lines = []
    for i, request in enumerate(batch):
        tensors = [
            {
                "name": name,
                "datatype": datatype,
                "shape": [1, *array.shape[1:]],
                "data": array[i].reshape(-1).tolist(),
            }
            for name, datatype, array in outputs
        ]
        lines.append(
            json.dumps(
                {"custom_id": request["custom_id"], "outputs": tensors}, separators=(",", ":")
            ).encode()
            + b"\n"
        )
    return lines


def _named(request: dict[str, Any], name: str) -> Any:
    """The flat data of the request's input ``name``."""
    return next(t["data"] for t in request["inputs"] if t["name"] == name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--triton", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--micro-batch", type=int, default=1024)
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(urlsplit(args.triton).netloc, network_timeout=120)
    started = time.perf_counter()
    count = 0
    with open(args.output, "wb") as out:
        for batch in batches(args.input, args.micro_batch):
            out.writelines(infer(client, args.model, batch))
            count += len(batch)
    seconds = time.perf_counter() - started
    client.close()
    json.dump({"lines": count, "seconds": seconds, "lines_per_second": count / seconds}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
