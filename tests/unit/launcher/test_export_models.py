"""The models in models/ are what the export script makes, and they classify well."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sklearn.datasets import load_digits, load_iris

from inferq.settings import REPO_ROOT


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("export_models", REPO_ROOT / "scripts/export_models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def predict(path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(["label", "probabilities"], {"input": rows}))  # type: ignore[return-value]


@pytest.mark.parametrize(("name", "loader"), [("digits", load_digits), ("iris", load_iris)])
def test_export_reproduces_the_shipped_model(tmp_path: Path, name: str, loader) -> None:  # type: ignore[no-untyped-def]
    onnx_path = load_script().export(tmp_path, name)
    shipped = REPO_ROOT / "models" / name
    assert (tmp_path / name / "config.pbtxt").read_text() == (shipped / "config.pbtxt").read_text()
    # The same graph and the same weights; the last bits of the fitted floats may differ between
    # CPUs (the solver's BLAS kernels), so weights are compared to a tight tolerance, not bytewise.
    made, kept = onnx.load(str(onnx_path)), onnx.load(str(shipped / "1/model.onnx"))
    assert [n.op_type for n in made.graph.node] == [n.op_type for n in kept.graph.node]
    made_weights = {i.name: numpy_helper.to_array(i) for i in made.graph.initializer}
    kept_weights = {i.name: numpy_helper.to_array(i) for i in kept.graph.initializer}
    assert made_weights.keys() == kept_weights.keys()
    for key, value in made_weights.items():
        np.testing.assert_allclose(value, kept_weights[key], rtol=1e-4, atol=1e-5, err_msg=key)
    data = loader()
    labels, probabilities = predict(shipped / "1/model.onnx", data.data.astype(np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (labels == data.target).mean() > 0.95
