"""The module's option sets as Enums (the Slicer parameter node's typed fields; the values are the CLI's words)."""

from __future__ import annotations

from enum import StrEnum

from .registration import MODES


class Registration(StrEnum):
    """How the pre-treatment tumour is brought onto the post-treatment CT (``imagio margin --register``)."""

    NONE = "none"  # the masks share one physical frame
    RIGID = "rigid"
    DEFORMABLE = "deformable"  # B-spline around the zone, the tumour kept rigid

    def label(self) -> str:
        return self.value


if tuple(m.value for m in Registration) != MODES:  # pragma: no cover - a change in registration.py
    raise ImportError("IMAGIOMarginLib.options.Registration no longer matches registration.MODES")
