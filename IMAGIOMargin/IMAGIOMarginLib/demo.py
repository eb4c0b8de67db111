"""The margin step of `imagio demo`: a margin report for the phantom's liver tumour.

The phantom has no post-treatment CT. When an earlier step left an ablation
zone in ``ctx.case["ablation_zone"]`` (a Segment on the CT grid) that zone
is assessed; otherwise a made-up but plausible one: an ellipsoid around the
tumour (long axis head-feet) placed 3 mm off-centre, so that one side is
thin. The report shows the
metrics with units, a slice with tumour, zone and thinnest point, and the
margin histogram.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import centroid_ras, ijk_to_ras
from imagio.io import Segment

from .logic import MarginLogic


def synthetic_zone(tumor: sitk.Image, extra_mm: float = 8.0, offset_ras=(3.0, 0.0, 0.0)) -> sitk.Image:
    """An ellipsoidal 'ablation zone' on the tumour's grid: tumour extent + ``extra_mm``, shifted by ``offset_ras``."""
    arr = sitk.GetArrayViewFromImage(tumor) > 0
    kji = np.argwhere(arr)
    if len(kji) == 0:
        raise ImagioError("The tumour segment is empty", "The demo needs a tumour to ablate")
    pts = ijk_to_ras(tumor, kji[:, ::-1].astype(float))
    center = pts.mean(axis=0) + np.asarray(offset_ras, float)
    semi = np.abs(pts - pts.mean(axis=0)).max(axis=0) + extra_mm
    semi[2] *= 1.2
    sp = np.array(tumor.GetSpacing())[::-1]
    pad = np.ceil((semi.max() + np.abs(offset_ras).max() + 5.0) / sp).astype(int)
    lo = np.maximum(kji.min(axis=0) - pad, 0)
    hi = np.minimum(kji.max(axis=0) + pad, np.array(arr.shape) - 1)
    grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
    ras = ijk_to_ras(tumor, grid.reshape(-1, 3)[:, ::-1].astype(float))
    inside = (((ras - center) / semi) ** 2).sum(axis=1) <= 1.0
    out = np.zeros(arr.shape, np.uint8)
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = inside.reshape(grid.shape[:3])
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(tumor)
    return img


def demo_step(ctx) -> None:
    tumor = ctx.case.tumor  # chosen once by imagio.demo (terminology, common names or --tumor-segment)
    if tumor is None:
        raise ImagioError("The case has no tumour segment", "Name it with --tumor-segment")
    zone = ctx.case.ablation_zone  # handed on by the ablation step
    if isinstance(zone, Segment):
        source = f"the ablation step's zone: {zone.name}"
    else:
        ctx.progress.update(0.05, "margin: making an ablation zone around the tumour")
        zone = Segment("ablation zone (synthetic)", synthetic_zone(tumor.mask), (0.2, 0.6, 0.9), 1)
        source = "synthetic ablation zone: ellipsoid 8 mm beyond the tumour, 3 mm off-centre"
    logic = MarginLogic(ctx.scene)
    result = logic.assess(tumor, zone, progress=ctx.progress.sub(0.1, 0.8))
    nodes = logic.add_to_scene(result, "Margin")
    data = result.to_dict()
    ctx.case.results["margin"] = result  # its pictures: IMAGIOMarginLib.report.demo_report
    metrics = [(r["metric"], r["value"], r["unit"]) for r in result.table_rows() if r["metric"] != "Verdict"]
    ctx.report.add_section(
        f"Ablation margin ({tumor.name}, {source})", metrics,
        text=". ".join(part for part in (data["verdict_text"], result.grid_correction_text(),
                                         f"Sigma {data['sigma_mm']:g} mm ({data['sigma_source']})",
                                         data["convention"]) if part))
    ctx.summary["margin"] = {k: data[k] for k in (
        "minimal_margin_mm", "coverage_percent", "shell_coverage_percent", "residual_tumor_ml", "thinnest_point_ras",
        "margin_ci_mm", "p_margin_ge_threshold", "verdict", "threshold_mm", "sigma_mm")}
    ctx.summary["margin"]["zone_source"] = source
    ctx.summary["margin"]["nodes"] = [nodes.model.GetName(), nodes.thinnest.GetName(), nodes.table.GetName()]
    ctx.summary["margin"]["tumor_centroid_ras"] = [round(float(v), 2) for v in centroid_ras(tumor.mask)]
