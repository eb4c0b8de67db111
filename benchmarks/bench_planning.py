"""Benchmark: IMAGIO's ONNX engine against nnU-Net v2's own predictor, same model, same CPU, same run.

Needs the optional extras (torch, nnunetv2) and the real data (IMAGIO_DATA).

    python benchmarks/bench_planning.py --out bench_planning.json [--model-dir NNUNET_FOLDER] [--threads 2]

* Model: an nnU-Net v2 trained-model folder. Without --model-dir one is made
  with IMAGIOPlanning/Training/make_nnunet_model.py (real nnU-Net plans, a
  5-stage PlainConvUNet briefly trained on real CT) and exported with
  ``imagio export-onnx``.
* Equivalence: labels of both on real CTs (a crop of LIDC-0314 with test-time
  mirroring, and the sarcoma STS-002 CT, anisotropic 3.27 mm slices, without);
  Dice per class.
* Speed and memory: each predictor runs in its own fresh process, --repeats
  times, interleaved (the machine may be shared); best and median wall time of
  the prediction (preprocessing, sliding window, resampling back, argmax) and
  the process's peak resident memory (VmHWM; ru_maxrss where /proc is absent), also net of the memory the
  process held after its imports. Ratios are nnU-Net / IMAGIO.
* Peak memory of IMAGIO's engine on a 512x512x300 CT (LIDC-0314, 275 slices,
  padded to 300 by repeating its last slice), without mirroring.
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

REPO = Path(__file__).resolve().parent.parent


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


def _rss_mb() -> float:
    """Peak resident memory of this process (MB).

    VmHWM from /proc: unlike ru_maxrss, which Linux carries over execve from
    the forking parent (so a child of a large parent reports the parent's
    peak), it counts only this program. ru_maxrss is the fallback elsewhere.
    """
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB


def _current_rss_mb() -> float:
    now = _proc_status_mb("VmRSS")
    return now if now is not None else float("nan")


# ----------------------------------------------------------------------------- child processes

def run_ours(card: str, ct_path: str, out_path: str, mirroring: bool, threads: int) -> dict:
    from imagio.engine import OnnxSegmenter

    ct = sitk.ReadImage(ct_path)
    seg = OnnxSegmenter(card, providers=["CPUExecutionProvider"], threads=threads)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    res = seg.predict(ct, mirroring=mirroring)
    dt = time.perf_counter() - t0
    sitk.WriteImage(res.labels, out_path, True)
    return {"runtime_s": dt, "peak_rss_mb": _rss_mb(), "rss_after_setup_mb": base, "windows": res.windows}


def run_nnunet(model_dir: str, ct_path: str, out_path: str, mirroring: bool, threads: int) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    torch.set_num_threads(threads)
    md = Path(model_dir)
    plans = json.loads((md / "plans.json").read_text())
    dataset = json.loads((md / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    lm = pm.get_label_manager(dataset)
    ckpt = torch.load(str(md / "fold_0" / "checkpoint_final.pth"), map_location="cpu", weights_only=True)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(dataset["channel_names"]),
                                 lm.num_segmentation_heads, allow_init=True, deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"])
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           allow_tqdm=False)
    pred.manual_initialization(net, pm, cm, [ckpt["network_weights"]], dataset, "nnUNetTrainer",
                               ckpt["inference_allowed_mirroring_axes"])
    ct = sitk.ReadImage(ct_path)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)[None]
    seg = pred.predict_single_npy_array(arr, {"spacing": list(ct.GetSpacing()[::-1])}, None, None, False)
    dt = time.perf_counter() - t0
    out = sitk.GetImageFromArray(np.asarray(seg).astype(np.uint8))
    out.CopyInformation(ct)
    sitk.WriteImage(out, out_path, True)
    return {"runtime_s": dt, "peak_rss_mb": _rss_mb(), "rss_after_setup_mb": base}


def _child(kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *[str(a) for a in args]]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if r.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- cases

def _data(rel: str) -> Path:
    root = Path(os.environ.get("IMAGIO_DATA", REPO.parent / "shared" / "data"))
    p = root / rel
    if not p.exists():
        raise SystemExit(f"real data missing: {p} (set IMAGIO_DATA)")
    return p


def make_cases(tmp: Path) -> list[dict]:
    lidc = sitk.ReadImage(str(_data("chest-lidc0314/ct.nrrd")))
    crop = lidc[150:310, 120:280, 110:190]  # 160 x 160 x 80 voxels around the right-lung nodule
    sitk.WriteImage(crop, str(tmp / "lidc_crop.nrrd"))
    sts = sitk.ReadImage(str(_data("sarcoma-sts002/nifti/image/image.nii.gz")))
    sitk.WriteImage(sts, str(tmp / "sts002.nrrd"))
    return [
        {"name": "LIDC-0314 chest crop 160x160x80 (0.78x0.78x1.0 mm), mirroring on", "ct": tmp / "lidc_crop.nrrd",
         "mirroring": True},
        {"name": "STS-002 sarcoma CT 161x143x48 (0.98x0.98x3.27 mm), mirroring off", "ct": tmp / "sts002.nrrd",
         "mirroring": False},
    ]


def make_large(tmp: Path) -> Path:
    lidc = sitk.ReadImage(str(_data("chest-lidc0314/ct.nrrd")))
    arr = sitk.GetArrayFromImage(lidc)
    pad = 300 - arr.shape[0]
    arr = np.concatenate([arr, np.repeat(arr[-1:], pad, axis=0)], axis=0)
    big = sitk.GetImageFromArray(arr)
    big.SetSpacing(lidc.GetSpacing())
    big.SetOrigin(lidc.GetOrigin())
    big.SetDirection(lidc.GetDirection())
    p = tmp / "lidc_512x512x300.nrrd"
    sitk.WriteImage(big, str(p))
    return p


def _combine(runs: list[dict]) -> dict:
    """Best (minimum) time of the repeats, their median and all of them; the largest peak memory."""
    times = [r["runtime_s"] for r in runs]
    out = dict(runs[0])
    out.update(runtime_s=min(times), runtime_median_s=float(np.median(times)), runtimes_s=times,
               peak_rss_mb=max(r["peak_rss_mb"] for r in runs),
               rss_after_setup_mb=min(r["rss_after_setup_mb"] for r in runs))
    return out


def dice_per_class(a: sitk.Image, b: sitk.Image, classes) -> dict:
    x, y = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    out = {}
    for c in classes:
        xa, yb = x == c, y == c
        s = int(xa.sum() + yb.sum())
        out[str(c)] = 1.0 if s == 0 else 2.0 * int((xa & yb).sum()) / s
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_planning.json"))
    ap.add_argument("--model-dir", type=Path, help="nnU-Net v2 trained-model folder (made if left out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each predictor per case (interleaved)")
    ap.add_argument("--skip-large", action="store_true", help="skip the 512x512x300 peak-memory run")
    ap.add_argument("--skip-cases", action="store_true", help="only the 512x512x300 run")
    ap.add_argument("--large-nnunet", action="store_true", help="also run nnU-Net on the 512x512x300 CT (slow)")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="imagio-bench-"))
    model_dir = a.model_dir
    if model_dir is None:
        model_dir = tmp / "nnunet_model"
        lidc = sitk.ReadImage(str(_data("chest-lidc0314/ct.nrrd")))
        sitk.WriteImage(lidc[100:330, 90:330, 100:220], str(tmp / "train_lidc_crop.nrrd"))
        subprocess.run([sys.executable, str(REPO / "IMAGIOPlanning/Training/make_nnunet_model.py"), "--out",
                        str(model_dir), "--ct", str(tmp / "train_lidc_crop.nrrd"),
                        str(_data("sarcoma-sts001/nifti/image/image.nii.gz")), "--iterations", "150", "--seed", "0"],
                       check=True)
    from IMAGIOPlanningLib.export import export_nnunet

    card = export_nnunet(model_dir, tmp / "onnx")
    labels = json.loads((model_dir / "dataset.json").read_text())["labels"]
    classes = sorted(v for v in labels.values() if isinstance(v, int) and v > 0)
    results = {"peer": "nnU-Net v2 nnUNetPredictor (torch, CPU)", "threads": a.threads,
               "torch_version": __import__("torch").__version__,
               "nnunetv2_version": __import__("importlib.metadata").metadata.version("nnunetv2"),
               "onnxruntime_version": __import__("onnxruntime").__version__, "cases": []}
    for case in ([] if a.skip_cases else make_cases(tmp)):
        runs_ours, runs_peer = [], []
        for _ in range(a.repeats):  # interleaved, so both see the same machine load; best and median reported
            runs_ours.append(_child("ours", card, case["ct"], tmp / "ours.nrrd", int(case["mirroring"]), a.threads))
            runs_peer.append(_child("nnunet", model_dir, case["ct"], tmp / "peer.nrrd", int(case["mirroring"]),
                                    a.threads))
        ours, peer = _combine(runs_ours), _combine(runs_peer)
        d = dice_per_class(sitk.ReadImage(str(tmp / "ours.nrrd")), sitk.ReadImage(str(tmp / "peer.nrrd")), classes)
        row = {"case": case["name"], "dice_per_class": {labels_name(labels, int(c)): v for c, v in d.items()},
               "imagio": ours, "nnunet": peer,
               "time_ratio_nnunet_over_imagio": peer["runtime_s"] / ours["runtime_s"],
               "time_ratio_median_nnunet_over_imagio": peer["runtime_median_s"] / ours["runtime_median_s"],
               "peak_memory_ratio_imagio_over_nnunet": ours["peak_rss_mb"] / peer["peak_rss_mb"],
               "net_peak_memory_ratio_imagio_over_nnunet":
                   (ours["peak_rss_mb"] - ours["rss_after_setup_mb"]) / max(peer["peak_rss_mb"] - peer["rss_after_setup_mb"], 1e-6)}
        results["cases"].append(row)
        print(json.dumps(row, indent=1), flush=True)
    if not a.skip_large:
        big = make_large(tmp)
        row = {"case": "LIDC-0314 padded to 512x512x300 (0.78x0.78x1.0 mm), mirroring off",
               "imagio": _child("ours", card, big, tmp / "ours_big.nrrd", 0, a.threads)}
        if a.large_nnunet:
            row["nnunet"] = _child("nnunet", model_dir, big, tmp / "peer_big.nrrd", 0, a.threads)
            d = dice_per_class(sitk.ReadImage(str(tmp / "ours_big.nrrd")), sitk.ReadImage(str(tmp / "peer_big.nrrd")),
                               classes)
            row["dice_per_class"] = {labels_name(labels, int(c)): v for c, v in d.items()}
        results["large"] = row
        print(json.dumps(row, indent=1), flush=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


def labels_name(labels: dict, value: int) -> str:
    for k, v in labels.items():
        if v == value:
            return k
    return str(value)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        fn = run_ours if kind == "ours" else run_nnunet
        print(json.dumps(fn(rest[0], rest[1], rest[2], bool(int(rest[3])), int(rest[4]))))
        sys.exit(0)
    sys.exit(main())
