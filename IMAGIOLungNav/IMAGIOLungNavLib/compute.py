"""The image-level LungNav step, free of Slicer, VTK and Qt: CT or airway mask -> centerline tree -> route.

:func:`compute_route` is what :meth:`IMAGIOLungNavLib.logic.LungNavLogic.compute` runs, and what the Slicer
widget runs in a background process (``imagio.jobs.Job("IMAGIOLungNavLib.compute.compute_route", ...)``);
its :class:`LungNavResult` is the module's one typed result (:class:`imagio.result.StepResult`).
Images are SimpleITK (LPS); every point in and out is RAS mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.io import Segment, on_reference_grid
from imagio.progress import Progress, ensure
from imagio.result import rows

from .centerline import AirwayTree, extract_centerlines
from .route import Route, plan_route
from .segment import AirwaySegmentation, onnx_refiner, segment_airway

AIRWAY_COLOR = (0.35, 0.65, 0.95)
#: A target this far outside the air-filled lungs (mm) is refused as not a lung target.
LUNG_TOLERANCE_MM = 15.0


@dataclass
class LungNavResult:
    """Route, centerline tree and airway mask of one run (implements :class:`imagio.result.StepResult`)."""

    route: Route
    tree: AirwayTree
    airway_mask: sitk.Image
    segmentation: AirwaySegmentation | None = None
    nodes: dict = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.route.warnings)

    def summary(self) -> dict:
        out = {"route": self.route.contract_dict(), "route_details": self.route.details_dict(),
               "tree": self.tree.summary(),
               "airway_volume_ml": round(geometry.mask_volume_ml(self.airway_mask), 2)}
        if self.segmentation is not None:
            out["leak_check"] = self.segmentation.leak_check()
        return out

    def to_dict(self) -> dict:
        """The CLI's details.json: route, its details, the tree, the leak check, the branches (units in the keys)."""
        return {**self.summary(), "branches": self.branch_rows()}

    def branch_rows(self) -> list[dict]:
        return [{"branch": b.id, "parent": -1 if b.parent is None else b.parent, "generation": b.generation,
                 "name": b.name, "length_mm": round(b.length_mm, 2), "diameter_mm": round(b.diameter_mm, 2),
                 "bridged_gap_mm": round(b.bridged_gap_mm, 2)} for b in self.tree.branches]

    def table_rows(self) -> list[dict]:
        r = self.route
        return rows([
            ("route length", round(float(r.path_length_mm), 1), "mm"),
            ("gap to target", round(float(r.gap_to_target_mm), 1), "mm"),
            ("exit generation", int(r.generation), ""),
            ("narrowest lumen", round(float(r.min_lumen_diameter_mm), 1), "mm"),
            ("scope outer diameter", round(float(r.scope_diameter_mm), 1), "mm"),
            ("scope fits all the way", "yes" if r.reachable else "no", ""),
            ("scope stop to target", round(float(r.scope_stop_to_target_mm), 1), "mm"),
            ("largest turn", round(float(r.max_turn_angle_deg), 0), "deg"),
            ("bronchus sign", "yes" if r.bronchus_sign else "no", ""),
            ("airway volume", round(geometry.mask_volume_ml(self.airway_mask), 2), "ml"),
        ])

    def summary_text(self) -> str:
        r = self.route
        fits = "fits" if r.reachable else "does not fit"
        text = (f"Route {r.path_length_mm:.1f} mm through {' > '.join(r.branch_names)}; exit at generation "
                f"{r.generation}, gap to target {r.gap_to_target_mm:.1f} mm. Narrowest lumen "
                f"{r.min_lumen_diameter_mm:.1f} mm: the {r.scope_diameter_mm:.1f} mm scope {fits} all the way "
                f"(it reaches to {r.scope_stop_to_target_mm:.1f} mm of the target). Largest turn "
                f"{r.max_turn_angle_deg:.0f} deg. Bronchus sign: {'yes' if r.bronchus_sign else 'no'}.")
        return text + "".join(f"\nWarning: {w}" for w in self.warnings)

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict:
        """New nodes: airway segmentation (when segmented here), airway model, centerline model, route curve,
        target and exit points, gap line, branch table (``name`` prefixes their names)."""
        from imagio import mrml  # MRML: only where nodes are made (the background process never needs it)

        prefix = name or ""
        nodes = {}
        if self.segmentation is not None:
            nodes["airway_segmentation"] = mrml.segmentation_node_from_segments(
                scene, [Segment("airway", self.airway_mask, AIRWAY_COLOR, 1)], f"{prefix}Airway", reference_node)
        nodes["airway_model"] = mrml.add_model(scene, f"{prefix}Airway surface", mrml.mask_to_surface_ras(
            self.airway_mask), AIRWAY_COLOR, opacity=0.35)
        nodes["centerline_model"] = mrml.add_model(scene, f"{prefix}Airway centerlines", self.tree.polydata_ras(),
                                                   (1.0, 0.85, 0.1))
        r = self.route
        nodes["route_curve"] = mrml.add_curve(scene, f"{prefix}Bronchoscopic route", r.route_points_ras)
        nodes["target"] = mrml.add_fiducials(scene, f"{prefix}Target", [r.target_ras], ["target"])
        nodes["exit_point"] = mrml.add_fiducials(scene, f"{prefix}Exit point", [r.exit_point_ras],
                                                 [f"exit, gap {r.gap_to_target_mm:.1f} mm"])
        if r.gap_to_target_mm > 0:
            nodes["gap_line"] = mrml.add_line(scene, f"{prefix}Gap to target", r.exit_point_ras, r.target_ras)
        nodes["branch_table"] = mrml.add_table(scene, f"{prefix}Airway branches", self.branch_rows())
        self.nodes = nodes
        return nodes


def compute_route(ct: sitk.Image | None = None, airway: sitk.Image | None = None, target_ras=None,
                  lesion: sitk.Image | None = None, scope_diameter_mm: float = 4.2, start_ras=None,
                  max_gap_mm: float = 60.0, airway_model=None, progress: Progress | None = None) -> LungNavResult:
    """Route from a CT (segmented here) or an airway mask to a target point or lesion mask.

    ``airway_model``: optional model card (.json) of an ONNX airway model that refines the
    segmentation of the CT (run by the core's ONNX engine, under the same leak control).
    """
    progress = ensure(progress)
    if (ct is None) == (airway is None):
        raise ImagioError("Give either a CT or an airway segmentation (not both, not neither)",
                          "Use --ct CT to segment the airway, or --airway SEG for an existing segmentation")
    if (target_ras is None) == (lesion is None):
        raise ImagioError("Give either a target point or a lesion segment (not both, not neither)",
                          "Use --target R,A,S (mm) or --lesion SEG")
    if not (np.isfinite(max_gap_mm) and max_gap_mm > 0):
        raise ImagioError(f"The largest gap to the target must be a positive distance in mm, got {max_gap_mm}",
                          "Give e.g. 60 mm")
    if not (np.isfinite(scope_diameter_mm) and scope_diameter_mm > 0):
        raise ImagioError(f"The scope diameter must be a positive number of mm, got {scope_diameter_mm}",
                          "Give the scope's outer diameter, e.g. 4.2")
    segmentation = None
    lungs = None
    if ct is not None:
        refine = None
        if airway_model is not None:
            refine = onnx_refiner(airway_model)
        segmentation = segment_airway(ct, progress=progress.sub(0.0, 0.55), refine=refine)
        airway = segmentation.mask
        lungs = segmentation.lungs
    elif not np.any(sitk.GetArrayViewFromImage(airway)):
        raise ImagioError("The airway segmentation is empty", "Choose the segment that holds the airway tree")
    if lesion is not None and ct is not None:
        lesion = on_reference_grid(lesion, ct, "lesion segmentation")
    tree = extract_centerlines(airway, progress=progress.sub(0.55 if ct is not None else 0.0, 0.9))
    progress.update(0.9, "Planning the route")
    if lungs is not None:
        _check_in_lungs(lungs, target_ras, lesion)
    route = plan_route(tree, target_ras=target_ras, lesion=lesion, scope_diameter_mm=scope_diameter_mm,
                       start_ras=start_ras, max_gap_mm=max_gap_mm, airway_mask=airway)
    progress.update(1.0, "Route planned")
    return LungNavResult(route=route, tree=tree, airway_mask=airway, segmentation=segmentation)


def _check_in_lungs(lungs: sitk.Image, target_ras, lesion: sitk.Image | None,
                    tol_mm: float = LUNG_TOLERANCE_MM) -> None:
    """ImagioError when the target is not in (or within ``tol_mm`` of) the air-filled lungs."""
    darr = geometry.signed_distance_mm(lungs)
    if lesion is not None:
        les = sitk.GetArrayFromImage(on_reference_grid(lesion, lungs, "lesion segmentation")) > 0
        if not np.any(les):
            raise ImagioError("The lesion segment is empty", "Choose a lesion segment that contains voxels")
        dist = float(darr[les].min())
        where = "The lesion"
    else:
        ijk = np.round(geometry.ras_to_ijk(lungs, np.asarray(target_ras, float))).astype(int)
        size = np.array(lungs.GetSize())
        if np.any(ijk < 0) or np.any(ijk >= size):
            raise ImagioError("The target lies outside the CT", "Give the target as R,A,S mm inside this CT")
        dist = float(darr[ijk[2], ijk[1], ijk[0]])
        where = "The target"
    if dist > tol_mm:
        raise ImagioError(f"{where} is {dist:.1f} mm outside the lungs", "Choose a target inside the lungs")
