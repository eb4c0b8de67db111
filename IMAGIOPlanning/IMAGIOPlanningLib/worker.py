"""The Planning steps that run in a background process: the model segmentation (the job function of
:class:`.background.BackgroundJob`) and the seeded segmentation.

It runs through the core's one job path (:mod:`imagio.jobs`: ``python -m imagio.jobs FOLDER``, inside
Slicer with Slicer's own Python, ``PythonSlicer``), so that Slicer never freezes. It imports no Slicer
code: only numpy, SimpleITK, onnxruntime and IMAGIO's engine.
"""

from __future__ import annotations

from imagio.engine import Mirroring, OnnxSegmenter

from .seeded import segment_from_seed


def segment(ct, card: str, mirroring: str = "card", largest_component: bool = False, threads: int | None = None,
            progress=None) -> dict:
    """Label map of ``ct`` (a SimpleITK image) by the model of ``card``, with the run's facts (units in the keys)."""
    seg = OnnxSegmenter(card, threads=threads)
    res = seg.predict(ct, mirroring=Mirroring.coerce(mirroring), largest_component=largest_component,
                      progress=progress)
    return {"labels": res.labels, "execution_provider": res.provider, "runtime_s": res.runtime_s,
            "windows": res.windows}


def seeded(ct, seed_ras, kind: str = "lung-nodule", radius_mm: float | None = None, accept_large: bool = False,
           progress=None):
    """The seeded segmentation (:func:`.seeded.segment_from_seed`) of ``ct`` at ``seed_ras`` (RAS mm)."""
    return segment_from_seed(ct, seed_ras, kind, radius_mm, progress, accept_large=accept_large)
