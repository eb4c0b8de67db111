"""The AblationZone steps that run in a background process inside Slicer (imagio.jobs): probe planning, the
bioheat zone and the re-plan from placed probes. No scene, no Slicer, no VTK: :class:`.logic.ZoneImageLogic` on
images, arrays and points."""

from __future__ import annotations

from .logic import ZoneImageLogic, run_replan
from .results import PlanResult, ReplanResult, ZoneResult


def plan(library_path=None, progress=None, **kwargs) -> PlanResult:
    """:meth:`ZoneImageLogic.plan` (its keyword arguments) with the device library at ``library_path``."""
    return ZoneImageLogic(library_path).plan(**kwargs, progress=progress)


def bioheat_zone(library_path=None, progress=None, **kwargs) -> ZoneResult:
    """:meth:`ZoneImageLogic.bioheat_zone` (its keyword arguments) with the device library at ``library_path``."""
    return ZoneImageLogic(library_path).bioheat_zone(**kwargs, progress=progress)


def replan(library_path=None, progress=None, **kwargs) -> ReplanResult:
    """:func:`.logic.run_replan` (re-plan from the probes as placed) with the device library at ``library_path``."""
    return run_replan(ZoneImageLogic(library_path), progress=progress, **kwargs)
