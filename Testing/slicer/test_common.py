"""IMAGIOCommon in Slicer: the supported-version message and the phantom as sample data."""

import ast
import inspect
import logging
import sys
from pathlib import Path

import pytest
import slicer

from imagio.testing_slicer import SlicerHarness

ROOT = Path(__file__).resolve().parents[2]

#: SampleData.SampleDataLogic.registerCustomSampleDataSource in Slicer v5.10.0
#: (Modules/Scripted/SampleData/SampleData.py, lines 510-515): the module itself is not in the
#: framework folder, so the call is checked against its signature, not run.
SAMPLE_DATA_510 = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d) for n, d in (
    ("category", "Custom"), ("sampleName", None), ("uris", None), ("fileNames", None), ("nodeNames", None),
    ("customDownloader", None), ("thumbnailFileName", None), ("loadFileTypes", None), ("loadFiles", None),
    ("loadFileProperties", {}), ("checksums", None), ("loadFileType", None))])


def test_common_module_file_is_python_39_syntax():
    """Slicer 5.8 runs Python 3.9: the module that tells its users so must itself load there."""
    ast.parse((ROOT / "IMAGIOCommon" / "IMAGIOCommon.py").read_text(), feature_version=(3, 9))


@pytest.mark.parametrize("version, supported", [((5, 8, 1), False), ((5, 9, 0), False), ((5, 10, 0), True),
                                                ((5, 12, 2), True), ((6, 0, 0), True)])
def test_an_older_slicer_gets_a_clear_message_at_start_up(version, supported, caplog):
    with SlicerHarness(version=version) as h, caplog.at_level(logging.ERROR):
        h.load_module("IMAGIOCommon")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        if supported:
            assert errors == []
            assert h.app.startupCompleted.slotCount() == 1  # the sample data registration
        else:
            assert len(errors) == 1
            msg = errors[0]
            assert "needs 3D Slicer 5.10 or later" in msg and "this is Slicer {}.{}.{}".format(*version) in msg
            assert "download.slicer.org" in msg
            h.app.startupCompleted.emit()  # the message is shown again once the main window is up
            assert sum("needs 3D Slicer 5.10" in r.getMessage() for r in caplog.records) == 2


def test_phantom_is_registered_as_sample_data_and_loads(slicer_app):
    import IMAGIOCommon

    calls = []

    class SampleDataLogic510:
        @staticmethod
        def registerCustomSampleDataSource(*args, **kwargs):
            bound = SAMPLE_DATA_510.bind(*args, **kwargs)  # TypeError on a parameter 5.10 does not have
            calls.append(bound.arguments)

    IMAGIOCommon.registerSampleData(SampleDataLogic510)
    (a,) = calls
    assert a["category"] == "IMAGIO" and a["sampleName"] == "IMAGIOPhantom"
    assert len(a["uris"]) == len(a["fileNames"]) == len(a["nodeNames"]) == len(a["loadFiles"])  # 5.10 checks this
    assert Path(a["thumbnailFileName"]).is_file()
    # what the Sample Data panel's button does: call the custom downloader with the source
    composite = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # one slice view's layers
    before = slicer.mrmlScene.GetNumberOfNodes()
    ct, truth = a["customDownloader"](object())
    assert slicer.mrmlScene.GetNumberOfNodes() > before
    assert ct.GetName() == a["nodeNames"][0] and ct.GetImageData().GetDimensions() == (288, 208, 224)
    names = {truth.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(truth.GetSegmentation().GetNumberOfSegments())}
    assert {"lung_nodule", "liver_tumor", "airway_lumen", "hepatic_vessels"} <= names
    assert composite.GetBackgroundVolumeID() == ct.GetID()  # shown in the slice views


@pytest.mark.parametrize("ci", ["", "1"])
def test_missing_framework_files_skip_here_and_fail_in_ci(tmp_path, monkeypatch, ci):
    """As for real data: CI can never pass by skipping the Slicer-side tests."""
    monkeypatch.setenv("IMAGIO_SLICER_PYTHON", str(tmp_path))
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="framework files are not in"):
        SlicerHarness().start()
    assert not getattr(sys.modules.get("qt"), "IMAGIO_STANDIN", False)  # nothing was installed


def test_the_harness_builds_a_phantom_once_and_hands_out_independent_copies():
    import numpy as np
    import SimpleITK as sitk

    import imagio.phantom

    original = imagio.phantom.make_phantom
    args = {"seed": 3, "spacing": (4.0, 4.0, 5.0), "size": (72, 52, 56)}  # small: 0.5 s
    fresh = original(**args)
    with SlicerHarness():
        from imagio.phantom import make_phantom  # as the module files import it, inside their tests

        a, b = make_phantom(**args), make_phantom(**args)
        for ph in (a, b):
            assert np.array_equal(sitk.GetArrayViewFromImage(ph.ct), sitk.GetArrayViewFromImage(fresh.ct))
            assert ph.ct.GetDirection() == fresh.ct.GetDirection() and ph.ct.GetOrigin() == fresh.ct.GetOrigin()
            assert set(ph.segments) == set(fresh.segments)
            assert np.array_equal(ph.segments["liver"].array(), fresh.segments["liver"].array())
        a.ct[0, 0, 0] = 3000
        a.segments["liver"].mask[0, 0, 0] = 1
        c = make_phantom(**args)
        assert c.ct[0, 0, 0] == fresh.ct[0, 0, 0] and c.segments["liver"].mask[0, 0, 0] == fresh.segments["liver"].mask[0, 0, 0]
        assert a.ct is not b.ct
    assert imagio.phantom.make_phantom is original
