"""Exactness of the minimal ablative margin on tumours the exactness tests do not use (held-out cases).

The truth is made exactly as in ``IMAGIOMargin/Testing/Python/test_margin_exactness.py`` (its functions are
imported): each tumour's own continuous surface from its native mask, rasters on an oblique isotropic 1 mm grid
and an oblique anisotropic 0.8 x 0.9 x 2.5 mm grid, zones grown by exactly k mm (k = 2, 5, 10) and grown and
shifted (truth k - |s|). The module sees only the two rasters. The tests' six tumours tuned nothing here either
(the method's constants are structural), but these masks were never looked at while building it.

For each zone: the MAM's error (measured - truth, mm), the error before the grid-phase correction, and the number
of grid-phase replicates; then the issue-10 summary (isotropic: mean signed error, grown zones' mean, cases
within 0.3 mm; anisotropic: cases within 0.3 x 2.5 mm). A mask too small to have a surface is refused by the
module (listed as refused, with the reason).

Run: ``python benchmarks/bench_margin_exactness.py [--case NAME=PATH ...] [--out FILE]`` (paths relative to
``IMAGIO_DATA``, default ../shared/data; a few minutes on 2 cores). Writes JSON (default
benchmarks/results/bench_margin_exactness.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "IMAGIOMargin" / "Testing" / "Python"), str(ROOT / "IMAGIOMargin")]

HELD_OUT = {  # name: mask path in IMAGIO_DATA, none of them in test_margin_exactness.CASES
    "liver-p1-nodule": "medmpd-liver-p1/nodule.nii.gz",
    "liver-p4-nodule": "medmpd-liver-p4/nodule.nii.gz",
    "lungs-p1-nodule": "medmpd-lungs-p1/nodule.nii.gz",
    "lungs-p3-nodule": "medmpd-lungs-p3/nodule.nii.gz",
    "lungs-p4-nodule": "medmpd-lungs-p4/nodule.nii.gz",
    "liver-p2-nodule2": "medmpd-liver-p2/nodule2.nii.gz",  # the other nodule of a test patient
    "lidc0314-reader1": "chest-lidc0314/nodule_reader1.seg.nrrd",  # one reader of the test's consensus nodule
}


def summary(rows: list[dict], key: str) -> dict:
    iso = [r for r in rows if r["grid_mm"] == "1x1x1"]
    an = [r for r in rows if r["grid_mm"] != "1x1x1"]
    e = np.array([r[key] for r in iso])
    g = np.array([r[key] for r in iso if r["shift_mm"] == 0])
    a = np.array([r[key] for r in an])
    return {
        "isotropic_mean_signed_error_mm": round(float(e.mean()), 3) if len(e) else None,
        "isotropic_grown_mean_signed_error_mm": round(float(g.mean()), 3) if len(g) else None,
        "isotropic_max_abs_error_mm": round(float(np.abs(e).max()), 3) if len(e) else None,
        "isotropic_within_0_3_mm": f"{int(np.sum(np.abs(e) <= 0.3))}/{len(e)}",
        "anisotropic_max_abs_error_mm": round(float(np.abs(a).max()), 3) if len(a) else None,
        "anisotropic_within_0_75_mm": f"{int(np.sum(np.abs(a) <= 0.75))}/{len(a)}",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", default=[], metavar="NAME=PATH",
                    help="a tumour mask (path in IMAGIO_DATA) instead of the default held-out set; repeatable")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_margin_exactness.json"))
    args = ap.parse_args(argv)
    import test_margin_exactness as T

    from imagio.errors import ImagioError

    cases = dict(c.split("=", 1) for c in args.case) if args.case else HELD_OUT
    T.CASES.clear()
    T.CASES.update(cases)
    rows, refused = [], {}
    t0 = time.perf_counter()
    for name in cases:
        for spacing, zones in ((T.ISO, T.ISO_ZONES), (T.ANISO, T.ANISO_ZONES)):
            grid = "x".join(f"{v:g}" for v in spacing)
            try:
                rows += T.run_case(name, spacing, zones)
            except ImagioError as e:
                refused[f"{name} {grid}"] = str(e)
                print(f"{name} on {grid} mm: refused: {e}")
    for r in rows:
        print(f"{r['case']:16s} {r['grid_mm']:11s} k {r['k_mm']:4.1f} shift {r['shift_mm']:3.1f}: error "
              f"{r['error_mm']:+.3f} mm (uncorrected {r['raw_error_mm']:+.3f}, {r['replicates']} replicates)")
    result = {"benchmark": "bench_margin_exactness", "machine": platform.node(), "python": platform.python_version(),
              "cases": cases, "refused": refused, "runtime_s": round(time.perf_counter() - t0, 1),
              "summary": summary(rows, "error_mm") if rows else {},
              "summary_uncorrected": summary(rows, "raw_error_mm") if rows else {},
              "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    print("with the grid-phase correction:", result["summary"])
    print("without it:                    ", result["summary_uncorrected"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
