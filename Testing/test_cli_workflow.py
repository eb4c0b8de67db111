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
    _check_report(out, ("Segmentation:", "Ablation:", "Lung navigation:", "Margin:"))
    names = {p.stem for p in (out / "images").glob("*.png")}
    assert {"case_coronal", "ablation_axial", "lungnav_coronal", "lungnav_3d", "margin_axial", "margin_3d"} <= names
    for key, value in summary.items():
        if isinstance(value, dict) and "status" in value:
            assert value["status"] in ("ok", "not available"), (key, value)


def _check_report(out: Path, verdicts=()):
    """A self-contained report.html with the verdicts before anything else, a PDF and the CSV tables."""
    html = (out / "report.html").read_text()
    imgs = re.findall(r"<img src='([^']*)'", html)
    assert len(imgs) >= 3 and all(i.startswith("data:image/png;base64,") and len(i) > 5000 for i in imgs)
    assert "src='images/" not in html and "href='images/" not in html
    first_table = html.index("<table")
    for v in verdicts:
        assert html.index("class='verdict") < first_table and v in html[:first_table], v
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "section,quantity,value,unit" and len(rows) > 5


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


# ---------------------------------------------------------------------------------------------- demo --case
@pytest.fixture(scope="module")
def lung1_case(tmp_path_factory):
    """LUNG1-001 as `imagio convert` makes it from its DICOM series and RTSTRUCT."""
    out = tmp_path_factory.mktemp("lung1") / "case"
    r = run_imagio("convert", "--ct", data_path("chest-lung1-001/image"), "--seg",
                   data_path("chest-lung1-001/mask_rtstruct/1-1.dcm"), "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def _demo_case(case: Path, out: Path, *extra):
    r = run_imagio("demo", "--case", case, "--out", out, *extra, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((out / "summary.json").read_text()), r


def test_demo_case_lung1(lung1_case, tmp_path):
    """A lung tumour (GTV-1 of LUNG1-001): every step runs: seeded segmentation, ablation, lung navigation to the
    GTV, and the margin of the ablation step's zone."""
    summary, r = _demo_case(lung1_case, tmp_path / "demo")
    case = summary["case"]
    assert (case["tumor"], case["tumor_site"], case["lung_target"]) == ("GTV-1", "lung", "GTV-1")
    assert case["roles"] == {"GTV-1": "lesion", "Spinal-Cord": "spinal_cord", "Lung-Left": "lung",
                             "Lung-Right": "lung"}
    for step in ("planning", "ablation", "lungnav", "margin"):
        assert summary[step]["status"] == "ok", (step, summary[step])
    assert summary["planning"]["seeded"]["kind"] == "lung-nodule"
    route = summary["lungnav"]["route"]
    assert route["path_length_mm"] > 100 and 0 <= route["gap_to_target_mm"] < 30
    assert summary["margin"]["zone_source"].startswith("the ablation step's zone")
    assert summary["margin"]["tumor_centroid_ras"] == pytest.approx(g.centroid_ras(io.read_segmentation(
        lung1_case / "segmentation.seg.nrrd")[0].mask).tolist(), abs=0.01)
    _check_report(tmp_path / "demo", ("Ablation:", "Lung navigation:", "Margin:"))


def _liver_case(tmp_path: Path) -> Path:
    """Med-MPD liver patient 1: its real liver, tumour and vessel masks on a synthetic CT made from them (the
    collection has no CT): liver 60 HU, tumour 25 HU, portal vein 170, hepatic vein 150, artery 200, else 40 HU."""
    src = data_path("medmpd-liver-p1")
    liver = io.read_segmentation(src / "liver.nii.gz")[0].mask
    names = ("liver", "nodule", "hepaticArtery", "hepaticVein", "portalVein")
    masks = {n: io.read_segmentation(src / f"{n}.nii.gz", reference=liver)[0].mask for n in names}
    arr = sitk.GetArrayFromImage(masks["liver"]) > 0
    kji = np.argwhere(arr)
    lo = np.maximum(kji.min(0) - [1, 15, 15], 0)
    hi = np.minimum(kji.max(0) + [2, 16, 16], arr.shape)
    hu = np.full(arr.shape, 40, np.int16)
    hu[arr] = 60
    for n, v in (("portalVein", 170), ("hepaticVein", 150), ("hepaticArtery", 200), ("nodule", 25)):
        hu[sitk.GetArrayFromImage(masks[n]) > 0] = v
    ct = g.copy_geometry(hu, liver)
    index, size = [int(v) for v in lo[::-1]], [int(v) for v in (hi - lo)[::-1]]
    folder = tmp_path / "liver_src"
    folder.mkdir()
    io.write_image(folder / "ct.nrrd", sitk.RegionOfInterest(ct, size, index))
    for n, m in masks.items():
        sitk.WriteImage(sitk.RegionOfInterest(m, size, index), str(folder / f"{n}.nii.gz"))
    case = tmp_path / "liver_case"
    r = run_imagio("convert", "--ct", folder / "ct.nrrd", "--seg", *(folder / f"{n}.nii.gz" for n in names),
                   "--out", case)
    assert r.returncode == 0, r.stderr
    return case


def test_demo_case_liver(tmp_path):
    """A liver tumour: ablation (the vessels as heat sinks and structures to avoid) and margin run, lung navigation
    is skipped with its reason; exit 0."""
    summary, r = _demo_case(_liver_case(tmp_path), tmp_path / "demo")
    case = summary["case"]
    assert (case["tumor"], case["tumor_site"], case["lung_target"]) == ("nodule", "liver", None)
    assert {n for n, role in case["roles"].items() if role == "vessel"} == {"hepaticArtery", "hepaticVein",
                                                                             "portalVein"}
    assert summary["lungnav"]["status"] == "skipped" and "not in the lung" in summary["lungnav"]["reason"]
    assert "lungnav" in r.stdout and "skipped" in r.stdout
    for step in ("planning", "ablation", "margin"):
        assert summary[step]["status"] == "ok", (step, summary[step])
    assert summary["planning"]["seeded"]["kind"] == "liver-tumor"
    assert summary["ablation"]["tumor"] == "nodule" and summary["ablation"]["probe_count"] >= 1
    assert summary["margin"]["zone_source"].startswith("the ablation step's zone")
    _check_report(tmp_path / "demo", ("Ablation:", "lungnav: skipped", "Margin:"))


def test_demo_case_sarcoma(tmp_path):
    """A soft-tissue sarcoma (STS-002 from its DICOM series and RTSTRUCT): ablation and margin, no lung
    navigation; the seeded segmentation uses the soft-tissue method."""
    case = tmp_path / "case"
    r = run_imagio("convert", "--ct", data_path("sarcoma-sts002/dicom/image"), "--seg",
                   data_path("sarcoma-sts002/dicom/mask/RS.dcm"), "--out", case)
    assert r.returncode == 0, r.stderr
    summary, r = _demo_case(case, tmp_path / "demo")
    c = summary["case"]
    assert (c["tumor"], c["tumor_site"]) == ("GTV_Mass_CT", "soft_tissue")
    assert summary["lungnav"]["status"] == "skipped"
    for step in ("planning", "ablation", "margin"):
        assert summary[step]["status"] == "ok", (step, summary[step])
    assert summary["planning"]["seeded"]["kind"] == "soft-tissue"
    _check_report(tmp_path / "demo", ("Ablation:", "Margin:"))


def test_demo_case_without_a_tumour_and_bad_tumour_name(tmp_path):
    """No tumour-like segment: every step is skipped with its reason and the demo still exits 0; a
    --tumor-segment that is not there is refused with the segment names."""
    small = data_path("dicom-3slice")
    case = tmp_path / "case"
    r = run_imagio("convert", "--ct", small / "ct-3slice", "--seg", small / "liver_seg.nrrd",
                   small / "spine_seg.nrrd", "--out", case)
    assert r.returncode == 0, r.stderr
    summary, r = _demo_case(case, tmp_path / "demo")
    assert summary["case"]["tumor"] is None
    for step in ("planning", "ablation", "lungnav", "margin"):
        assert summary[step]["status"] == "skipped" and summary[step]["reason"], (step, summary[step])
    bad = tmp_path / "bad"
    _assert_clean_failure(run_imagio("demo", "--case", case, "--tumor-segment", "tumour 3", "--out", bad), bad,
                          "no segment named 'tumour 3'")
    # named by the user, a segment is the tumour whatever its name says
    summary, r = _demo_case(case, tmp_path / "named", "--tumor-segment", "liver_seg", "--steps", "margin")
    assert summary["case"]["tumor"] == "liver_seg" and summary["margin"]["status"] == "ok"
