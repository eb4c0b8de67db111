"""`imagio ablation devices|zone|plan`: the public contract, outputs in physical space, bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry
from imagio.bundle import load_mrb
from imagio.cli import main
from imagio.io import Segment, read_segmentation, write_segmentation
from imagio.testing import oblique_image
from IMAGIOAblationZoneLib.zone import EllipsoidZone


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    grid = oblique_image(size=(90, 80, 50), spacing=(0.9, 1.1, 1.6), origin_ras=(-45.0, -40.0, -40.0),
                         axis=(2.0, 1.0, -1.0), angle_deg=17.0)
    kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    centre = geometry.ijk_to_ras(grid, [45, 40, 25])
    tumor = (np.linalg.norm(pts - centre, axis=1) <= 9.0).reshape(grid.GetSize()[::-1]).astype(np.uint8)
    vessel = (np.linalg.norm((pts - centre)[:, [0, 2]] - [14.0, 0.0], axis=1) <= 2.0).reshape(tumor.shape)
    # written on the full grid (reference): without --ct the tumour file's grid is the image
    write_segmentation(d / "tumor.seg.nrrd", [Segment("tumor", geometry.copy_geometry(tumor, grid))], grid)
    write_segmentation(d / "vessels.seg.nrrd", [Segment("portal_vein", geometry.copy_geometry(vessel.astype(np.uint8), grid))],
                       grid)
    return {"dir": d, "grid": grid, "centre": centre}


def _pt(p):
    return ",".join(f"{v:.3f}" for v in p)


def test_devices_json_contract(capsys):
    assert main(["ablation", "devices", "--json"]) == 0
    devices = json.loads(capsys.readouterr().out)
    assert {"id", "name", "modality", "settings"} <= set(devices[0])
    assert {"power_w", "time_s", "zone_long_mm", "zone_short_mm", "tip_offset_mm"} <= set(devices[0]["settings"][0])
    assert {d["modality"] for d in devices} == {"microwave", "radiofrequency", "cryo"}


def test_zone_writes_json_segmentation_and_bundle(case, tmp_path, capsys):
    c = case["centre"]
    u = np.array([0.0, 0.6, 0.8])
    tip = c + 11.0 * u  # 45 W / 450 s interpolated: offset 12 mm, so the zone centre is 1 mm past the tumour centre
    out = tmp_path / "zone"
    rc = main(["ablation", "zone", "--device", "emprint", "--power", "45", "--time", "450", "--tip", _pt(tip),
               "--entry", _pt(tip - 100 * u), "--tumor", str(case["dir"] / "tumor.seg.nrrd"),
               "--vessels", str(case["dir"] / "vessels.seg.nrrd"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "ablation.json").read_text())
    assert d["zone_axes_mm"] == [34.5, 30.5, 30.5] and d["interpolated"] and "interpolated" in d["setting_note"]
    assert d["coverage_percent"] == 100.0 and 0 < d["margin_coverage_percent"] <= 100.0
    # nearest zone surface: the short semi-axis 15.25 mm minus the 9 mm radius (tumour edge voxel centres)
    assert d["minimal_margin_mm"] == pytest.approx(15.25 - 9.0, abs=1.6)
    assert "portal_vein" not in d and "vessels" in d["structures_in_zone_percent"]
    # the zone segmentation lies in physical space on the tumour's grid: same voxels as the ellipsoid
    seg = read_segmentation(out / "zone.seg.nrrd", reference=case["grid"])[0]
    from IMAGIOAblationZoneLib.devices import get_device

    expected = EllipsoidZone.from_probe(tip, tip - 100 * u, get_device("emprint").setting(45, 450)).rasterise(case["grid"])
    assert np.array_equal(sitk.GetArrayFromImage(seg.mask) > 0, sitk.GetArrayFromImage(expected) > 0)
    scene = load_mrb(out / "ablation.mrb")
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 2
    line = scene.GetFirstNodeByClass("vtkMRMLMarkupsLineNode")
    p1 = [0.0] * 3
    line.GetNthControlPointPositionWorld(1, p1)
    assert np.allclose(p1, tip, atol=1e-3)


def test_plan_contract_and_infeasible_plan(case, tmp_path, capsys):
    out = tmp_path / "plan"
    rc = main(["ablation", "plan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--device", "emprint",
               "--avoid", str(case["dir"] / "vessels.seg.nrrd"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "plan.json").read_text())
    assert d["feasible"] and d["coverage_percent"] >= 99.0
    assert {"tip_ras", "entry_ras", "power_w", "time_s"} <= set(d["probes"][0])
    assert (out / "zone.seg.nrrd").exists() and (out / "plan.mrb").exists()
    # a tumour + margin larger than one cryoprobe can cover
    out2 = tmp_path / "plan2"
    rc = main(["ablation", "plan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--device", "icesphere",
               "--margin-mm", "10", "--max-probes", "1", "--out", str(out2)])
    assert rc == 1
    d2 = json.loads((out2 / "plan.json").read_text())
    assert d2["feasible"] is False and "needs more than 1 probe(s)" in d2["reason"]
    assert "reason:" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--device", "nope", "--power", "100", "--time", "600"], "Unknown ablation device"),
    (["--device", "emprint", "--power", "150", "--time", "600"], "outside the table"),
    (["--device", "emprint", "--power", "100", "--time", "1200"], "outside the table"),
])
def test_bad_device_or_setting_one_line_error_no_output(case, tmp_path, capsys, args, message):
    c = case["centre"]
    out = tmp_path / "bad"
    rc = main(["ablation", "zone", *args, "--tip", _pt(c), "--entry", _pt(c + [0, 0, 90.0]),
               "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_tip_outside_the_image(case, tmp_path, capsys):
    far = case["centre"] + [0.0, 0.0, 200.0]
    out = tmp_path / "far"
    rc = main(["ablation", "zone", "--device", "emprint", "--power", "100", "--time", "600", "--tip", _pt(far),
               "--entry", _pt(far + [0, 0, 90.0]), "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the image" in err and not out.exists()


def test_plan_with_ct_enters_through_the_skin(tmp_path, capsys):
    from imagio.phantom import make_phantom, write_phantom

    case = tmp_path / "phantom"
    ph = make_phantom(0)
    write_phantom(ph, case)
    out = tmp_path / "plan"
    rc = main(["ablation", "plan", "--ct", str(case / "ct.nrrd"), "--tumor", str(case / "truth.seg.nrrd"),
               "--tumor-name", "liver_tumor", "--device", "neuwave-pr", "--avoid", str(case / "truth.seg.nrrd"),
               "--avoid-names", "hepatic_vessels,ribs,lungs", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "plan.json").read_text())
    assert d["feasible"] and d["coverage_percent"] >= 99.0 and d["entry_definition"].startswith("skin")
    body = ph.segments["body"].mask
    dist = sitk.SignedMaurerDistanceMap(body, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    for p in d["probes"]:
        entry = np.array(p["entry_ras"])
        idx = np.rint(geometry.ras_to_ijk(body, entry)).astype(int)
        assert abs(dist.GetPixel([int(v) for v in idx])) <= 2.5  # on the body surface (the CT outline), in mm
        tilt = np.degrees(np.arcsin(abs((np.array(p["tip_ras"]) - entry)[2]) / np.linalg.norm(np.array(p["tip_ras"]) - entry)))
        assert tilt <= 45.0 + 1e-6
    scene = load_mrb(out / "plan.mrb")
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1
