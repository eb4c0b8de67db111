"""The module's option sets as Enums (the Slicer parameter node's typed fields; the values are the CLI's words)."""

from __future__ import annotations

from enum import StrEnum

from .devices import TISSUE_CHOICES


class ZoneModel(StrEnum):
    """How the zone is computed: the device table's ellipsoid, or the Pennes bioheat simulation."""

    TABLE = "table"
    BIOHEAT = "bioheat"

    def label(self) -> str:
        return self.value


class Tissue(StrEnum):
    """The tumour's tissue; AUTO reads it from the tumour segment's terminology or name (else liver, warned)."""

    AUTO = "auto"
    LIVER = "liver"
    LUNG = "lung"
    KIDNEY = "kidney"
    SOFT_TISSUE = "soft-tissue"
    BONE = "bone"

    def label(self) -> str:
        return self.value


if {t.value for t in Tissue} - {"auto"} != set(TISSUE_CHOICES):  # pragma: no cover - a library change
    raise ImportError("IMAGIOAblationZoneLib.options.Tissue no longer matches devices.TISSUE_CHOICES")
