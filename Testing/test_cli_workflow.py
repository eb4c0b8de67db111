"""Whole-workflow tests through the `imagio` command, as a user runs it."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import bundle, io
from imagio import geometry as g
from imagio.testing import data_path, oblique_image


def run_imagio(*args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imagio.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    r = run_imagio("demo", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_demo_writes_scene_report_summary(demo_out):
    out, r = demo_out
    assert "[100.0%]" in r.stdout  # progress on the terminal
    summary = json.loads((out / "summary.json").read_text())
    assert summary["case"]["segments_ml"]["liver_tumor"] > 1.0
    scene = bundle.load_mrb(out / "scene.mrb")
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsFiducialNode"):
        assert scene.GetNodesByClass(cls).GetNumberOfItems() >= 1, cls
    html = (out / "report.html").read_text()
    imgs = re.findall(r"<img src='([^']*)'", html)
    assert len(imgs) >= 6 and all(i.startswith("data:image/png;base64,") and len(i) > 5000 for i in imgs)
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "metrics.csv").stat().st_size > 500
    for key, value in summary.items():
        if isinstance(value, dict) and "status" in value:
            assert value["status"] in ("ok", "not available"), (key, value)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_clean_failure(r, out: Path, needle: str):
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imagio: error:"), r.stderr
    assert needle.lower() in err[0].lower(), err[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_inputs_fail_cleanly(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "notes.nrrd").write_text("this is not an image")
    ct = oblique_image(pixel=sitk.sitkInt16)
    io.write_image(inputs / "ct.nrrd", ct)
    far = oblique_image(origin_ras=(500.0, 500.0, 500.0))
    sitk.WriteImage(far, str(inputs / "elsewhere.nii.gz"))
    sitk.WriteImage(g.copy_geometry(np.zeros(ct.GetSize()[::-1], np.uint8), ct), str(inputs / "empty.nii.gz"))
    before = _digest(inputs)
    out = tmp_path / "out"
    _assert_clean_failure(run_imagio("convert", "--ct", inputs / "notes.nrrd", "--out", out), out, "not an image")
    _assert_clean_failure(run_imagio("convert", "--ct", tmp_path / "nowhere", "--out", out), out, "does not exist")
    _assert_clean_failure(run_imagio("convert", "--ct", inputs / "ct.nrrd", "--seg", inputs / "elsewhere.nii.gz",
                                     "--out", out), out, "outside the image")
    _assert_clean_failure(run_imagio("convert", "--ct", inputs / "ct.nrrd", "--seg", inputs / "empty.nii.gz",
                                     "--out", out), out, "empty")
    _assert_clean_failure(run_imagio("demo", "--case", inputs / "nowhere", "--out", out), out, "not a folder")
    assert _digest(inputs) == before


def test_two_series_folder_fails_cleanly(tmp_path):
    import pydicom

    src = data_path("dicom-3slice/ct-3slice")
    folder = tmp_path / "dicom"
    folder.mkdir()
    for n, f in enumerate(sorted(os.listdir(src))):
        ds = pydicom.dcmread(src / f)
        ds.save_as(folder / f"a{n}.dcm")
        ds.SeriesInstanceUID += ".2"
        ds.SOPInstanceUID += ".2"
        ds.save_as(folder / f"b{n}.dcm")
    out = tmp_path / "out"
    _assert_clean_failure(run_imagio("convert", "--ct", folder, "--out", out), out, "--series-uid")


def test_convert_dicom_rtstruct_case(tmp_path):
    out = tmp_path / "case"
    r = run_imagio("convert", "--ct", data_path("chest-lung1-001/image"), "--seg",
                   data_path("chest-lung1-001/mask_rtstruct/1-1.dcm"), "--rename", "gtv-1=lung_tumor",
                   "--rename", "Spinal-Cord=cord", "--out", out)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "case.json").read_text())
    assert [s["name"] for s in info["segments"]] == ["lung_tumor", "cord", "Lung-Left", "Lung-Right"]
    gtv = next(s for s in info["segments"] if s["name"] == "lung_tumor")
    assert gtv["volume_ml"] == pytest.approx(156.3, rel=0.02)
    segs = io.read_segmentation(out / "segmentation.seg.nrrd", reference=io.read_image(out / "ct.nrrd"))
    assert io.find_segment(segs, "lung_tumor").voxel_count() == gtv["voxels"]
    bad = tmp_path / "bad"
    small = data_path("dicom-3slice")
    for rename, needle in (("heart=x", "no segment named 'heart'"), ("liver_seg", "OLD=NEW"),
                           ("liver_seg=spine_seg", "exists already")):
        _assert_clean_failure(run_imagio("convert", "--ct", small / "ct-3slice", "--seg", small / "liver_seg.nrrd",
                                         small / "spine_seg.nrrd", "--rename", rename, "--out", bad), bad, needle)


def test_phantom_command_writes_readable_truth(tmp_path):
    out = tmp_path / "ph"
    r = run_imagio("phantom", "--out", out, "--seed", "2")
    assert r.returncode == 0, r.stderr
    ct = io.read_image(out / "ct.nrrd")
    truth = {s.name: s for s in io.read_segmentation(out / "truth.seg.nrrd", reference=ct)}
    assert {"airway_lumen", "airway_wall", "liver_tumor", "lung_nodule", "hepatic_vessels", "ribs"} <= set(truth)
    info = json.loads((out / "case.json").read_text())
    assert truth["liver_tumor"].volume_ml() == pytest.approx(info["volumes_ml"]["liver_tumor"], rel=1e-6)
    assert np.allclose(g.centroid_ras(truth["lung_nodule"].mask), info["lung_nodule_center_ras"], atol=2.0)
    lines = json.loads((out / "airway_centerlines.json").read_text())
    assert max(b["generation"] for b in lines["branches"]) >= 5
