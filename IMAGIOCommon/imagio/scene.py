"""Scene access: the one place that decides which vtkMRMLScene the Logic works on.

A Logic is given its scene. Outside the Slicer application (slicer-core wheel)
``get_scene()`` without one makes a new scene with what Slicer's module logics
would have registered: the segmentation converter rules and the markups JSON
storage node; inside Slicer no scene is an error (never ``slicer.mrmlScene``
quietly).
"""

from __future__ import annotations

import slicer

from .errors import ImagioError

_converters_registered = False


def in_slicer_app() -> bool:
    """True when running inside the 3D Slicer application (not the slicer-core wheel)."""
    return getattr(slicer, "mrmlScene", None) is not None and hasattr(slicer, "app")


def ensure_converters() -> None:
    """Register labelmap <-> closed surface converter rules once per process (outside Slicer)."""
    global _converters_registered
    if _converters_registered or in_slicer_app():
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    existing = {rule.GetName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(),
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()):
        if rule.GetName() not in existing:
            factory.RegisterConverterRule(rule)
    _converters_registered = True


def new_scene():
    """A fresh vtkMRMLScene ready for IMAGIO's Logic outside the Slicer application."""
    ensure_converters()
    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLMarkupsJsonStorageNode())
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    return scene


def get_scene(scene=None):
    """``scene`` if given; outside the Slicer application a new scene when none is given.

    Inside Slicer a Logic is always given its scene (the module's adapter passes ``slicer.mrmlScene``): no
    scene there is an error, never a quiet fallback to the application's global scene.
    """
    if scene is not None:
        ensure_converters()
        return scene
    if in_slicer_app():
        raise ImagioError("No MRML scene was given to the Logic",
                          "Pass the scene explicitly, e.g. XLogic(slicer.mrmlScene); a Logic never uses a global scene")
    return new_scene()
