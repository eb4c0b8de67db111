"""The lung navigation step of `imagio demo`: airway from the case CT, centerlines, route to the lung nodule."""

from __future__ import annotations

import time

import numpy as np

from imagio import geometry
from imagio.errors import ImagioError

SCOPE_DIAMETER_MM = 4.2


def _truth_agreement(tree, branches: list[dict], tol_mm: float = 2.0) -> tuple[float, float]:
    """% of true centerline points within ``tol_mm`` of ours, and the reverse."""
    truth = np.vstack([np.asarray(b["points_ras"], float) for b in branches])
    ours = tree.points_ras
    d1 = np.array([np.linalg.norm(ours - p, axis=1).min() for p in truth])
    d2 = np.array([np.linalg.norm(truth - p, axis=1).min() for p in ours])
    return 100.0 * float(np.mean(d1 <= tol_mm)), 100.0 * float(np.mean(d2 <= tol_mm))


def demo_step(ctx) -> None:
    from .logic import LungNavLogic

    t0 = time.perf_counter()
    case = ctx.case
    ct = case.ct
    nodule = case.lung_target  # chosen once by imagio.demo (a lesion in the lung)
    if nodule is None:
        raise ImagioError("The case has no lesion in the lung", "Name it with --tumor-segment")
    logic = LungNavLogic(ctx.scene)
    result = logic.compute(ct=ct, lesion=nodule.mask, scope_diameter_mm=SCOPE_DIAMETER_MM,
                           progress=ctx.progress.sub(0.0, 0.85))
    ctx.progress.update(0.85, "lungnav: adding nodes")
    logic.add_nodes(result, reference_node=case.get("ct_node"), prefix="LungNav ")
    r = result.route
    leak = result.segmentation.leak_check()
    summary = {"route": {k: v for k, v in r.contract_dict().items() if k != "route_points_ras"},
               "route_point_count": len(r.route_points_ras), "branches_along_route": r.branch_names,
               "scope_diameter_mm": SCOPE_DIAMETER_MM, "tree": result.tree.summary(), "leak_check": leak}
    metrics = [("airway volume", leak["airway_volume_ml"], "ml"),
               ("airway / lung volume", leak["airway_to_lung_percent"], "%"),
               ("leak suspected", leak["leak_suspected"], ""),
               ("branches", result.tree.n_branches, ""), ("deepest generation", result.tree.max_generation, ""),
               ("route length", r.path_length_mm, "mm"), ("exit generation", r.generation, ""),
               ("gap exit point to nodule surface", r.gap_to_target_mm, "mm"),
               ("narrowest lumen on the route", r.min_lumen_diameter_mm, "mm"),
               (f"scope {SCOPE_DIAMETER_MM} mm fits all the way", r.reachable, ""),
               ("largest turning angle", r.max_turn_angle_deg, "deg"), ("bronchus sign", r.bronchus_sign, "")]
    ph = case.get("phantom")
    if ph is not None:
        a, b = _truth_agreement(result.tree, ph.airway_centerlines)
        true_airway = ph.segments["airway_lumen"].array() > 0
        dice = geometry.dice(result.airway_mask, true_airway, empty=0.0)
        summary["truth"] = {"centerline_truth_within_2mm_percent": round(a, 1),
                            "centerline_ours_within_2mm_percent": round(b, 1),
                            "airway_dice": round(dice, 3), "true_branches": len(ph.airway_centerlines)}
        metrics += [("true centerline within 2 mm of ours", a, "%"), ("our centerline within 2 mm of truth", b, "%"),
                    ("airway Dice against truth", dice, "")]
    case.results["lungnav"] = result  # its pictures: IMAGIOLungNavLib.report.demo_report
    summary["runtime_s"] = round(time.perf_counter() - t0, 2)
    ctx.summary["lungnav"] = summary
    ctx.report.add_section(
        f"Lung navigation: airway, centerlines and route to '{nodule.name}'", metrics,
        text=f"Route: {' > '.join(r.branch_names)}. The curve 'LungNav Bronchoscopic route' runs from the trachea to "
             "the exit point (Slicer's Endoscopy module can fly through it); the line 'Gap to target' crosses the "
             "parenchyma to the nodule.")
    ctx.progress.update(1.0, f"lungnav: route {r.path_length_mm:.0f} mm, gap {r.gap_to_target_mm:.1f} mm")
