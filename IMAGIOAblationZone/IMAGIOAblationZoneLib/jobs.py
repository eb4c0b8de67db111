"""The AblationZone steps that run in a background process inside Slicer (imagio.jobs): probe planning and the
bioheat zone. No scene, no Slicer, no VTK: :class:`.logic.ZoneImageLogic` on images, arrays and points."""

from __future__ import annotations

from .logic import ZoneImageLogic
from .results import PlanResult, ZoneResult


def plan(library_path=None, progress=None, **kwargs) -> PlanResult:
    """:meth:`ZoneImageLogic.plan` (its keyword arguments) with the device library at ``library_path``."""
    return ZoneImageLogic(library_path).plan(**kwargs, progress=progress)


def bioheat_zone(library_path=None, progress=None, **kwargs) -> ZoneResult:
    """:meth:`ZoneImageLogic.bioheat_zone` (its keyword arguments) with the device library at ``library_path``."""
    return ZoneImageLogic(library_path).bioheat_zone(**kwargs, progress=progress)
