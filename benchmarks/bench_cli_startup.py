"""Start-up cost of the command line: `imagio --help` and `imagio <cmd> --help` against a bare interpreter.

Peer: `python -c pass` (the interpreter's own start), measured in the same run. Prints, per command,
the median wall time of ``--repeat`` runs, its ratio to the peer, the import time that
``python -X importtime`` attributes to the top-level imports, and which heavy libraries
(numpy, SimpleITK, VTK, slicer, scipy, onnxruntime, pydicom) were imported.

    python benchmarks/bench_cli_startup.py [--repeat 7] [--json out.json]

Run it under the heavy lock (`flock /work/coord/heavy.lock ...`) so the timings are not disturbed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("numpy", "SimpleITK", "vtkmodules", "vtk", "slicer", "scipy", "onnxruntime", "pydicom")
COMMANDS = [[], ["segment"], ["models"], ["ablation"], ["ablation", "zone"], ["lungnav"], ["margin"], ["demo"],
            ["phantom"], ["convert"]]
PROBE = ("import sys, runpy\nsys.argv = ['imagio'] + {args!r} + ['--help']\n"
         "try:\n    runpy.run_module('imagio.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n")


def _run(cmd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def _importtime_s(args) -> tuple[float, list[str]]:
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE.format(args=args, heavy=HEAVY)],
                       capture_output=True, text=True, check=False)
    total_us, heavy = 0, []
    for line in r.stderr.splitlines():
        if line.startswith("HEAVY="):
            heavy = [m for m in line[6:].split(",") if m]
        elif line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            name = parts[2]
            if parts[1].strip().isdigit() and not name.startswith("  "):  # top-level imports only
                total_us += int(parts[1])
    return total_us / 1e6, heavy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    peer = statistics.median(_run([sys.executable, "-c", "pass"]) for _ in range(a.repeat))
    rows = []
    print(f"peer `python -c pass`: {peer * 1000:.0f} ms (median of {a.repeat})")
    for args in COMMANDS:
        wall = statistics.median(_run([sys.executable, "-m", "imagio.cli", *args, "--help"]) for _ in range(a.repeat))
        imp, heavy = _importtime_s(args)
        rows.append({"command": " ".join(["imagio", *args, "--help"]), "median_wall_s": round(wall, 4),
                     "ratio_to_bare_python": round(wall / peer, 2), "import_time_s": round(imp, 4),
                     "heavy_imports": heavy})
        print(f"{rows[-1]['command']:<32} {wall * 1000:7.0f} ms  x{wall / peer:5.1f} of the peer  imports "
              f"{imp * 1000:6.0f} ms  heavy: {', '.join(heavy) or 'none'}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"peer_s": peer, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
