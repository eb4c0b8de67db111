"""One case of `imagio batch`, as a worker runs it: the step command, its outputs published atomically.

:func:`run_case` runs ``imagio.cli.main(argv)`` - the very code of the
``imagio <step>`` command - with ``--out`` pointing into a fresh staging
folder ``DIR/.staging/<case_id>.<token>/<step>``. When the command has
returned, the staging folder receives ``log.txt`` (the command's terminal
output) and ``batch_case.json`` (status, one-line message, headline numbers,
input hashes, the files written and their sizes), and is then renamed to
``DIR/<case_id>`` in one step. A case folder therefore either holds a
finished run with its record, or does not exist: a killed worker or batch
leaves only its staging folder behind, which never looks complete. The
staging folder holds a ``.running`` marker that is removed just before the
rename: a staging folder that the batch cleaned away while the case still ran
(an interrupted batch on a cluster it does not own) is never published.

Nothing here imports dask: on a Dask worker the start of a case is announced
as a worker event (topic ``imagio-batch``), elsewhere the function runs as is.
The module is also the ``preload`` of the LocalCluster's workers
(:func:`dask_setup`: SIGINT ignored in every worker process, restarted ones too).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

from . import __version__


def dask_setup(worker) -> None:
    """distributed's preload hook, run in each worker process of the LocalCluster that `imagio batch` starts,
    before the worker takes tasks: SIGINT ignored there. A terminal's Ctrl-C reaches the whole process group,
    and only the batch acts on it (it closes its cluster, which ends the workers); a worker that took it printed
    a KeyboardInterrupt traceback from inside Dask. The first workers inherit "ignored" from the batch
    (imagio.batch._children_ignore_sigint); a worker that its nanny restarts later (after a memory kill) is
    spawned while the batch has its own handler again, so it needs this. A nanny's worker process (a
    multiprocessing child) runs its event loop, and so this hook, in its main thread; a worker inside the batch's
    own process (not a multiprocessing child) leaves the batch's handler alone."""
    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


STAGING = ".staging"
RECORD = "batch_case.json"
LOG = "log.txt"
MARKER = ".running"
EVENT_TOPIC = "imagio-batch"

#: step -> (its JSON file, headline keys: summary column -> key in that JSON)
HEADLINES: dict[str, tuple[str, dict[str, str]]] = {
    "margin": ("margin.json", {
        "minimal_margin_mm": "minimal_margin_mm", "coverage_percent": "coverage_percent",
        "residual_tumor_ml": "residual_tumor_ml", "threshold_mm": "threshold_mm", "verdict": "verdict",
        "tumor_volume_ml": "tumor_volume_ml", "ablation_zone_volume_ml": "ablation_zone_volume_ml",
        "sigma_mm": "sigma_mm"}),
    "lungnav": ("route.json", {
        "route_length_mm": "path_length_mm", "reachable": "reachable", "generation": "generation",
        "gap_to_target_mm": "gap_to_target_mm", "min_lumen_diameter_mm": "min_lumen_diameter_mm",
        "max_turn_angle_deg": "max_turn_angle_deg"}),
    "ablation-zone": ("ablation.json", {
        "coverage_percent": "coverage_percent", "margin_coverage_percent": "margin_coverage_percent",
        "minimal_margin_mm": "minimal_margin_mm", "zone_volume_ml": "zone_volume_ml",
        "tumor_volume_ml": "tumor_volume_ml", "margin_mm": "margin_mm"}),
    "ablation-plan": ("plan.json", {
        "feasible": "feasible", "probe_count": "probe_count", "coverage_percent": "coverage_percent",
        "tumor_coverage_percent": "tumor_coverage_percent", "minimal_margin_mm": "minimal_margin_mm",
        "margin_mm": "margin_mm", "zone_volume_ml": "zone_volume_ml"}),
    "ablation-replan": ("replan.json", {}),
    "export-dicom": ("export.json", {}),  # its own reader below: segments, measurements, dciodvfy errors
    "segment": ("segment.json", {}),
    "demo": ("summary.json", {}),
}
UNIT_SUFFIXES = ("_mm", "_ml", "_percent", "_deg", "_w", "_hu", "_c", "_min", "_mm2", "_mm3", "_voxels")
TIME_KEYS = ("runtime_s", "run_time_s", "total_runtime_s")


# ------------------------------------------------------------------------------------------ output capture
class _ThreadStream(io.TextIOBase):
    """sys.stdout / sys.stderr stand-in: a thread that captures writes into its own buffer."""

    def __init__(self, original):
        self.original = original
        self.local = threading.local()

    def write(self, s):
        buf = getattr(self.local, "buf", None)
        return buf.write(s) if buf is not None else self.original.write(s)

    def flush(self):
        if getattr(self.local, "buf", None) is None:
            self.original.flush()

    def isatty(self):
        return False if getattr(self.local, "buf", None) is not None else self.original.isatty()

    @property
    def encoding(self):
        return getattr(self.original, "encoding", "utf-8")

    def fileno(self):
        return self.original.fileno()


_install_lock = threading.Lock()


@contextlib.contextmanager
def capture_output():
    """Capture this thread's print/logging output (other threads, e.g. Dask's, keep writing as before)."""
    with _install_lock:
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _ThreadStream):
                setattr(sys, name, _ThreadStream(getattr(sys, name)))
    buf = io.StringIO()
    out, err = sys.stdout, sys.stderr
    out.local.buf = buf
    err.local.buf = buf
    try:
        yield buf
    finally:
        out.local.buf = None
        err.local.buf = None


def _one_line(text: str, rc: int) -> str:
    """The command's own one-line error (``imagio: error: ...``), else its last line of output."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    for ln in reversed(lines):
        for prefix in ("imagio: error: ", "imagio: internal error: "):
            if ln.startswith(prefix):
                return ln[len("imagio: "):] if "internal" in prefix else ln[len(prefix):]
        if ln.startswith("imagio: ") or ": error: " in ln:
            return ln
    return (lines[-1] if lines else "") or f"the command ended with exit status {rc}"


# ------------------------------------------------------------------------------------------ headline numbers
def _scalar(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return v if not (isinstance(v, float) and not math.isfinite(v)) else None
    return None


def _generic(d: dict, prefix: str = "") -> dict:
    """Top-level numbers whose key names their unit (``*_mm``, ``*_ml``, ``*_percent`` ...) and yes/no fields."""
    out = {}
    for k, v in d.items():
        if k in TIME_KEYS:
            continue
        if isinstance(v, bool) or (isinstance(v, (int, float)) and k.endswith(UNIT_SUFFIXES)):
            out[prefix + k] = _scalar(v)
    return out


def headline_numbers(step: str, step_dir: Path) -> dict:
    """The step's headline numbers, read from the JSON it wrote (keys carry their units)."""
    name, keys = HEADLINES.get(step, ("", {}))
    f = step_dir / name if name else None
    if f is None or not f.is_file():
        found = sorted(step_dir.glob("*.json")) if step_dir.is_dir() else []
        if len(found) != 1:
            return {}
        f = found[0]
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(d, dict):
        return {}
    if step == "segment":
        segs = [s for s in d.get("segments", []) if isinstance(s, dict)]
        vols = [s.get("volume_ml") for s in segs if isinstance(s.get("volume_ml"), (int, float))]
        out = {"volume_ml": round(float(sum(vols)), 4) if vols else None, "segment_count": len(segs),
               "segments": "; ".join(str(s.get("name")) for s in segs)}
        return out
    if step == "export-dicom":
        segs = [s for s in d.get("segments", []) if isinstance(s, dict)]
        vols = [s.get("volume_ml") for s in segs if isinstance(s.get("volume_ml"), (int, float))]
        v = d.get("validation") if isinstance(d.get("validation"), dict) else {}
        out = {"volume_ml": round(float(sum(vols)), 4) if vols else None, "segment_count": len(segs),
               "segments": "; ".join(str(s.get("label")) for s in segs),
               "measurement_count": len(d.get("measurements") or []),
               "seg_frames": (d.get("seg") or {}).get("frames")}
        for part in ("seg", "sr"):  # dciodvfy's own errors (not those the CT has too); absent when not validated
            if isinstance(v.get(part), dict):
                out[f"dciodvfy_{part}_errors"] = len(v[part].get("errors") or [])
        return out
    if step == "margin" and isinstance(d.get("p_margin_ge_threshold"), (int, float)):
        out = {col: _scalar(d.get(key)) for col, key in keys.items() if key in d}
        out["p_margin_ge_threshold_percent"] = round(100.0 * d["p_margin_ge_threshold"], 3)
        return out
    if step == "demo":
        out = {}
        for sub, v in d.items():
            if isinstance(v, dict) and "status" in v:
                out[f"{sub}_status"] = v.get("status")
                out.update(_generic(v, prefix=f"{sub}_"))
        return out
    if keys:
        return {col: _scalar(d.get(key)) for col, key in keys.items() if key in d}
    return _generic(d)


# ------------------------------------------------------------------------------------------ publishing
def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def publish(stage: Path, dest: Path) -> None:
    """Make ``stage`` the case folder ``dest`` with one rename (a former ``dest`` is moved aside first)."""
    old = None
    if dest.exists():
        old = stage.parent / (stage.name + ".old")
        os.replace(dest, old)
    os.replace(stage, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_record(folder: Path, record: dict) -> None:
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / RECORD)


def _announce(case: dict, token: str) -> str:
    """Tell the client that this case started, on which worker; the worker's address ('' off Dask)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return ""
    with contextlib.suppress(Exception):
        worker.log_event(EVENT_TOPIC, {"batch": case.get("batch_token"), "case_id": case["case_id"],
                                       "worker": worker.address, "pid": os.getpid(), "token": token,
                                       "nthreads": int(getattr(worker.state, "nthreads", 0) or 0)})
    return worker.address


def run_case(case: dict, out_dir: str) -> dict:
    """Run one manifest row (``case`` from :meth:`CaseSpec.to_dict` plus ``batch_token``) into ``out_dir``.

    Returns the case record (also written as ``DIR/<case_id>/batch_case.json``). Never raises for a
    failing step: its exit status and one-line message go into the record.
    """
    out = Path(out_dir)
    case_id, step = case["case_id"], case["step"]
    token = uuid.uuid4().hex[:12]
    stage = out / STAGING / f"{case_id}.{token}"
    stage.mkdir(parents=True)
    marker = stage / MARKER  # removed just before publishing: a staging folder cleaned away meanwhile is never published
    marker.write_text(token)
    worker = _announce(case, token)
    step_dir = stage / step
    argv = [*case["argv"], f"--out={step_dir}"]
    started = time.time()
    t0 = time.perf_counter()
    rc = 1
    argv0 = sys.argv
    with capture_output() as buf:
        try:
            from .cli import main

            sys.argv = ["imagio", *argv]  # what the step records as its command line
            rc = int(main(argv) or 0)
        except SystemExit as e:  # argparse's own exit
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 - a failing case is an error row, the batch goes on
            print(f"imagio: internal error: {type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
        finally:
            sys.argv = argv0
    runtime = round(time.perf_counter() - t0, 3)
    text = buf.getvalue()
    (stage / LOG).write_text(text.replace(str(stage), str(out / case_id)))  # where the files are once published
    status = "ok" if rc == 0 else "error"
    message = "" if rc == 0 else _one_line(text, rc)
    record = {
        "case_id": case_id, "step": step, "status": status, "message": message, "exit_status": rc,
        "runtime_s": runtime, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "worker": worker, "pid": os.getpid(), "argv": argv[:-1], "options_sha256": case["options_sha256"],
        "inputs": case["inputs"], "numbers": headline_numbers(step, step_dir) if step_dir.is_dir() else {},
        "outputs": {f"{step}/{k}": v for k, v in _files(step_dir).items()} if step_dir.is_dir() else {},
        "imagio_version": __version__, "batch": case.get("batch_token"),
    }
    write_record(stage, record)
    try:
        marker.unlink()
    except FileNotFoundError:  # the batch removed this staging folder (it was interrupted): publish nothing
        shutil.rmtree(stage, ignore_errors=True)
        raise RuntimeError(f"case {case_id}: its staging folder was removed before it finished; not published") from None
    publish(stage, out / case_id)
    return record


def error_record(case: dict, message: str, runtime_s: float | None = None, worker: str = "") -> dict:
    """The record of a case that never returned (its worker died): written by the client."""
    return {"case_id": case["case_id"], "step": case["step"], "status": "error", "message": message,
            "exit_status": None, "runtime_s": runtime_s, "started": None, "worker": worker, "pid": None,
            "argv": case["argv"], "options_sha256": case["options_sha256"], "inputs": case["inputs"],
            "numbers": {}, "outputs": {}, "imagio_version": __version__}


def publish_record(out_dir: str, record: dict, log_text: str = "") -> None:
    """Publish a case folder that holds only its record (and a log), atomically."""
    out = Path(out_dir)
    stage = out / STAGING / f"{record['case_id']}.{uuid.uuid4().hex[:12]}"
    stage.mkdir(parents=True)
    (stage / LOG).write_text(log_text)
    write_record(stage, record)
    publish(stage, out / record["case_id"])


def complete_record(out_dir: Path, case: dict) -> dict | None:
    """The earlier record of ``case`` when it finished ok with the same inputs and options and all its files."""
    folder = Path(out_dir) / case["case_id"]
    try:
        rec = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("status") != "ok" or rec.get("step") != case["step"]:
        return None
    if rec.get("options_sha256") != case["options_sha256"] or rec.get("inputs") != case["inputs"]:
        return None
    outputs = rec.get("outputs") or {}
    if not outputs:
        return None
    for rel, size in outputs.items():
        f = folder / rel
        if not f.is_file() or f.stat().st_size != size:
            return None
    return rec


__all__ = ["run_case", "headline_numbers", "capture_output", "publish", "complete_record", "error_record",
           "publish_record", "HEADLINES", "STAGING", "RECORD", "EVENT_TOPIC"]
