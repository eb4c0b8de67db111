"""Scene-level logic of IMAGIOLungNav: CT or airway -> centerline tree -> route, as MRML nodes.

Runs on any ``vtkMRMLScene`` (Slicer's, or one from :func:`imagio.scene.new_scene`); no Qt, no
global scene. Images inside are SimpleITK (LPS); every point in and out is RAS mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry, mrml
from imagio.errors import ImagioError
from imagio.io import Segment, on_reference_grid
from imagio.progress import Progress, ensure
from imagio.scene import get_scene

from .centerline import AirwayTree, extract_centerlines
from .route import Route, plan_route
from .segment import AirwaySegmentation, segment_airway

AIRWAY_COLOR = (0.35, 0.65, 0.95)


@dataclass
class LungNavResult:
    route: Route
    tree: AirwayTree
    airway_mask: sitk.Image
    segmentation: AirwaySegmentation | None = None
    nodes: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {"route": self.route.contract_dict(), "route_details": self.route.details_dict(),
               "tree": self.tree.summary(),
               "airway_volume_ml": round(geometry.mask_volume_ml(self.airway_mask), 2)}
        if self.segmentation is not None:
            out["leak_check"] = self.segmentation.leak_check()
        return out

    def branch_rows(self) -> list[dict]:
        return [{"branch": b.id, "parent": -1 if b.parent is None else b.parent, "generation": b.generation,
                 "name": b.name, "length_mm": round(b.length_mm, 2), "diameter_mm": round(b.diameter_mm, 2),
                 "bridged_gap_mm": round(b.bridged_gap_mm, 2)} for b in self.tree.branches]


class LungNavLogic:
    """Airway segmentation, centerline graph and bronchoscopic route on one MRML scene."""

    def __init__(self, scene=None):
        self.scene = get_scene(scene)

    # ------------------------------------------------------------------ image level (no nodes needed)
    def compute(self, ct: sitk.Image | None = None, airway: sitk.Image | None = None, target_ras=None,
                lesion: sitk.Image | None = None, scope_diameter_mm: float = 4.2, start_ras=None,
                max_gap_mm: float = 60.0, airway_model=None, progress: Progress | None = None) -> LungNavResult:
        """Route from a CT (segmented here) or an airway mask to a target point or lesion mask.

        ``airway_model``: optional model card (.json) of an ONNX airway model that refines the
        segmentation of the CT (run by IMAGIOPlanning's engine, under the same leak control).
        """
        progress = ensure(progress)
        if (ct is None) == (airway is None):
            raise ImagioError("Give either a CT or an airway segmentation (not both, not neither)",
                              "Use --ct CT to segment the airway, or --airway SEG for an existing segmentation")
        if (target_ras is None) == (lesion is None):
            raise ImagioError("Give either a target point or a lesion segment (not both, not neither)",
                              "Use --target R,A,S (mm) or --lesion SEG")
        segmentation = None
        lungs = None
        if ct is not None:
            refine = None
            if airway_model is not None:
                from .segment import onnx_refiner
                refine = onnx_refiner(airway_model)
            segmentation = segment_airway(ct, progress=progress.sub(0.0, 0.55), refine=refine)
            airway = segmentation.mask
            lungs = segmentation.lungs
        else:
            if not np.any(sitk.GetArrayViewFromImage(airway)):
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

    # ------------------------------------------------------------------ nodes
    def add_nodes(self, result: LungNavResult, reference_node=None, prefix: str = "") -> dict:
        """New nodes: airway segmentation (when segmented here), airway model, centerline model,
        route curve, target and exit points, gap line, branch table."""
        scene = self.scene
        nodes = {}
        if result.segmentation is not None:
            nodes["airway_segmentation"] = mrml.segmentation_node_from_segments(
                scene, [Segment("airway", result.airway_mask, AIRWAY_COLOR, 1)], f"{prefix}Airway", reference_node)
        nodes["airway_model"] = mrml.add_model(scene, f"{prefix}Airway surface",
                                               mrml.mask_to_surface_ras(result.airway_mask), AIRWAY_COLOR,
                                               opacity=0.35)
        nodes["centerline_model"] = mrml.add_model(scene, f"{prefix}Airway centerlines",
                                                   result.tree.polydata_ras(), (1.0, 0.85, 0.1))
        r = result.route
        nodes["route_curve"] = mrml.add_curve(scene, f"{prefix}Bronchoscopic route", r.route_points_ras)
        nodes["target"] = mrml.add_fiducials(scene, f"{prefix}Target", [r.target_ras], ["target"])
        nodes["exit_point"] = mrml.add_fiducials(scene, f"{prefix}Exit point", [r.exit_point_ras],
                                                 [f"exit, gap {r.gap_to_target_mm:.1f} mm"])
        if r.gap_to_target_mm > 0:
            nodes["gap_line"] = mrml.add_line(scene, f"{prefix}Gap to target", r.exit_point_ras, r.target_ras)
        nodes["branch_table"] = mrml.add_table(scene, f"{prefix}Airway branches", result.branch_rows())
        result.nodes = nodes
        return nodes

    def run_nodes(self, ct_node=None, airway_node=None, airway_segment_id: str | None = None, target_node=None,
                  lesion_node=None, lesion_segment_id: str | None = None, scope_diameter_mm: float = 4.2,
                  progress: Progress | None = None) -> LungNavResult:
        """Node-level entry point (the Slicer widget's): volume / segmentation / markups nodes in, new nodes out."""
        ct = mrml.image_from_volume_node(ct_node) if ct_node is not None and airway_node is None else None
        airway = None
        if airway_node is not None:
            airway = _segment_mask(airway_node, airway_segment_id, ct_node, "airway")
        target = None
        if target_node is not None:
            pts = mrml.points_from_markups(target_node)
            if len(pts) == 0:
                raise ImagioError("The target point list is empty", "Place a target point in the lesion")
            target = pts[0]
        lesion = _segment_mask(lesion_node, lesion_segment_id, ct_node, "lesion") if lesion_node is not None else None
        if lesion is not None and target is not None:
            target = None  # a lesion segment is the better target
        result = self.compute(ct=ct, airway=airway, target_ras=target, lesion=lesion,
                              scope_diameter_mm=scope_diameter_mm, progress=progress)
        self.add_nodes(result, reference_node=ct_node)
        return result


def _segment_mask(seg_node, segment_id, reference_node, role: str) -> sitk.Image:
    """The chosen segment (by ID or name; the first one when none is chosen) on the reference grid."""
    segmentation = seg_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise ImagioError(f"The {role} segmentation has no segments", f"Choose a segmentation with the {role}")
    wanted = segment_id or segmentation.GetNthSegmentID(0)
    return mrml.segments_from_segmentation_node(seg_node, reference_node, segment_ids=[wanted])[0].mask


def _check_in_lungs(lungs: sitk.Image, target_ras, lesion: sitk.Image | None, tol_mm: float = 15.0) -> None:
    """ImagioError when the target is not in (or within ``tol_mm`` of) the air-filled lungs."""
    d = sitk.SignedMaurerDistanceMap(lungs, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    darr = sitk.GetArrayViewFromImage(d)
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
