"""Open Inference Protocol tensors: datatypes, and conversion between protocol tensors and numpy.

The foundation both sides share: the registry checks requests against these
datatypes, and the workers turn protocol tensors into arrays for Triton and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype kinds a JSON ``data`` list may convert to.
DATATYPES: dict[str, str] = {
    "BOOL": "b",
    "UINT8": "iu",
    "UINT16": "iu",
    "UINT32": "iu",
    "UINT64": "iu",
    "INT8": "iu",
    "INT16": "iu",
    "INT32": "iu",
    "INT64": "iu",
    "FP16": "iuf",
    "FP32": "iuf",
    "FP64": "iuf",
    "BYTES": "U",
}

NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}


def to_numpy(tensor: Mapping[str, Any]) -> np.ndarray:
    """A protocol tensor (flat ``data``) as a numpy array of its datatype and shape."""
    datatype = tensor["datatype"]
    if datatype == "BYTES":
        data = [v.encode() if isinstance(v, str) else v for v in tensor["data"]]
        return np.array(data, dtype=np.object_).reshape(tensor["shape"])
    return np.asarray(tensor["data"], dtype=NUMPY_DTYPES[datatype]).reshape(tensor["shape"])


def from_numpy(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    """A numpy array as a protocol tensor with flat, JSON-ready ``data``."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    else:
        data = flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
