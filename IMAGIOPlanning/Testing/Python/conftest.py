"""Fixtures for IMAGIOPlanning tests: tiny ONNX models built with onnx.helper (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def make_pointwise_model(path: Path, channels: int = 1, classes: int = 2, threshold_hu: float = -300.0,
                         spatial=("D", "H", "W"), rank: int = 5, slope: float = 0.01) -> Path:
    """A 1x1x1 convolution: class 1 logit = slope * (x - threshold), class 0 logit = 0 (x in input units)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.zeros((classes, channels) + (1,) * (rank - 2), np.float32)
    b = np.zeros(classes, np.float32)
    for c in range(1, classes):
        w[c, 0] = slope * c
        b[c] = -slope * c * threshold_hu - (c - 1) * 2.0
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, *spatial][:rank])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, *(["D", "H", "W"][:rank - 2])])
    node = helper.make_node("Conv", ["input", "W", "B"], ["logits"], kernel_shape=[1] * (rank - 2))
    graph = helper.make_graph([node], "pointwise", [x], [y],
                              [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
                               helper.make_tensor("B", TensorProto.FLOAT, b.shape, b)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_conv_model(path: Path, channels: int = 1, classes: int = 3, seed: int = 0, hidden: int = 4,
                    scale: float = 1.0) -> Path:
    """A small real network: 3x3x3 convolution (zero padding, so window borders matter), ReLU, 1x1x1 to classes."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = (rng.normal(0, 0.6, (hidden, channels, 3, 3, 3))).astype(np.float32)
    b1 = rng.normal(0, 0.3, hidden).astype(np.float32)
    w2 = (rng.normal(0, scale, (classes, hidden, 1, 1, 1))).astype(np.float32)
    b2 = rng.normal(0, 0.2, classes).astype(np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, "D", "H", "W"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "D", "H", "W"])
    nodes = [helper.make_node("Conv", ["input", "W1", "B1"], ["h"], kernel_shape=[3, 3, 3], pads=[1] * 6),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "W2", "B2"], ["logits"], kernel_shape=[1, 1, 1])]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in
             (("W1", w1), ("B1", b1), ("W2", w2), ("B2", b2))]
    model = helper.make_model(helper.make_graph(nodes, "conv", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_card(folder: Path, onnx_name, *, channels=1, classes=2, spacing=(2.0, 1.5, 1.5), patch=(16, 24, 24),
              mirror=(0, 1, 2), transpose=(0, 1, 2), scheme="CT", name="test-model", overlap=0.5, extra=None,
              norm_extra=None) -> Path:
    """A card for one ONNX file, or a fold ensemble when ``onnx_name`` is a list; ``extra`` adds/overrides keys."""
    norm = {"scheme": scheme, **(norm_extra or {})}
    if scheme == "CT":
        norm.update(clip_low=-1000.0, clip_high=1000.0, mean=0.0, std=1.0)
        norm.update(norm_extra or {})
    names = onnx_name if isinstance(onnx_name, list | tuple) else [onnx_name]
    where = {"onnx": names[0]} if len(names) == 1 else {"folds": [{"fold": str(i), "onnx": n} for i, n in
                                                                   enumerate(names)]}
    card = {
        "imagio_model_card": 1, "name": name, "version": "test", **where, "clinical_use": False,
        "description": "test model", "input": {"channels": channels, "modality": ["CT"] * channels},
        "target_spacing_kji_mm": list(spacing), "patch_size_kji": list(patch), "overlap": overlap,
        "mirror_axes_kji": list(mirror), "transpose_forward": list(transpose), "crop_to_nonzero": True,
        "normalization": [dict(norm) for _ in range(channels)],
        "labels": [{"value": 0, "name": "background"}] + [
            {"value": c, "name": f"Lesion {c}", "color": [0.9, 0.3, 0.1 * c],
             "terminology": {"type": {"scheme": "SCT", "code": "108369006", "meaning": "Tumor"}}}
            for c in range(1, classes)],
    }
    card.update(extra or {})
    p = folder / (Path(names[0]).stem + ".json")
    p.write_text(json.dumps(card, indent=2))
    return p


@pytest.fixture
def pointwise_card(tmp_path):
    make_pointwise_model(tmp_path / "pw.onnx")
    return make_card(tmp_path, "pw.onnx")


@pytest.fixture
def models():
    """The model builders above (pytest's importlib mode cannot import conftest by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(pointwise=make_pointwise_model, card=make_card, conv=make_conv_model)


@pytest.fixture(scope="session")
def nnunet_reference():
    """The plain numpy/scipy transcription of nnU-Net's prediction (nnunet_reference.py beside this file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nnunet_reference", Path(__file__).parent / "nnunet_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
