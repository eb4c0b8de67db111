"""Intended use on the model card, checked: refusals with one-line reasons, --force with warnings everywhere."""

from __future__ import annotations

import json
from html import escape

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.cli import main
from imagio.errors import ImagioError
from imagio.model_card import check_intended_use, find_card_by_name, load_card
from imagio.result import StepResult
from imagio.testing import data_path
from IMAGIOPlanningLib.logic import PlanningLogic


@pytest.fixture(scope="module")
def lidc_crop(tmp_path_factory):
    """A 96 x 96 x 40 voxel crop of LIDC-0314 (0.78 x 0.78 x 1.0 mm): real CT, quick to segment."""
    ct = sitk.ReadImage(str(data_path("chest-lidc0314/ct.nrrd")))[200:296, 150:246, 120:160]
    p = tmp_path_factory.mktemp("lidc") / "lidc_crop.nrrd"
    sitk.WriteImage(ct, str(p))
    return p


def test_phantom_model_fits_the_phantom_only():
    from imagio.io import read_image
    from imagio.phantom import make_phantom

    card = find_card_by_name("phantom-lesions")
    assert check_intended_use(card, make_phantom(0).ct) == []
    lidc = sitk.ReadImage(str(data_path("chest-lidc0314/ct.nrrd")))
    problems = check_intended_use(card, lidc)
    assert any("voxel spacing 1 x 0.781 x 0.781 mm" in p for p in problems)
    assert any("field of view 275 x 400 x 400 mm" in p for p in problems)
    for ct in (read_image(data_path("chest-lung1-001/image")),
               sitk.ReadImage(str(data_path("sarcoma-sts002/nifti/image/image.nii.gz")))):
        assert any(p.startswith("voxel spacing") for p in check_intended_use(card, ct))


def test_refused_on_a_real_ct_with_a_one_line_reason(tmp_path, lidc_crop, capsys):
    out = tmp_path / "never"
    assert main(["segment", "--ct", str(lidc_crop), "--model", "phantom-lesions", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not made for this image: voxel spacing" in err[0] and "--force" in err[0]
    assert not out.exists()


def test_force_runs_and_carries_the_warning(tmp_path, lidc_crop, capsys):
    out = tmp_path / "forced"
    assert main(["segment", "--ct", str(lidc_crop), "--model", "phantom-lesions", "--force", "--out", str(out),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "segment.json").read_text())
    assert summary["warnings"] and all("intended use" in w for w in summary["warnings"])
    assert "voxel spacing" in summary["warnings"][0]
    assert "warning: run outside the model's intended use" in captured.err
    assert "WARNING" in captured.out  # the summary text leads with it
    html = (out / "report.html").read_text()  # and the report shows the reason
    assert all(escape(w, quote=False) in html or escape(w) in html for w in summary["warnings"])


def test_logic_result_is_a_step_result_and_node_carries_warnings(lidc_crop):
    from imagio.mrml import volume_node_from_image
    from imagio.scene import new_scene

    ct = sitk.ReadImage(str(lidc_crop))
    logic = PlanningLogic(new_scene())
    with pytest.raises(ImagioError, match="not made for this image"):
        logic.segment_with_model(ct, "phantom-lesions")
    node = volume_node_from_image(logic.scene, ct, "CT")
    res = logic.segment_with_model_nodes(node, "phantom-lesions", force=True)
    assert isinstance(res, StepResult)
    assert res.to_dict()["warnings"] == res.warnings and res.warnings
    assert any(r["metric"] == "warning" for r in res.table_rows())
    assert res.summary_text().startswith("WARNING")
    assert "intended use" in res.node.GetAttribute("IMAGIO.warnings")


def _card_with(tmp_path, models, intended):
    models.pointwise(tmp_path / "pw.onnx")
    return load_card(models.card(tmp_path, "pw.onnx", extra={"intended_use": intended}))


def test_each_range_is_checked(tmp_path, models):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, (20, 30, 40)).astype(np.int16))
    img.SetSpacing((0.8, 0.8, 2.5))  # i, j, k
    ok = {"summary": "test", "modality": ["CT"], "spacing_mm_kji": {"min": [2, 0.5, 0.5], "max": [3, 1, 1]},
          "field_of_view_mm_kji": {"min": [40, 20, 20], "max": [60, 30, 40]},
          "intensity": {"unit": "HU", "p01_min": -1000, "p99_max": 1000}}
    assert check_intended_use(_card_with(tmp_path, models, ok), img) == []
    img.SetMetaData("imagio:Modality", "MR")
    assert check_intended_use(_card_with(tmp_path, models, ok), img) == ["the image is MR, the model is for CT"]
    img.SetMetaData("imagio:Modality", "CT")
    bad = dict(ok, spacing_mm_kji={"min": [1, 1, 1], "max": [2, 2, 2]},
               intensity={"unit": "HU", "p99_min": 2000})
    problems = check_intended_use(_card_with(tmp_path, models, bad), img)
    assert len(problems) == 2 and problems[0].startswith("voxel spacing 2.5 x 0.8 x 0.8 mm")
    assert "99th percentile" in problems[1] and "below the model's 2000 HU" in problems[1]


def test_cards_without_ranges_check_nothing(tmp_path, models):
    img = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.int16))
    assert check_intended_use(_card_with(tmp_path, models, "free text only"), img) == []


def test_bad_intended_use_entries_are_refused(tmp_path, models):
    with pytest.raises(ImagioError, match="spacing_mm_kji needs 3 positive minima"):
        _card_with(tmp_path, models, {"spacing_mm_kji": {"min": [1, 1], "max": [2, 2, 2]}})
    with pytest.raises(ImagioError, match="intensity must give some of"):
        _card_with(tmp_path, models, {"intensity": {"unit": "HU"}})


def test_models_lists_intended_use(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "intended use: Demonstration and software testing on the IMAGIO phantom only" in out
    assert "spacing 1x0.8x0.8 to 1.5625x1.25x1.25 mm (k,j,i)" in out


def test_seeded_cli_refuses_the_mediastinum_and_accepts_it_only_when_asked(tmp_path, capsys):
    ct = sitk.ReadImage(str(data_path("chest-lidc0314/ct.nrrd")))[150:400, 150:420, 60:200]
    p = tmp_path / "lidc.nrrd"
    sitk.WriteImage(ct, str(p))
    out = tmp_path / "never"
    assert main(["segment", "--ct", str(p), "--seed=0,-150,-500", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Not a lung nodule at the seed" in err[0] and "--accept-large" in err[0]
    assert not out.exists()
    out = tmp_path / "large"
    assert main(["segment", "--ct", str(p), "--seed=0,-150,-500", "--accept-large", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "segment.json").read_text())
    assert summary["warnings"] and summary["segments"][0]["volume_ml"] > 65.0
