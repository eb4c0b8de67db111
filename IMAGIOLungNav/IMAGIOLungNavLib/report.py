"""The lung navigation report (``imagio lungnav`` and the demo's step): verdict, the route on its slices, 3D tree.

Built on :mod:`imagio.report`: a coronal slice along the route (solid where the route runs within
the slice, dashed where it is projected onto it), an axial slice through the target with the exit
point and the gap line, and a 3D picture of the airway tree with the route and the target.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio import report as rp
from imagio.geometry import ijk_to_ras
from imagio.report import Table, step_report, write_step_report

ROUTE_COLOR = (1.0, 0.85, 0.1)
LESION_COLOR = (0.95, 0.3, 0.1)
AIRWAY_COLOR = (0.35, 0.65, 0.95)


def verdict(route: dict, scope_mm: float | None = None) -> tuple[str, str]:
    """(text, level) of a route.json: the route, where it leaves the airways, and whether the scope fits."""
    scope = f"a {scope_mm:g} mm scope" if scope_mm else "the scope"
    fits = f"{scope} fits all the way" if route.get("reachable") else f"{scope} does NOT fit all the way"
    gap = float(route.get("gap_to_target_mm", float("nan")))
    where = ("the route ends in the target (bronchus sign)" if route.get("bronchus_sign") or gap == 0
             else f"{gap:.1f} mm of parenchyma from the exit point to the target")
    text = (f"Bronchoscopic route {route.get('path_length_mm', float('nan')):.0f} mm to airway generation "
            f"{route.get('generation')}; {where}; narrowest lumen {route.get('min_lumen_diameter_mm', float('nan')):.1f}"
            f" mm, {fits}")
    return text, "ok" if route.get("reachable") else "warn"


def metrics(result, scope_mm: float | None = None) -> list[tuple]:
    r = result.route
    rows = [("route length", r.path_length_mm, "mm"), ("exit generation", r.generation, ""),
            ("gap from the exit point to the target", r.gap_to_target_mm, "mm"),
            ("narrowest lumen on the route", r.min_lumen_diameter_mm, "mm"),
            ("scope diameter", scope_mm if scope_mm is not None else r.scope_diameter_mm, "mm"),
            ("scope fits all the way", bool(r.reachable), ""), ("largest turning angle", r.max_turn_angle_deg, "deg"),
            ("bronchus sign", bool(r.bronchus_sign), ""),
            ("scope stop point to target", r.scope_stop_to_target_mm, "mm"),
            ("airway branches", result.tree.n_branches, ""), ("deepest generation", result.tree.max_generation, ""),
            ("airway volume", float(np.count_nonzero(_arr(result.airway_mask))) *
             float(np.prod(result.airway_mask.GetSpacing())) / 1000.0, "ml")]
    for k, v in ("exit point R", r.exit_point_ras[0]), ("exit point A", r.exit_point_ras[1]), \
            ("exit point S", r.exit_point_ras[2]):
        rows.append((k, float(v), "mm"))
    if result.segmentation is not None:
        leak = result.segmentation.leak_check()
        rows += [("airway / lung volume", leak.get("airway_to_lung_percent"), "%"),
                 ("leak suspected", bool(leak.get("leak_suspected")), "")]
    return rows


def _nearest_voxel_ras(mask, point_ras) -> np.ndarray:
    """RAS centre of the mask voxel nearest to ``point_ras`` (the point itself when the mask is empty)."""
    kji = np.argwhere(_arr(mask) > 0)
    if len(kji) == 0:
        return np.asarray(point_ras, float)
    ras = ijk_to_ras(mask, kji[:, ::-1].astype(float))
    return ras[int(np.argmin(np.linalg.norm(ras - np.asarray(point_ras, float), axis=1)))]


def _arr(img):
    return sitk.GetArrayViewFromImage(img)


def figures(result, ct=None, lesion=None, name_prefix: str = "lungnav") -> list:
    r = result.route
    route_pts = np.asarray(r.route_points_ras, float)
    target = np.asarray(r.target_ras, float)
    exit_pt = np.asarray(r.exit_point_ras, float)
    # the gap runs to the lesion's surface (its nearest voxel), not to its centre
    gap_end = _nearest_voxel_ras(lesion, exit_pt) if lesion is not None else target
    image = ct if ct is not None else rp.blank_like(result.airway_mask)
    win = rp.WINDOWS["lung"] if ct is not None else (0.0, 1000.0)
    overlays = [rp.Overlay(result.airway_mask, AIRWAY_COLOR, "airway", fill_opacity=0.25)]
    if lesion is not None:
        overlays.append(rp.Overlay(lesion, LESION_COLOR, "target lesion"))
    markers = [rp.Marker(exit_pt, "exit point", (0.1, 1.0, 0.1)), rp.Marker(target, "target", (1.0, 0.2, 1.0))]
    route_line = rp.Polyline(route_pts, "bronchoscopic route", ROUTE_COLOR, 2.2)
    gap_line = rp.Polyline(np.vstack([exit_pt, gap_end]), "gap to the target", (1.0, 0.2, 1.0), 1.6)
    background = "" if ct is not None else " (no CT given: masks on a grey background)"
    # the coronal plane that holds most of the route's last part: through the exit point
    out = [rp.slice_figure(
        image, overlays, exit_pt, "coronal", win, markers=markers, polylines=[route_line, gap_line],
        roi=[route_pts, target[None]], pad_mm=15.0, unit="HU" if ct is not None else None,
        caption=f"Coronal slice through the exit point{background}: the route from the trachea (yellow: solid where "
                f"it runs within this slice, dashed where it is projected onto it), the exit point (green) and the "
                f"target (magenta), {r.path_length_mm:.0f} mm along the airways.", name=f"{name_prefix}_coronal"),
        rp.slice_figure(
            image, overlays, target, "axial", win, markers=markers, polylines=[route_line, gap_line],
            roi=[target[None], exit_pt[None]] + ([lesion] if lesion is not None else []), pad_mm=20.0,
            unit="HU" if ct is not None else None,
            caption=f"Axial slice through the target{background}: exit point (green), target (magenta cross: the "
                    f"lesion's centre) and the {r.gap_to_target_mm:.1f} mm gap through the parenchyma to the lesion's "
                    "surface (magenta line).",
            name=f"{name_prefix}_axial")]
    surfaces = [rp.surface_of(result.airway_mask, AIRWAY_COLOR, 0.3, "airway tree")]
    if lesion is not None:
        surfaces.append(rp.surface_of(lesion, LESION_COLOR, 1.0, "target lesion"))
    out.append(rp.render_3d(surfaces, polylines=[rp.Polyline(route_pts, "route", ROUTE_COLOR, 2.4),
                                                 rp.Polyline(np.vstack([exit_pt, gap_end]), "gap", (1.0, 0.2, 1.0), 1.0)],
                            markers=[rp.Marker(target, "target", (1.0, 0.2, 1.0)),
                                     rp.Marker(exit_pt, "exit point", (0.1, 0.8, 0.1))], view="anterior",
                            caption="The airway tree (translucent blue) with the bronchoscopic route (yellow) to the "
                                    "target, seen from the front (patient right on the left).",
                            name=f"{name_prefix}_3d"))
    return out


def tables(result) -> list:
    rows = result.branch_rows()
    return [Table("airway_branches", rows, "Airway branches (generation, length and diameter in mm)", max_rows=20)]


def build_report(result, ct=None, lesion=None, scope_mm: float | None = None, inputs: dict | None = None):
    route = result.route.contract_dict()
    warnings = list(result.route.details_dict().get("warnings", []))
    return step_report("IMAGIO lung navigation", verdict(route, scope_mm), metrics(result, scope_mm),
                       figures(result, ct, lesion), tables(result), inputs=inputs, warnings=warnings,
                       text=f"Route: {' > '.join(result.route.branch_names)}.",
                       subtitle="Airway tree, centerlines and the bronchoscopic route to a peripheral target")


def write_report(out_dir, result, ct=None, lesion=None, scope_mm: float | None = None,
                 inputs: dict | None = None) -> list:
    return write_step_report(out_dir, build_report(result, ct, lesion, scope_mm, inputs))


def demo_report(ctx) -> None:
    result = ctx.case.results.get("lungnav")
    if result is None:
        ctx.report.add_verdict("Lung navigation: no result", "info")
        return
    scope = ctx.summary.get("lungnav", {}).get("scope_diameter_mm")
    text, level = verdict(result.route.contract_dict(), scope)
    ctx.report.add_verdict(f"Lung navigation: {text}", level)
    lesion = ctx.case.lung_target.mask if ctx.case.lung_target is not None else None
    section = ctx.step_section("lungnav")
    section.figures += [f for f in figures(result, ctx.case.ct, lesion) if f is not None]
    section.tables += tables(result)
