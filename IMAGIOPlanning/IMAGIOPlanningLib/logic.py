"""PlanningLogic: lesion segmentation on a vtkMRMLScene (no Qt, no global scene).

Two ways to a segmentation node the user can correct in the Segment Editor:

* ``segment_with_model``: an ONNX model described by a model card
  (:mod:`.engine`), one segment per label, named and coded (SNOMED CT) from
  the card.
* ``segment_from_seed``: one click (RAS mm) and an optional radius
  (:mod:`.seeded`), no model.

Both add a *new* segmentation node and never modify the CT node. Empty
results are flagged: labels the model did not find are listed in
``PlanningResult.empty_labels`` and not added as segments; a seeded
segmentation that finds nothing raises ImagioError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.io import PALETTE, Segment
from imagio.model_card import ModelCard, find_card_by_name, load_card
from imagio.mrml import image_from_volume_node, segmentation_node_from_segments
from imagio.progress import Progress, ensure
from imagio.scene import get_scene

from .seeded import SEGMENT_NAMES, segment_from_seed

#: Slicer terminology entries (SNOMED CT) for seeded lesions.
SEEDED_TERMINOLOGY = {
    "lung-nodule": {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
                    "type": {"scheme": "SCT", "code": "786838002", "meaning": "Pulmonary nodule"}},
    "liver-tumor": {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
                    "type": {"scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"},
                    "anatomic_region": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}},
    "soft-tissue": {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
                    "type": {"scheme": "SCT", "code": "4147007", "meaning": "Mass"}},
}
SEEDED_COLORS = {"lung-nodule": (0.85, 0.35, 0.25), "liver-tumor": (0.90, 0.55, 0.20), "soft-tissue": (0.80, 0.30, 0.60)}


@dataclass
class PlanningResult:
    node: object                       # vtkMRMLSegmentationNode (new)
    segments: list[dict]               # name, label_value, voxel_count, volume_ml
    method: str                        # "model" or "seeded"
    runtime_s: float
    execution_provider: str | None
    empty_labels: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"method": self.method, "segments": self.segments, "empty_labels": self.empty_labels,
                "runtime_s": round(self.runtime_s, 3), "execution_provider": self.execution_provider,
                **self.details}


def terminology_tag(term: dict) -> str:
    """Slicer's ``TerminologyEntry`` tag for a {category, type, anatomic_region} dict of SNOMED CT codes."""
    def code(d):
        return f"{d.get('scheme', 'SCT')}^{d.get('code', '')}^{d.get('meaning', '')}" if d else "^^"
    cat = term.get("category", {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"})
    return ("Segmentation category and type - 3D Slicer General Anatomy list"
            f"~{code(cat)}~{code(term.get('type'))}~^^"
            f"~Anatomic codes - DICOM master list~{code(term.get('anatomic_region'))}~^^")


def resolve_card(model) -> ModelCard:
    """A ModelCard from a card, a card path/folder, an .onnx path with its card beside it, or a card name."""
    if isinstance(model, ModelCard):
        return model
    p = Path(str(model)).expanduser()
    if p.exists():
        return load_card(p)
    if any(sep in str(model) for sep in ("/", "\\")) or str(model).endswith((".json", ".onnx")):
        raise ImagioError(f"Model {model} does not exist", "Give a model card (.json), its folder or a name from "
                          "`imagio models`")
    return find_card_by_name(str(model))


class PlanningLogic:
    """Scene-level lesion segmentation; every method takes nodes and values and adds new nodes."""

    def __init__(self, scene=None):
        self.scene = get_scene(scene)

    # ------------------------------------------------------------------ nodes
    def _ct_image(self, ct_node) -> sitk.Image:
        if ct_node is None or not ct_node.IsA("vtkMRMLScalarVolumeNode") or ct_node.GetImageData() is None:
            raise ImagioError("No CT volume was given", "Select a loaded CT volume")
        return image_from_volume_node(ct_node)

    def add_segmentation(self, ct_node, segments: list[Segment], name: str, terms: dict | None = None):
        node = segmentation_node_from_segments(self.scene, segments, name, ct_node)
        seg = node.GetSegmentation()
        for i, s in enumerate(segments):
            term = (terms or {}).get(s.name)
            if term:
                seg.GetNthSegment(i).SetTag("TerminologyEntry", terminology_tag(term))
        return node

    def segments_from_labels(self, labels: sitk.Image, card: ModelCard) -> tuple[list[Segment], list[str]]:
        arr = sitk.GetArrayViewFromImage(labels)
        counts = np.bincount(arr.ravel(), minlength=card.num_classes)
        segments, empty = [], []
        for lab in card.labels[1:]:
            if counts[lab.value] == 0:
                empty.append(lab.name)
                continue
            m = sitk.Cast(labels == lab.value, sitk.sitkUInt8)
            segments.append(Segment(lab.name, m, tuple(lab.color), lab.value))
        return segments, empty

    @staticmethod
    def describe(segments: list[Segment]) -> list[dict]:
        return [{"name": s.name, "label_value": s.label_value, "voxel_count": s.voxel_count(),
                 "volume_ml": round(s.volume_ml(), 4)} for s in segments]

    # ------------------------------------------------------------------ model
    def segment_with_model(self, ct_node, model, *, mirroring=None, largest_component: bool = False,
                           providers: list[str] | None = None, progress: Progress | None = None,
                           name: str | None = None) -> PlanningResult:
        from imagio.engine import OnnxSegmenter

        progress = ensure(progress)
        card = resolve_card(model)
        ct = self._ct_image(ct_node)
        progress.update(0.0, f"Loading model {card.name}")
        segmenter = OnnxSegmenter(card, providers=providers)
        res = segmenter.predict(ct, mirroring=mirroring, largest_component=largest_component,
                                progress=progress.sub(0.02, 0.95))
        return self.result_from_labels(ct_node, res.labels, card, res.runtime_s, res.provider, name=name,
                                       details={"windows": res.windows})

    def result_from_labels(self, ct_node, labels: sitk.Image, card: ModelCard, runtime_s: float, provider: str | None,
                           name: str | None = None, details: dict | None = None) -> PlanningResult:
        """Turn a label map (on the CT grid) into a new segmentation node; used for background-process results."""
        from imagio.geometry import require_same_grid

        ct = self._ct_image(ct_node)
        require_same_grid(labels, ct, "label map", "CT")
        segments, empty = self.segments_from_labels(labels, card)
        if not segments:
            raise ImagioError(f"Model '{card.name}' found none of its labels ({', '.join(empty)}) in this CT",
                              "Check that the model fits this kind of image; no segmentation was added")
        terms = {lab.name: lab.terminology for lab in card.labels if lab.terminology}
        node = self.add_segmentation(ct_node, segments, name or f"{ct_node.GetName()} {card.name}", terms)
        d = {"model": card.summary()}
        d.update(details or {})
        return PlanningResult(node, self.describe(segments), "model", runtime_s, provider, empty, d)

    # ------------------------------------------------------------------ seed
    def segment_from_seed(self, ct_node, seed_ras, kind: str = "lung-nodule", radius_mm: float | None = None,
                          progress: Progress | None = None, name: str | None = None) -> PlanningResult:
        ct = self._ct_image(ct_node)
        res = segment_from_seed(ct, seed_ras, kind, radius_mm, progress)
        seg_name = SEGMENT_NAMES[kind]
        segment = Segment(seg_name, res.mask, SEEDED_COLORS.get(kind, PALETTE[0]), 1)
        node = self.add_segmentation(ct_node, [segment], name or f"{ct_node.GetName()} {seg_name}",
                                     {seg_name: SEEDED_TERMINOLOGY[kind]})
        details = {"kind": kind, "seed_ras": [float(v) for v in res.seed_ras], "radius_mm": round(res.radius_mm, 2),
                   "radius_given": radius_mm is not None,
                   "parameters": {k: (round(float(v), 2) if isinstance(v, float) else v) for k, v in res.info.items()}}
        return PlanningResult(node, self.describe([segment]), "seeded", res.runtime_s, None, [], details)
