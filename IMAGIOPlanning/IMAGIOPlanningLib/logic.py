"""PlanningLogic: lesion segmentation on a vtkMRMLScene (no Qt, no global scene).

Two ways to a segmentation the user can correct in the Segment Editor, each as an
image-level method (SimpleITK in, :class:`PlanningResult` out) and a ``*_nodes``
method (MRML nodes in, the result added to the scene as a new segmentation node):

* ``segment_with_model``: an nnU-Net model exported to ONNX, described by a model
  card (:mod:`imagio.engine`), one segment per label, named and coded (SNOMED CT)
  from the card; refused on a CT outside the card's intended use unless ``force``
  (then the reasons are the result's ``warnings``).
* ``segment_from_seed``: one click (RAS mm) and an optional radius (:mod:`.seeded`),
  no model; a click that is not in a lesion is refused, a region that leaked or is
  too large is refused unless ``accept_large``.

Nothing modifies the CT. Labels the model did not find are listed in
``PlanningResult.empty_labels`` and not added as segments; a model that finds
nothing, or a seeded segmentation that finds nothing, raises ImagioError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio.engine import Mirroring, OnnxSegmenter
from imagio.errors import ImagioError
from imagio.geometry import require_same_grid
from imagio.io import PALETTE, Segment
from imagio.jobs import Job
from imagio.model_card import ModelCard, check_intended_use, find_card_by_name, intended_use_refusal, load_card
from imagio.mrml import image_from_volume_node, segmentation_node_from_segments
from imagio.progress import Progress, ensure
from imagio.result import rows
from imagio.scene import get_scene

from .background import BackgroundJob
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
    """The result of one segmentation (model or seeded); implements :class:`imagio.result.StepResult`."""

    masks: list[Segment]               # one binary mask per found label, on the CT grid
    segments: list[dict]               # name, label_value, voxel_count, volume_ml
    method: str                        # "model" or "seeded"
    runtime_s: float
    execution_provider: str | None
    empty_labels: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    terms: dict = field(default_factory=dict)    # segment name -> SNOMED CT terminology
    node: object = None                # the vtkMRMLSegmentationNode, once added to a scene

    def to_dict(self) -> dict:
        return {"method": self.method, "segments": self.segments, "empty_labels": self.empty_labels,
                "runtime_s": round(self.runtime_s, 3), "execution_provider": self.execution_provider,
                "warnings": list(self.warnings), **self.details}

    summary = to_dict  # the former name

    def table_rows(self) -> list[dict]:
        items = []
        for s in self.segments:
            items += [(f"{s['name']} volume", s["volume_ml"], "ml"), (f"{s['name']} voxels", s["voxel_count"], "voxels")]
        items += [(f"{name}", "not found", "") for name in self.empty_labels]
        items.append(("run time", round(self.runtime_s, 2), "s"))
        items += [("warning", w, "") for w in self.warnings]
        return rows(items)

    def summary_text(self) -> str:
        lines = [f"WARNING: {w}" for w in self.warnings]
        lines += [f"{s['name']}: {s['volume_ml']:.2f} ml ({s['voxel_count']} voxels)" for s in self.segments]
        lines += [f"{name}: not found (empty, not written)" for name in self.empty_labels]
        where = f" on {self.execution_provider}" if self.execution_provider else ""
        lines.append(f"run time {self.runtime_s:.1f} s{where}")
        return "\n".join(lines)

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict:
        """A new segmentation node (named, coded segments) on ``reference_node``'s grid."""
        node = segmentation_node_from_segments(scene, self.masks, name or "Segmentation", reference_node)
        seg = node.GetSegmentation()
        for i, s in enumerate(self.masks):
            term = self.terms.get(s.name)
            if term:
                seg.GetNthSegment(i).SetTag("TerminologyEntry", terminology_tag(term))
        if self.warnings:
            node.SetAttribute("IMAGIO.warnings", " | ".join(self.warnings))
        self.node = node
        return {"segmentation": node}


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


def describe(segments: list[Segment]) -> list[dict]:
    return [{"name": s.name, "label_value": s.label_value, "voxel_count": s.voxel_count(),
             "volume_ml": round(s.volume_ml(), 4)} for s in segments]


def segments_from_labels(labels: sitk.Image, card: ModelCard) -> tuple[list[Segment], list[str]]:
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


def intended_use_warnings(card: ModelCard, ct: sitk.Image, force: bool) -> list[str]:
    """Refuse (ImagioError) a CT outside the card's intended use, or with ``force`` return the warnings to carry."""
    problems = check_intended_use(card, ct)
    if problems and not force:
        raise intended_use_refusal(card, problems)
    return [f"run outside the model's intended use (--force): {p}" for p in problems]


class PlanningLogic:
    """Lesion segmentation: image-level methods (SimpleITK in, :class:`PlanningResult` out) and ``*_nodes``
    methods that take MRML nodes and add the result to the scene as a new segmentation node."""

    def __init__(self, scene=None):
        self.scene = get_scene(scene)

    # ------------------------------------------------------------------ images
    def segment_with_model(self, ct: sitk.Image, model, *, mirroring=None, largest_component: bool = False,
                           force: bool = False, providers: list[str] | None = None, backend: str | None = None,
                           progress: Progress | None = None) -> PlanningResult:
        """Run a model card's network on ``ct``; refuses a CT outside the card's intended use unless ``force``."""
        progress = ensure(progress)
        card = resolve_card(model)
        _require_image(ct)
        warnings = intended_use_warnings(card, ct, force)
        progress.update(0.0, f"Loading model {card.name}")
        segmenter = OnnxSegmenter(card, providers=providers, backend=backend)
        res = segmenter.predict(ct, mirroring=mirroring, largest_component=largest_component,
                                progress=progress.sub(0.02, 0.95))
        return self.result_from_labels(ct, res.labels, card, res.runtime_s, res.provider, warnings=warnings,
                                       details={"windows": res.windows, "folds": res.folds, "backend": segmenter.backend,
                                                "timings_s": {k: round(v, 3) for k, v in res.timings_s.items()}})

    def result_from_labels(self, ct: sitk.Image, labels: sitk.Image, card: ModelCard, runtime_s: float,
                           provider: str | None, details: dict | None = None,
                           warnings: list[str] | None = None) -> PlanningResult:
        """A label map (on the CT grid) as a result; also used for background-process results."""
        require_same_grid(labels, ct, "label map", "CT")
        segments, empty = segments_from_labels(labels, card)
        if not segments:
            raise ImagioError(f"Model '{card.name}' found none of its labels ({', '.join(empty)}) in this CT",
                              "Check that the model fits this kind of image; no segmentation was added")
        terms = {lab.name: lab.terminology for lab in card.labels if lab.terminology}
        d = {"model": card.summary()}
        d.update(details or {})
        return PlanningResult(segments, describe(segments), "model", runtime_s, provider, empty, d,
                              list(warnings or []), terms)

    def segment_from_seed(self, ct: sitk.Image, seed_ras, kind: str = "lung-nodule", radius_mm: float | None = None,
                          accept_large: bool = False, progress: Progress | None = None) -> PlanningResult:
        _require_image(ct)
        res = segment_from_seed(ct, seed_ras, kind, radius_mm, progress, accept_large=accept_large)
        return self.result_from_seeded(res, kind, radius_mm is not None)

    @staticmethod
    def result_from_seeded(res, kind: str, radius_given: bool) -> PlanningResult:
        """The PlanningResult of a :class:`.seeded.SeededResult` (also one from a background job)."""
        seg_name = SEGMENT_NAMES[kind]
        segment = Segment(seg_name, res.mask, SEEDED_COLORS.get(kind, PALETTE[0]), 1)
        details = {"kind": kind, "seed_ras": [float(v) for v in res.seed_ras], "radius_mm": round(res.radius_mm, 2),
                   "radius_given": bool(radius_given),
                   "parameters": {k: (round(float(v), 2) if isinstance(v, float) else v) for k, v in res.info.items()}}
        return PlanningResult([segment], describe([segment]), "seeded", res.runtime_s, None, [], details,
                              list(res.warnings), {seg_name: SEEDED_TERMINOLOGY[kind]})

    # ------------------------------------------------------------------ nodes
    def _ct_image(self, ct_node) -> sitk.Image:
        if ct_node is None or not ct_node.IsA("vtkMRMLScalarVolumeNode") or ct_node.GetImageData() is None:
            raise ImagioError("No CT volume was given", "Select a loaded CT volume")
        return image_from_volume_node(ct_node)

    def segment_with_model_nodes(self, ct_node, model, *, name: str | None = None, **kwargs) -> PlanningResult:
        card = resolve_card(model)
        res = self.segment_with_model(self._ct_image(ct_node), card, **kwargs)
        res.add_to_scene(self.scene, ct_node, name or f"{ct_node.GetName()} {card.name}")
        return res

    def result_from_labels_nodes(self, ct_node, labels: sitk.Image, card: ModelCard, runtime_s: float,
                                 provider: str | None, name: str | None = None, details: dict | None = None,
                                 warnings: list[str] | None = None) -> PlanningResult:
        res = self.result_from_labels(self._ct_image(ct_node), labels, card, runtime_s, provider, details, warnings)
        res.add_to_scene(self.scene, ct_node, name or f"{ct_node.GetName()} {card.name}")
        return res

    def segment_from_seed_nodes(self, ct_node, seed_ras, kind: str = "lung-nodule", radius_mm: float | None = None,
                                accept_large: bool = False, progress: Progress | None = None,
                                name: str | None = None) -> PlanningResult:
        res = self.segment_from_seed(self._ct_image(ct_node), seed_ras, kind, radius_mm, accept_large, progress)
        res.add_to_scene(self.scene, ct_node, name or f"{ct_node.GetName()} {SEGMENT_NAMES[kind]}")
        return res


def _require_image(ct) -> None:
    if not isinstance(ct, sitk.Image):
        raise ImagioError(f"Expected a SimpleITK image, got {type(ct).__name__}",
                          "Use the *_nodes methods for MRML volume nodes")


class ModuleSession:
    """What the Slicer module's Logic does, on a given scene (no Qt, no global scene): describe a card for the
    panel, seeded segmentation, and the model run in a background process (start it, load its result).

    ``IMAGIOPlanning.IMAGIOPlanningLogic`` is a thin adapter over this class on ``slicer.mrmlScene``."""

    def __init__(self, scene, python_executable: str | None = None):
        self.logic = PlanningLogic(scene)
        self.scene = self.logic.scene
        self.python_executable = python_executable

    @staticmethod
    def describe_card(card_path) -> tuple[bool, str]:
        """``(usable, text)``: the card's name, labels and intended use in a few lines, or why it cannot be used.

        Never raises (the panel calls it from the parameter node's observer): no path, a folder, a file that
        is not a card, not UTF-8 or not JSON, or a card that fails its schema, are all a reason shown."""
        if card_path is None or str(card_path).strip() in ("", "."):
            return False, "No model card selected. Choose the model card (.json) beside the .onnx file."
        try:
            card = load_card(card_path)
        except ImagioError as e:
            return False, str(e)
        except (OSError, ValueError, TypeError) as e:  # e.g. a folder holding a binary *.json
            return False, f"Model card {card_path} cannot be read ({e}). Choose the model card (.json) itself"
        use = "not for clinical use" if not card.clinical_use else "see its card for clinical use"
        lines = [f"{card.name}: {', '.join(lab.name for lab in card.labels[1:])} ({use})"]
        lines += [f"Intended use: {line}" for line in card.intended.lines()[:4]]
        return True, "\n".join(lines)

    def segment_from_seed(self, ct_node, point_ras, kind: str, radius_mm=None, progress_callback=None,
                          accept_large: bool = False) -> PlanningResult:
        return self.logic.segment_from_seed_nodes(ct_node, point_ras, kind, radius_mm, accept_large=accept_large,
                                                  progress=Progress(progress_callback))

    def segment_with_model(self, ct_node, card_path, mirroring=False, largest_component: bool = False,
                           progress_callback=None, force: bool = False) -> PlanningResult:
        """Run the model in this process (blocking)."""
        return self.logic.segment_with_model_nodes(ct_node, str(card_path), mirroring=Mirroring.coerce(mirroring),
                                                   largest_component=largest_component, force=force,
                                                   progress=Progress(progress_callback))

    def start_model_segmentation(self, ct_node, card_path, mirroring=False, largest_component: bool = False,
                                 force: bool = False):
        """Start the background job; refuses a bad card or a CT outside the card's intended use unless ``force``,
        whose warnings the job then carries to :meth:`load_model_result`."""
        card = load_card(card_path)  # fail early, before a process starts, on a bad card
        ct = self.logic._ct_image(ct_node)
        warnings = intended_use_warnings(card, ct, force)
        job = BackgroundJob(ct, card.path, mirroring=mirroring, largest_component=largest_component,
                            python_executable=self.python_executable)
        job.warnings = warnings
        return job

    def start_seeded(self, ct_node, point_ras, kind: str, radius_mm=None, accept_large: bool = False):
        """The seeded segmentation as a background job (imagio.jobs; the CT is read from its node here)."""
        return Job("IMAGIOPlanningLib.worker.seeded",
                   {"ct": self.logic._ct_image(ct_node), "seed_ras": [float(v) for v in point_ras], "kind": kind,
                    "radius_mm": radius_mm, "accept_large": bool(accept_large)},
                   python=self.python_executable, prefix="imagio-seeded-")

    def load_seeded_result(self, ct_node, seeded, kind: str, radius_mm=None) -> PlanningResult:
        """The finished job's SeededResult as a new segmentation of ``ct_node``."""
        res = self.logic.result_from_seeded(seeded, kind, radius_mm is not None)
        res.add_to_scene(self.scene, ct_node, f"{ct_node.GetName()} {SEGMENT_NAMES[kind]}")
        return res

    def load_model_result(self, ct_node, job, card_path) -> PlanningResult:
        info = job.result()
        return self.logic.result_from_labels_nodes(ct_node, job.labels(), load_card(card_path),
                                                   info.get("runtime_s", 0.0), info.get("execution_provider"),
                                                   details={"windows": info.get("windows")},
                                                   warnings=getattr(job, "warnings", []))
