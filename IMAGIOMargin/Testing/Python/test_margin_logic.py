"""MarginLogic on a real scene: MRML outputs, uncertainty, bad input, CLI contract, demo step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import make_image, rotation_matrix
from imagio.io import Segment, write_segmentation
from imagio.scene import new_scene
from IMAGIOMarginLib.logic import MarginLogic

SPACING = (0.8, 1.1, 1.9)


def grid():
    return make_image((90, 80, 50), SPACING, origin_ras=(-30.0, -40.0, -45.0),
                      direction_ras=rotation_matrix((2.0, -1.0, 1.0), 31.0))


def ball(ref, center_ijk, radius_mm):
    kji = np.indices(ref.GetSize()[::-1]).astype(float)
    sp = np.array(SPACING)[::-1]
    r2 = sum(((kji[a] - center_ijk[::-1][a]) * sp[a]) ** 2 for a in range(3))
    img = sitk.GetImageFromArray((r2 <= radius_mm ** 2).astype(np.uint8))
    img.CopyInformation(ref)
    return img


@pytest.fixture(scope="module")
def pair():
    ref = grid()
    tumor = ball(ref, np.array([45.0, 40.0, 25.0]), 8.0)
    zone = ball(ref, np.array([45.0 + 3.0 / SPACING[0], 40.0, 25.0]), 15.0)  # 3 mm off-centre: MAM ~ 4 mm
    return tumor, zone


def test_assess_outputs_and_uncertainty(pair):
    tumor, zone = pair
    logic = MarginLogic(new_scene())
    res = logic.assess(tumor, zone, threshold_mm=5.0, sigma_mm=1.6, seed=3)
    d = res.to_dict()
    # two concentric-ish balls: MAM = 15 - 8 - 3 = 4 mm up to the rasterisation of both (<= one voxel diagonal)
    assert abs(d["minimal_margin_mm"] - 4.0) < 0.5 * np.linalg.norm(SPACING) * 2
    assert d["verdict"] == "insufficient"
    assert d["coverage_percent"] == 100.0 and d["residual_tumor_ml"] == 0.0
    assert set(d["shell_coverage_percent"]) == {"0", "3", "5", "10"}
    # the MAM is the map's minimum plus its grid-phase correction, both in margin.json
    assert d["minimal_margin_mm"] == pytest.approx(d["minimal_margin_uncorrected_mm"] + d["grid_correction_mm"],
                                                   abs=2e-3)
    assert 2 <= d["grid_correction_replicates"] <= 8 and 0.0 <= d["grid_correction_se_mm"] < 0.2
    # and the Slicer panel, its table and the report say so: uncorrected X mm, grid correction Y +- SE mm
    from IMAGIOMarginLib.logic import panel_text
    from IMAGIOMarginLib.report import build_report
    m = res.metrics
    line = (f"uncorrected {m.minimal_margin_uncorrected_mm:.2f} mm, grid correction {m.grid_correction_mm:+.2f} "
            f"\u00b1 {m.grid_correction_se_mm:.2f} mm")
    assert line in panel_text(res) and line in res.summary_text()
    rows = {r["metric"]: float(r["value"]) for r in res.table_rows() if r["metric"] != "Verdict"}
    assert rows["Minimal margin, uncorrected (margin map minimum)"] == pytest.approx(
        d["minimal_margin_uncorrected_mm"], abs=5e-3)
    assert rows["Grid-phase correction"] == pytest.approx(d["grid_correction_mm"], abs=5e-3)
    assert rows["Grid-phase correction SE"] == pytest.approx(d["grid_correction_se_mm"], abs=5e-3)
    report = build_report(res)
    assert any(line in n for sec in report.sections for n in sec.notes)
    lo, hi = d["margin_ci_mm"]
    assert lo <= d["minimal_margin_mm"] <= hi and lo < hi  # the interval always contains the measurement
    assert 0.0 <= d["p_margin_ge_threshold"] < 0.5
    # the thinnest point lies on the side away from the zone shift (-i of the grid), about 8 mm from the centre
    c = np.array(tumor.TransformContinuousIndexToPhysicalPoint([45.0, 40.0, 25.0])) * [-1, -1, 1]
    v = np.array(d["thinnest_point_ras"]) - c
    axis_i = (rotation_matrix((2.0, -1.0, 1.0), 31.0) @ [1.0, 0.0, 0.0])
    # (within 1 mm of rasterisation, margin 7 - 3 cos(angle) leaves cos(angle) < -0.67 at the minimum)
    assert np.dot(v, axis_i) / np.linalg.norm(v) < -0.6
    assert 7.0 < np.linalg.norm(v) < 9.5
    # same seed, same interval; zero sigma: a point interval at the MAM
    assert logic.assess(tumor, zone, sigma_mm=1.6, seed=3).uncertainty.margin_ci_mm == res.uncertainty.margin_ci_mm
    r0 = logic.assess(tumor, zone, sigma_mm=0.0, tumor_boundary_sigma_mm=0.0, zone_boundary_sigma_mm=0.0)
    assert r0.uncertainty.margin_ci_mm[0] == pytest.approx(r0.metrics.minimal_margin_mm)
    assert r0.uncertainty.margin_ci_mm[1] == pytest.approx(r0.metrics.minimal_margin_mm)
    # larger sigma, wider interval
    r3 = logic.assess(tumor, zone, sigma_mm=3.0, seed=3)
    assert (r3.uncertainty.margin_ci_mm[1] - r3.uncertainty.margin_ci_mm[0]) > (hi - lo)

    nodes = logic.add_to_scene(res)
    poly = nodes.model.GetPolyData()
    arr = poly.GetPointData().GetArray("margin_mm")
    assert arr is not None and arr.GetNumberOfTuples() == poly.GetNumberOfPoints() > 100
    vals = np.array([arr.GetValue(i) for i in range(arr.GetNumberOfTuples())])
    # smoothed surface points lie within about a voxel of the box surface: margins near [MAM, 15 - 8 + 3]
    assert vals.min() > d["minimal_margin_mm"] - 1.5 and vals.max() < 10.0 + 1.5
    assert nodes.thinnest.GetNumberOfControlPoints() == 1
    p = [0.0, 0.0, 0.0]
    nodes.thinnest.GetNthControlPointPosition(0, p)
    assert np.allclose(p, d["thinnest_point_ras"], atol=1e-3)
    assert nodes.table.GetTable().GetNumberOfRows() >= 15
    assert nodes.plot_chart.GetNumberOfPlotSeriesNodes() == 1


def test_zone_missing_the_tumour_is_explicit(pair):
    tumor, _ = pair
    far = ball(grid(), np.array([15.0, 15.0, 10.0]), 5.0)
    res = MarginLogic(new_scene()).assess(tumor, far)
    d = res.to_dict()
    assert d["minimal_margin_mm"] < -10.0
    assert d["coverage_percent"] == 0.0
    assert d["residual_tumor_ml"] == pytest.approx(d["tumor_volume_ml"])
    assert d["verdict"] == "incomplete"
    assert any("does not touch" in n for n in d["notes"])


def test_bad_input(pair):
    tumor, zone = pair
    logic = MarginLogic(new_scene())
    empty = sitk.Image(tumor.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(tumor)
    with pytest.raises(ImagioError, match="tumour segmentation is empty"):
        logic.assess(empty, zone)
    with pytest.raises(ImagioError, match="ablation zone segmentation is empty"):
        logic.assess(tumor, empty)
    # an empty tumour on another grid (resampled first) is still called empty
    coarse_empty = sitk.Image([30, 30, 20], sitk.sitkUInt8)
    coarse_empty.SetSpacing((2.0, 2.0, 3.0))
    coarse_empty.SetOrigin(zone.GetOrigin())
    with pytest.raises(ImagioError, match="tumour segmentation is empty"):
        logic.assess(coarse_empty, zone)
    label = sitk.Cast(tumor * 2 + zone, sitk.sitkUInt8)
    with pytest.raises(ImagioError, match="not binary"):
        logic.assess(label, zone)
    # masks in another frame (far away) with no registration
    other = sitk.Image(tumor)
    other.SetOrigin(tuple(np.array(tumor.GetOrigin()) + [500.0, 0.0, 0.0]))
    with pytest.raises(ImagioError, match="different frames"):
        logic.assess(other, zone)
    with pytest.raises(ImagioError, match="needs the pre- and post-treatment CTs"):
        logic.assess(tumor, zone, register_mode="rigid")
    with pytest.raises(ImagioError, match="threshold"):
        logic.assess(tumor, zone, threshold_mm=-1.0)
    # the inputs are untouched
    assert sitk.GetArrayViewFromImage(tumor).sum() > 0 and sitk.GetArrayViewFromImage(zone).sum() > 0


def test_cli_contract(pair, tmp_path):
    from imagio.cli import main

    tumor, zone = pair
    tpath = write_segmentation(tmp_path / "tumor.seg.nrrd", [Segment("tumour", tumor)])
    # the zone on another (coarser, axis-aligned) grid in the same frame: resampled by the CLI
    from imagio.geometry import physical_bounds_ras

    lo, hi = physical_bounds_ras(zone)
    size = [int(np.ceil((b - a) / s)) + 1 for a, b, s in zip(lo, hi, (1.2, 1.2, 1.5), strict=True)]
    coarse = sitk.Resample(zone, make_image(size, (1.2, 1.2, 1.5), origin_ras=lo), sitk.Transform(),
                           sitk.sitkNearestNeighbor)
    zpath = write_segmentation(tmp_path / "zone.seg.nrrd", [Segment("zone", coarse)])
    out = tmp_path / "out"
    assert main(["margin", "--tumor", str(tpath), "--ablation", str(zpath), "--threshold-mm", "3",
                 "--sigma-mm", "1.0", "--out", str(out)]) == 0
    d = json.loads((out / "margin.json").read_text())
    for key in ("minimal_margin_mm", "coverage_percent", "shell_coverage_percent", "residual_tumor_ml",
                "thinnest_point_ras", "margin_ci_mm", "p_margin_ge_threshold", "verdict"):
        assert key in d
    assert set(d["shell_coverage_percent"]) == {"0", "3", "5", "10"}
    assert len(d["margin_ci_mm"]) == 2 and len(d["thinnest_point_ras"]) == 3
    assert d["threshold_mm"] == 3.0 and d["sigma_mm"] == 1.0
    # two nearest-neighbour resamplings (oblique 0.8x1.1x1.9 mm -> 1.2x1.2x1.5 mm) move each box surface by up to
    # half a voxel diagonal: the 4 mm margin is seen within 2.5 mm
    assert abs(d["minimal_margin_mm"] - 4.0) < 2.5 and d["coverage_percent"] == 100.0
    assert d["verdict"] == ("sufficient" if d["minimal_margin_mm"] >= 3.0 else "insufficient")
    assert not any("touches the image edge" in n for n in d["notes"])
    assert (out / "margin.mrb").stat().st_size > 1000
    from imagio.bundle import load_mrb

    scene = load_mrb(out / "margin.mrb")
    assert scene.GetNodesByClass("vtkMRMLModelNode").GetNumberOfItems() >= 1
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() >= 2


def test_cli_bad_input(pair, tmp_path, capsys):
    from imagio.cli import main

    tumor, zone = pair
    tpath = write_segmentation(tmp_path / "tumor.seg.nrrd", [Segment("tumour", tumor)])
    two = write_segmentation(tmp_path / "two.seg.nrrd", [Segment("a", zone), Segment("b", tumor)])
    out = tmp_path / "out"
    assert main(["margin", "--tumor", str(tpath), "--ablation", str(two), "--out", str(out)]) == 2
    assert "holds 2 segments" in capsys.readouterr().err
    assert main(["margin", "--tumor", str(tpath), "--ablation", str(tmp_path / "nope.nrrd"), "--out", str(out)]) == 2
    assert main(["margin", "--tumor", str(tpath), "--ablation", str(two), "--ablation-segment", "a",
                 "--register", "rigid", "--out", str(out)]) == 2
    assert "needs --pre-ct" in capsys.readouterr().err
    assert not out.exists()


def test_demo_step_on_phantom(tmp_path):
    """The demo step gives a margin report on the phantom: a centred zone 8 mm beyond the tumour, 3 mm off-centre."""
    from imagio.demo import run_demo

    summary = run_demo(tmp_path / "demo", steps=["margin"])
    m = summary["margin"]
    assert m["status"] == "ok", m
    assert m["coverage_percent"] == 100.0 and m["residual_tumor_ml"] == 0.0
    assert 1.0 < m["minimal_margin_mm"] < 8.0
    assert m["margin_ci_mm"][0] <= m["margin_ci_mm"][1]
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Ablation margin" in html and "mm" in html


def test_uncertainty_pruning_is_exact(pair):
    """The pruned Monte-Carlo minimum equals brute force over every surface point, for every sample.

    Brute force: the same draws (shift, rotation about the surface centroid, boundary offsets), every tumour
    surface point moved, the zone's lattice field plus each point's sub-voxel correction, the minimum.
    """
    from scipy.spatial.transform import Rotation

    from IMAGIOMarginLib.metrics import compute_margin, trilinear
    from IMAGIOMarginLib.uncertainty import margin_uncertainty

    tumor, zone = pair
    m = compute_margin(tumor, zone)
    u = margin_uncertainty(m, 5.0, sigma_mm=2.0, n_samples=60, seed=7, rotation_sigma_deg=4.0,
                           tumor_boundary_sigma_mm=0.5, zone_boundary_sigma_mm=0.3)
    rng = np.random.default_rng(7)
    shifts = rng.normal(0.0, 1.0, size=(60, 3)) * 2.0
    rotvec = rng.normal(0.0, np.deg2rad(4.0), size=(60, 3))
    d_t, d_z = rng.normal(0.0, 1.0, 60) * 0.5, rng.normal(0.0, 1.0, 60) * 0.3
    half = np.array(tumor.GetSpacing())[::-1] * m.field.step_voxels
    lat = m.field.to_grid(m.surface_ijk)
    corr = m.surface_margin_mm - trilinear(m.field.phi, lat.astype(np.float32))
    pos = lat * half
    c = pos.mean(axis=0)
    brute = []
    for n in range(60):
        q = (pos - c) @ Rotation.from_rotvec(rotvec[n]).as_matrix() + c - shifts[n]
        # each moved map's minimum carries the MAM's grid-phase correction
        brute.append(float(np.clip((trilinear(m.field.phi, (q / half).astype(np.float32)) + corr).min()
                                   + m.grid_correction_mm, -m.cap_mm, m.cap_mm)))
    assert np.allclose(u.samples_mm, np.array(brute) - d_t + d_z, atol=1e-4)
    lo, hi = u.margin_ci_mm
    assert lo <= m.minimal_margin_mm <= hi
    assert u.p_margin_ge_threshold == pytest.approx(np.mean(u.samples_mm >= 5.0))


def test_assess_on_mrml_nodes(pair):
    """The path the Slicer module takes: segmentation and volume nodes in, new nodes out, inputs untouched."""
    from imagio.mrml import segmentation_node_from_segments, volume_node_from_image

    tumor, zone = pair
    scene = new_scene()
    ct = volume_node_from_image(scene, sitk.Cast(tumor, sitk.sitkInt16) * 100, "CT")
    tseg = segmentation_node_from_segments(scene, [Segment("other", zone), Segment("tumour", tumor)], "Tumour", ct)
    zseg = segmentation_node_from_segments(scene, [Segment("zone", zone)], "Zone", ct)
    before = scene.GetNumberOfNodes()
    mtime = tseg.GetMTime(), zseg.GetMTime()
    logic = MarginLogic(scene)
    sid = tseg.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    res = logic.assess_nodes(tseg, sid, zseg, zseg.GetSegmentation().GetNthSegmentID(0), ct, ct)
    direct = logic.assess(tumor, zone)
    assert res.metrics.minimal_margin_mm == pytest.approx(direct.metrics.minimal_margin_mm, abs=1e-6)
    assert res.metrics.coverage_percent == pytest.approx(direct.metrics.coverage_percent)
    logic.add_to_scene(res)
    assert scene.GetNumberOfNodes() > before
    assert (tseg.GetMTime(), zseg.GetMTime()) == mtime
    with pytest.raises(ImagioError, match="No tumour segment"):
        logic.assess_nodes(tseg, "", zseg, zseg.GetSegmentation().GetNthSegmentID(0))


def test_large_margin_grows_the_region():
    """A margin beyond the default cap (threshold + 10 mm) is still exact: the region grows."""
    from IMAGIOMarginLib.metrics import compute_margin

    ref = make_image((120, 110, 70), (1.0, 1.0, 1.5), direction_ras=rotation_matrix((1.0, 1.0, 0.0), 20.0))
    t = np.zeros((70, 110, 120), np.uint8)
    t[30:40, 50:60, 55:65] = 1  # a 10 x 10 x 15 mm box
    z = np.zeros_like(t)
    z[30 - 14:40 + 14, 50 - 21:60 + 21, 55 - 22:65 + 22] = 1  # faces 21 mm (z), 21 mm (y), 22 mm (x) away
    m = compute_margin(*(sitk.Image(like(a, ref)) for a in (t, z)), threshold_mm=5.0)
    # a box's sharp corners are not a smooth surface: exact to the stated 0.3 x the largest spacing
    assert m.minimal_margin_mm == pytest.approx(21.0, abs=0.3 * 1.5)
    assert m.exact and m.cap_mm >= 30.0


def test_image_edge_counts_as_zone_boundary():
    """A zone cut by the image edge is not assumed to go on: the edge bounds the margin (to 0.3 x the spacing)."""
    from IMAGIOMarginLib.metrics import compute_margin

    ref = make_image((40, 40, 30), (0.9, 1.1, 2.0), direction_ras=rotation_matrix((0.0, 1.0, 1.0), 35.0))
    t = np.zeros((30, 40, 40), np.uint8)
    t[12:18, 15:25, 4:12] = 1  # 4 voxels (3.6 mm) from the i = 0 edge of the image
    z = np.ones_like(t)
    m = compute_margin(like(t, ref), like(z, ref))
    # the zone ends half a voxel beyond its last voxel centre, the tumour half a voxel before its first
    assert m.minimal_margin_mm == pytest.approx(4 * 0.9, abs=0.3 * 2.0)
    assert m.thinnest_point_ijk[0] == pytest.approx(3.5, abs=0.5)


def like(arr, ref):
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def test_assess_is_named_steps_with_one_typed_result(pair):
    """assess = check_inputs -> register_step -> align_tumor -> measure -> sigma -> uncertainty -> decide."""
    from imagio.result import StepResult
    from IMAGIOMarginLib import logic as lg

    tumor, zone = pair
    inp = lg.check_inputs(tumor, zone, None, None, "none", 5.0, 1.6, 50, 3)
    assert lg.register_step(inp) is None
    tumor_z, notes = lg.align_tumor(inp, None)
    assert notes == [] and lg.same_grid(tumor_z, zone)
    metrics, _ = lg.measure(tumor_z, inp.zone, 5.0)
    sigma, source = lg.choose_sigma(None, None)
    assert sigma == lg.DEFAULT_SIGMA_MM and "default" in source
    unc, _ = lg.estimate_uncertainty(metrics, 5.0, 1.6, 50, 3)
    verdict, text, confident, flag, _ = lg.decide(metrics, unc, 5.0, 1.6, None)
    res = MarginLogic(new_scene()).assess(tumor, zone, sigma_mm=1.6, n_samples=50, seed=3)
    assert isinstance(res, StepResult)
    # the steps run one by one give what assess gives
    assert res.metrics.minimal_margin_mm == metrics.minimal_margin_mm
    assert res.uncertainty.margin_ci_mm == unc.margin_ci_mm and res.verdict == verdict == "insufficient"
    summary = res.summary_text()
    assert summary.splitlines()[0] == res.verdict_text and " mm" in summary and " %" in summary
    scene = new_scene()
    nodes = res.add_to_scene(scene)
    assert set(nodes) >= {"model", "thinnest", "table"} and scene.GetNodeByID(nodes["table"].GetID()) is not None
    assert res.warnings == res.to_dict()["notes"]


def test_the_verdict_policy_is_one_frozen_parameter_set_read_by_the_logic_and_the_cli():
    import argparse
    import dataclasses
    import inspect

    from IMAGIOMarginLib import logic as lg
    from IMAGIOMarginLib.cli import register_cli
    from IMAGIOMarginLib.policy import VERDICT, VerdictPolicy

    with pytest.raises(dataclasses.FrozenInstanceError):
        VERDICT.threshold_mm = 3.0
    assert inspect.signature(lg.assess).parameters["threshold_mm"].default == VERDICT.threshold_mm == 5.0
    sub = argparse.ArgumentParser().add_subparsers()
    register_cli(sub)
    assert sub.choices["margin"].get_default("threshold_mm") == VERDICT.threshold_mm
    ci = (-1.0, 9.0)
    assert lg._verdict(-0.2, 5.0, 0.01, ci)[0] == "incomplete"
    assert lg._verdict(-0.2, 5.0, 0.01, ci, VerdictPolicy(incomplete_below_mm=-0.5))[0] == "insufficient"
    assert lg._verdict(5.0, 5.0, 0.0, (4.0, 6.0))[0] == "sufficient"  # at the threshold: sufficient
    assert lg._verdict(4.9, 5.0, 0.0, (4.0, 6.0))[1].endswith("contains 5 mm")  # the interval straddles it


def test_smoothing_width_is_capped_on_tiny_masks_only():
    """sigma <= sqrt(R h) (the inward shift sigma^2 / R of a radius-R surface at most one finest voxel h), never below
    one voxel of each axis, unchanged from R = 4 h up; a mask too small for a surface at the full width (7 voxels) is
    still refused: the narrower width never accepts it."""
    from IMAGIOMarginLib.metrics import compute_margin, smoothing_sigma_mm

    iso, aniso = np.array([1.0, 1.0, 1.0]), np.array([2.5, 0.9, 0.8])  # k, j, i
    assert np.allclose(smoothing_sigma_mm(iso), 2.0) and np.allclose(smoothing_sigma_mm(iso, 4.0), 2.0)
    assert np.allclose(smoothing_sigma_mm(iso, 100.0), 2.0)
    assert np.allclose(smoothing_sigma_mm(iso, 2.25), 1.5) and np.allclose(smoothing_sigma_mm(iso, 0.3), 1.0)
    assert np.allclose(smoothing_sigma_mm(aniso, 1.6), [2.5, 0.8 * np.sqrt(2.0), 0.8 * np.sqrt(2.0)])
    assert np.allclose(smoothing_sigma_mm(aniso, 50.0), smoothing_sigma_mm(aniso))
    arr = np.zeros((30, 30, 30), np.uint8)
    arr[15, 15, 14:17] = 1
    arr[15, 14:17, 15] = 1
    arr[14:17, 15, 15] = 1  # a 7-voxel cross
    tumor = sitk.GetImageFromArray(arr)
    zone = sitk.GetImageFromArray(np.ones_like(arr))
    with pytest.raises(ImagioError, match="too small to have a surface"):
        compute_margin(tumor, zone, 5.0)
