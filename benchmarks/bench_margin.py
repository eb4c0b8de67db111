"""Speed of the margin metrics on a full-size CT grid, against full-volume distance-map baselines.

Case: a 512 x 512 x 300 grid (0.78 x 0.78 x 1.0 mm, oblique axes) with an
irregular 3 cm tumour and an off-centre ellipsoidal ablation zone.

Measured in the same run, each the median of several repetitions:

* ``imagio metrics`` - IMAGIOMargin's region-of-interest method, all metrics
  (metrics.compute_margin: sub-voxel surfaces, MAM, coverage, shells,
  residual, histogram, thinnest point);
* ``imagio assess`` - the same plus the 400-sample uncertainty and the verdict
  (MarginLogic.assess);
* ``full-volume lattice Maurer`` - the previous method's definitions (0.5
  iso-surfaces sampled on the half-voxel lattice) without a region of
  interest: SimpleITK's SignedMaurerDistanceMap over the whole volume's
  lattice (its MAM differs from the sub-voxel one: printed);
* ``full-volume voxel Maurer`` - the classical approach: SignedMaurerDistanceMap
  of the zone and the tumour on the whole voxel grid, MAM as the smallest
  signed distance at the tumour's boundary voxels (voxel-centre
  convention: its MAM differs from the exact one by up to a voxel).

Run: ``python benchmarks/bench_margin.py [--repeat N] [--threads 2] [--skip-lattice] [--out FILE]``.
Prints a table and writes JSON (default benchmarks/results/bench_margin.json).
The full-volume lattice baseline needs about 6 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio.geometry import make_image, rotation_matrix
from imagio.scene import new_scene
from IMAGIOMarginLib.logic import MarginLogic
from IMAGIOMarginLib.metrics import refine_mean

SIZE = (512, 512, 300)
SPACING = (0.78, 0.78, 1.0)


def make_case():
    ref = make_image(SIZE, SPACING, origin_ras=(-200.0, -200.0, -150.0),
                     direction_ras=rotation_matrix((0.3, 0.2, 1.0), 12.0))
    center = np.array([250.0, 270.0, 140.0])  # voxel index (i, j, k)
    lo = (center - np.array([45, 45, 35])).astype(int)
    hi = (center + np.array([45, 45, 35])).astype(int)
    k, j, i = np.meshgrid(*[np.arange(lo[a], hi[a]) for a in (2, 1, 0)], indexing="ij")
    sp = np.array(SPACING)
    x = (i - center[0]) * sp[0]
    y = (j - center[1]) * sp[1]
    z = (k - center[2]) * sp[2]
    r = np.sqrt(x * x + y * y + z * z) + 1e-9
    theta = np.arccos(z / r)
    phi = np.arctan2(y, x)
    radius = 15.0 * (1.0 + 0.12 * np.sin(3 * theta) * np.cos(2 * phi) + 0.05 * np.cos(5 * phi))
    tumor = np.zeros(SIZE[::-1], np.uint8)
    zone = np.zeros(SIZE[::-1], np.uint8)
    tumor[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = r <= radius
    zone[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = (((x - 2.0) / 24.0) ** 2 + ((y + 1.0) / 22.0) ** 2
                                                    + ((z - 1.5) / 27.0) ** 2) <= 1.0
    out = []
    for a in (tumor, zone):
        img = sitk.GetImageFromArray(a)
        img.CopyInformation(ref)
        out.append(img)
    return out


def _lean_edt(points: np.ndarray, half_kji) -> sitk.Image:
    img = sitk.GetImageFromArray(points.view(np.uint8))
    img.SetSpacing([float(v) for v in half_kji[::-1]])
    return sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)


def full_lattice_mam(tumor: sitk.Image, zone: sitk.Image) -> tuple[float, dict]:
    """Exact MAM and shell coverage with full-volume Maurer maps on the half-voxel lattice (no ROI).

    The same definitions as IMAGIOMargin (see IMAGIOMarginLib.metrics), computed over the whole volume.
    """
    t = np.pad(sitk.GetArrayViewFromImage(tumor) > 0, 1)
    z = np.pad(sitk.GetArrayViewFromImage(zone) > 0, 1)
    half = np.array(tumor.GetSpacing())[::-1] / 2.0
    zi = refine_mean(z)
    dz = _lean_edt(zi == 0.5, half)
    inside = zi >= 0.5
    del zi
    ti = refine_mean(t)
    surf_t = ti == 0.5
    t_any = ti > 0.0
    del ti
    vals = np.abs(sitk.GetArrayViewFromImage(dz)[surf_t])
    del dz
    vals[~inside[surf_t]] *= -1.0
    del inside, surf_t
    dt = _lean_edt(t_any, half)
    del t_any
    d_t = np.abs(sitk.GetArrayViewFromImage(dt)[::2, ::2, ::2])
    d_t[t] = 0.0
    del dt
    shells = {}
    for r in (0.0, 3.0, 5.0, 10.0):
        sel = d_t <= r + 1e-6
        shells[f"{r:g}"] = 100.0 * float(np.count_nonzero(sel & z)) / max(int(np.count_nonzero(sel)), 1)
    return float(vals.min()), shells


def full_voxel_mam(tumor: sitk.Image, zone: sitk.Image) -> float:
    """Classical full-volume MAM: signed Maurer distance of the zone at the tumour's boundary voxels (centres)."""
    dz = sitk.SignedMaurerDistanceMap(zone, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    dt = sitk.SignedMaurerDistanceMap(tumor, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    dt_arr = sitk.GetArrayViewFromImage(dt)
    boundary = (dt_arr >= 0) & (dt_arr < 0.5 * min(tumor.GetSpacing()) + 1e-6) & (sitk.GetArrayViewFromImage(tumor) > 0)
    boundary |= (sitk.GetArrayViewFromImage(tumor) > 0) & (dt_arr == 0)
    return float(sitk.GetArrayViewFromImage(dz)[boundary].min())


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="SimpleITK threads (default 2: the target machine)")
    ap.add_argument("--skip-lattice", action="store_true", help="skip the memory-hungry full-volume lattice baseline")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_margin.json"))
    args = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    tumor, zone = make_case()
    logic = MarginLogic(new_scene())
    logic.assess(tumor, zone)  # warm-up (imports, allocations)
    from IMAGIOMarginLib.metrics import compute_margin

    t_met, runs_met, met = timed(lambda: compute_margin(tumor, zone, 5.0), args.repeat)
    t_roi, runs_roi, res = timed(lambda: logic.assess(tumor, zone, n_samples=400), args.repeat)
    d = res.to_dict()
    rows = [("imagio ROI, all metrics (compute_margin)", t_met, met.minimal_margin_mm, runs_met),
            ("imagio ROI, all metrics + uncertainty (assess)", t_roi, d["minimal_margin_mm"], runs_roi)]
    result = {
        "grid": {"size": SIZE, "spacing_mm": SPACING},
        "tumor_volume_ml": d["tumor_volume_ml"], "ablation_zone_volume_ml": d["ablation_zone_volume_ml"],
        "threads": args.threads, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "simpleitk": sitk.Version_VersionString(), "repeat": args.repeat,
        "imagio_metrics": {"median_s": t_met, "runs_s": runs_met},
        "imagio": {"median_s": t_roi, "runs_s": runs_roi, "minimal_margin_mm": d["minimal_margin_mm"],
                   "shell_coverage_percent": d["shell_coverage_percent"], "coverage_percent": d["coverage_percent"]},
    }
    t_vox, runs_vox, mam_vox = timed(lambda: full_voxel_mam(tumor, zone), max(1, args.repeat // 2))
    rows.append(("full-volume voxel Maurer (MAM only)", t_vox, mam_vox, runs_vox))
    result["full_volume_voxel_maurer"] = {"median_s": t_vox, "runs_s": runs_vox, "minimal_margin_mm": mam_vox,
                                          "ratio_to_imagio": t_vox / t_roi,
                                          "ratio_to_imagio_metrics": t_vox / t_met}
    if not args.skip_lattice:
        t_lat, runs_lat, (mam_lat, shells_lat) = timed(lambda: full_lattice_mam(tumor, zone), 1)
        rows.append(("full-volume lattice Maurer (MAM + shells)", t_lat, mam_lat, runs_lat))
        result["full_volume_lattice_maurer"] = {
            "median_s": t_lat, "runs_s": runs_lat, "minimal_margin_mm": mam_lat, "shell_coverage_percent": shells_lat,
            "ratio_to_imagio": t_lat / t_roi,
            "mam_minus_imagio_mm": mam_lat - res.metrics.minimal_margin_mm}
    print(f"margin benchmark: {SIZE[0]}x{SIZE[1]}x{SIZE[2]} grid, {SPACING} mm, tumour {d['tumor_volume_ml']:.1f} ml, "
          f"{args.threads} SimpleITK threads, {os.cpu_count()} CPUs")
    print(f"{'method':48s} {'median (s)':>11s} {'ratio to assess':>16s} {'MAM (mm)':>10s}")
    for name, t, mam, _ in rows:
        print(f"{name:48s} {t:11.3f} {t / t_roi:16.2f} {mam:10.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
