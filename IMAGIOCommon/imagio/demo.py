"""`imagio demo`: every workflow step that applies, on the phantom or on a real case folder.

Writes ``scene.mrb`` (the Slicer scene with every node), ``report.html`` (self-contained),
``report.pdf``, ``metrics.csv`` (+ one CSV per table) and ``summary.json``. Each module adds
its step through ``IMAGIO<Step>Lib.demo.demo_step(ctx)``.

The case is a typed :class:`DemoCase`. What each step hands the next is a field of it: the
ablation step sets ``case.ablation_zone`` (a :class:`Segment` on the CT grid) and the margin
step assesses that zone; steps put their typed results in ``case.results[step]`` for the
report. Which segment is the tumour, where it is (lung, liver, soft tissue) and which other
segments are organs, vessels or airways is decided once, here, by :mod:`imagio.naming`
(terminology tags, then common names), or by the user (``--tumor-segment``). A step that does
not apply to the case (lung navigation for a liver tumour) is recorded as
``{"status": "skipped", "reason": ...}``.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__, naming
from .bundle import save_mrb
from .cli_utils import staged_output, write_json
from .errors import ImagioError
from .geometry import describe_grid
from .io import Segment, combine_segments, read_image, read_segmentation
from .mrml import add_fiducials, segmentation_node_from_segments, volume_node_from_image
from .phantom import make_phantom
from .progress import Progress, terminal_progress
from .report import WINDOWS, Overlay, Report, Table, slice_figure
from .scene import new_scene

log = logging.getLogger(__name__)

#: (summary key, module providing demo_step), in workflow order.
STEPS = [
    ("planning", "IMAGIOPlanningLib.demo"),
    ("ablation", "IMAGIOAblationZoneLib.demo"),
    ("lungnav", "IMAGIOLungNavLib.demo"),
    ("margin", "IMAGIOMarginLib.demo"),
]

#: Human names of the sites.
SITE_NAMES = {"lung": "lung", "liver": "liver", "soft_tissue": "soft tissue"}


@dataclass
class DemoCase:
    """The case the demo runs on, and what each step hands the next.

    ``tumor`` is the lesion the ablation, margin and seeded-segmentation steps work on;
    ``lung_target`` the lesion the lung navigation routes to (the tumour when it is in the lung;
    on the phantom its lung nodule). ``tumor_site`` is "lung", "liver" or "soft_tissue", with the
    reason in ``tumor_site_reason``. ``roles`` maps segment names to their role (see
    :mod:`imagio.naming`).
    """

    name: str
    ct: sitk.Image
    segments: dict[str, Segment] = field(default_factory=dict)
    phantom: object | None = None
    info: dict = field(default_factory=dict)
    ct_node: object | None = None
    truth_seg_node: object | None = None
    tumor: Segment | None = None
    tumor_site: str | None = None
    tumor_site_reason: str = ""
    tumor_choice: str = ""
    lung_target: Segment | None = None
    roles: dict[str, str | None] = field(default_factory=dict)
    #: handed from the ablation step to the margin step (a Segment on the CT grid)
    ablation_zone: Segment | None = None
    #: typed results of the steps (MarginResult, LungNavResult, ...), for the report
    results: dict[str, object] = field(default_factory=dict)

    # -- what the steps ask for
    def structures(self, *roles: str) -> list[Segment]:
        """The segments with one of ``roles`` (e.g. "vessel", "bone"), the tumour excluded."""
        return [s for n, s in self.segments.items() if self.roles.get(n) in roles and s is not self.tumor]

    def union(self, *roles: str) -> sitk.Image | None:
        """One mask of every segment with one of ``roles`` (None when there is none)."""
        segs = self.structures(*roles)
        if not segs:
            return None
        arr = np.zeros(sitk.GetArrayViewFromImage(segs[0].mask).shape, bool)
        for s in segs:
            arr |= sitk.GetArrayViewFromImage(s.mask) > 0
        img = sitk.GetImageFromArray(arr.astype(np.uint8))
        img.CopyInformation(segs[0].mask)
        return img

    @property
    def is_phantom(self) -> bool:
        return self.phantom is not None

    # -- the dict view older demo steps use (case["ct"], case.get("ablation_zone"), ...)
    def __getitem__(self, key: str):
        if not hasattr(self, key):
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        if key not in self.__dataclass_fields__:
            raise KeyError(f"DemoCase has no field '{key}'")
        setattr(self, key, value)

    def __contains__(self, key: str) -> bool:
        return getattr(self, key, None) is not None

    def get(self, key: str, default=None):
        value = getattr(self, key, None)
        return default if value is None else value


@dataclass
class DemoContext:
    scene: object
    out_dir: Path
    case: DemoCase
    report: Report
    summary: dict = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)

    #: the report sections each step added (the step's report builder adds its pictures there)
    sections_of: dict = field(default_factory=dict)

    def image_path(self, name: str) -> Path:
        """Path for a picture of this report (under out_dir/images)."""
        d = self.out_dir / "images"
        d.mkdir(parents=True, exist_ok=True)
        return d / name

    def step_section(self, key: str):
        """The first report section the step ``key`` added (a new one if it added none)."""
        secs = self.sections_of.get(key) or []
        if secs:
            return secs[0]
        sec = self.report.add_section(key)
        self.sections_of[key] = [sec]
        return sec


# ============================================================================================ the case
def load_case(case_dir: Path, tumor_segment: str | None = None) -> DemoCase:
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
        try:
            info = json.loads((case_dir / "case.json").read_text())
        except ValueError:
            raise ImagioError(f"{case_dir / 'case.json'} is not valid JSON", "Fix or remove it") from None
    case = DemoCase(case_dir.name, ct, segments, None, info if isinstance(info, dict) else {})
    classify_case(case, tumor_segment)
    return case


def phantom_case(seed: int = 0) -> DemoCase:
    ph = make_phantom(seed)
    case = DemoCase(f"phantom (seed {seed})", ph.ct, dict(ph.segments), ph, ph.info)
    classify_case(case)
    return case


def classify_case(case: DemoCase, tumor_segment: str | None = None) -> DemoCase:
    """Roles of the segments, the tumour, its site and the lung target (the one place these are guessed)."""
    case.roles = {n: naming.role_of(s) for n, s in case.segments.items()}
    tumor = naming.choose_tumor(case.segments, tumor_segment)
    case.tumor = tumor
    if tumor is None:
        case.tumor_choice = "no segment looks like a tumour (GTV, tumour, lesion, nodule, mass, metastasis, ...)"
        return case
    lesions = [s for s in naming.lesions(case.segments) if s.voxel_count() > 0]
    if tumor_segment:
        case.tumor_choice = f"'{tumor.name}', named with --tumor-segment"
    elif len(lesions) == 1:
        case.tumor_choice = f"'{tumor.name}', the only tumour-like segment"
    else:
        case.tumor_choice = (f"'{tumor.name}', the largest of {len(lesions)} tumour-like segments "
                             f"({', '.join(s.name for s in lesions)}); name another with --tumor-segment")
    case.roles[tumor.name] = "lesion"
    case.tumor_site, case.tumor_site_reason = naming.lesion_site(tumor, case.segments, case.ct)
    if case.tumor_site == "lung":
        case.lung_target = tumor
    elif not tumor_segment:
        in_lung = [s for s in lesions if s is not tumor and naming.lesion_site(s, case.segments, case.ct)[0] == "lung"]
        case.lung_target = max(in_lung, key=lambda s: s.voxel_count()) if in_lung else None
    return case


def step_skip_reason(key: str, case: DemoCase) -> str | None:
    """Why a step does not apply to the case (None: it runs)."""
    if key == "planning":
        if not case.is_phantom and case.tumor is None:
            return "no tumour segment to seed from (and the shipped model is trained on the phantom only)"
        return None
    if case.tumor is None and key in ("ablation", "margin"):
        return f"no tumour: {case.tumor_choice}"
    if key == "lungnav":
        if case.lung_target is None:
            site = SITE_NAMES.get(case.tumor_site or "", "unknown")
            return (f"the tumour is not in the lung (site: {site}; {case.tumor_site_reason})" if case.tumor is not None
                    else "no lesion in the lung to route to")
    return None


# ============================================================================================ running
def run_demo(out_dir, case_dir=None, seed: int = 0, steps=None, progress: Progress | None = None,
             tumor_segment: str | None = None) -> dict:
    """Run the demo; returns the summary dict. Raises ImagioError for bad input."""
    progress = progress or Progress(terminal_progress())
    t0 = time.perf_counter()
    selected = [s for s in STEPS if steps is None or s[0] in steps]
    if steps is not None:
        unknown = set(steps) - {s[0] for s in STEPS}
        if unknown:
            raise ImagioError(f"Unknown demo step(s): {', '.join(sorted(unknown))}",
                              "Choose among " + ", ".join(s[0] for s in STEPS))
    if tumor_segment is not None and case_dir is None:
        raise ImagioError("--tumor-segment names a segment of a --case", "Give --case DIR with it")
    with staged_output(out_dir, inputs=[case_dir] if case_dir else ()) as stage:
        progress.update(0.0, "preparing the case")
        case = phantom_case(seed) if case_dir is None else load_case(Path(case_dir), tumor_segment)
        scene = new_scene()
        case.ct_node = volume_node_from_image(scene, case.ct, "CT")
        if case.segments:
            case.truth_seg_node = segmentation_node_from_segments(
                scene, list(case.segments.values()), "Phantom truth" if case.is_phantom else "Case segments",
                case.ct_node)
        report = Report(f"IMAGIO demo: {case.name}",
                        "The whole IMAGIO workflow on " + ("the digital phantom (synthetic CT with known truth)"
                                                           if case.is_phantom else f"the case folder '{case.name}'"))
        ctx = DemoContext(scene, stage, case, report, progress=progress)
        ctx.summary["imagio_version"] = __version__
        ctx.summary["case"] = {"name": case.name, "grid": describe_grid(case.ct),
                               "tumor": case.tumor.name if case.tumor is not None else None,
                               "tumor_choice": case.tumor_choice, "tumor_site": case.tumor_site,
                               "tumor_site_reason": case.tumor_site_reason,
                               "lung_target": case.lung_target.name if case.lung_target is not None else None,
                               "roles": {n: r for n, r in case.roles.items()}}
        _case_section(ctx)
        n = len(selected)
        for idx, (key, module_name) in enumerate(selected):
            sub = progress.sub(0.05 + 0.85 * idx / n, 0.05 + 0.85 * (idx + 1) / n)
            ctx.progress = sub
            t = time.perf_counter()
            reason = step_skip_reason(key, case)
            if reason is not None:
                ctx.summary[key] = {"status": "skipped", "reason": reason}
                sub.update(1.0, f"{key}: skipped ({reason})")
                continue
            sub.update(0.0, f"{key}: starting")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name is None or not module_name.startswith(e.name):
                    raise  # a missing dependency inside the step is a real failure
                ctx.summary[key] = {"status": "not available", "reason": str(e)}
                report.add_section(f"{key}: not available", text=f"This step is not installed ({e}).")
                continue
            n_sections = len(report.sections)
            try:
                module.demo_step(ctx)
                ctx.sections_of[key] = report.sections[n_sections:]
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
        progress.update(0.91, "writing the report")
        _finish_report(ctx, selected)
        progress.update(0.95, "writing the scene bundle")
        save_mrb(scene, stage / "scene.mrb")
        ctx.summary["total_runtime_s"] = round(time.perf_counter() - t0, 2)
        report.add_section("Run", [("total run time", ctx.summary["total_runtime_s"], "s")]
                           + [(f"{k} step", ctx.summary[k].get("runtime_s"), "s") for k, _ in selected
                              if "runtime_s" in ctx.summary.get(k, {})])
        ctx.summary["files"] = [f.name for f in report.write(stage)] + ["scene.mrb", "summary.json", "images/"]
        report.save_figures(stage / "images")
        write_json(stage / "summary.json", ctx.summary)
        progress.update(1.0, f"done in {ctx.summary['total_runtime_s']:.1f} s")
    return ctx.summary


def _finish_report(ctx: DemoContext, selected) -> None:
    """Verdicts first (one per step), step extras from the modules' report builders, skipped steps."""
    for key, _ in selected:
        s = ctx.summary.get(key, {})
        status = s.get("status")
        if status == "skipped":
            ctx.report.add_verdict(f"{key}: skipped - {s.get('reason')}", "info")
            ctx.report.add_section(f"{key}: skipped", text=str(s.get("reason")))
            continue
        if status in ("failed", "not available"):
            ctx.report.add_verdict(f"{key}: {status} - {s.get('error') or s.get('reason')}", "bad")
            continue
        builder = _report_module(key)
        if builder is not None and hasattr(builder, "demo_report"):
            try:
                builder.demo_report(ctx)
            except Exception as e:  # noqa: BLE001 - a picture that cannot be made must not lose the run
                log.warning("report extras of %s failed: %s", key, e)
                ctx.report.add_verdict(f"{key}: ok (its report pictures failed: {type(e).__name__}: {e})", "warn")
        else:
            ctx.report.add_verdict(f"{key}: {status}", "info")


def _report_module(key: str):
    name = dict(STEPS).get(key, "").replace(".demo", ".report")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):
            return None
        raise


def _case_section(ctx: DemoContext) -> None:
    case = ctx.case
    ct, segs = case.ct, case.segments
    metrics = [("CT grid", describe_grid(ct), "voxels, mm")]
    metrics += [(f"{name} volume", s.volume_ml(), "ml") for name, s in segs.items()]
    figures = []
    shown = [n for n, r in case.roles.items() if r in ("lesion", "vessel", "airway", "ablation_zone")]
    overlays = [Overlay(segs[n].mask, segs[n].color, n) for n in shown]
    if case.is_phantom:
        ph = case.phantom
        airway = [Overlay(segs[n].mask, segs[n].color, n) for n in shown if case.roles[n] == "airway"]
        figures.append(slice_figure(ct, airway + [Overlay(case.lung_target.mask, case.lung_target.color,
                                                          case.lung_target.name)] if case.lung_target else airway,
                                    [0.0, 10.0, 0.0], "coronal", window=WINDOWS["lung"], roi=(),
                                    caption="Coronal slice through the airway tree: airway lumen and lung nodule "
                                            "(phantom truth).", name="case_coronal"))
        add_fiducials(ctx.scene, "Targets", [ph.lung_nodule_center_ras, ph.liver_tumor_center_ras],
                      ["lung nodule", "liver tumour"])
        metrics.append(("airway generations (truth)", ph.info["airway_generations"], ""))
    if case.tumor is not None:
        window = WINDOWS["lung"] if case.tumor_site == "lung" else WINDOWS["soft tissue"]
        around = [ov for ov in overlays if ov.label != case.tumor.name and case.roles.get(ov.label) != "airway"]
        figures.append(slice_figure(ct, [Overlay(case.tumor.mask, case.tumor.color, f"{case.tumor.name} (tumour)")]
                                    + around, axis="axial", window=window, roi=[case.tumor.mask], pad_mm=25.0,
                                    caption=f"Axial slice through the centre of the tumour '{case.tumor.name}' "
                                            f"({case.tumor.volume_ml():.2f} ml), with the vessels, airways and "
                                            "other lesions of the case.", name="case_tumor"))
    text = (f"Tumour: {case.tumor_choice}. Site: {SITE_NAMES.get(case.tumor_site or '', 'none')}"
            + (f" ({case.tumor_site_reason})" if case.tumor_site_reason else "") + ".")
    if case.lung_target is not None and case.lung_target is not case.tumor:
        text += f" Lung navigation target: '{case.lung_target.name}'."
    if case.is_phantom:
        text = "Digital phantom: synthetic CT in HU with known ground truth. " + text
    roles = [{"segment": n, "role": r or "(not recognised)", "volume_ml": round(segs[n].volume_ml(), 3),
              "SNOMED CT type": naming.terminology_of(segs[n]).type.meaning}
             for n, r in case.roles.items()]
    ctx.report.add_section("Case", metrics, figures=figures, text=text,
                           tables=[Table("segments", roles, "Segments and what IMAGIO takes them for")])
    ctx.summary["case"]["segments_ml"] = {n: round(s.volume_ml(), 3) for n, s in segs.items()}


def demo_numbers(summary: dict) -> list[str]:
    """One line per step for the terminal."""
    lines = []
    for key, _ in STEPS:
        if key in summary:
            s = summary[key]
            detail = s.get("error") or (s.get("reason") if s.get("status") == "skipped" else None)
            lines.append(f"  {key:9s} {s.get('status')}" + (f": {detail}" if detail else ""))
    return lines


__all__ = ["DemoCase", "DemoContext", "run_demo", "load_case", "phantom_case", "classify_case", "step_skip_reason",
           "STEPS"]
