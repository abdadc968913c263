"""The models in models/ are what the export script makes, and they classify well."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
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
    assert onnx_path.read_bytes() == (shipped / "1/model.onnx").read_bytes()
    data = loader()
    labels, probabilities = predict(shipped / "1/model.onnx", data.data.astype(np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (labels == data.target).mean() > 0.95
