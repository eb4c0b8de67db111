"""Plan versus achieved: where the achieved ablation zone falls short of the planned one.

Inputs: the margin metrics of the tumour against the achieved zone (:mod:`.metrics`), and the planned zone
(from IMAGIOAblationZone, made on the pre-treatment CT) moved onto the achieved zone's grid like the tumour.

* ``planned_not_ablated_ml``: volume planned but not ablated (voxels of the planned zone outside the achieved
  zone, in ml); ``ablated_not_planned_ml`` the converse; both on the zone grid.
* per tumour surface vertex: the planned margin, the achieved margin and ``achieved_minus_planned_mm`` (the same
  sub-voxel surfaces and the same scale as the MAM);
* per sector (six: the tumour surface split by the dominant RAS axis of the direction from the tumour centroid:
  Right, Left, Anterior, Posterior, Superior, Inferior): its area (mm^2), the minimal planned and achieved margins
  (mm), the area-weighted mean and the worst achieved-minus-planned margin (mm), and the share of its area where
  the achieved margin falls short of the planned one by more than ``SHORTFALL_TOLERANCE_MM`` (0.5 mm: above the
  0.3 mm exactness of one margin measured from binary masks, see the module README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from imagio.geometry import ijk_to_ras

from .metrics import MarginMetrics, margin_to

SHORTFALL_TOLERANCE_MM = 0.5
SECTORS = (("Right", 0, 1.0), ("Left", 0, -1.0), ("Anterior", 1, 1.0), ("Posterior", 1, -1.0),
           ("Superior", 2, 1.0), ("Inferior", 2, -1.0))


@dataclass
class PlanVsAchieved:
    planned_not_ablated_ml: float
    ablated_not_planned_ml: float
    planned_volume_ml: float
    planned_minimal_margin_mm: float
    achieved_minimal_margin_mm: float
    planned_margin_mm: np.ndarray  # per tumour surface vertex
    achieved_minus_planned_mm: np.ndarray  # per tumour surface vertex
    sectors: list[dict]
    shortfall_percent: float  # share of the tumour surface short of the plan by more than the tolerance

    def to_dict(self) -> dict:
        return {
            "planned_not_ablated_ml": round(self.planned_not_ablated_ml, 4),
            "ablated_not_planned_ml": round(self.ablated_not_planned_ml, 4),
            "planned_zone_volume_ml": round(self.planned_volume_ml, 4),
            "planned_minimal_margin_mm": round(self.planned_minimal_margin_mm, 3),
            "achieved_minimal_margin_mm": round(self.achieved_minimal_margin_mm, 3),
            "surface_short_of_plan_percent": round(self.shortfall_percent, 3),
            "shortfall_tolerance_mm": SHORTFALL_TOLERANCE_MM,
            "sectors": self.sectors,
            "surface_scalar": "achieved_minus_planned_mm on the tumour surface model (margin.mrb)",
        }

    def table_rows(self) -> list[dict]:
        return [dict(r) for r in self.sectors]


def compare_plan(metrics: MarginMetrics, tumor: sitk.Image, achieved: sitk.Image, planned: sitk.Image,
                 threshold_mm: float) -> PlanVsAchieved:
    """Planned (on the achieved zone's grid) against achieved; ``metrics`` are the tumour against ``achieved``."""
    p = sitk.GetArrayViewFromImage(planned) > 0
    a = sitk.GetArrayViewFromImage(achieved) > 0
    voxel_ml = float(np.prod(achieved.GetSpacing())) / 1000.0
    not_ablated = float(np.count_nonzero(p & ~a)) * voxel_ml
    not_planned = float(np.count_nonzero(a & ~p)) * voxel_ml
    planned_map, planned_minimal = margin_to(metrics, planned)
    achieved_map = metrics.surface_margin_mm
    diff = achieved_map - planned_map
    ras = ijk_to_ras(tumor, metrics.surface_ijk)
    w = metrics.surface_area_mm2
    direction = ras - np.average(ras, axis=0, weights=w)
    axis = np.argmax(np.abs(direction), axis=1)
    sign = np.sign(direction[np.arange(len(direction)), axis])
    short = diff < -SHORTFALL_TOLERANCE_MM
    rows = []
    for name, ax, sg in SECTORS:
        sel = (axis == ax) & (sign == sg)
        if not sel.any():
            continue
        ws = w[sel]
        rows.append({
            "sector": name,
            "area_mm2": round(float(ws.sum()), 2),
            "planned_min_margin_mm": round(float(planned_map[sel].min()), 3),
            "achieved_min_margin_mm": round(float(achieved_map[sel].min()), 3),
            "mean_achieved_minus_planned_mm": round(float(np.average(diff[sel], weights=ws)), 3),
            "worst_achieved_minus_planned_mm": round(float(diff[sel].min()), 3),
            "short_of_plan_percent": round(100.0 * float(ws[short[sel]].sum()) / float(ws.sum()), 3),
            "achieved_below_threshold_percent": round(
                100.0 * float(ws[achieved_map[sel] < threshold_mm].sum()) / float(ws.sum()), 3),
        })
    return PlanVsAchieved(
        planned_not_ablated_ml=not_ablated, ablated_not_planned_ml=not_planned,
        planned_volume_ml=float(np.count_nonzero(p)) * voxel_ml,
        planned_minimal_margin_mm=planned_minimal, achieved_minimal_margin_mm=float(metrics.minimal_margin_mm),
        planned_margin_mm=planned_map, achieved_minus_planned_mm=diff, sectors=rows,
        shortfall_percent=100.0 * float(w[short].sum()) / float(w.sum()),
    )
