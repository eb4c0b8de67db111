"""`imagio ablation devices|zone|plan|replan`: the public contract, outputs in physical space, bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry
from imagio.bundle import load_mrb
from imagio.cli import main
from imagio.io import Segment, read_segmentation, write_segmentation
from imagio.testing import oblique_image
from IMAGIOAblationZoneLib.devices import get_device
from IMAGIOAblationZoneLib.zone import EllipsoidZone


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    grid = oblique_image(size=(90, 80, 50), spacing=(0.9, 1.1, 1.6), origin_ras=(-75.0, -40.0, -80.0),
                         axis=(2.0, 1.0, -1.0), angle_deg=17.0)
    kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    centre = geometry.ijk_to_ras(grid, [45, 40, 25])
    assert centre[0] < -5 and centre[2] < -5  # points on the patient's right and below: negative R and S
    tumor = (np.linalg.norm(pts - centre, axis=1) <= 9.0).reshape(grid.GetSize()[::-1]).astype(np.uint8)
    vessel = (np.linalg.norm((pts - centre)[:, [0, 2]] - [14.0, 0.0], axis=1) <= 2.0).reshape(tumor.shape)
    # written on the full grid (reference): without --ct the tumour file's grid is the image
    write_segmentation(d / "tumor.seg.nrrd", [Segment("tumor", geometry.copy_geometry(tumor, grid))], grid)
    write_segmentation(d / "vessels.seg.nrrd",
                       [Segment("portal_vein", geometry.copy_geometry(vessel.astype(np.uint8), grid))], grid)
    return {"dir": d, "grid": grid, "centre": centre, "tumor": tumor}


def _pt(p):
    return ",".join(f"{v:.3f}" for v in p)


def run(argv) -> int:
    """The exit status of ``imagio ARGV`` (argparse's refusals exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def test_devices_json_contract(capsys):
    assert main(["ablation", "devices", "--json"]) == 0
    devices = json.loads(capsys.readouterr().out)
    assert {"id", "name", "modality", "tip_reference", "settings"} <= set(devices[0])
    keys = {"power_w", "time_s", "zone_long_mm", "zone_short_mm", "tip_offset_mm", "tissue", "sources", "verified",
            "sourced", "offered_by_default"}
    settings = [s for d in devices for s in d["settings"]]
    assert all(keys <= set(s) for s in settings)
    assert {d["modality"] for d in devices} == {"microwave", "radiofrequency", "cryo"}  # all listed, cryo unsourced
    offered = [s for s in settings if s["offered_by_default"]]
    assert offered and all(s["sources"] and s["sources"][0]["citation"] and s["sources"][0]["locator"] for s in offered)
    assert any(not s["sourced"] for s in settings)
    ice = next(d for d in devices if d["id"] == "icerod")["settings"][0]
    assert "isotherm_c" in ice and ice["isotherm_c"] is None


def test_devices_text_lists_unsourced_settings_only_with_all(capsys):
    assert main(["ablation", "devices"]) == 0
    short = capsys.readouterr().out
    assert "UNSOURCED" not in short and "starburst" not in short and "--all" in short and "source:" in short
    assert main(["ablation", "devices", "--all"]) == 0
    full = capsys.readouterr().out
    assert "UNSOURCED" in full and "starburst-xl" in full and "isotherm unknown" in full


def test_zone_writes_json_segmentation_and_bundle(case, tmp_path, capsys):
    c = case["centre"]
    u = np.array([0.0, 0.6, 0.8])
    tip = c + 11.55 * u  # 75 W / 375 s interpolated: offset 11.55 mm, so the zone centre is the tumour centre
    out = tmp_path / "zone"
    rc = run(["ablation", "zone", "--device", "emprint", "--power", "75", "--time", "375", "--tip", _pt(tip),
               "--entry", _pt(tip - 100 * u), "--tumor", str(case["dir"] / "tumor.seg.nrrd"),
               "--vessels", str(case["dir"] / "vessels.seg.nrrd"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    d = json.loads((out / "ablation.json").read_text())
    assert d["zone_axes_mm"] == [35.5, 32.5, 32.5] and d["interpolated"] and "interpolated" in d["setting_note"]
    assert d["coverage_percent"] == 100.0 and 0 < d["margin_coverage_percent"] <= 100.0
    # nearest zone surface: the short semi-axis 16.25 mm minus the tumour's 9 mm radius (its voxel faces lie up to
    # half a voxel diagonal beyond the 9 mm sphere)
    assert 16.25 - 9.0 - 1.3 <= d["minimal_margin_mm"] <= 16.25 - 9.0 + 0.4
    assert "portal_vein" not in d and "vessels" in d["structures_in_zone_percent"]
    # provenance and warnings: printed and in the JSON
    assert d["settings_provenance"]["75 W / 375 s"]["sources"] and d["tissue"] == "liver"
    assert any("liver assumed" in w for w in d["warnings"]) and "warning: " in err
    # the zone segmentation lies in physical space on the tumour's grid: same voxels as the ellipsoid
    seg = read_segmentation(out / "zone.seg.nrrd", reference=case["grid"])[0]
    expected = EllipsoidZone.from_probe(tip, tip - 100 * u, get_device("emprint").setting(75, 375)).rasterise(case["grid"])
    assert np.array_equal(sitk.GetArrayFromImage(seg.mask) > 0, sitk.GetArrayFromImage(expected) > 0)
    scene = load_mrb(out / "ablation.mrb")
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 2
    line = scene.GetFirstNodeByClass("vtkMRMLMarkupsLineNode")
    p1 = [0.0] * 3
    line.GetNthControlPointPositionWorld(1, p1)
    assert np.allclose(p1, tip, atol=1e-3)


def test_plan_contract_and_infeasible_plan(case, tmp_path, capsys):
    out = tmp_path / "plan"
    rc = run(["ablation", "plan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--device", "emprint",
               "--tissue", "liver", "--avoid", str(case["dir"] / "vessels.seg.nrrd"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "plan.json").read_text())
    assert d["feasible"] and d["margin_kept"] and d["minimal_margin_mm"] >= 5.0 and d["coverage_percent"] >= 99.0
    assert {"tip_ras", "entry_ras", "power_w", "time_s"} <= set(d["probes"][0]) and d["tissue"] == "liver"
    assert any("unchecked" in w for w in d["warnings"])  # no --ct or --body: entry points not on a skin
    assert (out / "zone.seg.nrrd").exists() and (out / "plan.mrb").exists()
    # a tumour + margin larger than one cryoprobe can cover (cryo settings are unsourced: explicit flag, warning)
    out2 = tmp_path / "plan2"
    rc = run(["ablation", "plan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--device", "icesphere",
               "--allow-unsourced", "--margin-mm", "10", "--max-probes", "1", "--out", str(out2)])
    assert rc == 1
    d2 = json.loads((out2 / "plan.json").read_text())
    assert d2["feasible"] is False and "No plan with at most 1 probe(s)" in d2["reason"]
    assert any("has no source" in w for w in d2["warnings"]) and any("isotherm" in w for w in d2["warnings"])
    assert "reason:" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--device", "nope", "--power", "100", "--time", "600"], "Unknown ablation device"),
    (["--device", "emprint", "--power", "200", "--time", "600"], "outside the table"),
    (["--device", "emprint", "--power", "100", "--time", "1200"], "outside the table"),
    (["--device", "emprint", "--power", "45", "--time", "300"], "has no source"),
    (["--device", "emprint", "--power", "100", "--time", "nan"], "not a finite number"),
    (["--device", "emprint", "--power", "-100", "--time", "600"], "power"),
    (["--device", "emprint", "--power", "100", "--time", "600", "--margin-mm", "-2"], "margin"),
    (["--device", "emprint", "--power", "100", "--time", "600", "--tissue", "brain"], "tissue"),
])
def test_bad_device_setting_or_number_one_line_error_no_output(case, tmp_path, capsys, args, message):
    c = case["centre"]
    out = tmp_path / "bad"
    rc = run(["ablation", "zone", *args, "--tip", _pt(c), "--entry", _pt(c + [0, 0, 90.0]),
               "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message.lower() in err.lower() and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("opt", [["--clearance-mm=-20"], ["--clearance-mm", "nan"], ["--margin-mm", "inf"],
                                 ["--max-probes", "0"]])
def test_plan_refuses_negative_or_non_finite_numbers(case, tmp_path, capsys, opt):
    out = tmp_path / "bad"
    rc = run(["ablation", "plan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--device", "emprint", *opt,
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not out.exists()


def test_tip_outside_the_image(case, tmp_path, capsys):
    far = case["centre"] + [0.0, 0.0, 200.0]
    out = tmp_path / "far"
    rc = run(["ablation", "zone", "--device", "emprint", "--power", "100", "--time", "600", "--tip", _pt(far),
               "--entry", _pt(far + [0, 0, 90.0]), "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "outside the image" in err and not out.exists()


def test_replan_with_negative_coordinates_finds_and_covers_the_residual(case, tmp_path, capsys):
    """`--probe TIP:ENTRY` as written (leading minus, space-separated); one probe 8 mm off the tumour centre."""
    c = case["centre"]
    u = np.array([0.0, 0.6, 0.8])
    side = np.cross(u, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    s = get_device("emprint").setting(100, 600)
    tip = c + s.tip_offset_mm * u + 8.0 * side  # a zone centred 8 mm beside the tumour's centre
    entry = tip - 100 * u
    assert tip[0] < 0  # the value starts with '-'
    out = tmp_path / "replan"
    rc = run(["ablation", "replan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"),
               "--probe", f"{_pt(tip)}:{_pt(entry)}", "--device", "emprint", "--power", "100", "--time", "600",
               "--margin-mm", "5", "--avoid", str(case["dir"] / "vessels.seg.nrrd"), "--tissue", "liver",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    d = json.loads((out / "replan.json").read_text())
    assert {"placed_probes", "coverage_percent", "minimal_margin_mm", "residual_target_ml", "proposal",
            "reason", "warnings"} <= set(d)
    assert d["minimal_margin_mm"] < 5.0 and d["residual_target_ml"] > 0.1 and not d["margin_kept"]
    assert d["proposal"] is not None and d["after_proposal"]["minimal_margin_mm"] >= 5.0
    assert d["after_proposal"]["residual_target_ml"] == 0.0
    segs = {s.name: s for s in read_segmentation(out / "zone.seg.nrrd", reference=case["grid"])}
    assert {"zone_as_placed", "residual_tumor_and_margin", "zone_with_proposal"} <= set(segs)
    vox = geometry.voxel_volume_ml(case["grid"])
    assert segs["residual_tumor_and_margin"].voxel_count() * vox == pytest.approx(d["residual_target_ml"], abs=1e-3)
    assert (out / "replan.mrb").exists()
    # a TIP:ENTRY that is not two points is one line, exit 2
    rc = run(["ablation", "replan", "--tumor", str(case["dir"] / "tumor.seg.nrrd"), "--probe", _pt(tip),
               "--device", "emprint", "--power", "100", "--time", "600", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "TIP:ENTRY" in err and len(err.strip().splitlines()) == 1


def test_plan_with_ct_enters_through_the_skin(tmp_path, capsys):
    from imagio.phantom import make_phantom, write_phantom

    case = tmp_path / "phantom"
    ph = make_phantom(0)
    write_phantom(ph, case)
    out = tmp_path / "plan"
    rc = run(["ablation", "plan", "--ct", str(case / "ct.nrrd"), "--tumor", str(case / "truth.seg.nrrd"),
               "--tumor-name", "liver_tumor", "--device", "emprint", "--avoid", str(case / "truth.seg.nrrd"),
               "--avoid-names", "hepatic_vessels,ribs,lungs", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    d = json.loads((out / "plan.json").read_text())
    assert d["feasible"] and d["margin_kept"] and d["entry_definition"].startswith("skin")
    assert d["tissue"] == "liver" and "name" in d["tissue_from"]  # from the segment name 'liver_tumor'
    assert not any("unchecked" in w for w in d["warnings"])
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
