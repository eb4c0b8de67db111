"""`imagio export-onnx`: refusals without torch; with the optional export extra (torch, nnunetv2), the exported
model run by IMAGIO's engine gives nnU-Net's own predictor's probabilities."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.cli import main
from imagio.errors import ImagioError
from IMAGIOPlanningLib.export import export_nnunet

TRAINING = Path(__file__).resolve().parents[2] / "Training" / "make_nnunet_model.py"


def _planner():
    spec = importlib.util.spec_from_file_location("make_nnunet_model", TRAINING)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FG = {"max": 1500.0, "mean": -400.0, "median": -500.0, "min": -1024.0, "percentile_00_5": -1000.0,
      "percentile_99_5": 1200.0, "std": 450.0}


def model_folder(tmp_path: Path, labels=None) -> Path:
    mod = _planner()
    d = tmp_path / "nnunet"
    (d / "fold_0").mkdir(parents=True)
    (d / "plans.json").write_text(json.dumps(mod.plans(FG)))
    ds = dict(mod.DATASET)
    if labels is not None:
        ds["labels"] = labels
    (d / "dataset.json").write_text(json.dumps(ds))
    return d


def test_export_refusals_without_torch(tmp_path):
    from IMAGIOPlanningLib.export import read_model_folder

    with pytest.raises(ImagioError, match="plans.json .* does not exist"):
        export_nnunet(tmp_path, tmp_path / "out")
    plain = model_folder(tmp_path / "plain")
    with pytest.raises(ImagioError, match="No fold_\\*/checkpoint_final.pth"):
        export_nnunet(plain, tmp_path / "out")
    with pytest.raises(ImagioError, match="Checkpoint .*fold_3.* does not exist"):
        export_nnunet(plain, tmp_path / "out", folds=["3"])
    d = model_folder(tmp_path, labels={"background": 0, "tumour": [1, 2], "core": 2})
    (d / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ImagioError, match="needs 'regions_class_order'"):
        read_model_folder(d)
    ds = json.loads((d / "dataset.json").read_text())
    ds["regions_class_order"] = [1, 2]
    (d / "dataset.json").write_text(json.dumps(ds))
    folder = read_model_folder(d)  # a region-based model is read: sigmoid heads, labels written in order
    assert folder.output["activation"] == "sigmoid" and folder.output["regions_class_order"] == [1, 2]
    assert [lab["name"] for lab in folder.labels] == ["background", "tumour", "core"] and folder.num_outputs == 2
    with pytest.raises(ImagioError, match="no configuration '2d'"):
        export_nnunet(d, tmp_path / "out", configuration="2d")
    plans = json.loads((d / "plans.json").read_text())
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (d / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ImagioError, match="is a cascade stage"):
        export_nnunet(d, tmp_path / "out", configuration="3d_cascade_fullres")
    plans["configurations"]["3d_fullres"]["resampling_fn_probabilities_kwargs"]["order"] = 3
    (d / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ImagioError, match="order 3"):
        read_model_folder(d)


def test_fold_all_alone_or_when_asked_never_mixed_in(tmp_path):
    """nnUNetv2_predict's default folds are the cross-validation ones; fold_all is its own model (-f all)."""
    from IMAGIOPlanningLib.export import read_model_folder

    d = model_folder(tmp_path)
    (d / "fold_0").rename(d / "fold_all")
    (d / "fold_all" / "checkpoint_final.pth").write_bytes(b"x")
    assert list(read_model_folder(d).folds) == ["all"]            # only fold_all: it is the model
    for f in ("0", "1"):
        (d / f"fold_{f}").mkdir()
        (d / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"x")
    assert list(read_model_folder(d).folds) == ["0", "1"]         # as nnUNetv2_predict -f 0 1: fold_all left out
    assert list(read_model_folder(d, folds=["all"]).folds) == ["all"]
    assert read_model_folder(d, folds=["all"]).folds["all"] == d / "fold_all" / "checkpoint_final.pth"
    assert list(read_model_folder(d, folds=["0", "1", "all"]).folds) == ["0", "1", "all"]


def test_intended_use_comes_from_the_fingerprint(tmp_path):
    from IMAGIOPlanningLib.export import intended_use_from, read_model_folder

    d = model_folder(tmp_path)
    (d / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    (d / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [[1.0, 0.7, 0.7], [2.5, 0.9, 0.9]], "shapes_after_crop": [[300, 512, 512], [100, 400, 400]]}))
    iu = intended_use_from(read_model_folder(d), "chest CT", ["chest"])
    assert iu["spacing_mm_kji"] == {"min": [0.8, 0.56, 0.56], "max": [3.125, 1.125, 1.125]}
    assert iu["field_of_view_mm_kji"]["min"] == [125.0, 179.2, 179.2]
    assert iu["segments"] == ["lung_air", "dense_bone"] and iu["body_region"] == ["chest"]
    assert iu["intensity"] == {"unit": "HU", "p99_min": FG["percentile_00_5"], "p01_max": FG["percentile_99_5"]}


def test_cli_export_bad_folder_exit_2(tmp_path, capsys):
    assert main(["export-onnx", "--model-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _nnunet_folder(tmp_path, torch, *, folds=(0,), regions=False):
    """A real nnU-Net v2 folder with randomly initialised folds (logits scaled to about +-4, so that they are
    decisive but stay far from nnU-Net's float16 overflow)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    labels = {"background": 0, "lung_or_tissue": [1, 2], "dense_bone": [2]} if regions else None
    d = model_folder(tmp_path, labels=labels)
    ds = json.loads((d / "dataset.json").read_text())
    if regions:
        ds["regions_class_order"] = [1, 2]
        (d / "dataset.json").write_text(json.dumps(ds))
    plans = json.loads((d / "plans.json").read_text())
    cm = PlansManager(plans).get_configuration("3d_fullres")
    heads = 2 if regions else 3
    weights = []
    for f in folds:
        torch.manual_seed(10 + (f if isinstance(f, int) else 7))
        net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, 1, heads, allow_init=True,
                                     deep_supervision=False)
        with torch.no_grad():
            x = torch.from_numpy(((np.random.default_rng(2).normal(-300, 400, (1, 1, 48, 64, 64)) + 400) / 450)
                                 .astype(np.float32))
            scale = 4.0 / float(net(x).abs().max())
            for p in net.decoder.seg_layers[-1].parameters():
                p.mul_(scale)
        (d / f"fold_{f}").mkdir(exist_ok=True)
        ckpt = {"network_weights": net.state_dict(), "trainer_name": "SomeCustomTrainer", "current_epoch": 0,
                "inference_allowed_mirroring_axes": (0, 1, 2)}
        torch.save(ckpt, d / f"fold_{f}" / "checkpoint_final.pth")
        # copies: nnU-Net loads each fold's weights into one network, which would overwrite a shared state dict
        weights.append({k: v.clone() for k, v in ckpt["network_weights"].items()})
    return d, net, weights


def _nnunet_predict(torch, d, net, weights, arr, spacing_kji, mirroring):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((d / "plans.json").read_text())
    dataset = json.loads((d / "dataset.json").read_text())
    pm = PlansManager(plans)
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    pred.manual_initialization(net.eval(), pm, pm.get_configuration("3d_fullres"), weights, dataset,
                               "SomeCustomTrainer", (0, 1, 2))
    return pred.predict_single_npy_array(arr[None], {"spacing": list(spacing_kji)}, None, None, False)


def _ct(shape, spacing_xyz, seed):
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    arr = (gaussian_filter(rng.normal(0, 1, shape), 2.5) * 3000 - 300).astype(np.float32)
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing(spacing_xyz)
    return ct, arr


EXPORT_CASES = {
    # CT shape (k, j, i), spacing (i, j, k); the model's spacing is 1.5 x 1.0 x 1.0 mm (k, j, i)
    "CT 2.0 x 0.8 x 0.8 mm, mirroring": dict(shape=(30, 70, 60), spacing=(0.8, 0.8, 2.0), mirroring=True),
    "CT 3.3 mm slices (separate z)": dict(shape=(16, 60, 64), spacing=(0.9, 0.9, 3.3), mirroring=False),
    "two folds averaged": dict(shape=(40, 60, 60), spacing=(1.1, 1.1, 1.2), mirroring=False, folds=(0, 1)),
    "region-based": dict(shape=(36, 60, 60), spacing=(0.9, 0.9, 1.4), mirroring=False, regions=True),
    # a folder with fold_0 and fold_all, exported with --folds all: nnUNetv2_predict -f all
    "fold_all (--folds all)": dict(shape=(30, 60, 60), spacing=(1.0, 1.0, 1.6), mirroring=False, folds=(0, "all"),
                                   export=["--folds", "all"], use=("all",)),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_exported_model_gives_nnunets_labels(tmp_path, case):
    """`imagio export-onnx` + the engine against nnU-Net's own nnUNetPredictor (optional: needs torch, nnunetv2)."""
    torch = pytest.importorskip("torch", reason="the optional export extra (torch) is not installed")
    pytest.importorskip("nnunetv2", reason="the optional export extra (nnunetv2) is not installed")
    from imagio.engine import OnnxSegmenter

    c = EXPORT_CASES[case]
    torch.set_num_threads(2)
    d, net, weights = _nnunet_folder(tmp_path, torch, folds=c.get("folds", (0,)), regions=c.get("regions", False))
    out = tmp_path / "onnx"
    assert main(["export-onnx", "--model-dir", str(d), "--out", str(out), *c.get("export", [])]) == 0
    card_path = next(out.glob("*.json"))
    card = json.loads(card_path.read_text())
    assert card["source"]["max_abs_logit_diff_onnx_vs_torch"] < 1e-3
    assert card["mirror_axes_kji"] == [0, 1, 2] and card["clinical_use"] is False
    used = [str(f) for f in c.get("use", c.get("folds", (0,)))]
    assert card["source"]["folds"] == used  # the card lists the folds
    assert [f["fold"] for f in card.get("folds", [])] == (used if len(used) > 1 else [])
    weights = [w for f, w in zip(c.get("folds", (0,)), weights, strict=True) if str(f) in used]
    ct, arr = _ct(c["shape"], c["spacing"], 1)
    ours = sitk.GetArrayFromImage(OnnxSegmenter(card_path, backend="onnxruntime").predict(
        ct, mirroring=c["mirroring"]).labels)
    ref = np.asarray(_nnunet_predict(torch, d, net, weights, arr, c["spacing"][::-1], c["mirroring"]))
    n_diff = int(np.count_nonzero(ours != ref))
    dice = {}
    for cls in np.unique(ref)[1:]:
        a, b = ours == cls, ref == cls
        dice[int(cls)] = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    print(f"{case}: {n_diff} of {ref.size} voxels differ; Dice per class {dice}")
    assert len(dice) >= 2 and min(dice.values()) >= 0.999, dice
    assert n_diff <= 1e-3 * ref.size  # only float16 ties, decided by onnxruntime-vs-torch rounding
