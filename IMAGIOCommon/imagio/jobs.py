"""Background jobs: a long computation in a child process, started, polled and cancelled without Qt.

Every step that can take more than a second inside Slicer (model and seeded segmentation, airway
segmentation and routing, probe planning and bioheat, registration) runs through this one path, so
that Slicer never freezes and every such step can be cancelled the same way.

A job is a dotted function name and its keyword arguments::

    job = Job("IMAGIOLungNavLib.compute.compute_route", {"ct": ct_image, "target_ras": [1.0, 2.0, 3.0]})
    while job.poll().state == "running": ...      # the widget polls from a QTimer (imagio.slicer_widget)
    result = job.result()                        # the function's return value, rebuilt in this process

The arguments and the return value may be numbers, strings, lists, dicts, ``Path``s, numpy arrays,
SimpleITK images and transforms, Enums and dataclasses of IMAGIO's packages (a ``Segment``, a typed result): they are
written into the job's private temporary folder as JSON plus ``.npy`` files (an image's geometry exact in
the JSON) and rebuilt on the other side (:func:`encode`, :func:`decode`). Nothing is ever unpickled.

The folder (the file protocol between the two processes)::

    job.json        {"function", "kwargs"}: what to run (written before the child starts)
    in/ out/        the arguments' and the return value's arrays and image pixels (.npy)
    progress.json   {"fraction", "message"}, replaced atomically while it runs (at most every 0.1 s)
    result.json     {"status": "ok", "runtime_s", "value"} or {"status": "error", "error", "kind"}
                    (kind "user": an ImagioError, shown as it is; "internal": anything else)
    job.log         the child's stdout and stderr

The child is ``python -m imagio.jobs FOLDER``: inside Slicer with Slicer's own ``PythonSlicer`` (the
same packages), in its own process group (session) so that cancel ends it and everything it started;
on Windows with ``CREATE_NO_WINDOW`` (PythonSlicer is a console program; Slicer's launcher hides it the
same way). It must not import Slicer, VTK or Qt: job functions live in modules free of them.
Exit status: 0 done, 2 user error, 1 anything else.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import imagio

from .errors import Cancelled, ImagioError
from .progress import Progress

#: Packages whose dataclasses, Enums and functions a job may name (nothing else is imported by name).
TRUSTED_PACKAGES = ("imagio", "IMAGIOPlanningLib", "IMAGIOAblationZoneLib", "IMAGIOLungNavLib", "IMAGIOMarginLib")

#: Windows process creation flags (values of the Win32 API; ``subprocess`` defines them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000

PROGRESS_INTERVAL_S = 0.1


@dataclass
class JobStatus:
    state: str          # "running", "done", "failed", "cancelled"
    fraction: float     # 0..1
    message: str


# ---------------------------------------------------------------------------------------------- the codec
def _trusted(module: str) -> bool:
    return module.split(".")[0] in TRUSTED_PACKAGES


def _resolve(dotted: str):
    """The object named ``package.module.Name`` (only inside :data:`TRUSTED_PACKAGES`)."""
    module, _, name = dotted.rpartition(".")
    if not module or not _trusted(module):
        raise ValueError(f"{dotted!r} is not in IMAGIO's packages")
    return getattr(importlib.import_module(module), name)


def _dotted(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Writer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def file(self, suffix: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        return self.folder / f"{self.count:04d}{suffix}"


def encode(obj, folder) -> object:
    """A JSON-able tree for ``obj``; its arrays and images are written into ``folder``."""
    return _encode(obj, _Writer(Path(folder)))


def _encode(obj, w: _Writer):
    if obj is None or isinstance(obj, (bool, int, float, str)) and not isinstance(obj, enum.Enum):
        return obj
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError("numpy object arrays cannot be passed to a job")
            path = w.file(".npy")
            np.save(path, obj, allow_pickle=False)
            return {"__ndarray__": path.name}
    sitk = sys.modules.get("SimpleITK")
    if sitk is not None and isinstance(obj, sitk.Image):  # pixels as .npy, geometry exact in the JSON
        path = w.file(".npy")
        np.save(path, sitk.GetArrayFromImage(obj), allow_pickle=False)
        return {"__image__": path.name, "vector": obj.GetNumberOfComponentsPerPixel() > 1,
                "origin": list(obj.GetOrigin()), "spacing": list(obj.GetSpacing()),
                "direction": list(obj.GetDirection())}
    if sitk is not None and isinstance(obj, sitk.Transform):  # ITK's text transform file: parameters exact
        path = w.file(".tfm")
        sitk.WriteTransform(obj, str(path))
        return {"__transform__": path.name}
    if isinstance(obj, enum.Enum):
        return {"__enum__": _dotted(type(obj)), "value": _encode(obj.value, w)}
    if isinstance(obj, Path):
        return {"__path__": str(obj)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        if not _trusted(cls.__module__):
            raise TypeError(f"{_dotted(cls)} is not an IMAGIO type")
        fields = {f.name: _encode(getattr(obj, f.name), w) for f in dataclasses.fields(obj) if f.init}
        return {"__dataclass__": _dotted(cls), "fields": fields}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, w) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, w) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, w) for k, v in obj.items()}
        return {"__items__": [[_encode(k, w), _encode(v, w)] for k, v in obj.items()]}
    raise TypeError(f"a {type(obj).__name__} cannot be passed to or from a job")


def decode(tree, folder):
    """The object :func:`encode` wrote (arrays and images read back from ``folder``)."""
    folder = Path(folder)

    def file(name: str) -> Path:
        path = folder / name
        if path.parent != folder:
            raise ValueError(f"{name!r} is not a file of the job")
        return path

    def dec(t):
        if isinstance(t, list):
            return [dec(v) for v in t]
        if not isinstance(t, dict):
            return t
        if "__ndarray__" in t:
            import numpy as np

            return np.load(file(t["__ndarray__"]), allow_pickle=False)
        if "__image__" in t:
            import numpy as np
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(np.load(file(t["__image__"]), allow_pickle=False),
                                           isVector=bool(t.get("vector")))
            image.SetOrigin(t["origin"])
            image.SetSpacing(t["spacing"])
            image.SetDirection(t["direction"])
            return image
        if "__transform__" in t:
            import SimpleITK as sitk

            transform = sitk.ReadTransform(str(file(t["__transform__"])))
            return transform.Downcast() if type(transform) is sitk.Transform else transform
        if "__enum__" in t:
            return _resolve(t["__enum__"])(dec(t["value"]))
        if "__path__" in t:
            return Path(t["__path__"])
        if "__dataclass__" in t:
            cls = _resolve(t["__dataclass__"])
            if not dataclasses.is_dataclass(cls):
                raise ValueError(f"{t['__dataclass__']} is not a dataclass")
            return cls(**{k: dec(v) for k, v in t["fields"].items()})
        if "__tuple__" in t:
            return tuple(dec(v) for v in t["__tuple__"])
        if "__items__" in t:
            return {dec(k): dec(v) for k, v in t["__items__"]}
        return {k: dec(v) for k, v in t.items()}

    return dec(tree)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------- the parent side
def python_executable() -> str:
    """The Python that runs jobs: Slicer's ``PythonSlicer`` (on PATH inside Slicer), else this one."""
    return shutil.which("PythonSlicer") or sys.executable


def popen_options(platform: str | None = None) -> dict:
    """``subprocess.Popen`` options for a job: its own process group, and no console window on Windows."""
    if (platform or os.name) == "nt":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _python_path(function: str) -> str:
    """PYTHONPATH for the child: the folders holding ``imagio`` and the function's package, then the old one."""
    dirs = [str(Path(imagio.__file__).resolve().parent.parent)]
    top = sys.modules.get(function.split(".")[0])
    if top is None:
        try:
            top = importlib.import_module(function.split(".")[0])
        except ImportError:
            top = None
    if top is not None and getattr(top, "__file__", None):
        dirs.append(str(Path(top.__file__).resolve().parent.parent))
    old = os.environ.get("PYTHONPATH")
    return os.pathsep.join(dict.fromkeys(dirs + ([old] if old else [])))


class Job:
    """``function(**kwargs, progress=...)`` in a child process, communicating through a temporary folder."""

    def __init__(self, function: str, kwargs: dict | None = None, *, python: str | None = None, work_dir=None,
                 prefix: str = "imagio-job-"):
        if not _trusted(function.rpartition(".")[0]):
            raise ValueError(f"{function!r} is not a function of IMAGIO's packages")
        self.function = function
        self.work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=prefix))
        self.work.mkdir(parents=True, exist_ok=True)
        self.cancelled = False
        self.warnings: list[str] = []   # the caller's own warnings, carried to whoever shows the result
        _write_json(self.work / "job.json", {"function": function,
                                             "kwargs": encode(dict(kwargs or {}), self.work / "in")})
        env = dict(os.environ, PYTHONPATH=_python_path(function), PYTHONUNBUFFERED="1")
        self._log = open(self.work / "job.log", "w")  # noqa: SIM115 - closed in _close
        self.process = subprocess.Popen([python or python_executable(), "-m", "imagio.jobs", str(self.work)],
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, **popen_options())

    def _close(self) -> None:
        if not self._log.closed:
            self._log.close()

    def outcome(self) -> dict:
        """The child's ``result.json`` ({} while it runs or when it died without writing one)."""
        return _read_json(self.work / "result.json")

    def poll(self) -> JobStatus:
        p = _read_json(self.work / "progress.json")
        try:
            fraction, message = float(p.get("fraction", 0.0)), str(p.get("message", "Starting"))
        except (TypeError, ValueError):
            fraction, message = 0.0, "Starting"
        if self.cancelled:
            return JobStatus("cancelled", fraction, "Cancelled")
        rc = self.process.poll()
        if rc is None:
            return JobStatus("running", fraction, message)
        self._close()
        res = self.outcome()
        if rc == 0 and res.get("status") == "ok":
            return JobStatus("done", 1.0, "Done")
        return JobStatus("failed", fraction, self.error_message(rc, res))

    def error_message(self, rc=None, res=None) -> str:
        """One line for the user: the child's error, or how it stopped (with the last line of its log)."""
        res = self.outcome() if res is None else res
        if res.get("error"):
            return str(res["error"]).strip().splitlines()[0]
        rc = self.process.poll() if rc is None else rc
        try:
            tail = [line for line in (self.work / "job.log").read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            tail = []
        why = f"exit code {rc}" if rc is None or rc >= 0 else f"signal {-rc}"
        return f"The background process stopped ({why})" + (f": {tail[-1].strip()[:300]}" if tail else "")

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.1) -> JobStatus:
        """Block until the job ends (tests, scripts); the widget polls instead."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        status = self.poll()
        while status.state == "running" and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval_s)
            status = self.poll()
        return status

    def result(self):
        """The function's return value, rebuilt here; ImagioError when the job failed or was cancelled."""
        if self.cancelled:
            raise Cancelled()
        res = self.outcome()
        if res.get("status") != "ok":
            raise ImagioError(self.error_message(res=res))
        return decode(res.get("value"), self.work / "out")

    def cancel(self, timeout_s: float = 5.0) -> None:
        """End the child and everything it started (its whole process group / tree)."""
        self.cancelled = True
        if self.process.poll() is None:
            _kill_tree(self.process, timeout_s)
        self._close()

    def cleanup(self) -> None:
        """Cancel if still running, and remove the folder."""
        if self.process.poll() is None:
            self.cancel()
        self._close()
        shutil.rmtree(self.work, ignore_errors=True)


def _kill_tree(process: subprocess.Popen, timeout_s: float) -> None:
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False,
                       **popen_options())
        process.wait(timeout=timeout_s)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout_s)


# ---------------------------------------------------------------------------------------------- the child side
def run(work) -> int:
    """Run the job in ``work`` (``python -m imagio.jobs WORK``): progress.json while it runs, then result.json."""
    work = Path(work)
    progress_file, result_file = work / "progress.json", work / "result.json"
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
            last[0] = now
            _write_json(progress_file, {"fraction": float(fraction), "message": str(message)})

    started = time.monotonic()
    try:
        report(0.0, "Starting")
        spec = json.loads((work / "job.json").read_text())
        function = _resolve(spec["function"])
        kwargs = decode(spec.get("kwargs") or {}, work / "in")
        value = function(**kwargs, progress=Progress(report))
        tree = encode(value, work / "out")
        report(1.0, "Done")
        _write_json(result_file, {"status": "ok", "runtime_s": round(time.monotonic() - started, 3), "value": tree})
        return 0
    except ImagioError as e:
        _write_json(result_file, {"status": "error", "error": str(e), "kind": "user"})
        return 2
    except Exception as e:  # noqa: BLE001 - report anything to the widget instead of dying silently
        traceback.print_exc()
        _write_json(result_file, {"status": "error", "error": f"{type(e).__name__}: {e}", "kind": "internal"})
        return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m imagio.jobs JOB_FOLDER", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(sys.argv[1]))
