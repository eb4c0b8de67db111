"""`imagio demo`: every workflow step that exists, on the phantom (or a case folder).

Writes ``scene.mrb`` (the Slicer scene with every node), ``report.html``
(pictures and numbers with units) and ``summary.json``. Each module adds
its step through ``IMAGIO<Step>Lib.demo.demo_step(ctx)``.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .bundle import save_mrb
from .cli_utils import staged_output, write_json
from .errors import ImagioError
from .geometry import describe_grid
from .io import combine_segments, read_image, read_segmentation
from .mrml import add_fiducials, segmentation_node_from_segments, volume_node_from_image
from .progress import Progress, terminal_progress
from .report import Report, slice_png
from .scene import new_scene

log = logging.getLogger(__name__)

#: (summary key, module providing demo_step), in workflow order.
STEPS = [
    ("planning", "IMAGIOPlanningLib.demo"),
    ("ablation", "IMAGIOAblationZoneLib.demo"),
    ("lungnav", "IMAGIOLungNavLib.demo"),
    ("margin", "IMAGIOMarginLib.demo"),
]


@dataclass
class DemoContext:
    scene: object
    out_dir: Path
    case: dict
    report: Report
    summary: dict = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)

    def image_path(self, name: str) -> Path:
        """Path for a picture of this report (under out_dir/images)."""
        d = self.out_dir / "images"
        d.mkdir(parents=True, exist_ok=True)
        return d / name


def load_case(case_dir: Path) -> dict:
    """A case folder: a CT (ct.nrrd / ct.nii.gz / ct.mha / image/ DICOM folder) and any *.seg.nrrd files."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise ImagioError(f"{case_dir} is not a folder", "Give a case folder (e.g. one written by 'imagio phantom')")
    ct_path = next((case_dir / n for n in ("ct.nrrd", "ct.nii.gz", "ct.nii", "ct.mha", "image")
                    if (case_dir / n).exists()), None)
    if ct_path is None:
        raise ImagioError(f"{case_dir} has no CT", "Put the CT in it as ct.nrrd, ct.nii.gz, ct.mha or a DICOM folder image/")
    ct = read_image(ct_path)
    files = sorted(case_dir.glob("*.seg.nrrd"))  # a name in two files: renamed with a warning, never replaced
    segments = {s.name: s for s in combine_segments([read_segmentation(f, reference=ct) for f in files],
                                                    [f.name for f in files])}
    info = {}
    if (case_dir / "case.json").exists():
        info = json.loads((case_dir / "case.json").read_text())
    return {"ct": ct, "segments": segments, "phantom": None, "info": info, "name": case_dir.name}


def run_demo(out_dir, case_dir=None, seed: int = 0, steps=None, progress: Progress | None = None) -> dict:
    """Run the demo; returns the summary dict. Raises ImagioError for bad input."""
    from .phantom import make_phantom

    progress = progress or Progress(terminal_progress())
    t0 = time.perf_counter()
    selected = [s for s in STEPS if steps is None or s[0] in steps]
    if steps is not None:
        unknown = set(steps) - {s[0] for s in STEPS}
        if unknown:
            raise ImagioError(f"Unknown demo step(s): {', '.join(sorted(unknown))}",
                              "Choose among " + ", ".join(s[0] for s in STEPS))
    with staged_output(out_dir, inputs=[case_dir] if case_dir else ()) as stage:
        progress.update(0.0, "preparing the case")
        if case_dir is None:
            phantom = make_phantom(seed)
            case = {"ct": phantom.ct, "segments": dict(phantom.segments), "phantom": phantom,
                    "info": phantom.info, "name": f"phantom (seed {seed})"}
        else:
            case = load_case(Path(case_dir))
        scene = new_scene()
        case["ct_node"] = volume_node_from_image(scene, case["ct"], "CT")
        if case["segments"]:
            case["truth_seg_node"] = segmentation_node_from_segments(
                scene, list(case["segments"].values()),
                "Phantom truth" if case["phantom"] is not None else "Case segments", case["ct_node"])
        else:
            case["truth_seg_node"] = None
        report = Report(f"IMAGIO demo report: {case['name']}")
        ctx = DemoContext(scene, stage, case, report, progress=progress)
        ctx.summary["imagio_version"] = __version__
        ctx.summary["case"] = {"name": case["name"], "grid": describe_grid(case["ct"])}
        _case_section(ctx)
        n = len(selected)
        for idx, (key, module_name) in enumerate(selected):
            sub = progress.sub(0.05 + 0.85 * idx / n, 0.05 + 0.85 * (idx + 1) / n)
            sub.update(0.0, f"{key}: starting")
            ctx.progress = sub
            t = time.perf_counter()
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name is None or not module_name.startswith(e.name):
                    raise  # a missing dependency inside the step is a real failure
                ctx.summary[key] = {"status": "not available", "reason": str(e)}
                report.add_section(f"{key}: not available", text=f"This step is not installed ({e}).")
                continue
            try:
                module.demo_step(ctx)
                ctx.summary.setdefault(key, {})
                ctx.summary[key].setdefault("status", "ok")
            except ImagioError as e:
                ctx.summary[key] = {"status": "failed", "error": str(e)}
                report.add_section(f"{key}: failed", text=str(e))
            except Exception as e:  # noqa: BLE001 - a broken step must not hide the others
                log.debug("demo step %s failed", key, exc_info=True)
                ctx.summary[key] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                    "traceback": traceback.format_exc(limit=5)}
                report.add_section(f"{key}: failed", text=f"{type(e).__name__}: {e}")
            ctx.summary[key]["runtime_s"] = round(time.perf_counter() - t, 3)
            sub.update(1.0, f"{key}: {ctx.summary[key]['status']} ({ctx.summary[key]['runtime_s']:.1f} s)")
        progress.update(0.92, "writing the scene bundle")
        save_mrb(scene, stage / "scene.mrb")
        ctx.summary["total_runtime_s"] = round(time.perf_counter() - t0, 2)
        report.add_section("Run", [("total run time", ctx.summary["total_runtime_s"], "s")])
        report.write_html(stage / "report.html")
        write_json(stage / "summary.json", ctx.summary)
        progress.update(1.0, f"done in {ctx.summary['total_runtime_s']:.1f} s")
    return ctx.summary


def _case_section(ctx: DemoContext) -> None:
    case = ctx.case
    ct, segs = case["ct"], case["segments"]
    metrics = [("CT grid", describe_grid(ct), "voxels, mm")]
    metrics += [(f"{name} volume", s.volume_ml(), "ml") for name, s in segs.items()]
    images = []
    overlays = [(s.mask, s.color) for name, s in segs.items() if name not in ("body", "lungs", "ribs", "liver")]
    if case.get("phantom") is not None:
        ph = case["phantom"]
        images.append(slice_png(ctx.image_path("case_coronal.png"), ct, overlays, [0.0, 10.0, 0.0], "coronal",
                                window=(-400, 1500)))
        images.append(slice_png(ctx.image_path("case_axial_liver.png"), ct, overlays, ph.liver_tumor_center_ras))
        add_fiducials(ctx.scene, "Targets", [ph.lung_nodule_center_ras, ph.liver_tumor_center_ras],
                      ["lung nodule", "liver tumour"])
        metrics.append(("airway generations (truth)", ph.info["airway_generations"], ""))
    else:
        images.append(slice_png(ctx.image_path("case_axial.png"), ct, overlays))
    ctx.report.add_section("Case", metrics, images,
                           text="Digital phantom: synthetic CT in HU with known ground truth." if case.get("phantom")
                           else "")
    ctx.summary["case"]["segments_ml"] = {n: round(s.volume_ml(), 3) for n, s in segs.items()}


def demo_numbers(summary: dict) -> list[str]:
    """One line per step for the terminal."""
    lines = []
    for key, _ in STEPS:
        if key in summary:
            s = summary[key]
            lines.append(f"  {key:9s} {s.get('status')}" + (f": {s.get('error')}" if s.get("error") else ""))
    return lines


__all__ = ["DemoContext", "run_demo", "load_case", "STEPS"]
