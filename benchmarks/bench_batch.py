"""Cohort throughput of `imagio batch`: cases per minute with 1 and 2 Dask workers, as a ratio.

Cases (12, real data from IMAGIO_DATA, default ../shared/data):

* margin x 6: the four LIDC-0314 reader masks and the consensus nodule, each on a crop of its
  CT grid, with an ablation zone grown from it by 5 mm (3 mm for one more consensus case);
* segment x 6 (seeded): the LIDC-0314 nodule on the crop and on the full 512x512x275 CT, the
  STS-001 and STS-002 sarcomas (soft tissue, radius of the equal-volume sphere), the LUNG1-001
  tumour on its full DICOM series, and the LIDC nodule with --largest-component.

Measured in the same run, each configuration ``--repeat`` times (median), the order reversed
every other round so that drift of a shared machine falls on all:

* ``1 worker`` and ``2 workers``: ``imagio.batch.run`` on a LocalCluster made as
  `imagio batch --workers N` makes it, which gives each case cores // N threads (ITK/BLAS): on
  2 cores, 2 threads per case with 1 worker, 1 thread per case with 2 workers;
* ``1 worker, 1 thread``: the same threads per case as with 2 workers, so that
  2 workers / this ratio is the case-level parallelism alone;
* ``shell loop`` (the named peer for today's practice): one ``imagio <step>`` process per case,
  one after the other.

"cases phase": from the first submission to the last result, workers started and their imports
done; "end to end" also counts starting the cluster. The summary numbers of every configuration
must agree (checked). The machine's load average is recorded: on a shared machine other work
takes cores from the workers.

Run: ``python benchmarks/bench_batch.py [--repeat 1] [--out FILE] [--work DIR]``
(JSON default: benchmarks/results/bench_batch.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio import batch
from imagio.geometry import centroid_ras, dilate_mm
from imagio.io import read_image
from imagio.testing import data_root

NUMERIC_SKIP = {"case_id", "step", "runtime_s", "message", "status"}


def _crop_box(mask: sitk.Image, pad_vox=(14, 22, 22)):
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    lo = np.maximum(kji.min(0) - pad_vox, 0)
    hi = np.minimum(kji.max(0) + np.array(pad_vox) + 1, np.array(mask.GetSize())[::-1])
    return [int(v) for v in (hi - lo)[::-1]], [int(v) for v in lo[::-1]]


def build_cases(work: Path) -> Path:
    data = data_root()
    inp = work / "inputs"
    inp.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(str(data / "chest-lidc0314/ct.nrrd"))
    cons = sitk.Cast(sitk.ReadImage(str(data / "chest-lidc0314/nodule_consensus50.seg.nrrd")) > 0, sitk.sitkUInt8)
    size, index = _crop_box(cons)
    sitk.WriteImage(sitk.RegionOfInterest(ct, size, index), str(inp / "lidc_ct.nrrd"), True)
    rows = []
    masks = {"consensus": cons}
    for r in range(1, 5):
        m = sitk.ReadImage(str(data / f"chest-lidc0314/nodule_reader{r}.seg.nrrd"))
        if m.GetNumberOfComponentsPerPixel() > 1:
            m = sitk.VectorIndexSelectionCast(m, 0)
        masks[f"reader{r}"] = sitk.Resample(sitk.Cast(m > 0, sitk.sitkUInt8), ct, sitk.Transform(),
                                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    for name, m in masks.items():
        t = sitk.RegionOfInterest(m, size, index)
        sitk.WriteImage(t, str(inp / f"{name}.nrrd"), True)
        for k in ((5, 3) if name == "consensus" else (5,)):
            sitk.WriteImage(dilate_mm(t, k), str(inp / f"{name}_zone{k}.nrrd"), True)
            rows.append({"case_id": f"margin-{name}-{k}mm", "step": "margin", "tumor": f"inputs/{name}.nrrd",
                         "ablation": f"inputs/{name}_zone{k}.nrrd"})
    seed = ",".join(f"{v:.2f}" for v in centroid_ras(cons))
    rows.append({"case_id": "seg-lidc-crop", "step": "segment", "ct": "inputs/lidc_ct.nrrd", "seed": seed,
                 "kind": "lung-nodule"})
    rows.append({"case_id": "seg-lidc-crop-largest", "step": "segment", "ct": "inputs/lidc_ct.nrrd", "seed": seed,
                 "kind": "lung-nodule", "largest_component": "yes"})
    rows.append({"case_id": "seg-lidc-full", "step": "segment", "ct": str(data / "chest-lidc0314/ct.nrrd"),
                 "seed": seed, "kind": "lung-nodule"})
    for case, radius in (("sarcoma-sts001", 44.3), ("sarcoma-sts002", 23.3)):
        gtv = sitk.Cast(sitk.ReadImage(str(data / f"{case}/nifti/mask/mask.nii.gz")) > 0, sitk.sitkUInt8)
        rows.append({"case_id": f"seg-{case}", "step": "segment", "ct": str(data / f"{case}/nifti/image/image.nii.gz"),
                     "seed": ",".join(f"{v:.2f}" for v in centroid_ras(gtv)), "kind": "soft-tissue",
                     "radius": str(radius)})
    lung1 = read_image(data / "chest-lung1-001/image")
    gtv = sitk.Cast(sitk.ReadImage(str(data / "chest-lung1-001/derived_labels/GTV-1.seg.nrrd")) > 0, sitk.sitkUInt8)
    gtv = sitk.Resample(gtv, lung1, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    rows.append({"case_id": "seg-lung1-gtv", "step": "segment", "ct": str(data / "chest-lung1-001/image"),
                 "seed": ",".join(f"{v:.2f}" for v in centroid_ras(gtv)), "kind": "lung-nodule", "radius": "33.4"})
    cols = ["case_id", "step", "tumor", "ablation", "ct", "seed", "kind", "radius", "largest_component"]
    manifest = work / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return manifest


def _numbers(rows) -> dict:
    return {r["case_id"]: {k: v for k, v in r.items() if k not in NUMERIC_SKIP and v not in (None, "")} for r in rows}


def run_batch(manifest: Path, out: Path, n: int, threads: int | None = None) -> dict:
    t0 = time.perf_counter()
    client, cluster = batch._local_cluster(n, None, threads)
    try:
        client.run(batch._worker_check, str(out.parent))  # workers up and their imports done
        t_ready = time.perf_counter()
        table = batch.run(manifest, out, client=client, progress=False)
        t_end = time.perf_counter()
    finally:
        client.close()
        cluster.close()
    rows = list(table)
    assert all(r["status"] == "ok" for r in rows), [(r["case_id"], r["message"]) for r in rows if r["status"] != "ok"]
    return {"cases_s": t_end - t_ready, "end_to_end_s": t_end - t0, "case_runtime_sum_s": sum(r["runtime_s"] for r in rows),
            "numbers": _numbers(rows)}


def run_loop(manifest: Path, out: Path) -> dict:
    from imagio.batch_case import headline_numbers
    from imagio.batch_manifest import read_manifest

    m = read_manifest(manifest)
    t0 = time.perf_counter()
    numbers = {}
    for c in m.cases:
        dest = out / c.case_id / c.step
        r = subprocess.run([sys.executable, "-m", "imagio.cli", *c.argv, "--out", str(dest)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        numbers[c.case_id] = {k: v for k, v in headline_numbers(c.step, dest).items() if v not in (None, "")}
    return {"cases_s": time.perf_counter() - t0, "end_to_end_s": time.perf_counter() - t0, "numbers": numbers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration (median reported)")
    ap.add_argument("--out", default="benchmarks/results/bench_batch.json")
    ap.add_argument("--work", help="working folder (default: a temporary one, removed)")
    ap.add_argument("--skip-loop", action="store_true", help="leave out the shell-loop peer")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = build_cases(work)
    n_cases = sum(1 for _ in open(manifest)) - 1
    cores = batch.machine_cores()
    # (name, workers, threads per case): the default shares the cores out (cores // workers threads per case);
    # "1 worker, 1 thread" holds the threads per case fixed, so 2 workers / it is the case-level parallelism alone
    configs = {"1 worker": (1, None), "2 workers": (2, None), "1 worker, 1 thread": (1, 1)}
    runs: dict[str, list[dict]] = {name: [] for name in configs} | {"shell loop": []}
    order = []
    for i in range(args.repeat):
        names = list(configs)
        order += names if i % 2 == 0 else names[::-1]
    for k, name in enumerate(order):
        n, threads = configs[name]
        out = work / f"out-{k}"
        res = run_batch(manifest, out, n, threads)
        res["threads_per_case"] = threads or max(1, cores // n)
        runs[name].append(res)
        print(f"batch, {name}: {n_cases} cases in {res['cases_s']:.1f} s (end to end {res['end_to_end_s']:.1f} s, "
              f"sum of case run times {res['case_runtime_sum_s']:.1f} s)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if not args.skip_loop:
        out = work / "out-loop"
        res = run_loop(manifest, out)
        runs["shell loop"].append(res)
        print(f"shell loop: {n_cases} cases in {res['cases_s']:.1f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    ref = runs["1 worker"][0]["numbers"]
    for name, rs in runs.items():  # whatever the workers and threads, the numbers agree
        for r in rs:
            assert r["numbers"] == ref, f"{name}: summary numbers differ from the 1-worker batch"
    summary = {}
    for name, rs in runs.items():
        if not rs:
            continue
        cs = statistics.median(r["cases_s"] for r in rs)
        ee = statistics.median(r["end_to_end_s"] for r in rs)
        summary[name] = {"cases": n_cases, "cases_phase_s": round(cs, 2), "end_to_end_s": round(ee, 2),
                         "cases_per_min": round(60 * n_cases / cs, 2),
                         "cases_per_min_end_to_end": round(60 * n_cases / ee, 2),
                         "runs_cases_s": [round(r["cases_s"], 2) for r in rs]}
        if "case_runtime_sum_s" in rs[0]:
            summary[name]["case_runtime_sum_s"] = round(statistics.median(r["case_runtime_sum_s"] for r in rs), 2)
            summary[name]["threads_per_case"] = rs[0]["threads_per_case"]
    one, two, fixed = summary["1 worker"], summary["2 workers"], summary["1 worker, 1 thread"]
    result = {
        "benchmark": "imagio batch: cases per minute, 1 vs 2 LocalCluster workers (peer: a shell loop of commands)",
        "machine": {"cores": batch.machine_cores(), "python": platform.python_version(), "platform": platform.platform()},
        "cases": n_cases, "repeat": args.repeat, "order": order, "results": summary,
        "ratio_2_over_1_workers": round(two["cases_per_min"] / one["cases_per_min"], 3),
        "ratio_2_over_1_workers_end_to_end": round(two["cases_per_min_end_to_end"] / one["cases_per_min_end_to_end"], 3),
        "ratio_2_workers_over_1_worker_1_thread": round(two["cases_per_min"] / fixed["cases_per_min"], 3),
        "numbers_identical": True,
        "load_average_during_run": os.getloadavg(),
    }
    if "shell loop" in summary:
        result["ratio_1_worker_over_shell_loop"] = round(one["cases_per_min_end_to_end"]
                                                          / summary["shell loop"]["cases_per_min"], 3)
        result["ratio_2_workers_over_shell_loop"] = round(two["cases_per_min_end_to_end"]
                                                           / summary["shell loop"]["cases_per_min"], 3)
    print(f"{'configuration':20s} {'cases/min':>10s} {'(end to end)':>13s} {'case phase s':>13s}")
    for name, s in summary.items():
        print(f"{name:20s} {s['cases_per_min']:10.2f} {s['cases_per_min_end_to_end']:13.2f} {s['cases_phase_s']:13.1f}")
    print(f"ratio 2 workers / 1 worker: {result['ratio_2_over_1_workers']:.3f} (cases phase), "
          f"{result['ratio_2_over_1_workers_end_to_end']:.3f} (end to end); 2 workers / 1 worker with one thread "
          f"per case: {result['ratio_2_workers_over_1_worker_1_thread']:.3f}; load average {os.getloadavg()}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
