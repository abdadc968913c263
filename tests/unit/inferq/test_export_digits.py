"""The digits model in models/ is what the export script makes, and it classifies digits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits

from inferq.settings import REPO_ROOT


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "export_digits", REPO_ROOT / "scripts/export_digits_model.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def predict(path: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(["label", "probabilities"], {"input": rows}))  # type: ignore[return-value]


def test_export_reproduces_the_shipped_model(tmp_path: Path) -> None:
    onnx_path = load_script().export(tmp_path)
    shipped = REPO_ROOT / "models/digits"
    assert (tmp_path / "digits/config.pbtxt").read_text() == (shipped / "config.pbtxt").read_text()
    digits = load_digits()
    rows = digits.data.astype(np.float32)
    fresh_labels, fresh_probabilities = predict(onnx_path, rows)
    shipped_labels, shipped_probabilities = predict(shipped / "1/model.onnx", rows)
    assert (fresh_labels == shipped_labels).all()
    np.testing.assert_allclose(fresh_probabilities, shipped_probabilities, rtol=1e-6)
    assert (shipped_labels == digits.target).mean() > 0.95
