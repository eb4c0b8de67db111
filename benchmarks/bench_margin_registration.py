"""Time and peak memory of the margin registration on LIDC-0314 (512 x 512 x 275), against a baseline checkout.

The issue's command (issue 10): the LIDC-0314 CT as both pre- and post-treatment CT, the consensus nodule as
the tumour and the nodule grown by 5 mm as the ablation zone, ``--register rigid``:

    imagio margin --tumor nodule_consensus50.seg.nrrd --ablation grown.nrrd --pre-ct ct.nrrd --post-ct ct.nrrd
                  --register rigid --out OUT

Measured in the same run, each implementation in its own fresh process:

* ``register``: reading both CTs and masks as the CLI does (``imagio.io``), then the registration call alone
  (``IMAGIOMarginLib.registration.register``): its wall and CPU time, and the process's peak memory (VmHWM)
  after reading and after registering;
* ``cli``: the whole command above: wall time, CPU time (user + system) and peak resident memory (wait4);
  and the minimal margin it reports (the CT registered to itself must give the margin without registration).

Implementations: this checkout, and with ``--baseline DIR`` another checkout of IMAGIO (e.g. the code before the
identity-start registration: ``git worktree add /tmp/old 50b1b32``), run with its own modules first on
``PYTHONPATH``. Ratios are baseline / this checkout.

Run: ``python benchmarks/bench_margin_registration.py [--baseline DIR] [--data DIR] [--out FILE]``
(needs ``IMAGIO_DATA`` or ``--data``; about 1 minute for this checkout, several for the old code).
Prints a table and writes JSON (default benchmarks/results/bench_margin_registration.json).
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

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIRS = ("IMAGIOCommon", "IMAGIOPlanning", "IMAGIOAblationZone", "IMAGIOLungNav", "IMAGIOMargin")


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(ct: str, tumor: str, zone: str) -> None:
    """In a fresh process: read as the CLI does, then time the registration alone; print JSON."""
    from imagio.io import find_segment, read_image, read_segmentation
    from IMAGIOMarginLib.registration import register

    t0 = time.perf_counter()
    pre, post = read_image(ct), read_image(ct)
    tum = find_segment(read_segmentation(tumor, reference=pre), None).mask
    zon = find_segment(read_segmentation(zone, reference=post), None).mask
    read_s, read_mb = time.perf_counter() - t0, _hwm_mb()
    w0, c0 = time.perf_counter(), time.process_time()
    res = register(pre, post, "rigid", tum, zon)
    reg_s, reg_cpu = time.perf_counter() - w0, time.process_time() - c0
    print(json.dumps({"read_s": read_s, "peak_after_read_mb": read_mb, "register_s": reg_s,
                      "register_cpu_s": reg_cpu, "peak_after_register_mb": _hwm_mb(),
                      "quality": {k: v for k, v in res.quality.items() if isinstance(v, float)}}))


def _env(checkout: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(checkout / d) for d in MODULE_DIRS)
    return env


def _wait(cmd: list[str], env: dict) -> tuple[dict, str]:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{text[-2000:]}")
    return {"wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
            "peak_rss_mb": ru.ru_maxrss / 1024.0}, text


def measure(checkout: Path, ct: Path, tumor: Path, zone: Path, work: Path) -> dict:
    env = _env(checkout)
    _, text = _wait([sys.executable, __file__, "--child", str(ct), str(tumor), str(zone)], env)
    reg = json.loads(text.strip().splitlines()[-1])
    out = work / f"out-{checkout.name}"
    cli, _ = _wait([sys.executable, "-c", "import sys; from imagio.cli import main; sys.exit(main())", "margin",
                    "--tumor", str(tumor), "--ablation", str(zone), "--pre-ct", str(ct), "--post-ct", str(ct),
                    "--register", "rigid", "--out", str(out)], env)
    data = json.loads((out / "margin.json").read_text())
    cli["minimal_margin_mm"] = data["minimal_margin_mm"]
    return {"checkout": str(checkout), "register": reg, "cli": cli}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another IMAGIO checkout to compare with (e.g. /tmp/old)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("IMAGIO_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_margin_registration.json")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    import SimpleITK as sitk

    from imagio.geometry import dilate_mm

    case = args.data / "chest-lidc0314"
    ct, tumor = case / "ct.nrrd", case / "nodule_consensus50.seg.nrrd"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mask = sitk.Cast(sitk.ReadImage(str(tumor)) > 0, sitk.sitkUInt8)
        zone = work / "grown.nrrd"  # the nodule grown by 5 mm (Euclidean, voxel centres)
        sitk.WriteImage(dilate_mm(mask, 5.0), str(zone), True)
        del mask
        rows = {"this checkout": measure(ROOT, ct, tumor, zone, work)}
        if args.baseline:
            rows["baseline"] = measure(args.baseline.resolve(), ct, tumor, zone, work)
    result = {"case": "LIDC-0314 ct.nrrd (512x512x275) registered to itself, rigid", "cpus": os.cpu_count(),
              "rows": rows}
    if "baseline" in rows:
        b, n = rows["baseline"], rows["this checkout"]
        result["ratio_baseline_over_this"] = {
            "register_wall": b["register"]["register_s"] / n["register"]["register_s"],
            "register_cpu": b["register"]["register_cpu_s"] / n["register"]["register_cpu_s"],
            "register_peak_memory": b["register"]["peak_after_register_mb"] / n["register"]["peak_after_register_mb"],
            "cli_wall": b["cli"]["wall_s"] / n["cli"]["wall_s"],
            "cli_cpu": b["cli"]["cpu_s"] / n["cli"]["cpu_s"],
            "cli_peak_memory": b["cli"]["peak_rss_mb"] / n["cli"]["peak_rss_mb"]}
    print(f"{'':15} {'register s':>10} {'reg CPU s':>9} {'peak read MB':>12} {'peak reg MB':>11} "
          f"{'CLI s':>7} {'CLI CPU s':>9} {'CLI peak MB':>11} {'MAM mm':>7}")
    for name, r in rows.items():
        g, c = r["register"], r["cli"]
        print(f"{name:15} {g['register_s']:10.1f} {g['register_cpu_s']:9.1f} {g['peak_after_read_mb']:12.0f} "
              f"{g['peak_after_register_mb']:11.0f} {c['wall_s']:7.1f} {c['cpu_s']:9.1f} {c['peak_rss_mb']:11.0f} "
              f"{c['minimal_margin_mm']:7.2f}")
    if "ratio_baseline_over_this" in result:
        print("baseline / this checkout: " + ", ".join(f"{k} {v:.1f}x" for k, v in
                                                       result["ratio_baseline_over_this"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
