"""Task messages written and read by orjson, with the json module for what orjson would not do alike."""

from __future__ import annotations

import json

import numpy as np
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads

from tasks import codec


def test_a_message_reads_back_as_the_json_module_would() -> None:
    rows = np.random.default_rng(3).random((64, 64), dtype=np.float32)
    tensor = {"data": rows.reshape(-1).tolist(), "shape": [64, 64]}
    message = [
        [{"requests": [{"task_id": "t", "inputs": [tensor]}]}],
        {},
        {"callbacks": None},
    ]
    raw = codec.dumps(message)
    assert codec.loads(raw) == json.loads(json.dumps(message))
    back = np.asarray(codec.loads(raw)[0][0]["requests"][0]["inputs"][0]["data"], dtype=np.float32)
    assert np.array_equal(back, rows.reshape(-1)), "every float comes back to the same bits"


def test_what_orjson_refuses_goes_through_the_json_module() -> None:
    odd = {"text": "\ud800 lone surrogate", "big": 2**70, "tuple": (1, 2)}
    assert codec.loads(codec.dumps(odd)) == {"text": "\ud800 lone surrogate", "big": 2**70, "tuple": [1, 2]}
    assert codec.loads(codec.dumps({"big": -(2**64)})) == {"big": -(2**64)}, "an int, not a float"
    assert codec.loads('{"n": NaN}')["n"] != codec.loads('{"n": NaN}')["n"]  # NaN, read as json reads it


def test_kombu_knows_the_content_type() -> None:
    codec.install()
    content_type, encoding, payload = kombu_dumps({"a": [1.5, 2]}, serializer=codec.SERIALIZER)
    assert content_type == codec.CONTENT_TYPE and encoding == "utf-8"
    assert kombu_loads(payload, content_type, encoding, accept=[codec.CONTENT_TYPE]) == {"a": [1.5, 2]}
