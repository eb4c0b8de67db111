"""Route planning: analytic Y (known exit, gap, lumen, angle), bad targets, Med-MPD lung cases."""

import numpy as np
import pytest
import SimpleITK as sitk
from _lungnav_synth import CARINA, CHILD_LEN, CHILD_R, LEFT_DIR, RIGHT_DIR, TRACHEA_TOP, make_y

from imagio import geometry as g
from imagio.errors import ImagioError
from imagio.testing import data_path
from IMAGIOLungNavLib.centerline import extract_centerlines
from IMAGIOLungNavLib.route import ROUTE_KEYS, max_turn_angle_deg, plan_route


@pytest.fixture(scope="module")
def y_tree(y_mask):
    return extract_centerlines(y_mask)


def _inside(mask, points_ras) -> np.ndarray:
    ijk = np.round(g.ras_to_ijk(mask, points_ras)).astype(int)
    arr = sitk.GetArrayViewFromImage(mask)
    return arr[ijk[:, 2], ijk[:, 1], ijk[:, 0]] > 0


def _sphere(reference, centre_ras, radius_mm):
    kji = np.indices(reference.GetSize()[::-1]).reshape(3, -1).T
    ras = g.ijk_to_ras(reference, kji[:, ::-1].astype(float))
    arr = (np.linalg.norm(ras - centre_ras, axis=1) <= radius_mm).reshape(reference.GetSize()[::-1])
    return g.copy_geometry(arr.astype(np.uint8), reference)


def test_route_to_a_target_beyond_the_right_bronchus(y_tree, y_mask):
    tip = CARINA + RIGHT_DIR * CHILD_LEN
    target = tip + RIGHT_DIR * 8.0  # 8 mm beyond the end of the axis, 4.5 mm beyond the tube's cap
    r = plan_route(y_tree, target_ras=target, scope_diameter_mm=4.2, airway_mask=y_mask)
    assert set(r.contract_dict()) == set(ROUTE_KEYS)
    assert r.generation == 1
    assert r.branch_names == ["trachea", "right main bronchus"]
    # the exit point lies in the cap of the right bronchus: between the axis end and the tube's end
    along = (r.exit_point_ras - CARINA) @ RIGHT_DIR
    assert CHILD_LEN - 3.0 <= along <= CHILD_LEN + CHILD_R
    assert r.gap_to_target_mm == pytest.approx(np.linalg.norm(target - r.exit_point_ras), abs=1e-6)
    assert 4.5 - 0.5 <= r.gap_to_target_mm <= 8.0 + 3.0
    # path from the top of the trachea: about trachea + bronchus length
    assert r.route_points_ras[0][2] > TRACHEA_TOP[2] - 3.0
    assert r.path_length_mm == pytest.approx(45.0 + along, abs=6.0)
    assert np.all(_inside(y_mask, r.route_points_ras))
    # lumen and scope: the bronchus is 7 mm wide
    assert r.min_lumen_diameter_mm == pytest.approx(2 * CHILD_R, abs=1.0)
    assert r.reachable
    assert not plan_route(y_tree, target_ras=target, scope_diameter_mm=8.5).reachable
    # the scope turns from the trachea into the right bronchus: 40 degrees
    assert r.max_turn_angle_deg == pytest.approx(40.0, abs=8.0)


def test_bronchus_sign_with_a_lesion(y_tree, y_mask):
    end_left = CARINA + LEFT_DIR * CHILD_LEN
    on_airway = _sphere(y_mask, end_left + LEFT_DIR * 7.0, 6.5)   # the bronchus runs into it
    r = plan_route(y_tree, lesion=on_airway)
    assert r.bronchus_sign and r.gap_to_target_mm == 0.0
    assert r.branch_names[-1] == "left main bronchus"
    side = end_left + np.cross(LEFT_DIR, [0.0, 1.0, 0.0]) * 14.0
    away = _sphere(y_mask, side, 4.0)                                # beside the bronchus, 14 mm off its axis
    r2 = plan_route(y_tree, lesion=away)
    assert not r2.bronchus_sign
    assert r2.gap_to_target_mm == pytest.approx(14.0 - 4.0, abs=1.5)  # centerline to lesion surface


def test_bad_targets_are_refused(y_tree):
    with pytest.raises(ImagioError, match="inside the trachea"):
        plan_route(y_tree, target_ras=CARINA + np.array([0.0, 0.0, 20.0]))
    with pytest.raises(ImagioError, match="does not seem to lie in the lungs"):
        plan_route(y_tree, target_ras=CARINA + np.array([150.0, 0.0, 0.0]))
    with pytest.raises(ImagioError, match="Scope diameter"):
        plan_route(y_tree, target_ras=CARINA + RIGHT_DIR * 45, scope_diameter_mm=-1.0)
    with pytest.raises(ImagioError, match="No target"):
        plan_route(y_tree)


def test_disconnected_tree_gives_an_explicit_result():
    tree = extract_centerlines(make_y(cut_right=(5.0, 30.0)))
    target = CARINA + RIGHT_DIR * (CHILD_LEN + 6.0)
    r = plan_route(tree, target_ras=target)
    # the right bronchus is cut off: the route ends on the main tree, far from the target, and says why
    assert r.gap_to_target_mm > 30.0
    assert any("not connected to the trachea" in w for w in r.warnings)
    bridged = plan_route(extract_centerlines(make_y(cut_right=(15.0, 18.0))), target_ras=target)
    assert bridged.gap_to_target_mm < 8.0
    assert any("bridged gap" in w for w in bridged.warnings)


def test_turn_angle_of_a_known_bend():
    a = np.c_[np.zeros(30), np.zeros(30), np.linspace(30, 0, 30)]
    d = np.array([np.sin(np.radians(60)), 0.0, -np.cos(np.radians(60))])
    b = np.outer(np.linspace(1, 30, 30), d)
    pts = np.vstack([a, b])
    assert max_turn_angle_deg(pts) == pytest.approx(60.0, abs=2.0)
    assert max_turn_angle_deg(pts, [0] * 30 + [1] * 30) == pytest.approx(60.0, abs=1.0)
    assert max_turn_angle_deg(a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("case", ["p1", "p2", "p3", "p4"])
def test_medmpd_route_to_every_target(case):
    """Med-MPD lung cases: a route to the target, start poses on our centerlines, route inside the airway."""
    folder = data_path(f"medmpd-lungs-{case}")
    airway = sitk.ReadImage(str(folder / "bronchialTree.nii.gz"))
    tree = extract_centerlines(airway)
    target = np.loadtxt(folder / "target.txt")
    r = plan_route(tree, target_ras=target, scope_diameter_mm=4.2, airway_mask=airway)
    assert r.branch_names[0] == "trachea"
    assert np.all(_inside(airway, r.route_points_ras))
    assert r.generation >= 3
    seg = np.linalg.norm(np.diff(r.route_points_ras, axis=0), axis=1)
    assert r.path_length_mm == pytest.approx(seg.sum(), rel=1e-6)
    # the whole polyline (not only its points) runs inside the airway
    fine = np.vstack([a + np.linspace(0, 1, 8, endpoint=False)[:, None] * (b - a)
                      for a, b in zip(r.route_points_ras[:-1], r.route_points_ras[1:], strict=True)])
    assert np.mean(_inside(airway, fine)) > 0.97
    # the exit point is the airway point nearest to the target (no centerline node is nearer by a voxel)
    assert r.gap_to_target_mm <= np.linalg.norm(tree.points_ras - target, axis=1).min() + 1.0
    assert r.gap_to_target_mm == pytest.approx(np.linalg.norm(r.exit_point_ras - target), abs=1e-6)
    # the target lies in the lung periphery, tens of mm beyond the segmented airways (a needle-steering data set)
    assert 10.0 < r.gap_to_target_mm < 60.0
    # the narrowest lumen is the distal end: a 4.2 mm scope does not fit all the way, a thin one gets further
    assert not r.reachable
    thin = plan_route(tree, target_ras=target, scope_diameter_mm=2.0)
    assert thin.scope_stop_to_target_mm <= r.scope_stop_to_target_mm
    # the bronchoscope start poses of the data set lie on our centerlines
    for n in range(1, 6):
        start = np.loadtxt(folder / f"start{n}.txt")[:3, 3]
        assert np.linalg.norm(tree.points_ras - start, axis=1).min() < 3.5, n
    # a route from a start pose reaches the same exit point
    s1 = np.loadtxt(folder / "start1.txt")[:3, 3]
    from_start = plan_route(tree, target_ras=target, start_ras=s1)
    assert np.allclose(from_start.exit_point_ras, r.exit_point_ras)
    assert from_start.path_length_mm < r.path_length_mm
    # the nodule mask as the lesion: same neighbourhood, gap measured to its surface
    nodule = sitk.ReadImage(str(folder / "nodule.nii.gz"))
    rl = plan_route(tree, lesion=nodule)
    assert rl.gap_to_target_mm <= r.gap_to_target_mm + 1.0
