"""The model segmentation as a background job (the core's :class:`imagio.jobs.Job`; no Qt, the widget polls it).

Kept as Planning's typed wrapper: ``BackgroundJob(ct, card)`` runs :func:`.worker.segment` in a child
process; ``labels()`` gives the label map, ``result()`` the run's facts (execution provider, runtime_s,
windows). Start, poll, cancel and cleanup are the core's.
"""

from __future__ import annotations

import SimpleITK as sitk

from imagio.engine import Mirroring
from imagio.errors import ImagioError
from imagio.jobs import Job, JobStatus

__all__ = ["BackgroundJob", "JobStatus"]


class BackgroundJob(Job):
    """One model segmentation in a separate process, communicating through a temporary folder."""

    def __init__(self, ct: sitk.Image, card_path, *, mirroring=None, largest_component: bool = False,
                 python_executable: str | None = None, work_dir=None, threads: int | None = None):
        super().__init__("IMAGIOPlanningLib.worker.segment",
                         {"ct": ct, "card": str(card_path), "mirroring": Mirroring.coerce(mirroring).value,
                          "largest_component": bool(largest_component), "threads": threads},
                         python=python_executable, work_dir=work_dir, prefix="imagio-planning-")
        self._value = None

    def _finished(self) -> dict:
        if self._value is None:
            self._value = super().result()
        return self._value

    def result(self) -> dict:
        """The run's facts ({} while running or after a failure): execution_provider, runtime_s, windows."""
        try:
            value = self._finished()
        except ImagioError:
            return {}
        return {k: v for k, v in value.items() if k != "labels"}

    def labels(self) -> sitk.Image:
        try:
            return self._finished()["labels"]
        except ImagioError as e:
            raise ImagioError("The segmentation process wrote no result", str(e)) from None
