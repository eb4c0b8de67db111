"""The panels' "DICOM export (SEG + SR)" section (issue 14: "The Slicer modules offer the same export"), on a real CT.

STS-002 (soft-tissue sarcoma, DICOM series + RTSTRUCT GTV) is loaded as Slicer's DICOM module loads it: a volume
node whose ``DICOM.instanceUIDs`` attribute lists the series' SOP Instance UIDs, and those files indexed in
``slicer.dicomDatabase``. The Margin panel assesses the GTV against a zone of the voxels within 5 mm of it, then exports;
the SEG and SR are read back through highdicom and through IMAGIO's readers and compared with the masks and with
the panel's own result. The Planning panel exports LUNG1-001's four segments (volumes only).
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from imagio import dicom_export as de
from imagio import io, mrml
from imagio.errors import ImagioError
from imagio.io import Segment
from imagio.testing import data_path

pytest.importorskip("highdicom")


def _require_dciodvfy() -> bool:
    if de.dciodvfy_path() is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (dicom3tools) is not installed, and CI requires the validation")
        return False
    return True


def _load_dicom_ct(scene, ct_dir, name):
    """The CT as Slicer's DICOM scalar-volume plugin leaves it: its instance UIDs (slice order) on the node, its
    files in the DICOM database."""
    import slicer

    files = sorted(p for p in ct_dir.iterdir() if p.is_file())
    image = io.read_image(ct_dir)
    normal = np.array(image.GetDirection()).reshape(3, 3)[:, 2]
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    headers.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    node = mrml.volume_node_from_image(scene, image, name)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(str(ds.SOPInstanceUID) for ds in headers))
    for f in files:
        slicer.dicomDatabase.insert(f)
    return node, image


def _grown(mask: sitk.Image, mm: float) -> sitk.Image:
    """The mask grown by exactly ``mm`` (voxel centres within ``mm`` of it, in physical distance)."""
    d = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Cast(d <= mm, sitk.sitkUInt8)


def _run_export(harness, widget, timeout_s=300.0):
    ui = widget.ui
    ui.exportDicomButton.click()
    assert widget.jobRunning, ui.statusLabel.text if hasattr(ui, "statusLabel") else ""
    assert ui.exportDicomButton.text == "Cancel"
    harness.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=timeout_s)
    assert not widget.jobRunning, "the export did not finish"


def test_margin_panel_exports_seg_and_sr_with_its_margin(slicer_app, tmp_path):
    import slicer

    harness = slicer_app
    ct_dir = data_path("sarcoma-sts002/dicom/image")
    widget = harness.create_widget("IMAGIOMargin")
    ui, p, scene = widget.ui, widget._parameterNode, slicer.mrmlScene
    ct_node, ct = _load_dicom_ct(scene, ct_dir, "STS-002 CT")
    gtv = io.read_segmentation(data_path("sarcoma-sts002/dicom/mask/RS.dcm"), reference=ct)[0]
    zone = _grown(gtv.mask, 5.0)
    seg = mrml.segmentation_node_from_segments(scene, [Segment("GTV", gtv.mask), Segment("ablation zone", zone)],
                                               "STS-002 segments", ct_node)
    ids = seg.GetSegmentation().GetSegmentIdBySegmentName
    voxels = {"GTV": int(sitk.GetArrayViewFromImage(gtv.mask).astype(bool).sum()),
              "ablation zone": int(sitk.GetArrayViewFromImage(zone).astype(bool).sum())}

    out_parent = tmp_path / "exports"
    out_parent.mkdir()
    ui.exportDirectoryButton.directory = str(out_parent)
    ui.exportCTSelector.setCurrentNode(ct_node)
    assert not ui.exportDicomButton.enabled and "at least one segmentation" in ui.exportDicomButton.toolTip
    ui.exportSegmentationsSelector.setCheckState(seg, 2)
    assert ui.exportDicomButton.enabled
    assert "no result to add yet" in ui.exportResultsLabel.text

    # the margin of the segments chosen in the panel (what Apply runs; Apply's plot view is not in the harness)
    p.tumorSegmentation, p.tumorSegmentID = seg, ids("GTV")
    p.zoneSegmentation, p.zoneSegmentID = seg, ids("ablation zone")
    assert ui.applyButton.enabled
    widget.logic.process(p)
    widget.updateDicomExportState()
    result = widget.logic.exportResults["margin"]
    # voxel centres within 5 mm: 5 mm in-plane, one 3.27 mm slice along z, so the thinnest margin is about 3.3 mm
    assert 2.8 < result["minimal_margin_mm"] < 5.0 and result["coverage_percent"] == pytest.approx(100.0)
    assert f"minimal margin {result['minimal_margin_mm']:.2f} mm" in ui.exportResultsLabel.text

    ui.exportDicomButton.click()
    assert widget.jobRunning and not ui.applyButton.enabled  # one job at a time: Apply waits for the export
    harness.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=300.0)
    assert not widget.jobRunning and ui.applyButton.enabled and ui.exportDicomButton.text == "Export DICOM SEG + SR"
    folders = sorted(out_parent.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("STS-002_CT-DICOM-"), folders
    out = folders[0]
    # what the commands write too: the three files and the marker of a folder IMAGIO wrote (--overwrite policy)
    assert sorted(f.name for f in out.iterdir()) == [".imagio-output.json", "export.json", "seg.dcm", "sr.dcm"]
    assert ui.exportStatusLabel.text.startswith("Wrote seg.dcm (2 segments: GTV ")
    assert " ml" in ui.exportStatusLabel.text and str(out) in ui.exportStatusLabel.text

    # the SEG: on the CT's patient, study and frame; the masks, read back two ways, are the panel's
    ct0 = pydicom.dcmread(str(sorted(ct_dir.iterdir())[0]), stop_before_pixels=True)
    seg_ds = pydicom.dcmread(str(out / "seg.dcm"), stop_before_pixels=True)
    assert (seg_ds.PatientID, seg_ds.StudyInstanceUID, seg_ds.FrameOfReferenceUID) == (
        ct0.PatientID, ct0.StudyInstanceUID, ct0.FrameOfReferenceUID)
    back = de.read_back(out, ct_dir)
    assert back["voxels"]["highdicom"] == voxels and back["voxels"]["imagio"] == voxels
    # the SR: every margin number of the panel's result, under the GTV's segment
    got = {m["code"][0]: m for m in de.read_sr_measurements(out / "sr.dcm")}
    import json

    info = json.loads((out / "export.json").read_text())
    gtv_number = next(s["number"] for s in info["segments"] if s["label"] == "GTV")
    for key, (code, _unit) in de.MARGIN_QUANTITIES.items():
        want = de._json_value(result, key)
        assert got[code[0]]["value"] == pytest.approx(want, abs=1e-9), key
        assert got[code[0]]["segment_number"] == gtv_number
    for shell, v in result["shell_coverage_percent"].items():
        assert got[de._shell_code(shell)[0]]["value"] == pytest.approx(v, abs=1e-9)
    if _require_dciodvfy():
        v = info["validation"]
        assert v["seg"]["errors"] == [] and v["sr"]["errors"] == [], v
        assert "dciodvfy: 0 errors of their own" in ui.exportStatusLabel.text

    # a second export goes into a new folder; the first is left as it was
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    _run_export(harness, widget)
    assert len(list(out_parent.iterdir())) == 2
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_export_refuses_a_ct_not_loaded_from_dicom_and_can_be_cancelled(tmp_path):
    """A CT without DICOM instance UIDs, or whose files left the database: a message box with the reason, no job,
    nothing written. Cancel during an export: nothing appears in the chosen folder."""
    from imagio.testing_slicer import SlicerHarness

    with SlicerHarness(testing=False) as harness:
        harness.show_main_window()  # message boxes are recorded, not only logged
        harness.load_module("IMAGIOCommon")
        import qt
        import slicer

        ct_dir = data_path("sarcoma-sts002/dicom/image")
        widget = harness.create_widget("IMAGIOMargin")
        ui, scene = widget.ui, slicer.mrmlScene
        ct_node, ct = _load_dicom_ct(scene, ct_dir, "STS-002 CT")
        gtv = io.read_segmentation(data_path("sarcoma-sts002/dicom/mask/RS.dcm"), reference=ct)[0]
        seg = mrml.segmentation_node_from_segments(scene, [Segment("GTV", gtv.mask)], "GTV", ct_node)
        nrrd_ct = mrml.volume_node_from_image(scene, ct, "CT from a NRRD file")  # no DICOM.instanceUIDs
        out_parent = tmp_path / "exports"
        out_parent.mkdir()
        ui.exportDirectoryButton.directory = str(out_parent)
        ui.exportSegmentationsSelector.setCheckState(seg, 2)
        ui.exportCTSelector.setCurrentNode(nrrd_ct)

        def refused() -> str:
            harness.answer_dialogs(qt.QMessageBox.Ok)
            n = len(harness.dialogs)
            with pytest.raises(ImagioError):  # shown, then re-raised (in Slicer PythonQt logs it from the slot)
                ui.exportDicomButton.click()
            assert not widget.jobRunning and list(out_parent.iterdir()) == []
            shown = [d["text"] for d in harness.dialogs[n:]]
            assert len(shown) == 1 and shown[0].startswith("DICOM export failed.") and "Traceback" not in shown[0]
            return shown[0]

        assert "'CT from a NRRD file' was not loaded from DICOM" in refused()
        ui.exportCTSelector.setCurrentNode(ct_node)
        slicer.dicomDatabase._files.pop(next(iter(slicer.dicomDatabase._files)))  # a file the database lost
        assert "1 of the 48 slices of 'STS-002 CT' are not in Slicer's DICOM database" in refused()
        for f in ct_dir.iterdir():
            slicer.dicomDatabase.insert(f)
        other = mrml.segmentation_node_from_segments(scene, [Segment("GTV", gtv.mask)], "GTV, reader 2", ct_node)
        ui.exportSegmentationsSelector.setCheckState(other, 2)  # two segments named GTV: the SEG's labels clash
        text = refused()
        assert "Several segments are called GTV" in text and "Segmentations module" in text
        ui.exportSegmentationsSelector.setCheckState(other, 0)

        ui.exportDicomButton.click()  # Cancel while it runs: nothing appears in the chosen folder
        assert widget.jobRunning and ui.exportDicomButton.text == "Cancel"
        ui.exportDicomButton.click()
        assert not widget.jobRunning and "Cancelled" in ui.statusLabel.text
        assert [f for f in out_parent.iterdir() if not f.name.startswith(".")] == []


def test_planning_panel_exports_segment_volumes_on_lung1(slicer_app, tmp_path):
    """LUNG1-001's four RTSTRUCT segments from the Planning panel: the SEG holds all four (their voxel counts read
    back), the SR their volumes (ml, equal to the export's own voxel count x voxel volume) and no other number."""
    import slicer

    harness = slicer_app
    ct_dir = data_path("chest-lung1-001/image")
    widget = harness.create_widget("IMAGIOPlanning")
    ui, scene = widget.ui, slicer.mrmlScene
    ct_node, ct = _load_dicom_ct(scene, ct_dir, "LUNG1-001")
    segments = io.read_segmentation(data_path("chest-lung1-001/mask_rtstruct/1-1.dcm"), reference=ct)
    seg = mrml.segmentation_node_from_segments(scene, segments, "LUNG1 RTSTRUCT", ct_node)
    voxels = {s.name: int(sitk.GetArrayViewFromImage(s.mask).astype(bool).sum()) for s in segments}
    assert len(voxels) == 4
    out_parent = tmp_path / "exports"
    out_parent.mkdir()
    ui.exportDirectoryButton.directory = str(out_parent)
    ui.exportCTSelector.setCurrentNode(ct_node)
    ui.exportSegmentationsSelector.setCheckState(seg, 2)
    assert "no result to add yet" in ui.exportResultsLabel.text
    _run_export(harness, widget)
    (out,) = list(out_parent.iterdir())
    back = de.read_back(out, ct_dir)
    assert back["voxels"]["highdicom"] == voxels and back["voxels"]["imagio"] == voxels
    measurements = de.read_sr_measurements(out / "sr.dcm")
    assert len(measurements) == 4 and {m["unit"][0] for m in measurements} == {"ml"}
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    by_number = {m["segment_number"]: m["value"] for m in measurements}
    import json

    info = json.loads((out / "export.json").read_text())
    for s in info["segments"]:
        assert by_number[s["number"]] == pytest.approx(voxels[s["label"]] * voxel_ml, rel=1e-9)
    assert "4 segments" in ui.exportStatusLabel.text


def test_highdicom_is_offered_with_consent_inside_slicer(tmp_path, monkeypatch):
    """Slicer does not bundle highdicom: Export asks before installing IMAGIOCommon/Resources/dicom-requirements.txt
    (the pin of pyproject's `dicom` extra); declined, nothing is installed or written and the panel says why;
    accepted, it is installed (slicer.util.pip_install on 5.10) and the export runs."""
    import sys
    import tomllib

    from imagio.testing_slicer import REPO_ROOT, QMessageBox, SlicerHarness

    req = REPO_ROOT / "IMAGIOCommon" / "Resources" / "dicom-requirements.txt"
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    with SlicerHarness(testing=False) as harness:
        harness.show_main_window()
        harness.load_module("IMAGIOCommon")
        import slicer

        from imagio import slicer_widget

        assert slicer_widget.DICOM_REQUIREMENTS == req
        assert slicer_widget.requiredPackages(req) == extras["dicom"] == ["highdicom>=0.22"]
        calls = []

        def pip_install(args):
            assert harness.dialogs, "installed before asking"
            calls.append(args)
            monkeypatch.delitem(sys.modules, "highdicom")  # "installed": the real package is visible again

        monkeypatch.setattr(slicer.util, "pip_install", pip_install)
        monkeypatch.setitem(sys.modules, "highdicom", None)  # missing, as Python sees a missing package
        ct_dir = data_path("sarcoma-sts002/dicom/image")
        widget = harness.create_widget("IMAGIOMargin")
        ui = widget.ui
        ct_node, ct = _load_dicom_ct(slicer.mrmlScene, ct_dir, "STS-002 CT")
        gtv = io.read_segmentation(data_path("sarcoma-sts002/dicom/mask/RS.dcm"), reference=ct)[0]
        seg = mrml.segmentation_node_from_segments(slicer.mrmlScene, [Segment("GTV", gtv.mask)], "GTV", ct_node)
        out_parent = tmp_path / "exports"
        out_parent.mkdir()
        ui.exportDirectoryButton.directory = str(out_parent)
        ui.exportCTSelector.setCurrentNode(ct_node)
        ui.exportSegmentationsSelector.setCheckState(seg, 2)

        harness.answer_dialogs(QMessageBox.Cancel)
        ui.exportDicomButton.click()
        (dialog,) = harness.dialogs
        assert "highdicom>=0.22" in dialog["text"] and "install highdicom" in dialog["title"]
        assert calls == [] and not widget.jobRunning and list(out_parent.iterdir()) == []
        assert "nothing was installed" in ui.exportStatusLabel.text

        harness.answer_dialogs(QMessageBox.Ok)
        ui.exportDicomButton.click()
        assert calls == [["-r", str(req)]] and ui.exportStatusLabel.text == "highdicom installed."
        assert harness.run_event_loop(until=lambda: not widget.jobRunning, timeout_s=300)
        (out,) = list(out_parent.iterdir())
        assert de.read_back(out, ct_dir)["voxels"]["imagio"] == {"GTV": gtv.voxel_count()}
