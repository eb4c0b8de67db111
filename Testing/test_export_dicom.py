"""`imagio export-dicom`: DICOM SEG + TID 1500 SR on real CT series, validated and read back two ways."""

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from imagio import dicom_export as de
from imagio import io
from imagio.testing import data_path

pytest.importorskip("highdicom")


def run_imagio(*args, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imagio.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _require_dciodvfy():
    """dciodvfy validates every export where it is installed; CI must have it (scripts/test.sh installs it)."""
    if de.dciodvfy_path() is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (dicom3tools) is not installed, and CI requires the validation")
        return False
    return True


def _same(a: float, b: float) -> bool:
    """Equal up to the 16 characters of a DICOM decimal string."""
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def _check_export(out, ct_dir, inputs: dict, jsons: dict):
    """The SEG and SR are valid, on the CT's patient/study/frame, and read back to the same masks and numbers."""
    info = json.loads((out / "export.json").read_text())
    ct0 = pydicom.dcmread(sorted((ct_dir).iterdir())[0], stop_before_pixels=True)
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(out / "sr.dcm")
    for ds in (seg, sr):
        assert ds.PatientID == ct0.PatientID and ds.StudyInstanceUID == ct0.StudyInstanceUID
    assert seg.FrameOfReferenceUID == ct0.FrameOfReferenceUID and seg.Modality == "SEG" and sr.Modality == "SR"
    # TID 1500, referencing the SEG
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    refs = {str(r.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert str(seg.SOPInstanceUID) in refs and str(ct0.SOPInstanceUID) in refs
    if _require_dciodvfy():
        v = info["validation"]
        assert v["seg"]["errors"] == [] and v["sr"]["errors"] == [], v
    # masks: the input voxel counts, through highdicom and through IMAGIO's reader
    back = de.read_back(out, ct_dir)
    assert back["voxels"]["highdicom"] == inputs
    assert back["voxels"]["imagio"] == inputs
    # numbers: every one of the JSON files is in the SR, both readers agree
    hd_numbers, own = back["numbers"]["highdicom"], back["numbers"]["imagio"]
    assert set(hd_numbers) == set(own)
    for k in own:
        assert _same(hd_numbers[k][0], own[k][0]) and hd_numbers[k][1] == own[k][1], k
    found = 0
    for m in info["measurements"]:
        step, _, key = m["source"].partition(".")
        if step in jsons:
            value = jsons[step]
            for part in key.split("."):
                value = value[int(part)] if isinstance(value, list) else value[part]
            assert _same(m["value"], value), m
            found += 1
        value, unit = own[(m["code"][0], m["segment"])]
        assert _same(value, m["value"]) and unit == m["unit"][0], m
    expected = sum(1 for step, data in jsons.items() for k in _number_keys(step, data))
    assert found == expected and (found > 0 or not jsons)
    return info, back


def _number_keys(step, data):
    table = {"margin": de.MARGIN_QUANTITIES, "plan": de.PLAN_QUANTITIES, "route": de.ROUTE_QUANTITIES}[step]
    keys = [k for k in table if de._finite(de._json_value(data, k)) is not None]
    if step == "margin":
        keys += [f"shell_coverage_percent.{k}" for k in data.get("shell_coverage_percent", {})]
    return keys


def test_export_lung1_rtstruct_with_margin_and_route(tmp_path):
    """LUNG1-001: the four RTSTRUCT ROIs as SEG segments with SNOMED CT codes, the GTV's volume and the margin and
    route numbers in the SR (JSON files in the CLI contract's keys)."""
    ct_dir = data_path("chest-lung1-001/image")
    rt = data_path("chest-lung1-001/mask_rtstruct/1-1.dcm")
    margin = {"minimal_margin_mm": 3.215, "coverage_percent": 99.87, "residual_tumor_ml": 0.0412,
              "shell_coverage_percent": {"0": 99.87, "3": 91.2, "5": 80.05, "10": 41.9},
              "margin_ci_mm": [1.02, 3.1], "inputs": {"tumor_segment": "GTV-1"}}
    route = {"reachable": False, "path_length_mm": 182.37, "generation": 4, "gap_to_target_mm": 6.2,
             "min_lumen_diameter_mm": 3.9, "route_points_ras": [[0, 0, 0], [1, 1, 1]]}
    (tmp_path / "margin.json").write_text(json.dumps(margin))
    (tmp_path / "route.json").write_text(json.dumps(route))
    out = tmp_path / "dicom"
    r = run_imagio("export-dicom", "--ct", ct_dir, "--seg", rt, "--margin", tmp_path / "margin.json",
                   "--route", tmp_path / "route.json", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["export.json", "seg.dcm", "sr.dcm"]
    ct = io.read_image(ct_dir)
    inputs = {s.name: s.voxel_count() for s in io.read_segmentation(rt, reference=ct)}
    assert set(inputs) == {"GTV-1", "Lung-Left", "Lung-Right", "Spinal-Cord"}
    info, back = _check_export(out, ct_dir, inputs, {"margin": margin, "route": route})
    codes = {s["label"]: (s["category"][0], s["type"][0], (s["type_modifier"] or [None])[0]) for s in info["segments"]}
    assert codes["GTV-1"] == ("49755003", "108369006", None)       # Morphologically abnormal structure / Neoplasm
    assert codes["Lung-Left"] == ("91723000", "39607008", "7771000")  # Anatomical structure / Lung / Left
    assert codes["Spinal-Cord"][1] == "2748008"
    gtv = next(s for s in info["segments"] if s["label"] == "GTV-1")
    assert gtv["volume_ml"] == pytest.approx(156.3, rel=0.02)  # the data README's value
    assert back["numbers"]["imagio"][("118565006", "GTV-1")] == (pytest.approx(gtv["volume_ml"], abs=1e-4), "ml")
    assert back["numbers"]["imagio"][("MAM", "GTV-1")] == (3.215, "mm")
    assert back["numbers"]["imagio"][("121211", "GTV-1")] == (182.37, "mm")  # DCM "Path length"
    assert "dciodvfy: SEG 0 errors, SR 0 errors" in r.stdout or de.dciodvfy_path() is None


@pytest.mark.parametrize("case", ["sarcoma-sts002"])
def test_export_sarcoma_with_a_real_margin_run(tmp_path, case):
    """A soft-tissue sarcoma: `imagio margin` on its GTV and a zone made around it, then the export of both
    segments; the SR holds the margin.json numbers exactly and the two volumes."""
    ct_dir = data_path(f"{case}/dicom/image")
    rt = data_path(f"{case}/dicom/mask/RS.dcm")
    ct = io.read_image(ct_dir)
    gtv = io.read_segmentation(rt, reference=ct)[0]
    dist = sitk.SignedMaurerDistanceMap(gtv.mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    zone = sitk.Cast(dist <= 7.0, sitk.sitkUInt8)
    io.write_segmentation(tmp_path / "zone.seg.nrrd", [io.Segment("ablation zone", zone, (0.2, 0.6, 0.9))], ct)
    r = run_imagio("margin", "--tumor", rt, "--pre-ct", ct_dir, "--post-ct", ct_dir, "--ablation",
                   tmp_path / "zone.seg.nrrd", "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    margin = json.loads((tmp_path / "m" / "margin.json").read_text())
    out = tmp_path / "dicom"
    r = run_imagio("export-dicom", "--ct", ct_dir, "--seg", rt, "--seg", tmp_path / "zone.seg.nrrd",
                   "--margin", tmp_path / "m" / "margin.json", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    inputs = {"GTV_Mass_CT": gtv.voxel_count(), "ablation zone": int(np.count_nonzero(sitk.GetArrayViewFromImage(zone)))}
    info, back = _check_export(out, ct_dir, inputs, {"margin": margin})
    roles = {s["label"]: (s["role"], s["algorithm_type"], s["type"][2]) for s in info["segments"]}
    assert roles == {"GTV_Mass_CT": ("lesion", "MANUAL", "Mass"), "ablation zone": ("ablation_zone", "AUTOMATIC",
                                                                                    "Necrosis")}
    own = back["numbers"]["imagio"]
    assert own[("MAM", "GTV_Mass_CT")][0] == pytest.approx(margin["minimal_margin_mm"], abs=1e-9)
    assert own[("118565006", "ablation zone")][1] == "ml"
    assert gtv.volume_ml() == pytest.approx(53.3, rel=0.02)


def test_node_level_export_keeps_a_terminology_tag(tmp_path):
    """export_dicom_nodes (the Slicer modules' entry) on MRML nodes: a segment tagged 'Liver' in Slicer's terminology
    is coded Liver whatever its name."""
    from imagio.mrml import segmentation_node_from_segments, volume_node_from_image
    from imagio.naming import Coded, Terminology, terminology_tag
    from imagio.scene import new_scene

    ct_dir = data_path("sarcoma-sts002/dicom/image")
    ct = io.read_image(ct_dir)
    gtv = io.read_segmentation(data_path("sarcoma-sts002/dicom/mask/RS.dcm"), reference=ct)[0]
    scene = new_scene()
    ct_node = volume_node_from_image(scene, ct, "CT")
    node = segmentation_node_from_segments(scene, [io.Segment("Segment_1", gtv.mask, (0.8, 0.3, 0.3))], "seg", ct_node)
    tag = terminology_tag(Terminology(Coded("91723000", "SCT", "Anatomical Structure"),
                                      Coded("10200004", "SCT", "Liver")))
    segment = node.GetSegmentation().GetNthSegment(0)
    segment.SetTag("TerminologyEntry", tag)
    files = sorted(ct_dir.iterdir())
    res = de.export_dicom_nodes(node, ct_node, files, tmp_path)
    s = res.info["segments"][0]
    assert (s["type"][0], s["coded_from"], s["voxels"]) == ("10200004", "terminology tag", gtv.voxel_count())
    assert de.read_back(tmp_path, ct_dir)["voxels"]["imagio"] == {"Segment_1": gtv.voxel_count()}


def test_bad_inputs_fail_cleanly(tmp_path):
    ct_dir = data_path("sarcoma-sts002/dicom/image")
    rt = data_path("sarcoma-sts002/dicom/mask/RS.dcm")
    out = tmp_path / "out"
    nrrd = tmp_path / "ct.nrrd"
    io.write_image(nrrd, io.read_image(ct_dir))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    cases = [
        (("--ct", nrrd, "--seg", rt), "DICOM"),
        (("--ct", ct_dir, "--seg", rt, "--margin", tmp_path / "nowhere.json"), "does not exist"),
        (("--ct", ct_dir, "--seg", rt, "--margin", tmp_path / "bad.json"), "not a JSON"),
        (("--ct", ct_dir, "--seg", rt, "--route", tmp_path / "list.json"), "JSON object"),
        (("--ct", ct_dir, "--seg", data_path("chest-lung1-001/mask_rtstruct/1-1.dcm")), "another"),
    ]
    for args, needle in cases:
        r = run_imagio("export-dicom", *args, "--out", out)
        assert r.returncode == 2, r.stdout + r.stderr
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("imagio: error:") and needle.lower() in err[0].lower(), r.stderr
        assert not out.exists()


def test_without_highdicom_the_message_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "highdicom" or name.startswith("highdicom."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(Exception, match=r"imagio\[dicom\]"):
        de._need_highdicom()

