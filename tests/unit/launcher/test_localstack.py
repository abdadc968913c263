"""The local Triton repository mirrors models/ with the Python backend; the repository reader."""

from __future__ import annotations

from pathlib import Path

from inferq.settings import REPO_ROOT
from launcher.localstack import build_local_repository
from registry.triton_repository import describe_model_dir, read_model_config


def test_local_repository_keeps_the_signature_and_swaps_the_backend(tmp_path: Path) -> None:
    names = build_local_repository(REPO_ROOT / "models", tmp_path / "repo")
    assert names == ["digits", "iris"]
    source = read_model_config(REPO_ROOT / "models/digits/config.pbtxt")
    local = read_model_config(tmp_path / "repo/digits/config.pbtxt")
    assert source.backend == "onnxruntime" and local.backend == "python"
    assert list(local.input) == list(source.input) and list(local.output) == list(source.output)
    assert local.instance_group[0].kind == local.instance_group[0].KIND_CPU
    version = tmp_path / "repo/digits/1"
    assert (version / "model.onnx").resolve() == (REPO_ROOT / "models/digits/1/model.onnx").resolve()
    assert "TritonPythonModel" in (version / "model.py").read_text()


def test_repository_models_describe_their_signature() -> None:
    [entry] = describe_model_dir(REPO_ROOT / "models/digits")
    assert entry["name"] == entry["triton_name"] == "digits" and entry["version"] == "1"
    assert entry["framework"] == "onnx"
    assert entry["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert entry["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]


def test_batching_models_get_a_variable_batch_dimension(tmp_path: Path) -> None:
    model = tmp_path / "m"
    (model / "3").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "m" platform: "onnxruntime_onnx" max_batch_size: 8 '
        'input [{ name: "x" data_type: TYPE_STRING dims: [ 2 ] }] '
        'output [{ name: "y" data_type: TYPE_FP16 dims: [ 4, 4 ] }]'
    )
    [entry] = describe_model_dir(model)
    assert entry["version"] == "3"
    assert entry["inputs"] == [{"name": "x", "datatype": "BYTES", "shape": [-1, 2]}]
    assert entry["outputs"] == [{"name": "y", "datatype": "FP16", "shape": [-1, 4, 4]}]
