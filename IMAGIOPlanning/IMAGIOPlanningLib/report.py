"""The segmentation report (``imagio segment`` and the demo's planning step): what was found, where, how large.

Built on :mod:`imagio.report`: one axial and one coronal slice through each segment's centre (cropped
to it), a 3D picture of the segments, and the segment table (also as CSV).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio import naming
from imagio import report as rp
from imagio.geometry import centroid_ras
from imagio.io import Segment
from imagio.report import WINDOWS, Table, step_report, write_step_report


def verdict(result, method: str | None = None) -> tuple[str, str]:
    """(text, level): the segments found with their volumes, and the labels the model did not find."""
    segs = result.segments
    how = {"model": "the model", "seeded": "the seeded segmentation"}.get(method or result.method, "IMAGIO")
    found = ", ".join(f"{s['name']} {s['volume_ml']:.2f} ml" for s in segs) or "nothing"
    text = f"{how.capitalize()} found {found}"
    if result.empty_labels:
        text += f"; not found: {', '.join(result.empty_labels)}"
        return text, "warn"
    return text, "ok" if segs else "bad"


def _window(ct, mask) -> tuple[float, float]:
    """The lung window for a lesion in aerated lung, else the soft-tissue window."""
    site, _ = naming.lesion_site(Segment("lesion", sitk.Cast(mask > 0, sitk.sitkUInt8)), [], ct)
    return WINDOWS["lung"] if site == "lung" else WINDOWS["soft tissue"]


def figures(ct, segments, seed_ras=None, truth=None, name_prefix: str = "segment", max_segments: int = 4) -> list:
    """Slices through the largest segments (and a 3D picture). ``truth``: optional (mask, label) to compare."""
    segs = sorted([s for s in segments if s.voxel_count() > 0], key=lambda s: -s.voxel_count())[:max_segments]
    out = []
    for n, s in enumerate(segs):
        overlays = [rp.Overlay(s.mask, tuple(s.color), f"{s.name} (IMAGIO)")]
        if truth is not None:
            overlays.insert(0, rp.Overlay(truth[0], (0.2, 0.85, 0.2), truth[1], fill_opacity=0.0))
        markers = [rp.Marker(np.asarray(seed_ras, float), "seed point", (0.1, 1.0, 0.1))] if seed_ras is not None else []
        centre = np.asarray(seed_ras, float) if seed_ras is not None and n == 0 else centroid_ras(s.mask)
        win = _window(ct, s.mask)
        for axis in ("axial", "coronal"):
            out.append(rp.slice_figure(
                ct, overlays, centre, axis, win, markers=markers, roi=[o.mask for o in overlays], pad_mm=15.0,
                caption=f"{axis.capitalize()} slice through '{s.name}' ({s.volume_ml():.2f} ml)"
                        + (", with the reference segmentation (green outline)" if truth is not None else "") + ".",
                name=f"{name_prefix}_{n + 1}_{axis}"))
    if segs:
        out.append(rp.render_3d([rp.surface_of(s.mask, tuple(s.color), 1.0, s.name) for s in segs], view="anterior",
                                caption="The segments in 3D, seen from the front (patient right on the left).",
                                name=f"{name_prefix}_3d"))
    return out


def segment_table(result):
    return Table("segments", [{"segment": s["name"], "volume_ml": s["volume_ml"], "voxels": s.get("voxel_count"),
                               "label_value": s.get("label_value")} for s in result.segments],
                 "Segments (volume in ml)")


def metrics(result) -> list[tuple]:
    rows = [(f"{s['name']} volume", s["volume_ml"], "ml") for s in result.segments]
    rows += [(f"{name}", "not found", "") for name in result.empty_labels]
    rows.append(("run time", result.runtime_s, "s"))
    if result.execution_provider:
        rows.append(("execution provider", result.execution_provider, ""))
    for k, v in (result.details or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            sfx, unit = next(((sfx, u) for sfx, u in (("_mm", "mm"), ("_ml", "ml"), ("_s", "s"), ("_percent", "%"),
                                                       ("_hu", "HU")) if k.lower().endswith(sfx)), ("", ""))
            rows.append((k[: len(k) - len(sfx)].replace("_", " "), v, unit))
    return rows


def write_report(out_dir, result, segments, ct, seed_ras=None, inputs: dict | None = None) -> list:
    rep = step_report("IMAGIO lesion segmentation", verdict(result), metrics(result),
                      figures(ct, segments, seed_ras), [segment_table(result)], inputs=inputs,
                      warnings=list(getattr(result, "warnings", []) or []),
                      subtitle="Lesion segmentation with an ONNX model or from one seed point",
                      notes=["Correct the segmentation in Slicer's Segment Editor (segment.mrb) before using it."])
    return write_step_report(out_dir, rep)


def demo_report(ctx) -> None:
    s = ctx.summary.get("planning", {})
    parts = []
    if isinstance(s.get("model"), dict) and s["model"].get("segments"):
        parts.append("model: " + ", ".join(f"{x['name']} {x['volume_ml']:.2f} ml"
                                           + (f" (Dice {x['dice_vs_truth']:.2f} vs truth)" if "dice_vs_truth" in x
                                              else "") for x in s["model"]["segments"]))
    refused = None
    if "seeded" in s and "refused" in s["seeded"]:  # a refusal is said as one, never as a volume of "nan ml"
        refused = f"seeded {s['seeded'].get('kind')} refused: {s['seeded']['refused']}"
    elif "seeded" in s:
        sd = s["seeded"]
        parts.append(f"seeded {sd.get('kind')}: {sd.get('volume_ml', float('nan')):.2f} ml"
                     + (f" (Dice {sd['dice_vs_truth']:.2f} vs " + ("the phantom truth" if ctx.case.is_phantom
                                                                    else f"the case's '{sd.get('segment')}'") + ")"
                        if "dice_vs_truth" in sd else ""))
    said = parts + ([refused] if refused else [])
    ctx.report.add_verdict("Segmentation: " + ("; ".join(said) if said else "nothing segmented"),
                           "warn" if refused else "ok" if parts else "info")
    res = ctx.case.results.get("planning")
    if not isinstance(res, dict):
        return
    section = ctx.step_section("planning")
    for segs, seed, truth, prefix in res.get("pictures", []):
        section.figures += [f for f in figures(ctx.case.ct, segs, seed, truth, prefix, max_segments=2) if f is not None]
