"""Probe planning: feasible only when the margin is kept (checked independently), infeasible plans say why."""

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.scene import new_scene
from imagio.testing import data_path, oblique_image
from IMAGIOAblationZoneLib.logic import AblationZoneLogic
from IMAGIOAblationZoneLib.zone import EllipsoidZone
from IMAGIOMarginLib.metrics import compute_margin


def _scene_grid():
    grid = oblique_image(size=(120, 110, 80), spacing=(1.2, 1.0, 1.5), origin_ras=(-60.0, -55.0, -60.0),
                         axis=(1.0, -1.0, 2.0), angle_deg=31.0)
    kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    return grid, pts


def independent_margin(tumor: np.ndarray, grid: sitk.Image, probes) -> float:
    """The minimal margin of the planned zones as IMAGIOMargin measures a treatment: the zones rasterised on the
    grid, the distance from the tumour's surface to the zone mask's surface on the half-voxel lattice."""
    zone = np.zeros(tumor.shape, np.uint8)
    for p in probes:
        zone |= sitk.GetArrayFromImage(EllipsoidZone.from_probe(p.tip_ras, p.entry_ras, p.setting).rasterise(grid))
    return compute_margin(geometry.copy_geometry(tumor.astype(np.uint8), grid),
                          geometry.copy_geometry(zone, grid)).minimal_margin_mm


def assert_keeps_margin(plan, tumor, grid, margin_mm=5.0):
    """A feasible plan keeps its margin by the planner's own number and by the independent one (within half the
    largest voxel spacing), and the two agree."""
    half = max(grid.GetSpacing()) / 2
    d = plan.to_dict()
    assert plan.feasible and d["margin_kept"] and d["minimal_margin_mm"] >= margin_mm
    indep = independent_margin(tumor, grid, plan.probes)
    assert indep >= margin_mm - half, (indep, d["minimal_margin_mm"])
    assert abs(indep - d["minimal_margin_mm"]) <= half + d["margin_tolerance_mm"]
    return indep


def test_small_tumour_one_probe_keeps_the_margin_with_a_clear_path():
    grid, pts = _scene_grid()
    centre = geometry.ijk_to_ras(grid, [60.4, 55.3, 40.2])
    d = np.linalg.norm(pts - centre, axis=1)
    tumor = (d <= 8.0).reshape(grid.GetSize()[::-1])
    # a 5 mm vessel passing 15 mm from the tumour centre
    v_axis = np.array([0.0, 1.0, 0.2]) / np.linalg.norm([0.0, 1.0, 0.2])
    q = pts - (centre + [15.0, 0.0, 0.0])
    vessel = (np.linalg.norm(q - np.outer(q @ v_axis, v_axis), axis=1) <= 2.5).reshape(tumor.shape)
    logic = AblationZoneLogic(new_scene())
    plan = logic.plan(grid, tumor, "emprint", 5.0, {"vessel": vessel}, clearance_mm=3.0, tissue="liver")
    assert len(plan.probes) == 1
    assert_keeps_margin(plan, tumor, grid)
    assert plan.coverage_percent >= 99.0 and plan.tumor_coverage_percent == 100.0
    # the smallest sufficient setting was chosen (not the largest zone)
    assert plan.probes[0].setting.volume_ml < logic.device("emprint").largest().volume_ml
    # the path keeps 3 mm from the vessel: sample it and measure the distance to the vessel's voxel centres
    p = plan.probes[0]
    path = p.tip_ras[None, :] + np.linspace(0, 1, 300)[:, None] * (p.entry_ras - p.tip_ras)[None, :]
    vpts = pts[vessel.ravel()]
    assert min(np.min(np.linalg.norm(vpts - x, axis=1)) for x in path) >= 3.0 - 1.0  # voxel-centre sampling
    assert any("entry points are where the paths leave the image" in w for w in plan.warnings)  # no skin given


def test_large_tumour_is_infeasible_and_says_why_with_the_best_plan_and_its_true_margin():
    grid, pts = _scene_grid()
    centre = geometry.ijk_to_ras(grid, [60, 55, 40])
    tumor = (np.linalg.norm(pts - centre, axis=1) <= 24.0).reshape(grid.GetSize()[::-1])
    plan = AblationZoneLogic(new_scene()).plan(grid, tumor, "emprint", 5.0, max_probes=2, tissue="liver")
    d = plan.to_dict()
    assert not d["feasible"] and not d["margin_kept"]
    assert "No plan with at most 2 probe(s)" in d["reason"] and "keeps a minimal margin of" in d["reason"]
    assert "paths keeping" not in d["reason"]  # nothing to avoid: no "keeping 3 mm from nothing"
    assert d["probe_count"] >= 1 and d["minimal_margin_mm"] < 5.0
    # the margin reported for the best plan is the true one, not the planner's hope
    indep = independent_margin(tumor, grid, plan.probes)
    assert abs(indep - d["minimal_margin_mm"]) <= max(grid.GetSpacing()) / 2 + d["margin_tolerance_mm"]


def test_enclosed_tumour_has_no_clear_path():
    grid, pts = _scene_grid()
    centre = geometry.ijk_to_ras(grid, [60, 55, 40])
    d = np.linalg.norm(pts - centre, axis=1)
    tumor = (d <= 6.0).reshape(grid.GetSize()[::-1])
    shell = ((d >= 25.0) & (d <= 28.0)).reshape(tumor.shape)
    plan = AblationZoneLogic(new_scene()).plan(grid, tumor, "emprint", 5.0, {"shell": shell})
    assert not plan.feasible and "No straight path" in plan.reason and "shell" in plan.reason


def test_entry_is_on_the_skin_when_a_body_outline_is_given():
    grid, pts = _scene_grid()
    centre = geometry.ijk_to_ras(grid, [60, 55, 40])
    d = np.linalg.norm(pts - centre, axis=1)
    tumor = (d <= 5.0).reshape(grid.GetSize()[::-1])
    body = (d <= 45.0).reshape(tumor.shape)
    plan = AblationZoneLogic(new_scene()).plan(grid, tumor, "neuwave-pr", 5.0, body=body, tissue="kidney")
    assert_keeps_margin(plan, tumor, grid)
    for p in plan.probes:
        assert abs(np.linalg.norm(p.entry_ras - centre) - 45.0) < 2.0
    assert not any("entry points" in w for w in plan.warnings)


@pytest.mark.parametrize("kwargs,message", [
    ({"clearance_mm": -20.0}, "Clearance"), ({"clearance_mm": float("nan")}, "Clearance"),
    ({"margin_mm": -1.0}, "Margin"), ({"margin_mm": float("inf")}, "Margin"),
    ({"required_percent": 120.0}, "coverage"), ({"max_probes": 0}, "probes"), ({"tissue": "brain"}, "tissue"),
])
def test_bad_planning_numbers_are_refused(kwargs, message):
    grid, pts = _scene_grid()
    tumor = (np.linalg.norm(pts - geometry.ijk_to_ras(grid, [60, 55, 40]), axis=1) <= 5.0).reshape(grid.GetSize()[::-1])
    with pytest.raises(ImagioError, match=message):
        AblationZoneLogic(new_scene()).plan(grid, tumor, "emprint", **kwargs)


MEDMPD_LIVER = [("medmpd-liver-p1", "nodule"), ("medmpd-liver-p2", "nodule1"), ("medmpd-liver-p2", "nodule2"),
                ("medmpd-liver-p3", "nodule1"), ("medmpd-liver-p3", "nodule2"), ("medmpd-liver-p4", "nodule")]


def _medmpd(case: str, nodule: str):
    """A Med-MPD liver tumour on its own grid and its vessels (hepatic artery, hepatic vein, portal vein, whatever
    the case spells them) to keep the paths from."""
    base = data_path(case)
    ref = sitk.ReadImage(str(base / f"{nodule}.nii.gz"), sitk.sitkUInt8)
    avoid = {}
    for f in sorted(base.glob("*.nii.gz")):
        if "artery" in f.name.lower() or "vein" in f.name.lower():
            avoid[f.name.split(".")[0]] = sitk.GetArrayFromImage(
                geometry.resample_to(sitk.ReadImage(str(f), sitk.sitkUInt8), ref)) > 0
    assert len(avoid) == 3
    return ref, avoid


@pytest.mark.parametrize("case,nodule", MEDMPD_LIVER)
def test_plans_on_real_liver_tumours_keep_the_margin_checked_independently(case, nodule):
    """Every Med-MPD liver tumour: a feasible plan keeps 5 mm by the planner and by IMAGIOMargin's metric of the
    rasterised zones; an infeasible one says why and reports the true margin of its best plan."""
    ref, avoid = _medmpd(case, nodule)
    tumor = sitk.GetArrayFromImage(ref) > 0
    plan = AblationZoneLogic(new_scene()).plan(ref, ref, "emprint", 5.0, avoid, tumor_name=nodule)
    assert plan.tissue == "liver" and any("liver assumed" in w for w in plan.warnings)  # 'nodule' says no organ
    assert all(p.min_clearance_mm >= 3.0 for p in plan.probes)
    if plan.feasible:
        assert_keeps_margin(plan, tumor, ref)
        return
    # infeasible plans say why, with the true margin of the best one, checked independently as well
    d = plan.to_dict()
    assert not d["margin_kept"] and d["probe_count"] >= 1 and d["minimal_margin_mm"] < 5.0
    assert "No plan with at most 5 probe(s)" in plan.reason and "keeps a minimal margin of" in plan.reason
    assert f"{d['minimal_margin_mm']:.2f} mm" in plan.reason
    indep = independent_margin(tumor, ref, plan.probes)
    assert abs(indep - d["minimal_margin_mm"]) <= max(ref.GetSpacing()) / 2 + d["margin_tolerance_mm"]


def test_bioheat_check_of_a_plan_next_to_a_vessel():
    grid, pts = _scene_grid()
    centre = geometry.ijk_to_ras(grid, [60.4, 55.3, 40.2])
    d = np.linalg.norm(pts - centre, axis=1)
    tumor = (d <= 4.0).reshape(grid.GetSize()[::-1])
    axis = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])

    def vessel(offset_mm):
        q = pts - (centre + [offset_mm, 0.0, 0.0])
        return (np.linalg.norm(q - np.outer(q @ axis, axis), axis=1) <= 2.0).reshape(tumor.shape)

    logic = AblationZoneLogic(new_scene())
    # a 4 mm vessel running through the margin, 7 mm from the tumour centre: its wall stays near 37 C
    near = vessel(7.0)
    plan = logic.plan(grid, tumor, "emprint", 5.0, {"vessel": near}, clearance_mm=1.0, verify_bioheat=True,
                      heat_sinks=near, max_probes=3, tissue="liver")
    d = plan.to_dict()
    checks = d["bioheat_checks"]
    assert checks[0]["table_minimal_margin_mm"] >= 5.0 and checks[0]["bioheat_coverage_percent"] < 99.0  # heat sink
    if d["feasible"]:  # re-planned with smaller planning zones until the simulated zones cover
        assert len(checks) >= 2 and d["bioheat_verified"] and checks[-1]["bioheat_coverage_percent"] >= 99.0
    else:
        assert "heat sinks" in d["reason"] and not d["bioheat_verified"]


def test_thick_slices_a_tumour_at_the_image_edge_and_margins_0_to_10_mm():
    """5 mm slices: the margin is measured from the voxel faces (2.5 mm beyond the slice centres), at any margin."""
    grid = oblique_image(size=(60, 60, 20), spacing=(0.8, 0.8, 5.0), origin_ras=(-24.0, -24.0, -50.0))
    tumor = np.zeros(grid.GetSize()[::-1], bool)
    tumor[9:11, 28:33, 28:33] = True
    logic = AblationZoneLogic(new_scene())
    for margin in (0.0, 10.0):
        plan = logic.plan(grid, tumor, "emprint", margin, tissue="liver")
        assert_keeps_margin(plan, tumor, grid, margin)
    edge = np.zeros(tumor.shape, bool)
    edge[0:2, 28:33, 0:4] = True
    plan = logic.plan(grid, edge, "emprint", 5.0, tissue="liver")
    assert any("touches the image edge" in w for w in plan.warnings)
