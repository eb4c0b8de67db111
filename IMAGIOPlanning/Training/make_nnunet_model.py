"""Make a real nnU-Net v2 trained-model folder for the equivalence benchmark (build time only; needs torch).

Writes ``OUT/plans.json`` (nnU-Net v2's 3d_fullres format: a 5-stage
PlainConvUNet, CT normalisation, default resampling), ``OUT/dataset.json``
and ``OUT/fold_0/checkpoint_final.pth`` (nnU-Net's checkpoint layout), after
briefly training the network on real CT (threshold pseudo-labels: lung air
and dense bone), so that its output is decisive rather than noise. The model
has no clinical meaning; it exists to compare IMAGIO's ONNX engine with
nnU-Net's own predictor.

    python IMAGIOPlanning/Training/make_nnunet_model.py --out /tmp/nnunet_model --ct ../shared/data/chest-lidc0314/ct.nrrd
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PATCH = [48, 64, 64]
SPACING = [1.5, 1.0, 1.0]


def plain_unet_plans(dataset_name: str, patch, spacing, fg: dict, features, kernel_sizes, strides,
                     extra: dict | None = None, extra_config: dict | None = None) -> dict:
    """nnU-Net v2 plans (3d_fullres, PlainConvUNet, CT normalisation, default resampling).

    Shared by this script and ``train_phantom_model.py``; ``extra`` and
    ``extra_config`` add keys at the top level and in the configuration.
    """
    n = len(features)
    arch_kwargs = {
        "n_stages": n, "features_per_stage": list(features),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": kernel_sizes, "strides": strides,
        "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": patch, "spacing": spacing,
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
        **(extra_config or {}),
    }
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": fg},
        **(extra or {}),
    }


def plans(fg: dict) -> dict:
    return plain_unet_plans(
        "Dataset901_IMAGIOChest", PATCH, SPACING, fg, features=[8, 16, 32, 64, 64],
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        extra={"original_median_spacing_after_transp": [1.0, 0.78, 0.78],
               "original_median_shape_after_transp": [275, 512, 512]},
        extra_config={"median_image_size_in_voxels": [183, 400, 400]})


DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lung_air": 1, "dense_bone": 2},
           "numTraining": 1, "file_ending": ".nrrd", "name": "Dataset901_IMAGIOChest"}


def main(argv=None) -> int:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from imagio.engine import compute_new_shape, resample_array

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ct", required=True, nargs="+", type=Path)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    vols, fg_vals = [], []
    for p in a.ct:
        img = sitk.ReadImage(str(p))
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        lab = np.zeros(arr.shape, np.uint8)
        lab[arr < -400] = 1
        lab[arr > 250] = 2
        fg_vals.append(arr[lab > 0][::50])
        vols.append((arr, lab, np.array(img.GetSpacing()[::-1])))
    fgv = np.concatenate(fg_vals)
    fg = {"max": float(fgv.max()), "mean": float(fgv.mean()), "median": float(np.median(fgv)),
          "min": float(fgv.min()), "percentile_00_5": float(np.percentile(fgv, 0.5)),
          "percentile_99_5": float(np.percentile(fgv, 99.5)), "std": float(fgv.std())}
    pl = plans(fg)
    data = []
    for arr, lab, sp in vols:
        x = np.clip(arr, fg["percentile_00_5"], fg["percentile_99_5"])
        x = (x - fg["mean"]) / fg["std"]
        shape = compute_new_shape(arr.shape, sp, SPACING)
        xr = resample_array(x.astype(np.float32), sp, shape)
        lr = sitk.GetArrayFromImage(sitk.Resample(sitk.GetImageFromArray(lab), [int(s) for s in shape[::-1]],
                                                  sitk.Transform(), sitk.sitkNearestNeighbor, [0.0] * 3,
                                                  [float(o / n) for o, n in zip(arr.shape[::-1], shape[::-1], strict=True)]))
        data.append((xr, lr))
    arch = pl["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                 allow_init=True, deep_supervision=False)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.time()
    for it in range(a.iterations):
        xs, ys = [], []
        for _ in range(2):
            x, y = data[rng.integers(len(data))]
            s = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(x.shape, PATCH, strict=True)]
            sl = tuple(slice(a0, a0 + p) for a0, p in zip(s, PATCH, strict=True))
            xp, yp = x[sl], y[sl]
            pad = [(0, p - n) for n, p in zip(xp.shape, PATCH, strict=True)]
            xs.append(np.pad(xp, pad)[None])
            ys.append(np.pad(yp, pad))
        xb, yb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))
        opt.zero_grad()
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == a.iterations - 1:
            print(f"iteration {it}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "plans.json").write_text(json.dumps(pl, indent=2))
    (a.out / "dataset.json").write_text(json.dumps(DATASET, indent=2))
    (a.out / "fold_0").mkdir(exist_ok=True)
    ckpt = {"network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None,
            "logging": {}, "_best_ema": None, "current_epoch": a.iterations, "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres", "fold": 0},
            "inference_allowed_mirroring_axes": (0, 1, 2)}
    torch.save(ckpt, a.out / "fold_0" / "checkpoint_final.pth")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
