"""Benchmark: IMAGIO's ONNX engine against nnU-Net v2's own predictor, same models, same data, same run.

Needs the optional extras (torch + nnunetv2 per the README, openvino) and the real data (IMAGIO_DATA).

    python benchmarks/bench_planning.py --models DIR --out bench_planning.json [--part matrix|speed|large|all]
    python benchmarks/bench_planning.py --markdown bench_planning.json     # the README's tables

``--models`` holds nnU-Net v2 trained-model folders made by
IMAGIOPlanning/Training/make_matrix_models.py (``iso`` with two folds, ``aniso``
(weak), ``fine``, ``bench``, ``regions``); each is exported once with
``imagio export-onnx`` (every fold into one card).

* ``matrix``: labels of IMAGIO's engine and of ``nnUNetPredictor`` (nnunetv2,
  torch, CPU, mirroring off) for every model x CT: a LIDC-0314 crop (thin-slice
  chest, 0.78 x 0.78 x 1.0 mm), a LUNG1-001 crop (3 mm chest) and STS-002
  (sarcoma, 0.98 x 0.98 x 3.27 mm); Dice per class and voxels that differ.
  nnU-Net's predictions are cached in ``--cache`` (they are deterministic).
* ``speed``: whole-process wall time (start of a fresh Python process to the
  label file written: imports, model loading, reading, prediction) and peak
  resident memory (VmHWM) of IMAGIO (OpenVINO, and onnxruntime) and nnU-Net,
  the ``bench`` model, ``--repeats`` interleaved runs each; ratios nnU-Net / IMAGIO
  (time, best and median) and IMAGIO / nnU-Net (memory), and IMAGIO's time
  breakdown (preprocess, network, window aggregation, logits to labels).
* ``large``: the same on LIDC-0314 padded to 512 x 512 x 300, ``--large-repeats`` runs each (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio import geometry

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/work/coord/cache/planning/reference")


def _proc_status_mb(key: str) -> float | None:
    """A memory line (kB) of /proc/self/status in MB, or None where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is absent)."""
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- predictors (child processes)

def run_ours(card: str, ct_path: str, out_path: str, mirroring: bool, threads: int, backend: str) -> dict:
    from imagio.engine import OnnxSegmenter

    ct = sitk.ReadImage(ct_path)
    seg = OnnxSegmenter(card, threads=threads, backend=backend)
    t0 = time.perf_counter()
    res = seg.predict(ct, mirroring=mirroring)
    dt = time.perf_counter() - t0
    sitk.WriteImage(res.labels, out_path, True)
    return {"predict_s": dt, "peak_rss_mb": _peak_mb(), "windows": res.windows, "provider": res.provider,
            "timings_s": res.timings_s}


def nnunet_predictor(model_dir: Path, folds, mirroring: bool, threads: int):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(threads)
    plans = json.loads((model_dir / "plans.json").read_text())
    dataset = json.loads((model_dir / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    lm = pm.get_label_manager(dataset)
    params, axes = [], None
    for f in folds:
        ckpt = torch.load(str(model_dir / f"fold_{f}" / "checkpoint_final.pth"), map_location="cpu", weights_only=True)
        params.append(ckpt["network_weights"])
        axes = ckpt["inference_allowed_mirroring_axes"]
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(dataset["channel_names"]),
                                 lm.num_segmentation_heads, allow_init=True, deep_supervision=False)
    net.load_state_dict(params[0])
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           allow_tqdm=False)
    pred.manual_initialization(net, pm, cm, params, dataset, "nnUNetTrainer", axes)
    return pred


def nnunet_labels(pred, ct: sitk.Image) -> sitk.Image:
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)[None]
    seg = pred.predict_single_npy_array(arr, {"spacing": list(ct.GetSpacing()[::-1])}, None, None, False)
    out = sitk.GetImageFromArray(np.asarray(seg).astype(np.uint8))
    out.CopyInformation(ct)
    return out


def _time_nnunet_steps(pred) -> dict:
    """Time nnU-Net's own steps without changing them: timers around ``predict_logits_from_preprocessed_data``
    (sliding window, folds, mirroring), the network's forward passes (hooks) and the module-level
    ``convert_predicted_logits_to_segmentation_with_correct_shape`` that ``predict_single_npy_array`` calls."""
    import nnunetv2.inference.predict_from_raw_data as pfr

    t = {"sliding_window_s": 0.0, "network_s": 0.0, "logits_to_labels_s": 0.0}
    logits_fn, convert_fn = pred.predict_logits_from_preprocessed_data, pfr.convert_predicted_logits_to_segmentation_with_correct_shape

    def logits(*a, **k):
        t0 = time.perf_counter()
        try:
            return logits_fn(*a, **k)
        finally:
            t["sliding_window_s"] += time.perf_counter() - t0

    def convert(*a, **k):
        t0 = time.perf_counter()
        try:
            return convert_fn(*a, **k)
        finally:
            t["logits_to_labels_s"] += time.perf_counter() - t0

    started = []
    pred.network.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def after(*_):
        t["network_s"] += time.perf_counter() - started.pop()
    pred.network.register_forward_hook(after)
    pred.predict_logits_from_preprocessed_data = logits
    pfr.convert_predicted_logits_to_segmentation_with_correct_shape = convert
    return t


def run_nnunet(model_dir: str, ct_path: str, out_path: str, mirroring: bool, threads: int, folds: str) -> dict:
    pred = nnunet_predictor(Path(model_dir), folds.split(","), mirroring, threads)
    steps = _time_nnunet_steps(pred)
    ct = sitk.ReadImage(ct_path)
    t0 = time.perf_counter()
    out = nnunet_labels(pred, ct)
    dt = time.perf_counter() - t0
    sitk.WriteImage(out, out_path, True)
    timings = {"preprocess_s": dt - steps["sliding_window_s"] - steps["logits_to_labels_s"],
               "network_s": steps["network_s"],
               "window_aggregation_s": steps["sliding_window_s"] - steps["network_s"],
               "logits_to_labels_s": steps["logits_to_labels_s"]}
    return {"predict_s": dt, "peak_rss_mb": _peak_mb(), "timings_s": timings}


def _child(kind: str, *args) -> dict:
    """One fresh process; its whole wall time (spawn to exit) is measured here."""
    cmd = [sys.executable, __file__, "--child", kind, *[str(a) for a in args]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


# ----------------------------------------------------------------------------- data

def _data(rel: str) -> Path:
    root = Path(os.environ.get("IMAGIO_DATA", REPO.parent / "shared" / "data"))
    p = root / rel
    if not p.exists():
        raise SystemExit(f"real data missing: {p} (set IMAGIO_DATA)")
    return p


def make_cases(tmp: Path) -> dict[str, Path]:
    from imagio.io import read_image

    out = {}
    lidc = sitk.ReadImage(str(_data("chest-lidc0314/ct.nrrd")))
    out["LIDC-0314 crop 160x160x80 (0.78x0.78x1.0 mm)"] = lidc[150:310, 120:280, 110:190]
    lung1 = read_image(_data("chest-lung1-001/image"))
    out["LUNG1-001 crop 200x200x40 (0.98x0.98x3.0 mm)"] = lung1[100:300, 150:350, 50:90]
    out["STS-002 sarcoma 161x143x48 (0.98x0.98x3.27 mm)"] = sitk.ReadImage(
        str(_data("sarcoma-sts002/nifti/image/image.nii.gz")))
    paths = {}
    for i, (name, img) in enumerate(out.items()):
        p = tmp / f"case{i}.nrrd"
        sitk.WriteImage(img, str(p))
        paths[name] = p
    return paths


def make_large(tmp: Path) -> Path:
    lidc = sitk.ReadImage(str(_data("chest-lidc0314/ct.nrrd")))
    arr = sitk.GetArrayFromImage(lidc)
    arr = np.concatenate([arr, np.repeat(arr[-1:], 300 - arr.shape[0], axis=0)], axis=0)
    big = sitk.GetImageFromArray(arr)
    big.SetSpacing(lidc.GetSpacing())
    big.SetOrigin(lidc.GetOrigin())
    big.SetDirection(lidc.GetDirection())
    p = tmp / "lidc_512x512x300.nrrd"
    sitk.WriteImage(big, str(p))
    return p


def compare(a: sitk.Image, b: sitk.Image, classes) -> dict:
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    dice = {str(c): geometry.dice(x == c, y == c, empty=1.0) for c in classes}
    return {"dice_per_class": dice, "voxels_differing": int(np.count_nonzero(x != y)), "voxels": int(x.size),
            "voxels_per_class_nnunet": {str(c): int((y == c).sum()) for c in classes}}


def _digest(model_dir: Path, folds, ct: sitk.Image) -> str:
    """Cache key of one nnU-Net prediction: the checkpoints, plans and dataset files, and the CT's voxels and grid
    (a retrained model or another crop must never reuse a stale prediction)."""
    import hashlib

    h = hashlib.sha256()
    for rel in ["plans.json", "dataset.json", *[f"fold_{f}/checkpoint_final.pth" for f in folds]]:
        h.update((model_dir / rel).read_bytes())
    h.update(sitk.GetArrayViewFromImage(ct).tobytes())
    h.update(repr((ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())).encode())
    return h.hexdigest()[:12]


def tie_margin(res, ref: sitk.Image, card) -> dict:
    """Where the labels differ: IMAGIO's own margin between its two most likely classes there (probability)."""
    ours = sitk.GetArrayViewFromImage(res.labels)
    diff = ours != sitk.GetArrayViewFromImage(ref)
    if not diff.any():
        return {}
    probs = np.stack([sitk.GetArrayViewFromImage(res.probabilities[c])[diff] for c in sorted(res.probabilities)])
    if card.regions_class_order:  # region heads: distance of the deciding sigmoid from 0.5
        margin = np.min(np.abs(probs - 0.5), axis=0)
    else:
        full = np.concatenate([1.0 - probs.sum(0, keepdims=True), probs])
        top = np.sort(full, axis=0)
        margin = top[-1] - top[-2]
    return {"margin_at_differing_voxels": {"median": float(np.median(margin)), "max": float(margin.max())}}


def export_all(models: Path, tmp: Path) -> dict[str, dict]:
    from IMAGIOPlanningLib.export import export_nnunet

    out = {}
    for d in sorted(p for p in models.iterdir() if (p / "plans.json").exists()):
        card = export_nnunet(d, tmp / "onnx" / d.name, name=d.name)
        ds = json.loads((d / "dataset.json").read_text())
        folds = sorted(p.name[5:] for p in d.glob("fold_*"))
        out[d.name] = {"dir": d, "card": card, "folds": folds, "dataset": ds,
                       "classes": list(range(1, len(ds["labels"])))}
    return out


# ----------------------------------------------------------------------------- parts

def part_matrix(models, cases, tmp, cache: Path, threads: int) -> list[dict]:
    from imagio.engine import OnnxSegmenter
    from imagio.model_card import check_intended_use

    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for mname, m in models.items():
        seg = OnnxSegmenter(m["card"], threads=threads)
        pred = None
        for cname, cpath in cases.items():
            ct = sitk.ReadImage(str(cpath))
            key = cache / f"{mname}__{cpath.stem}__{'-'.join(m['folds'])}__{_digest(m['dir'], m['folds'], ct)}.nrrd"
            if not key.exists():
                pred = pred or nnunet_predictor(m["dir"], m["folds"], False, threads)
                t0 = time.perf_counter()
                sitk.WriteImage(nnunet_labels(pred, ct), str(key), True)
                print(f"  nnU-Net {mname} on {cname}: {time.perf_counter() - t0:.1f} s", flush=True)
            ref = sitk.ReadImage(str(key))
            res = seg.predict(ct, mirroring=False, probabilities=True)
            row = {"model": mname, "folds": m["folds"], "region_based": bool(seg.card.regions_class_order),
                   "outside_intended_use": check_intended_use(seg.card, ct),
                   "model_spacing_kji_mm": seg.card.target_spacing_kji_mm, "case": cname,
                   "image_spacing_kji_mm": [round(v, 4) for v in ct.GetSpacing()[::-1]], "backend": seg.provider,
                   **compare(res.labels, ref, m["classes"]), **tie_margin(res, ref, seg.card)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def part_speed(model, ct_path: Path, tmp: Path, mirroring: bool, threads: int, repeats: int, name: str) -> dict:
    runs = {"openvino": [], "onnxruntime": [], "nnunet": []}
    for _ in range(repeats):  # interleaved, so all see the same machine load
        runs["openvino"].append(_child("ours", model["card"], ct_path, tmp / "ov.nrrd", int(mirroring), threads,
                                       "openvino"))
        runs["onnxruntime"].append(_child("ours", model["card"], ct_path, tmp / "ort.nrrd", int(mirroring), threads,
                                          "onnxruntime"))
        runs["nnunet"].append(_child("nnunet", model["dir"], ct_path, tmp / "nn.nrrd", int(mirroring), threads,
                                     ",".join(model["folds"])))
    summ = {}
    for k, rs in runs.items():
        t = [r["process_s"] for r in rs]
        summ[k] = {"process_s_best": min(t), "process_s_median": float(np.median(t)), "process_s_all": t,
                   "predict_s_best": min(r["predict_s"] for r in rs),
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
        if "timings_s" in rs[0]:
            best = min(rs, key=lambda r: r["process_s"])
            summ[k]["timings_s_of_best"] = best["timings_s"]
    ref = sitk.ReadImage(str(tmp / "nn.nrrd"))
    classes = model["classes"]
    row = {"case": name, "mirroring": mirroring, "threads": threads, "repeats": repeats, **summ}
    for k in ("openvino", "onnxruntime"):
        row[k].update(compare(sitk.ReadImage(str(tmp / ("ov.nrrd" if k == "openvino" else "ort.nrrd"))), ref,
                              classes))
        row[f"time_ratio_nnunet_over_{k}"] = summ["nnunet"]["process_s_best"] / summ[k]["process_s_best"]
        row[f"time_ratio_median_nnunet_over_{k}"] = summ["nnunet"]["process_s_median"] / summ[k]["process_s_median"]
        row[f"memory_ratio_{k}_over_nnunet"] = summ[k]["peak_rss_mb"] / summ["nnunet"]["peak_rss_mb"]
    print(json.dumps(row, indent=1), flush=True)
    return row


def markdown(results: dict) -> str:
    """The README's tables from one run's JSON (``--markdown FILE``)."""
    out = [f"Run of {results.get('date', '?')}: peer {results.get('peer')}, {results.get('threads')} threads, "
           f"versions {', '.join(f'{k} {v}' for k, v in results.get('versions', {}).items())}.", ""]
    if results.get("matrix"):
        out += ["| model (spacing k x j x i mm, folds) | CT (spacing k x j x i mm) | voxels differing | "
                "Dice per class | nnU-Net voxels per class | outside the card's intended use |",
                "|---|---|---|---|---|---|"]
        for r in results["matrix"]:
            sp = " x ".join(f"{v:g}" for v in r["model_spacing_kji_mm"])
            isp = " x ".join(f"{v:g}" for v in r["image_spacing_kji_mm"])
            kind = ", region-based" if r["region_based"] else ""
            dice = ", ".join("empty in both" if r["voxels_per_class_nnunet"][c] == 0 and v == 1.0 else f"{v:.6f}"
                             for c, v in r["dice_per_class"].items())
            counts = ", ".join(str(v) for v in r["voxels_per_class_nnunet"].values())
            ood = "; ".join(r.get("outside_intended_use") or []) or "-"
            out.append(f"| {r['model']} ({sp}, fold {'+'.join(r['folds'])}{kind}) | {r['case'].split(' (')[0]} "
                       f"({isp}) | {r['voxels_differing']} of {r['voxels']} | {dice} | {counts} | {ood} |")
        out.append("")
    rows = list(results.get("speed") or []) + ([results["large"]] if results.get("large") else [])
    if rows:
        out += ["| case | nnU-Net process s (best / median) | IMAGIO OpenVINO s (best / median) | IMAGIO onnxruntime s (best / median) | "
                "time ratio nnU-Net / OpenVINO (best, median) | / onnxruntime | peak MB nnU-Net / OpenVINO / "
                "onnxruntime | memory ratio OpenVINO / nnU-Net | Dice OpenVINO vs nnU-Net |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            nn, ov, ort = r["nnunet"], r["openvino"], r["onnxruntime"]

            def t(x):
                return f"{x['process_s_best']:.1f} / {x['process_s_median']:.1f}"
            out.append(
                f"| {r['case']} ({r['repeats']} runs) | {t(nn)} | {t(ov)} | {t(ort)} | "
                f"{r['time_ratio_nnunet_over_openvino']:.2f}, {r['time_ratio_median_nnunet_over_openvino']:.2f} | "
                f"{r['time_ratio_nnunet_over_onnxruntime']:.2f}, {r['time_ratio_median_nnunet_over_onnxruntime']:.2f} | "
                f"{nn['peak_rss_mb']:.0f} / {ov['peak_rss_mb']:.0f} / {ort['peak_rss_mb']:.0f} | "
                f"{r['memory_ratio_openvino_over_nnunet']:.2f} | "
                f"{', '.join(f'{v:.6f}' for v in ov['dice_per_class'].values())} |")
        out += ["", "Where the time goes (seconds, in the fastest run by process time: its whole process, the "
                "prediction, and the prediction's steps; the rest of the process time is start-up, imports, model "
                "loading, reading and writing):", "",
                "| case | predictor | process s | predict s | preprocess s | network s | window aggregation s | "
                "logits to labels s | start-up, reading, writing s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for k in ("nnunet", "openvino", "onnxruntime"):
                ts = r[k].get("timings_s_of_best") or {}
                predict = sum(ts.values())
                cells = " | ".join(f"{ts.get(n, float('nan')):.1f}" for n in
                                   ("preprocess_s", "network_s", "window_aggregation_s", "logits_to_labels_s"))
                out.append(f"| {r['case'].split(' (')[0]} | {k} | {r[k]['process_s_best']:.1f} | {predict:.1f} | "
                           f"{cells} | {r[k]['process_s_best'] - predict:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())), end="")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder of nnU-Net model folders (make_matrix_models)")
    ap.add_argument("--out", type=Path, default=Path("bench_planning.json"))
    ap.add_argument("--part", choices=("matrix", "speed", "large", "all"), default="all")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cached nnU-Net predictions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-repeats", type=int, default=1, help="interleaved runs of the large case")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="imagio-bench-"))
    import importlib.metadata as md

    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    results.update({"peer": "nnU-Net v2 nnUNetPredictor (torch, CPU)", "threads": a.threads,
                    "versions": {p: md.version(p) for p in ("torch", "nnunetv2", "onnxruntime", "openvino", "scipy")},
                    "cpu": os.cpu_count(), "date": time.strftime("%Y-%m-%d")})
    models = export_all(a.models, tmp)
    cases = make_cases(tmp)
    if a.part in ("matrix", "all"):
        results["matrix"] = part_matrix(models, cases, tmp, a.cache, a.threads)
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    if a.part in ("speed", "all"):
        names = list(cases)
        results["speed"] = [part_speed(models["bench"], cases[names[0]], tmp, True, a.threads, a.repeats,
                                       names[0] + ", mirroring on"),
                            part_speed(models["bench"], cases[names[2]], tmp, False, a.threads, a.repeats,
                                       names[2] + ", mirroring off")]
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    if a.part in ("large", "all"):
        results["large"] = part_speed(models["bench"], make_large(tmp), tmp, False, a.threads, a.large_repeats,
                                      "LIDC-0314 padded to 512x512x300 (0.78x0.78x1.0 mm), mirroring off")
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "ours":
            print(json.dumps(run_ours(rest[0], rest[1], rest[2], bool(int(rest[3])), int(rest[4]), rest[5])))
        else:
            print(json.dumps(run_nnunet(rest[0], rest[1], rest[2], bool(int(rest[3])), int(rest[4]), rest[5])))
        sys.exit(0)
    sys.exit(main())
