"""Scene access: the one place that decides which vtkMRMLScene the Logic works on.

Inside the Slicer application ``get_scene()`` returns ``slicer.mrmlScene``;
outside (slicer-core wheel) it makes a new scene with what Slicer's module
logics would have registered: the segmentation converter rules and the
markups JSON storage node.
"""

from __future__ import annotations

import slicer

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
    """``scene`` if given; ``slicer.mrmlScene`` inside Slicer; else a new scene."""
    if scene is not None:
        ensure_converters()
        return scene
    if in_slicer_app():
        return slicer.mrmlScene
    return new_scene()
