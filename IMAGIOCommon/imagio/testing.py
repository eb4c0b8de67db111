"""Test helpers: where the real data lives, and synthetic oblique/anisotropic grids.

Real data is found through ``IMAGIO_DATA`` (default ``../shared/data`` next
to the repository). Missing data skips a test on a user's machine and fails
it in CI (env ``CI`` set), so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from imagio.errors import ImagioError

from .geometry import make_image, rotation_matrix

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    env = os.environ.get("IMAGIO_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_absolute() else (Path.cwd() / p)
    for base in (REPO_ROOT, Path.cwd()):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return (REPO_ROOT / ".." / "shared" / "data").resolve()


def data_path(relative: str) -> Path:
    """Path of a file/folder under the data root; skip (or fail under CI) when it is missing."""
    import pytest

    p = data_root() / relative
    if not p.exists():
        msg = f"real test data {p} not found (set IMAGIO_DATA to the shared data folder)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI requires it")
        pytest.skip(msg)
    return p


def oblique_image(size=(40, 36, 30), spacing=(0.7, 0.9, 2.5), origin_ras=(-12.3, 40.1, -77.7),
                  axis=(1.0, 2.0, 3.0), angle_deg=23.0, pixel=None):
    """An empty oblique, anisotropic image for geometry tests."""
    return make_image(size, spacing, origin_ras, rotation_matrix(axis, angle_deg),
                      pixel if pixel is not None else sitk.sitkUInt8)


# ---------------------------------------------------------------------------------------------- background-job tests
def job_scale(image, factor: float, steps: int = 3, delay_s: float = 0.0, progress=None):
    """A job for the tests of :mod:`imagio.jobs`: ``image * factor`` (a SimpleITK image), reporting ``steps`` steps."""
    for i in range(steps):
        if progress is not None:
            progress.update(i / steps, f"Step {i + 1} of {steps}")
        time.sleep(delay_s)
    gui = sorted(m for m in sys.modules if m.split(".")[0] in ("slicer", "vtk", "vtkmodules", "qt", "ctk"))
    return {"image": sitk.Cast(image, sitk.sitkFloat32) * float(factor), "steps": steps, "gui_modules": gui}


def job_spawn_and_wait(pid_file: str, progress=None):
    """A job that starts a grandchild process, writes both process ids to ``pid_file`` and waits (until cancelled)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    tmp = Path(f"{pid_file}.tmp")  # written whole, then renamed: a reader never sees an empty or half file
    tmp.write_text(f"{os.getpid()} {child.pid}")
    os.replace(tmp, pid_file)
    while True:
        if progress is not None:
            progress.update(0.5, "Waiting")
        time.sleep(0.05)


def job_refuse(what: str, progress=None):
    """A job that fails with the user error ``what`` (an ImagioError) after reporting once."""
    if progress is not None:
        progress.update(0.25, "Checking")
    raise ImagioError(what, "Give another input")
