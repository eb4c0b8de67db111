"""Background inference process: ``python worker.py --ct CT --card CARD --work DIR``.

Started by the Slicer widget (with Slicer's own Python, ``PythonSlicer``) or
by :class:`IMAGIOPlanningLib.background.BackgroundJob`, so that Slicer never
freezes. It imports no Slicer code: only numpy, SimpleITK, onnxruntime and
IMAGIO's engine. It communicates through files in ``DIR``:

* ``progress.json``  {"fraction", "message"} rewritten atomically as it runs;
* ``labels.nrrd``    the label map on the CT grid (uint8), on success;
* ``result.json``    {"status": "ok", "execution_provider", "runtime_s", "windows"}
  or {"status": "error", "error": "..."}.

Exit status: 0 success, 2 user error (ImagioError), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="IMAGIO Planning background segmentation (no Slicer code)")
    ap.add_argument("--ct", required=True, help="CT image file (NRRD/NIfTI/MHA)")
    ap.add_argument("--card", required=True, help="model card (.json)")
    ap.add_argument("--work", required=True, help="folder for progress.json, labels.nrrd, result.json")
    ap.add_argument("--mirroring", choices=("card", "on", "off"), default="card")
    ap.add_argument("--largest-component", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    progress_file, result_file = work / "progress.json", work / "result.json"
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2 or fraction >= 1.0:
            last[0] = now
            _write_json(progress_file, {"fraction": float(fraction), "message": message})

    try:
        import SimpleITK as sitk

        from imagio.engine import Mirroring, OnnxSegmenter
        from imagio.errors import ImagioError
        from imagio.progress import Progress
    except ImportError as e:
        _write_json(result_file, {"status": "error", "error": f"Cannot start the segmentation process: {e}"})
        return 1
    try:
        report(0.0, "Starting")
        try:
            ct = sitk.ReadImage(str(a.ct))
        except RuntimeError as e:
            raise ImagioError(f"Cannot read {a.ct} ({str(e).strip().splitlines()[-1][:200]})", "") from None
        seg = OnnxSegmenter(a.card, threads=a.threads)
        res = seg.predict(ct, mirroring=Mirroring.coerce(a.mirroring), largest_component=a.largest_component, progress=Progress(report))
        sitk.WriteImage(res.labels, str(work / "labels.nrrd"), True)
        report(1.0, "Done")
        _write_json(result_file, {"status": "ok", "execution_provider": res.provider,
                                  "runtime_s": res.runtime_s, "windows": res.windows})
        return 0
    except ImagioError as e:
        _write_json(result_file, {"status": "error", "error": str(e)})
        return 2
    except Exception as e:  # noqa: BLE001 - report anything to the widget instead of dying silently
        _write_json(result_file, {"status": "error", "error": f"{type(e).__name__}: {e}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
