"""Reading a Triton model repository (``models/<name>/config.pbtxt``) into registry signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from registry.signatures import datatype_from_triton

FRAMEWORKS = {
    "onnxruntime": "onnx",
    "onnxruntime_onnx": "onnx",
    "tensorrt_plan": "tensorrt",
    "tensorrt": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "pytorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "python": "python",
}


def read_model_config(path: Path) -> Any:
    """Parse a Triton ``config.pbtxt`` with Triton's own protobuf schema."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def model_dirs(repository: Path) -> list[Path]:
    """Model folders of a Triton repository (those holding a ``config.pbtxt``)."""
    if not repository.is_dir():
        return []
    return sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def _specs(tensors: Any, batch: bool) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "datatype": datatype_from_triton(model_config_pb2.DataType.Name(t.data_type)),
            "shape": ([-1] if batch else []) + [int(d) for d in t.dims],
        }
        for t in tensors
    ]


def describe_model_dir(model_dir: Path) -> list[dict[str, Any]]:
    """Registry entries (one per version folder) for a model folder of the repository."""
    config = read_model_config(model_dir / "config.pbtxt")
    name = config.name or model_dir.name
    batch = config.max_batch_size > 0
    versions = sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    return [
        {
            "name": name,
            "version": version,
            "framework": FRAMEWORKS.get(config.backend or config.platform, config.backend or config.platform),
            "triton_name": name,
            "inputs": _specs(config.input, batch),
            "outputs": _specs(config.output, batch),
            "description": f"from the model repository ({model_dir.name}/{version})",
        }
        for version in versions
    ]
