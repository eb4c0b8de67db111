"""Optional model refinement of the airway: merging with leak control, and an ONNX model run by the engine."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from _lungnav_synth import CARINA, RIGHT_DIR, make_y

from imagio import geometry as g
from IMAGIOLungNavLib.segment import merge_proposal, onnx_refiner, segment_airway


def _ml(mask):
    return g.mask_volume_ml(mask)


def test_proposal_adds_a_missing_branch_and_refuses_leaks(y_mask):
    cut = make_y(cut_right=(20.0, 60.0))               # the right bronchus stops 20 mm after the carina
    missing = _ml(y_mask) - _ml(cut)
    assert 0.2 < missing < 2.0
    merged, added, refused = merge_proposal(cut, y_mask, max_piece_ml=2.0)
    assert added == pytest.approx(missing, abs=1e-6) and refused == 0.0
    assert np.array_equal(sitk.GetArrayFromImage(merged), sitk.GetArrayFromImage(y_mask))
    # a blob (a leak into the parenchyma) touching the tree, and a detached piece: both refused
    kji = np.indices(cut.GetSize()[::-1]).reshape(3, -1).T
    ras = g.ijk_to_ras(cut, kji[:, ::-1].astype(float))
    blob = np.linalg.norm(ras - (CARINA + RIGHT_DIR * 30.0), axis=1) <= 14.0
    far = np.linalg.norm(ras - (CARINA + np.array([-30.0, 0.0, 40.0])), axis=1) <= 3.0
    arr = sitk.GetArrayFromImage(cut).astype(bool) | blob.reshape(cut.GetSize()[::-1]) | far.reshape(cut.GetSize()[::-1])
    proposal = g.copy_geometry(arr.astype(np.uint8), cut)
    merged, added, refused = merge_proposal(cut, proposal, max_piece_ml=2.0)
    assert added == 0.0 and refused > 8.0
    assert np.array_equal(sitk.GetArrayFromImage(merged), sitk.GetArrayFromImage(cut))


def _pointwise_air_model(folder, threshold_hu):
    """A 1x1x1 convolution labelling voxels below ``threshold_hu`` as 'airway', with its model card."""
    import onnx
    from onnx import TensorProto, helper

    slope = 0.05
    w = np.array([0.0, -slope], np.float32).reshape(2, 1, 1, 1, 1)
    b = np.array([0.0, slope * threshold_hu], np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, "D", "H", "W"])
    node = helper.make_node("Conv", ["input", "W", "B"], ["logits"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph([node], "air", [x], [y], [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
                                                          helper.make_tensor("B", TensorProto.FLOAT, b.shape, b)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "air.onnx"))
    card = {
        "imagio_model_card": 1, "name": "air-threshold", "version": "test", "onnx": "air.onnx", "clinical_use": False,
        "description": "test: voxels below a HU threshold", "input": {"channels": 1, "modality": ["CT"]},
        "target_spacing_kji_mm": [1.25, 1.0, 1.0], "patch_size_kji": [64, 128, 128], "overlap": 0.0,
        "mirror_axes_kji": [], "transpose_forward": [0, 1, 2], "crop_to_nonzero": False,
        "normalization": [{"scheme": "CT", "clip_low": -1000.0, "clip_high": 1000.0, "mean": 0.0, "std": 1.0}],
        "labels": [{"value": 0, "name": "background"}, {"value": 1, "name": "airway", "color": [0.3, 0.6, 0.9]}],
    }
    (folder / "air.json").write_text(json.dumps(card))
    return folder / "air.json"


def test_onnx_model_runs_and_its_leak_into_the_lung_is_refused(phantom, tmp_path):
    pytest.importorskip("onnx")
    plain = segment_airway(phantom.ct)
    # a 'model' that calls every voxel below -800 HU airway: it includes the lung parenchyma (-860 HU)
    refined = segment_airway(phantom.ct, refine=onnx_refiner(_pointwise_air_model(tmp_path, -800.0)))
    leak = refined.leak_check()
    assert leak["model_refused_ml"] > 1000.0          # the lungs were proposed and refused
    assert leak["model_added_ml"] < 2.0
    assert not leak["leak_suspected"]
    assert refined.volume_ml == pytest.approx(plain.volume_ml, abs=2.0)
