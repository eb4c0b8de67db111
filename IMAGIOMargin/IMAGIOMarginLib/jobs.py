"""The margin assessment as a background job (imagio.jobs): rigid or deformable registration takes seconds to
minutes, so inside Slicer it runs in a child process (no Slicer, no VTK there) and the widget stays responsive.

``start_assessment_nodes(...)`` reads the nodes exactly as :meth:`.logic.MarginLogic.assess_nodes` does and starts
``assess`` in the child with those images; the job's result is the same :class:`.logic.MarginResult`, to be
added with :meth:`.logic.MarginLogic.add_to_scene`.
"""

from __future__ import annotations

from imagio.errors import ImagioError
from imagio.jobs import Job

from .logic import MarginLogic, MarginResult
from .options import Registration
from .uncertainty import DEFAULT_SIGMA_MM, SEGMENTATION_SIGMA_MM

ASSESS_JOB = "IMAGIOMarginLib.jobs.assess"


class _ImageLevel(MarginLogic):
    """MarginLogic's image-level assessment without a scene (a background process has none; ``assess`` uses none)."""

    def __init__(self):  # no super().__init__: it would make an MRML scene
        self.scene = None


class _Arguments(_ImageLevel):
    """``assess_nodes`` reading the nodes, with ``assess`` giving back its image-level arguments instead of running."""

    def assess(self, tumor, zone, pre_ct=None, post_ct=None, **kwargs) -> dict:
        return {"tumor": tumor, "zone": zone, "pre_ct": pre_ct, "post_ct": post_ct, **kwargs}


def assess(progress=None, **kwargs) -> MarginResult:
    """The job function: :meth:`MarginLogic.assess` with these arguments."""
    return _ImageLevel().assess(**kwargs, progress=progress)


def start_assessment_nodes(tumor_segmentation_node, tumor_segment_id: str, zone_segmentation_node,
                           zone_segment_id: str, pre_ct_node=None, post_ct_node=None, python: str | None = None,
                           **options) -> Job:
    """:meth:`MarginLogic.assess_nodes` as a background job (same node checks, same options)."""
    kwargs = _Arguments().assess_nodes(tumor_segmentation_node, tumor_segment_id, zone_segmentation_node,
                                       zone_segment_id, pre_ct_node, post_ct_node, **options)
    return Job(ASSESS_JOB, kwargs, python=python, prefix="imagio-margin-")


def parameter_request(p) -> tuple[tuple, dict]:
    """The IMAGIOMargin parameter node's inputs as ``assess_nodes`` arguments: (nodes and segment IDs, options).

    Segments are the ones chosen by ID in the panel's segment selectors (``assess_nodes`` refuses a missing or
    unknown ID); no segment is guessed from its name or its place in the node here (the CLI picks by name).
    """
    if not p.tumorSegmentation or not p.zoneSegmentation:
        raise ImagioError("Choose the tumour and the ablation-zone segmentations")
    boundary = None if abs(p.boundarySigmaMm - SEGMENTATION_SIGMA_MM) < 1e-9 else p.boundarySigmaMm
    planned = p.plannedZoneSegmentation
    return ((p.tumorSegmentation, p.tumorSegmentID, p.zoneSegmentation, p.zoneSegmentID, p.preCT, p.postCT),
            {"register_mode": Registration(p.registration).value, "threshold_mm": p.thresholdMm,
             "sigma_mm": None if abs(p.sigmaMm - DEFAULT_SIGMA_MM) < 1e-9 else p.sigmaMm,
             "rotation_sigma_deg": p.rotationSigmaDeg if p.rotationSigmaDeg > 0 else None,
             "tumor_boundary_sigma_mm": boundary, "zone_boundary_sigma_mm": boundary,
             "accept_registration": bool(p.acceptRegistration),
             "planned_zone_node": planned,
             "planned_zone_segment_id": p.plannedZoneSegmentID if planned else None})
