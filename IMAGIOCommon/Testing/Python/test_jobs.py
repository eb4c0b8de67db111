"""imagio.jobs: the one background-job path (a function in a child process, JSON file protocol, group cancel).

Three tests start a real child process (about a second each: the child imports numpy and SimpleITK);
the codec and the process options are checked in this process.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import jobs
from imagio.engine import Mirroring
from imagio.errors import Cancelled, ImagioError
from imagio.io import Segment
from imagio.testing import oblique_image


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for the container's init to reap counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_codec_rebuilds_images_arrays_segments_and_enums(tmp_path):
    img = oblique_image(size=(7, 6, 5), spacing=(0.7, 0.9, 2.5))
    mask = sitk.Cast(img > 0, sitk.sitkUInt8)
    value = {"segment": Segment("Liver tumor", mask, (1.0, 0.5, 0.0), 3), "mirroring": Mirroring.OFF,
             "points": np.arange(12, dtype=np.float64).reshape(4, 3) / 7, "ids": np.array([3, -1], np.int64),
             "pair": (1, "a"), "by_id": {2: "two"}, "path": Path("/x/y.json"), "nan": float("nan"),
             "flag": np.bool_(True), "nested": [{"n": np.float32(0.5)}]}
    tree = jobs.encode(value, tmp_path)
    import json

    back = jobs.decode(json.loads(json.dumps(tree)), tmp_path)  # through JSON text, as between the processes
    seg = back["segment"]
    assert isinstance(seg, Segment) and seg.name == "Liver tumor" and seg.label_value == 3
    assert seg.color == (1.0, 0.5, 0.0)
    assert seg.mask.GetOrigin() == mask.GetOrigin() and seg.mask.GetDirection() == mask.GetDirection()
    assert np.array_equal(sitk.GetArrayViewFromImage(seg.mask), sitk.GetArrayViewFromImage(mask))
    assert back["mirroring"] is Mirroring.OFF
    assert back["points"].dtype == np.float64 and np.array_equal(back["points"], value["points"])
    assert back["ids"].tolist() == [3, -1] and back["pair"] == (1, "a") and back["by_id"] == {2: "two"}
    assert back["path"] == Path("/x/y.json") and np.isnan(back["nan"])
    assert back["flag"] is True and back["nested"] == [{"n": 0.5}]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy"] * 3
    rgb = sitk.Compose([mask, mask, mask])
    back = jobs.decode(jobs.encode(rgb, tmp_path / "v"), tmp_path / "v")
    assert back.GetNumberOfComponentsPerPixel() == 3 and back.GetSize() == rgb.GetSize()
    rigid = sitk.Euler3DTransform((1.1, 2.2, 3.3), 0.1234567891234, 0.2, 0.3, (1.23456789, 2.0, 3.0))
    spline = sitk.BSplineTransformInitializer(img, [3, 3, 3])
    spline.SetParameters(np.random.default_rng(0).normal(0, 1.0, len(spline.GetParameters())).tolist())
    both = jobs.decode(json.loads(json.dumps(jobs.encode({"r": rigid, "c": sitk.CompositeTransform([rigid, spline])},
                                                         tmp_path / "t"))), tmp_path / "t")
    assert isinstance(both["r"], sitk.Euler3DTransform) and both["r"].GetParameters() == rigid.GetParameters()
    for q in [(0.5, 1.5, 2.5), (-3.1, 4.4, 9.9)]:  # the same mapping, exactly
        assert both["c"].TransformPoint(q) == sitk.CompositeTransform([rigid, spline]).TransformPoint(q)


def test_codec_refuses_foreign_types_and_files_outside_the_job(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Foreign:
        x: int

    with pytest.raises(TypeError, match="not an IMAGIO type"):
        jobs.encode(Foreign(1), tmp_path)
    with pytest.raises(TypeError, match="object arrays"):
        jobs.encode(np.array([object()]), tmp_path)
    with pytest.raises(ValueError, match="not in IMAGIO's packages"):
        jobs.decode({"__dataclass__": "subprocess.Popen", "fields": {"args": ["true"]}}, tmp_path)
    with pytest.raises(ValueError, match="not a file of the job"):
        jobs.decode({"__ndarray__": "../secret.npy"}, tmp_path)
    with pytest.raises(ValueError, match="not a function of IMAGIO"):
        jobs.Job("os.system", {"command": "true"}, work_dir=tmp_path / "job")
    assert not (tmp_path / "job").exists()


def test_process_options_own_group_and_no_console_window_on_windows():
    nt = jobs.popen_options("nt")["creationflags"]
    assert nt & 0x08000000 and nt & 0x00000200  # CREATE_NO_WINDOW (as Slicer's launcher), CREATE_NEW_PROCESS_GROUP
    if sys.platform == "win32":
        import subprocess

        assert jobs.CREATE_NO_WINDOW == subprocess.CREATE_NO_WINDOW
    assert jobs.popen_options("posix") == {"start_new_session": True}


def test_a_job_runs_in_a_child_process_reports_progress_and_returns_its_value(tmp_path):
    img = oblique_image(size=(9, 8, 6), spacing=(0.7, 0.9, 2.5))
    job = jobs.Job("imagio.testing.job_scale", {"image": img, "factor": 2.5, "steps": 4, "delay_s": 0.25},
                   work_dir=tmp_path / "job")
    try:
        assert job.process.pid != os.getpid()
        seen = set()
        deadline = time.monotonic() + 120
        status = job.poll()
        while status.state == "running" and time.monotonic() < deadline:
            seen.add((round(status.fraction, 2), status.message))
            time.sleep(0.03)
            status = job.poll()
        assert status.state == "done", status.message
        assert {(0.25, "Step 2 of 4"), (0.5, "Step 3 of 4"), (0.75, "Step 4 of 4")} <= seen
        value = job.result()
        assert value["steps"] == 4 and value["gui_modules"] == []  # the child loaded no Slicer, VTK or Qt
        out = value["image"]
        assert out.GetOrigin() == img.GetOrigin() and out.GetSpacing() == img.GetSpacing()
        assert np.allclose(sitk.GetArrayViewFromImage(out), 2.5 * sitk.GetArrayViewFromImage(img))
        assert job.outcome()["runtime_s"] >= 4 * 0.25
    finally:
        job.cleanup()
    assert not (tmp_path / "job").exists()


def test_a_user_error_in_the_job_is_one_line_and_exit_2(tmp_path):
    job = jobs.Job("imagio.testing.job_refuse", {"what": "The CT has 2 slices"}, work_dir=tmp_path / "job")
    try:
        status = job.wait(timeout_s=120)
        assert status.state == "failed"
        assert status.message == "The CT has 2 slices. Give another input"  # str(ImagioError), one line
        assert job.process.returncode == 2 and job.outcome()["kind"] == "user"
        with pytest.raises(ImagioError, match="The CT has 2 slices"):
            job.result()
    finally:
        job.cleanup()


def test_cancel_ends_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "pids"
    job = jobs.Job("imagio.testing.job_spawn_and_wait", {"pid_file": str(pid_file)}, work_dir=tmp_path / "job")
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline and job.process.poll() is None:
            time.sleep(0.05)
        child, grandchild = (int(v) for v in pid_file.read_text().split())
        assert child == job.process.pid and _alive(grandchild)
        job.cancel()
        assert job.process.poll() is not None
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)  # what the job started went with it
        assert job.poll().state == "cancelled"
        assert not (job.work / "result.json").exists()
        with pytest.raises(Cancelled):
            job.result()
    finally:
        job.cleanup()


#: Every module that holds a job function (what the Slicer widgets run in the background).
JOB_MODULES = ["imagio.jobs", "imagio.testing", "IMAGIOPlanningLib.worker", "IMAGIOLungNavLib.compute",
               "IMAGIOPlanningLib.seeded", "IMAGIOAblationZoneLib.jobs", "IMAGIOMarginLib.jobs"]


def test_job_modules_import_no_slicer_vtk_or_qt():
    """A job's child starts with Slicer's plain Python: its modules must load without Slicer, VTK or Qt."""
    import subprocess

    code = ("import sys\nfor m in ('slicer', 'vtk', 'vtkmodules', 'qt', 'ctk'): sys.modules[m] = None\n"
            f"import importlib\nfor m in {JOB_MODULES!r}: importlib.import_module(m)\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
