"""The Planning module's option sets as Enums (the Slicer parameter node's typed fields; values are the CLI's words)."""

from __future__ import annotations

from enum import StrEnum

from .seeded import SEGMENT_NAMES


class Method(StrEnum):
    """Model: an ONNX model described by a model card; Seed: one click inside the lesion, no model."""

    MODEL = "Model"
    SEED = "Seed"

    def label(self) -> str:
        return self.value


class LesionKind(StrEnum):
    """The seeded segmentation's lesion kinds (``imagio segment --seed ... --kind``)."""

    LUNG_NODULE = "lung-nodule"
    LIVER_TUMOR = "liver-tumor"
    SOFT_TISSUE = "soft-tissue"

    def label(self) -> str:
        return self.value


if {k.value for k in LesionKind} != set(SEGMENT_NAMES):  # pragma: no cover - a change in seeded.py
    raise ImportError("IMAGIOPlanningLib.options.LesionKind no longer matches seeded.SEGMENT_NAMES")
