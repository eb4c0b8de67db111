"""Train the small nnU-Net v2 models of the equivalence matrix (build time only; needs the export extra).

    python IMAGIOPlanning/Training/make_matrix_models.py --out DIR [--only NAME ...] [--iterations-scale 1.0]

Each model is a real nnU-Net v2 trained-model folder (plans.json in nnU-Net's
3d_fullres format, dataset.json, dataset_fingerprint.json, fold_X/checkpoint_final.pth)
trained briefly on real CT with threshold pseudo-labels (air/lung below -400 HU,
dense bone above 250 HU), so that its output is decisive and has real borders.
The target spacings differ from every image's, on purpose:

* ``iso``: 1.6 mm isotropic, two folds (a fold ensemble), trained on a LIDC-0314 crop and STS-001;
* ``aniso``: 3.0 x 1.0 x 1.0 mm (3x anisotropic), trained only 40 iterations on LIDC: the weak model,
  run on the sarcoma and LUNG1 CTs it never saw (out of domain);
* ``fine``: 1.5 x 0.6 x 0.6 mm (in-plane finer than the images), trained on a LIDC crop and LUNG1;
* ``bench``: 1.5 x 1.0 x 1.0 mm, a 5-stage network with a 48 x 64 x 64 patch (the speed benchmark's model);
* ``regions``: a region-based model (sigmoid heads for "tissue or bone" = labels 1+2 and "bone" = label 2,
  ``regions_class_order`` [1, 2]), 2.0 x 1.2 x 1.2 mm.

The models have no clinical meaning; they exist to compare IMAGIO's engine with nnU-Net's predictor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_nnunet_model import plain_unet_plans  # noqa: E402  (the same directory)

DATA = Path(os.environ.get("IMAGIO_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def _lidc_crop():
    img = sitk.ReadImage(str(DATA / "chest-lidc0314/ct.nrrd"))
    return img[100:330, 90:330, 100:220]


def _lung1():
    from imagio.io import read_image

    img = read_image(DATA / "chest-lung1-001/image")
    return img[60:450, 100:420, 20:110]


def _sts001():
    return sitk.ReadImage(str(DATA / "sarcoma-sts001/nifti/image/image.nii.gz"))


MODELS = {
    "iso": dict(spacing=[1.6, 1.6, 1.6], patch=[32, 48, 48], features=[8, 16, 32, 64],
                kernels=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                train=(_lidc_crop, _sts001), iterations=120, folds=(0, 1)),
    "aniso": dict(spacing=[3.0, 1.0, 1.0], patch=[16, 64, 64], features=[8, 16, 32, 64],
                  kernels=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                  train=(_lidc_crop,), iterations=40, folds=(0,)),
    "fine": dict(spacing=[1.5, 0.6, 0.6], patch=[32, 64, 64], features=[8, 16, 32, 64],
                 kernels=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                 train=(_lidc_crop, _lung1), iterations=100, folds=(0,)),
    "bench": dict(spacing=[1.5, 1.0, 1.0], patch=[48, 64, 64], features=[8, 16, 32, 64, 64],
                  kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                  train=(_lidc_crop, _sts001), iterations=150, folds=(0,)),
    "regions": dict(spacing=[2.0, 1.2, 1.2], patch=[32, 48, 48], features=[8, 16, 32, 64],
                    kernels=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                    train=(_lidc_crop, _sts001), iterations=100, folds=(0,), regions=True),
}
LABELS = {"background": 0, "air_or_lung": 1, "dense_bone": 2}
REGION_LABELS = {"background": 0, "tissue_or_bone": [1, 2], "bone": [2]}


def pseudo_labels(arr: np.ndarray, regions: bool) -> np.ndarray:
    lab = np.zeros(arr.shape, np.uint8)
    if regions:  # label 1: soft tissue (> -400 HU, <= 250), label 2: bone (> 250 HU)
        lab[arr > -400] = 1
        lab[arr > 250] = 2
    else:
        lab[arr < -400] = 1
        lab[arr > 250] = 2
    return lab


def train_model(name: str, out: Path, iterations_scale: float = 1.0, threads: int = 2) -> Path:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from imagio.engine import compute_new_shape, resample_array

    m = MODELS[name]
    regions = bool(m.get("regions"))
    torch.set_num_threads(threads)
    vols, fg_vals, spacings, shapes = [], [], [], []
    for load in m["train"]:
        img = load()
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        lab = pseudo_labels(arr, regions)
        fg_vals.append(arr[lab > 0][::50])
        sp = np.array(img.GetSpacing()[::-1])
        vols.append((arr, lab, sp))
        spacings.append([float(v) for v in sp])
        shapes.append([int(v) for v in arr.shape])
    fgv = np.concatenate(fg_vals)
    fg = {"max": float(fgv.max()), "mean": float(fgv.mean()), "median": float(np.median(fgv)),
          "min": float(fgv.min()), "percentile_00_5": float(np.percentile(fgv, 0.5)),
          "percentile_99_5": float(np.percentile(fgv, 99.5)), "std": float(fgv.std())}
    pl = plain_unet_plans(f"Dataset91{list(MODELS).index(name)}_IMAGIOMatrix_{name}", m["patch"], m["spacing"], fg,
                          m["features"], m["kernels"], m["strides"])
    data = []
    for arr, lab, sp in vols:
        x = (np.clip(arr, fg["percentile_00_5"], fg["percentile_99_5"]) - fg["mean"]) / fg["std"]
        shape = compute_new_shape(arr.shape, sp, m["spacing"])
        xr = resample_array(x.astype(np.float32), sp, shape)
        lr = sitk.GetArrayFromImage(sitk.Resample(sitk.GetImageFromArray(lab), [int(s) for s in shape[::-1]],
                                                  sitk.Transform(), sitk.sitkNearestNeighbor, [0.0] * 3,
                                                  [float(o / n) for o, n in zip(arr.shape[::-1], shape[::-1],
                                                                                strict=True)]))
        data.append((xr, lr))
    out.mkdir(parents=True, exist_ok=True)
    heads = 2 if regions else 3
    for fold in m["folds"]:
        torch.manual_seed(fold)
        rng = np.random.default_rng(fold)
        arch = pl["configurations"]["3d_fullres"]["architecture"]
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1,
                                     heads, allow_init=True, deep_supervision=False)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        t0 = time.time()
        n_it = max(1, int(round(m["iterations"] * iterations_scale)))
        for it in range(n_it):
            xs, ys = [], []
            for _ in range(2):
                x, y = data[rng.integers(len(data))]
                s = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(x.shape, m["patch"], strict=True)]
                sl = tuple(slice(a0, a0 + p) for a0, p in zip(s, m["patch"], strict=True))
                pad = [(0, p - n) for n, p in zip(x[sl].shape, m["patch"], strict=True)]
                xs.append(np.pad(x[sl], pad)[None])
                ys.append(np.pad(y[sl], pad))
            xb = torch.from_numpy(np.stack(xs).astype(np.float32))
            yb = torch.from_numpy(np.stack(ys).astype(np.int64))
            logits = net(xb)
            if regions:
                target = torch.stack([(yb >= 1), (yb >= 2)], 1).float()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            else:
                loss = torch.nn.functional.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if it % 20 == 0 or it == n_it - 1:
                print(f"{name} fold {fold} iteration {it}: loss {loss.item():.4f} ({time.time() - t0:.0f} s)",
                      flush=True)
        (out / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({"network_weights": net.state_dict(), "current_epoch": n_it, "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": "3d_fullres", "fold": fold},
                    "inference_allowed_mirroring_axes": (0, 1, 2)}, out / f"fold_{fold}" / "checkpoint_final.pth")
    dataset = {"channel_names": {"0": "CT"}, "labels": REGION_LABELS if regions else LABELS,
               "numTraining": len(vols), "file_ending": ".nrrd", "name": f"IMAGIOMatrix_{name}"}
    if regions:
        dataset["regions_class_order"] = [1, 2]
    (out / "plans.json").write_text(json.dumps(pl, indent=2))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (out / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": spacings, "shapes_after_crop": shapes,
        "foreground_intensity_properties_per_channel": {"0": fg}}, indent=2))
    print(f"wrote {out}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", nargs="+", choices=list(MODELS))
    ap.add_argument("--iterations-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    for name in a.only or list(MODELS):
        if (a.out / name / "plans.json").exists():
            print(f"{name}: exists, kept", flush=True)
            continue
        train_model(name, a.out / name, a.iterations_scale, a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
