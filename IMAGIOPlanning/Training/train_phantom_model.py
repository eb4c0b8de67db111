"""Train the small lesion model shipped with IMAGIO (build time only: needs torch and nnunetv2).

    python IMAGIOPlanning/Training/train_phantom_model.py [--iterations 300] [--out DIR]

A 4-stage nnU-Net PlainConvUNet (8-64 features) learns the liver tumour and
the lung nodule of the digital phantom (``imagio.phantom``, seeds 1-6; seed 0,
the demo case, is held out). The script writes a real nnU-Net v2 model folder
(plans.json, dataset.json, fold_0/checkpoint_final.pth) and converts it with
IMAGIO's own exporter (``export_nnunet``), so the shipped model also proves
the export path. The card says what the model is: a demonstration on
synthetic data, not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from make_nnunet_model import plain_unet_plans  # the same directory: run as a script

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parents[1] / "IMAGIOCommon" / "imagio" / "models" / "phantom_lesions"
SPACING_KJI = [2.5, 2.0, 2.0]
PATCH = [32, 32, 32]
LABELS = {"background": 0, "Liver tumor": 1, "Lung nodule": 2}
TERMINOLOGY = {
    "Liver tumor": {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
                    "type": {"scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"},
                    "anatomic_region": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}},
    "Lung nodule": {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
                    "type": {"scheme": "SCT", "code": "786838002", "meaning": "Pulmonary nodule"},
                    "anatomic_region": {"scheme": "SCT", "code": "39607008", "meaning": "Lung"}},
}


def plans(fg: dict) -> dict:
    return plain_unet_plans("Dataset902_IMAGIOPhantomLesions", PATCH, SPACING_KJI, fg, features=[8, 16, 32, 64],
                            kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]])


def main(argv=None) -> int:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from imagio.engine import compute_new_shape, resample_array
    from imagio.model_card import write_card
    from imagio.phantom import make_phantom
    from IMAGIOPlanningLib.export import export_nnunet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--seeds", default="1,2,3,4,5,6")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    cases = []
    for s in [int(v) for v in a.seeds.split(",")]:
        ph = make_phantom(s)
        ct = sitk.GetArrayFromImage(ph.ct).astype(np.float32)
        lab = np.zeros(ct.shape, np.uint8)
        lab[sitk.GetArrayViewFromImage(ph.segments["liver_tumor"].mask) > 0] = 1
        lab[sitk.GetArrayViewFromImage(ph.segments["lung_nodule"].mask) > 0] = 2
        cases.append((ct, lab, np.array(ph.ct.GetSpacing()[::-1])))
        print(f"phantom seed {s} ready", flush=True)
    fgv = np.concatenate([ct[lab > 0] for ct, lab, _ in cases] +
                         [ct[::7, ::7, ::7][ct[::7, ::7, ::7] > -900] for ct, _, _ in cases])
    fg = {"max": float(fgv.max()), "mean": float(fgv.mean()), "median": float(np.median(fgv)), "min": float(fgv.min()),
          "percentile_00_5": float(np.percentile(fgv, 0.5)), "percentile_99_5": float(np.percentile(fgv, 99.5)),
          "std": float(fgv.std())}
    data = []
    for ct, lab, sp in cases:
        x = (np.clip(ct, fg["percentile_00_5"], fg["percentile_99_5"]) - fg["mean"]) / fg["std"]
        shape = compute_new_shape(ct.shape, sp, SPACING_KJI)
        xr = resample_array(x.astype(np.float32), sp, shape)
        onehot = [resample_array((lab == c).astype(np.float32), sp, shape) for c in range(3)]
        data.append((xr, np.argmax(np.stack(onehot), axis=0).astype(np.int64)))
    pl = plans(fg)
    arch = pl["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                 allow_init=True, deep_supervision=False)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    weights = torch.tensor([1.0, 3.0, 3.0])
    t0 = time.time()
    for it in range(a.iterations):
        xs, ys = [], []
        for _ in range(2):
            x, y = data[rng.integers(len(data))]
            if rng.random() < 0.67:  # oversample lesions, as nnU-Net does
                cls = int(rng.integers(1, 3))
                pts = np.argwhere(y == cls)
                c = pts[rng.integers(len(pts))]
                start = [int(np.clip(ci - p // 2 + rng.integers(-p // 3, p // 3 + 1), 0, n - p))
                         for ci, p, n in zip(c, PATCH, x.shape, strict=True)]
            else:
                start = [int(rng.integers(0, n - p + 1)) for n, p in zip(x.shape, PATCH, strict=True)]
            sl = tuple(slice(s0, s0 + p) for s0, p in zip(start, PATCH, strict=True))
            xp = x[sl] + rng.normal(0, 0.05, PATCH).astype(np.float32) * (it < a.iterations - 50)
            xs.append(xp[None])
            ys.append(y[sl])
        xb, yb = torch.from_numpy(np.stack(xs).astype(np.float32)), torch.from_numpy(np.stack(ys))
        logits = net(xb)
        ce = torch.nn.functional.cross_entropy(logits, yb, weight=weights)
        prob = torch.softmax(logits, 1)
        onehot = torch.nn.functional.one_hot(yb, 3).permute(0, 4, 1, 2, 3).float()
        inter = (prob * onehot).sum((0, 2, 3, 4))
        dice = (2 * inter + 1) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1)
        loss = ce + (1 - dice[1:].mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 25 == 0 or it == a.iterations - 1:
            print(f"iteration {it}: loss {loss.item():.4f} dice {dice[1:].detach().numpy().round(3)} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="imagio-phantom-model-"))
    (tmp / "fold_0").mkdir()
    (tmp / "plans.json").write_text(json.dumps(pl, indent=2))
    (tmp / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 6,
                                                  "file_ending": ".nrrd"}, indent=2))
    torch.save({"network_weights": net.state_dict(), "current_epoch": a.iterations, "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2)}, tmp / "fold_0" / "checkpoint_final.pth")
    if a.out.exists():
        shutil.rmtree(a.out)
    card_path = export_nnunet(tmp, a.out, name="phantom_lesions", label_terminology=TERMINOLOGY)
    card = json.loads(card_path.read_text())
    card.update({
        "name": "phantom-lesions", "version": "1",
        "description": "Tiny 3D U-Net (nnU-Net PlainConvUNet, 4 stages) trained by IMAGIO on its digital phantom "
                       "(imagio.phantom seeds 1-6) to find the liver tumour and the lung nodule. It exists so that "
                       "the demo runs the ONNX path end to end.",
        "intended_use": {
            "summary": "Demonstration and software testing on the IMAGIO phantom only. NOT FOR CLINICAL USE: it has "
                       "never seen a patient and its output on real CT is meaningless.",
            "modality": ["CT"], "body_region": ["IMAGIO digital phantom (synthetic torso, imagio.phantom)"],
            "segments": list(LABELS)[1:],
            # the phantom's grid (1.25 x 1 x 1 mm, 280 x 208 x 288 mm), widened by 0.8 / 1.25
            "spacing_mm_kji": {"min": [1.0, 0.8, 0.8], "max": [1.5625, 1.25, 1.25]},
            "field_of_view_mm_kji": {"min": [224.0, 166.4, 230.4], "max": [350.0, 260.0, 360.0]}},
        "clinical_use": False,
        "mirror_axes_kji": [],
        "training": {"script": "IMAGIOPlanning/Training/train_phantom_model.py", "iterations": a.iterations,
                     "phantom_seeds": a.seeds, "held_out_seed": 0},
    })
    write_card(card_path, card)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {card_path} ({(a.out / 'phantom_lesions.onnx').stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
