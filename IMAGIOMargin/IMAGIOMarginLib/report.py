"""The margin report (``imagio margin`` and the demo's margin step): verdict, slices, 3D margin map, histogram.

Built on :mod:`imagio.report`. The 3D picture colours the tumour surface with the same per-point
``margin_mm`` values and the same colour map as the model that ``MarginLogic.add_to_scene`` puts in
the scene (:func:`imagio.report.margin_colormap`), so the report and Slicer show one map.
"""

from __future__ import annotations

import numpy as np

from imagio import report as rp
from imagio.geometry import centroid_ras
from imagio.report import Table, metrics_from_rows, step_report, write_step_report

from .logic import tumour_surface_polydata

VERDICT_LEVELS = {"sufficient": "ok", "insufficient": "warn", "incomplete": "bad"}
TUMOUR_COLOR = (0.9, 0.2, 0.2)
ZONE_COLOR = (0.2, 0.6, 0.9)
SURFACE_COLOR = (1.0, 1.0, 1.0)


def verdict(data: dict) -> tuple[str, str]:
    """(text, level) of a margin.json."""
    return str(data.get("verdict_text") or data.get("verdict")), VERDICT_LEVELS.get(str(data.get("verdict")), "info")


def margin_surface(result):
    """The tumour surface (RAS) the margins were measured on, with its per-point ``margin_mm`` (as the scene's model)."""
    poly = tumour_surface_polydata(result)
    return poly, np.asarray(result.metrics.surface_margin_mm, float)


def surface_cut(poly, point_ras, axis: str) -> np.ndarray:
    """The cut of a surface mesh (RAS mm) by the slice plane through ``point_ras`` (``axis``: axial, coronal or
    sagittal): its polylines as one (n, 3) RAS array, NaN rows between separate lines (empty when it misses)."""
    import vtk
    from vtk.util import numpy_support

    normal = {"axial": (0.0, 0.0, 1.0), "coronal": (0.0, 1.0, 0.0), "sagittal": (1.0, 0.0, 0.0)}[axis]
    plane = vtk.vtkPlane()
    plane.SetOrigin(*[float(v) for v in point_ras])
    plane.SetNormal(*normal)
    cutter = vtk.vtkCutter()
    cutter.SetCutFunction(plane)
    cutter.SetInputData(poly)
    stripper = vtk.vtkStripper()
    stripper.SetInputConnection(cutter.GetOutputPort())
    stripper.JoinContiguousSegmentsOn()
    stripper.Update()
    out = stripper.GetOutput()
    if out.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    pts = numpy_support.vtk_to_numpy(out.GetPoints().GetData()).astype(float)
    cells = out.GetLines()
    offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
    ids = numpy_support.vtk_to_numpy(cells.GetConnectivityArray())
    parts = []
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        parts += [pts[ids[lo:hi]], np.full((1, 3), np.nan)]
    return np.vstack(parts[:-1])


def figures(result, ct=None, window=None, name_prefix: str = "margin") -> list:
    """Slices through the thinnest point (axial, coronal), the 3D margin map and the histogram."""
    m = result.metrics
    thr = float(result.threshold_mm)
    image = ct if ct is not None else rp.blank_like(result.zone)
    win = window or (rp.WINDOWS["soft tissue"] if ct is not None else (0.0, 1000.0))
    mam = float(m.minimal_margin_mm)
    thin = np.asarray(m.thinnest_point_ras, float)
    overlays = [rp.Overlay(result.tumor_on_zone, TUMOUR_COLOR, "tumour"),
                rp.Overlay(result.zone, ZONE_COLOR, "ablation zone")]
    marker = rp.Marker(thin, f"thinnest point (margin {mam:.1f} mm)", (0.1, 1.0, 0.1))
    roi = [result.tumor_on_zone, result.zone]
    background = "CT" if ct is not None else "no CT given: masks on a grey background"
    poly, values = margin_surface(result)
    out = []
    outside = "" if mam >= 0 else " (negative: tumour outside the zone)"
    for axis in ("axial", "coronal"):
        cut = rp.Polyline(surface_cut(poly, thin, axis), "sub-voxel tumour surface", SURFACE_COLOR, 1.3)
        out.append(rp.slice_figure(
            image, overlays, thin, axis, win, markers=[marker], polylines=[cut] if len(cut.points_ras) else [],
            roi=roi, pad_mm=10.0, unit="HU" if ct is not None else None,
            caption=f"{axis.capitalize()} slice through the thinnest point ({background}): tumour (red outline) and "
                    f"ablation zone (blue outline) as drawn on the voxels; the thin white line is the sub-voxel "
                    f"tumour surface the margins are measured on, cut by this plane; the cross marks where the "
                    f"margin is smallest, {mam:.1f} mm{outside}, and lies on that line.",
            name=f"{name_prefix}_{axis}"))
    cmap = rp.margin_colormap(thr)
    centre = centroid_ras(result.tumor_on_zone)
    view = rp.view_towards(thin - centre)
    fig3d = rp.render_3d(
        [rp.Surface(poly, scalars="margin_mm", colormap=cmap, scalar_title="margin (mm)"),
         rp.surface_of(result.zone, ZONE_COLOR, 0.18, "ablation zone")],
        markers=[rp.Marker(thin, "thinnest point", (0.05, 0.05, 0.05))], view=view,
        caption=f"Tumour surface coloured by its margin to the ablation zone surface (mm; green >= "
                f"{1.5 * thr:g} mm, yellow = the {thr:g} mm threshold, red 0 mm, dark red: tumour outside the zone), "
                f"seen from the side of the thinnest point ({view}); the zone is the translucent blue shell. "
                f"Range shown {cmap[0][0]:g} to {cmap[-1][0]:g} mm; {100.0 * float(np.mean(values < thr)):.0f} % of "
                f"the surface points lie below {thr:g} mm.", name=f"{name_prefix}_3d")
    out.append(fig3d)
    centres = 0.5 * (m.histogram_edges_mm[:-1] + m.histogram_edges_mm[1:])
    out.append(rp.histogram_figure(centres, np.asarray(m.histogram_edges_mm, float), "signed margin, tumour surface "
                                   "to zone surface (mm)", weights=m.histogram_area_percent,
                                   ylabel="tumour surface (%)", vline=thr, vline_label=f"threshold {thr:g} mm",
                                   caption="Share of the tumour surface area per margin bin (mm); the dashed line is "
                                           "the threshold.", name=f"{name_prefix}_histogram"))
    return out


def metrics(result) -> list[tuple]:
    return [r for r in metrics_from_rows(result.table_rows()) if r[0] != "Verdict"]


def tables(result) -> list:
    m = result.metrics
    centres = 0.5 * (m.histogram_edges_mm[:-1] + m.histogram_edges_mm[1:])
    out = [Table("margin_histogram", [{"margin_mm": round(float(c), 3), "surface_area_percent": round(float(v), 4)}
                                      for c, v in zip(centres, m.histogram_area_percent, strict=True)],
                 "Margin histogram (share of the tumour surface per bin)")]
    if getattr(result, "plan_vs_achieved", None) is not None:
        pva = result.plan_vs_achieved
        out.append(Table("plan_vs_achieved", pva.table_rows(),
                         f"Plan versus achieved per tumour-surface sector (mm, mm2, %): planned but not ablated "
                         f"{pva.planned_not_ablated_ml:.2f} ml; tumour surface short of the plan by more than 0.5 mm: "
                         f"{pva.shortfall_percent:.1f} %"))
    return out


def build_report(result, data: dict | None = None, ct=None, inputs: dict | None = None):
    """The report of ``imagio margin``."""
    data = data if data is not None else result.to_dict()
    return step_report(
        "IMAGIO margin assessment", verdict(data), metrics(result), figures(result, ct), tables(result),
        notes=[*([result.grid_correction_text() + "."] if result.grid_correction_text() else []),
               f"Registration sigma {data['sigma_mm']:g} mm per axis ({data['sigma_source']}).",
               f"Rotation sigma {data['uncertainty']['rotation_sigma_deg']:g} deg "
               f"({data['uncertainty']['rotation_source']}).",
               f"Boundary sigma: tumour {data['uncertainty']['tumor_boundary_sigma_mm']:g} mm, zone "
               f"{data['uncertainty']['zone_boundary_sigma_mm']:g} mm ({data['uncertainty']['segmentation_source']}).",
               data["convention"], *data.get("notes", [])],
        inputs=inputs, subtitle="Minimal ablative margin, coverage and residual tumour of a tumour by an ablation "
                                "zone")


def write_report(out_dir, result, data: dict | None = None, ct=None, inputs: dict | None = None) -> list:
    """report.html, report.pdf, metrics.csv, margin_histogram.csv into ``out_dir``."""
    return write_step_report(out_dir, build_report(result, data, ct, inputs))


def demo_report(ctx) -> None:
    """The demo's margin part: the verdict line and the pictures, in the margin step's section."""
    result = ctx.case.results.get("margin")
    data = ctx.summary.get("margin", {})
    if result is None:
        ctx.report.add_verdict(f"Margin: {data.get('verdict', 'no result')}", "info")
        return
    text, level = verdict(result.to_dict())
    ctx.report.add_verdict(f"Margin: {text}", level)
    section = ctx.step_section("margin")
    section.figures += [f for f in figures(result, ctx.case.ct) if f is not None]
    section.tables += tables(result)
