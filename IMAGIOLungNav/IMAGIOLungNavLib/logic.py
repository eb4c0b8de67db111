"""Scene-level logic of IMAGIOLungNav: CT or airway -> centerline tree -> route, as MRML nodes.

Runs on any ``vtkMRMLScene`` (Slicer's, or one from :func:`imagio.scene.new_scene`); no Qt, no
global scene. Images inside are SimpleITK (LPS); every point in and out is RAS mm.
"""

from __future__ import annotations

import SimpleITK as sitk

from imagio import mrml
from imagio.errors import ImagioError
from imagio.jobs import Job
from imagio.progress import Progress
from imagio.scene import get_scene

from .compute import AIRWAY_COLOR, LungNavResult, compute_route

__all__ = ["AIRWAY_COLOR", "LungNavLogic", "LungNavResult"]

#: The job function the Slicer widget runs in a background process (imagio.jobs).
ROUTE_JOB = "IMAGIOLungNavLib.compute.compute_route"


class LungNavLogic:
    """Airway segmentation, centerline graph and bronchoscopic route on one MRML scene."""

    def __init__(self, scene=None):
        self.scene = get_scene(scene)

    # ------------------------------------------------------------------ image level (no nodes needed)
    def compute(self, ct: sitk.Image | None = None, airway: sitk.Image | None = None, target_ras=None,
                lesion: sitk.Image | None = None, scope_diameter_mm: float = 4.2, start_ras=None,
                max_gap_mm: float = 60.0, airway_model=None, progress: Progress | None = None) -> LungNavResult:
        """Route from a CT (segmented here) or an airway mask to a target point or lesion mask
        (:func:`IMAGIOLungNavLib.compute.compute_route`)."""
        return compute_route(ct=ct, airway=airway, target_ras=target_ras, lesion=lesion,
                             scope_diameter_mm=scope_diameter_mm, start_ras=start_ras, max_gap_mm=max_gap_mm,
                             airway_model=airway_model, progress=progress)

    # ------------------------------------------------------------------ nodes
    def add_nodes(self, result: LungNavResult, reference_node=None, prefix: str = "") -> dict:
        """New nodes of ``result`` in this scene (:meth:`LungNavResult.add_to_scene`)."""
        return result.add_to_scene(self.scene, reference_node, prefix)

    def inputs_from_nodes(self, ct_node=None, airway_node=None, airway_segment_id: str | None = None,
                          target_node=None, lesion_node=None, lesion_segment_id: str | None = None,
                          scope_diameter_mm: float = 4.2) -> dict:
        """The image-level arguments of :func:`compute_route` read from the nodes (also a background job's)."""
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
        return {"ct": ct, "airway": airway, "target_ras": target, "lesion": lesion,
                "scope_diameter_mm": float(scope_diameter_mm)}

    def run_nodes(self, ct_node=None, airway_node=None, airway_segment_id: str | None = None, target_node=None,
                  lesion_node=None, lesion_segment_id: str | None = None, scope_diameter_mm: float = 4.2,
                  progress: Progress | None = None) -> LungNavResult:
        """Node-level entry point: volume / segmentation / markups nodes in, new nodes out (in this process)."""
        inputs = self.inputs_from_nodes(ct_node, airway_node, airway_segment_id, target_node, lesion_node,
                                        lesion_segment_id, scope_diameter_mm)
        result = compute_route(**inputs, progress=progress)
        self.add_nodes(result, reference_node=ct_node)
        return result

    def start_nodes(self, ct_node=None, airway_node=None, airway_segment_id: str | None = None, target_node=None,
                    lesion_node=None, lesion_segment_id: str | None = None, scope_diameter_mm: float = 4.2,
                    python: str | None = None):
        """:meth:`run_nodes` as a background job (:class:`imagio.jobs.Job`); its ``result()`` is the
        LungNavResult, to be added with :meth:`add_nodes` once done."""
        inputs = self.inputs_from_nodes(ct_node, airway_node, airway_segment_id, target_node, lesion_node,
                                        lesion_segment_id, scope_diameter_mm)
        return Job(ROUTE_JOB, inputs, python=python, prefix="imagio-lungnav-")


def _segment_mask(seg_node, segment_id, reference_node, role: str) -> sitk.Image:
    """The chosen segment (by ID) on the reference grid; without an ID only a node of exactly one segment (a
    script's call; the Slicer panel always passes the ID of its segment selector). An ID that is not in the node
    is a one-line error, never another segment."""
    segmentation = seg_node.GetSegmentation()
    n = segmentation.GetNumberOfSegments()
    if n == 0:
        raise ImagioError(f"The {role} segmentation has no segments", f"Choose a segmentation with the {role}")
    if not segment_id:
        if n > 1:
            raise ImagioError(f"The {role} segmentation '{seg_node.GetName()}' has {n} segments and none is chosen",
                              f"Choose the {role} segment")
        segment_id = segmentation.GetNthSegmentID(0)
    elif segmentation.GetSegment(segment_id) is None:
        raise ImagioError(f"The {role} segment '{segment_id}' is not in '{seg_node.GetName()}'",
                          f"Choose the {role} segment again")
    return mrml.segments_from_segmentation_node(seg_node, reference_node, segment_ids=[segment_id])[0].mask
