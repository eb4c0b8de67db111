"""The engine against a plain transcription of nnU-Net's prediction (nnunet_reference.py), no torch needed.

Same ONNX network on both sides, so any difference is the pipeline's: the
streaming engine (slab-wise float16 aggregation, 1-D resampling passes) must
give nnU-Net's labels voxel for voxel, on geometries that exercise every rule:
model spacing finer and coarser than the image, a separate low-resolution axis
(from the image or from the model), transposed axes, padding to the patch,
mirroring, fold ensembles, region-based models, masked z-score, two channels.
With scikit-image installed the resampling is also checked against
``skimage.transform.resize`` itself, which is what nnU-Net calls.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.engine import OnnxSegmenter, gaussian_importance_map, resample_array, zoom_axis


def ct_like(shape_kji, spacing_kji, seed=0, zero_border=0):
    """A textured volume in HU-like units (smooth blobs and noise), optionally with a zero frame (cropped)."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    a = gaussian_filter(rng.normal(0, 1, shape_kji), 2.0) * 2500 - 300 + rng.normal(0, 40, shape_kji)
    if zero_border:
        b = zero_border
        a[:b] = 0
        a[:, :b] = 0
        a[:, :, -b:] = 0
    img = sitk.GetImageFromArray(a.astype(np.float32))
    img.SetSpacing([float(s) for s in spacing_kji[::-1]])
    img.SetOrigin((3.0, -7.0, 11.0))
    return img


NORM = {"mean": -250.0, "std": 450.0, "clip_low": -900.0, "clip_high": 900.0}
CASES = {
    # name: image shape (k, j, i), image spacing (k, j, i), card overrides
    "model finer in-plane than the image": ((30, 36, 40), (1.2, 1.5, 1.5), dict(spacing=(1.0, 1.0, 1.0))),
    "image 3x anisotropic (separate z, nearest)": ((14, 44, 40), (3.3, 1.0, 1.0), dict(spacing=(1.5, 1.1, 1.1))),
    "model 3x anisotropic (separate axis from the model)": ((40, 30, 34), (1.0, 1.0, 1.0),
                                                             dict(spacing=(3.2, 0.9, 0.9))),
    "transposed axes": ((36, 20, 30), (1.0, 2.6, 1.1), dict(spacing=(1.5, 1.4, 1.4), transpose=(1, 0, 2))),
    "image smaller than the patch (padded)": ((10, 18, 15), (2.0, 1.5, 1.5), dict(spacing=(2.0, 1.6, 1.2))),
}


def _onnx_net(path):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"input": x})[0]


def _compare(tmp_path, models, nnunet_reference, img, card_path, mirror=(), images=None, folds=None):
    card = json.loads(card_path.read_text())
    onnx_files = [f["onnx"] for f in card["folds"]] if "folds" in card else [card["onnx"]]
    nets = [_onnx_net(tmp_path / f) for f in onnx_files]
    images = images or [img]
    arr = np.stack([sitk.GetArrayFromImage(im) for im in images])
    spacing = list(img.GetSpacing()[::-1])
    ref_lab, ref_p = nnunet_reference.predict(arr, spacing, card, nets, mirror, return_probabilities=True)
    res = OnnxSegmenter(card_path, backend="onnxruntime").predict(images, mirroring=bool(mirror),
                                                                    probabilities=True)
    ours = sitk.GetArrayFromImage(res.labels)
    assert ours.shape == ref_lab.shape
    n_diff = int(np.count_nonzero(ours != ref_lab))
    assert n_diff == 0, f"{n_diff} of {ours.size} voxels differ from nnU-Net's steps"
    assert len(np.unique(ref_lab)) > 1  # a real decision, not one class everywhere
    for cls, p in res.probabilities.items():
        head = card.get("output", {}).get("regions_class_order", list(range(ref_p.shape[0]))).index(cls) \
            if card.get("output", {}).get("activation") == "sigmoid" else cls
        assert np.abs(sitk.GetArrayFromImage(p) - ref_p[head]).max() < 1e-6
    return ours


@pytest.mark.parametrize("case", list(CASES))
def test_engine_gives_nnunets_labels(tmp_path, models, nnunet_reference, case):
    shape, spacing, card_kw = CASES[case]
    models.conv(tmp_path / "net.onnx", classes=3, seed=1)
    card = models.card(tmp_path, "net.onnx", classes=3, patch=(16, 20, 24), mirror=(), norm_extra=NORM,
                       **card_kw)
    _compare(tmp_path, models, nnunet_reference, ct_like(shape, spacing), card)


def test_mirroring_and_zero_frame_crop(tmp_path, models, nnunet_reference):
    models.conv(tmp_path / "net.onnx", classes=2, seed=2)
    card = models.card(tmp_path, "net.onnx", classes=2, patch=(12, 16, 16), mirror=(0, 1, 2), norm_extra=NORM,
                       spacing=(2.0, 1.3, 1.7))
    _compare(tmp_path, models, nnunet_reference, ct_like((24, 30, 28), (1.7, 1.2, 1.4), seed=3, zero_border=4), card,
             mirror=(0, 1, 2))


def test_fold_ensemble(tmp_path, models, nnunet_reference):
    """Three folds: their float16 logits summed and divided by three, as nnUNetv2_predict -f 0 1 2."""
    names = []
    for f in range(3):
        models.conv(tmp_path / f"fold{f}.onnx", classes=3, seed=10 + f)
        names.append(f"fold{f}.onnx")
    card = models.card(tmp_path, names, classes=3, patch=(12, 16, 16), mirror=(), norm_extra=NORM,
                       spacing=(1.8, 1.1, 1.1))
    img = ct_like((20, 30, 26), (2.2, 1.4, 1.4), seed=4)
    ours = _compare(tmp_path, models, nnunet_reference, img, card)
    single = sitk.GetArrayFromImage(OnnxSegmenter(card, backend="onnxruntime", folds=["0"]).predict(img).labels)
    assert np.count_nonzero(single != ours) > 0  # the ensemble is not fold 0 alone


def test_region_based_model(tmp_path, models, nnunet_reference):
    """Sigmoid outputs per region, labels written in regions_class_order where the region's probability > 0.5."""
    models.conv(tmp_path / "regions.onnx", classes=3, seed=5, scale=0.6)
    extra = {"output": {"activation": "sigmoid", "regions_class_order": [1, 2, 3],
                        "regions": [[1, 2, 3], [2, 3], [3]]},
             "labels": [{"value": 0, "name": "background"}, {"value": 1, "name": "whole"},
                        {"value": 2, "name": "core"}, {"value": 3, "name": "enhancing"}]}
    card = models.card(tmp_path, "regions.onnx", classes=4, patch=(12, 16, 16), mirror=(), norm_extra=NORM,
                       spacing=(1.5, 1.2, 1.2), extra=extra)
    ours = _compare(tmp_path, models, nnunet_reference, ct_like((22, 28, 26), (2.0, 1.0, 1.0), seed=6), card)
    assert len(np.unique(ours)) >= 3


def test_two_channels_and_masked_zscore(tmp_path, models, nnunet_reference):
    models.conv(tmp_path / "two.onnx", channels=2, classes=3, seed=7)
    card = models.card(tmp_path, "two.onnx", channels=2, classes=3, patch=(12, 16, 16), mirror=(), scheme="ZScore",
                       norm_extra={"use_mask_for_norm": True}, spacing=(1.4, 1.4, 1.4))
    a = ct_like((20, 26, 24), (1.0, 1.2, 1.2), seed=8, zero_border=3)
    b = ct_like((20, 26, 24), (1.0, 1.2, 1.2), seed=9, zero_border=3)
    b = sitk.Abs(b)
    _compare(tmp_path, models, nnunet_reference, a, card, images=[a, b])


# ----------------------------------------------------------------------------- the building blocks

def test_gaussian_map_is_nnunets_float16_map(nnunet_reference):
    for tile in ((16, 24, 24), (12, 16, 20), (28, 256, 256)):
        g = gaussian_importance_map(tile)
        assert g.dtype == np.float16 and g.shape == tile
        assert np.array_equal(g, nnunet_reference.gaussian16(tile))
        assert float(g.max()) == pytest.approx(10.0, abs=0.01) and g.min() > 0


@pytest.mark.parametrize("n_in,n_out", [(37, 20), (37, 51), (20, 90), (9, 4), (64, 64)])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_one_axis_passes_equal_scipy_zoom(n_in, n_out, order):
    from scipy.ndimage import zoom

    x = np.random.default_rng(n_in + n_out).normal(size=(n_in, 7))
    ours = zoom_axis(x, 0, n_out, order)
    if order == 0:  # nnU-Net uses map_coordinates for order 0 (the separate axis)
        from scipy.ndimage import map_coordinates

        c = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
        ref = np.stack([map_coordinates(x[:, j], c[None], order=0, mode="nearest") for j in range(7)], 1)
    else:
        ref = zoom(x, (n_out / n_in, 1), order=order, mode="nearest", grid_mode=True)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-12


@pytest.mark.parametrize("spacing,new_shape", [((1.0, 0.8, 0.8), (24, 38, 30)), ((3.3, 1.0, 1.0), (40, 20, 25)),
                                               ((1.0, 1.0, 1.0), (7, 30, 30))])
def test_image_resampling_equals_nnunets(spacing, new_shape, nnunet_reference):
    x = np.random.default_rng(0).normal(size=(12, 25, 33)).astype(np.float32) * 100
    ours = resample_array(x.copy(), spacing, new_shape)
    new_spacing = np.array(spacing) * np.array(x.shape) / np.array(new_shape)
    ref = nnunet_reference.resample(x[None], new_shape, spacing, new_spacing, 3)[0]
    assert ours.dtype == np.float32 and ours.shape == tuple(new_shape)
    assert np.abs(ours.astype(np.float64) - ref).max() <= 1e-4 * np.abs(ref).max() * 1e-2  # float32 rounding only


def test_reference_resize_is_scikit_image(nnunet_reference):
    skt = pytest.importorskip("skimage.transform")
    x = np.random.default_rng(1).normal(size=(11, 23, 17)) * 50
    for shape, order in (((20, 15, 30), 3), ((5, 40, 9), 1), ((11, 23, 40), 3)):
        ref = skt.resize(x, shape, order, mode="edge", anti_aliasing=False)
        assert np.array_equal(nnunet_reference.skimage_resize(x, shape, order), ref)
