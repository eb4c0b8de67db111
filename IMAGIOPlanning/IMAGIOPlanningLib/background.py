"""Start, poll and cancel the background segmentation process (no Qt; the widget polls it with a QTimer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from imagio.errors import ImagioError

WORKER = Path(__file__).resolve().parent / "worker.py"


def _python_path() -> str:
    """PYTHONPATH for the worker: the folders holding ``imagio`` and ``IMAGIOPlanningLib``."""
    import imagio

    dirs = [str(Path(imagio.__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent)]
    old = os.environ.get("PYTHONPATH")
    return os.pathsep.join(dirs + ([old] if old else []))


@dataclass
class JobStatus:
    state: str          # "running", "done", "failed", "cancelled"
    fraction: float
    message: str


class BackgroundJob:
    """One segmentation run in a separate process, communicating through a temporary folder."""

    def __init__(self, ct: sitk.Image, card_path, *, mirroring=None, largest_component: bool = False,
                 python_executable: str | None = None, work_dir=None, threads: int | None = None):
        self.work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="imagio-planning-"))
        self.work.mkdir(parents=True, exist_ok=True)
        ct_path = self.work / "ct.nrrd"
        sitk.WriteImage(ct, str(ct_path), False)
        from imagio.engine import Mirroring

        cmd = [python_executable or sys.executable, str(WORKER), "--ct", str(ct_path), "--card", str(card_path),
               "--work", str(self.work), "--mirroring", Mirroring.coerce(mirroring).value]
        if largest_component:
            cmd.append("--largest-component")
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=_python_path())
        kwargs = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        self.log = open(self.work / "worker.log", "w")  # noqa: SIM115 - closed in _close
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, **kwargs)
        self.cancelled = False

    def _close(self):
        if not self.log.closed:
            self.log.close()

    def poll(self) -> JobStatus:
        fraction, message = 0.0, "Starting"
        try:
            p = json.loads((self.work / "progress.json").read_text())
            fraction, message = float(p["fraction"]), str(p["message"])
        except (OSError, ValueError, KeyError):
            pass
        rc = self.process.poll()
        if self.cancelled:
            return JobStatus("cancelled", fraction, "Cancelled")
        if rc is None:
            return JobStatus("running", fraction, message)
        self._close()
        res = self.result()
        if rc == 0 and res.get("status") == "ok":
            return JobStatus("done", 1.0, "Done")
        return JobStatus("failed", fraction, res.get("error") or f"The segmentation process stopped (exit code {rc})")

    def result(self) -> dict:
        try:
            return json.loads((self.work / "result.json").read_text())
        except (OSError, ValueError):
            return {}

    def labels(self) -> sitk.Image:
        p = self.work / "labels.nrrd"
        if not p.exists():
            raise ImagioError("The segmentation process wrote no result", self.result().get("error", ""))
        return sitk.ReadImage(str(p))

    def cancel(self, timeout_s: float = 5.0) -> None:
        """End the worker and everything it started (its whole process group / tree)."""
        self.cancelled = True
        if self.process.poll() is not None:
            self._close()
            return
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False)
            else:
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            if os.name != "nt":
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(timeout=timeout_s)
        self._close()

    def cleanup(self) -> None:
        import shutil

        if self.process.poll() is None:
            self.cancel()
        self._close()
        shutil.rmtree(self.work, ignore_errors=True)
