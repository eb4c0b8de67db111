"""Table zones: rasterised in physical space on oblique, anisotropic grids; coverage, margins, live nodes."""

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.scene import new_scene
from imagio.testing import oblique_image
from IMAGIOAblationZoneLib.devices import get_device
from IMAGIOAblationZoneLib.logic import AblationZoneLogic
from IMAGIOAblationZoneLib.zone import EllipsoidZone, _ellipse_distance

GRIDS = [
    dict(size=(110, 100, 44), spacing=(0.8, 0.7, 2.5), axis=(1.0, 2.0, 3.0), angle_deg=23.0),
    dict(size=(90, 120, 70), spacing=(1.1, 0.6, 1.4), axis=(-2.0, 0.5, 1.0), angle_deg=61.0),
]


def _grid(g):
    return oblique_image(size=g["size"], spacing=g["spacing"], origin_ras=(-40.0, -35.0, -50.0), axis=g["axis"],
                         angle_deg=g["angle_deg"])


def _measured_axes(mask, centre, u):
    arr = sitk.GetArrayFromImage(mask)
    pts = geometry.ijk_to_ras(mask, np.argwhere(arr)[:, ::-1].astype(float))
    q = pts - centre
    z = q @ u
    r2 = np.einsum("ij,ij->i", q, q) - z * z
    # a solid ellipsoid of revolution has var(z) = a^2 / 5 and E[rho^2] = 2 b^2 / 5
    return 2 * np.sqrt(5 * np.mean(z * z)), 2 * np.sqrt(5 * np.mean(r2) / 2), z, np.sqrt(np.maximum(r2, 0))


@pytest.mark.parametrize("g", GRIDS)
@pytest.mark.parametrize("direction", [(1.0, 0.3, -0.2), (-0.3, 0.8, 0.5), (0.1, -0.2, 1.0)])
def test_table_axes_reproduced_within_one_voxel_on_oblique_probes_and_grids(g, direction):
    grid = _grid(g)
    s = get_device("emprint").setting(100, 600)  # 42 x 36 mm
    u = np.asarray(direction) / np.linalg.norm(direction)
    centre = geometry.ijk_to_ras(grid, (np.array(grid.GetSize()) - 1) / 2.0) + np.array([0.37, -0.21, 0.53])
    tip = centre + s.tip_offset_mm * u
    zone = EllipsoidZone.from_probe(tip, tip - 90 * u, s)
    mask = zone.rasterise(grid)
    long_mm, short_mm, z, rho = _measured_axes(mask, centre, u)
    voxel = max(g["spacing"])
    assert abs(long_mm - s.zone_long_mm) < voxel
    assert abs(short_mm - s.zone_short_mm) < voxel
    # extremes along and across the probe: within one voxel of the semi-axes, never beyond them
    assert 0 <= s.zone_long_mm / 2 - z.max() < voxel and 0 <= s.zone_long_mm / 2 + z.min() < voxel
    assert 0 <= s.zone_short_mm / 2 - rho.max() < voxel
    vol = float(sitk.GetArrayViewFromImage(mask).sum()) * geometry.voxel_volume_ml(grid)
    assert vol == pytest.approx(s.volume_ml, rel=0.03)


def test_bounding_box_rasterisation_equals_full_grid_test():
    grid = _grid(GRIDS[0])
    s = get_device("amica").setting(60, 600)
    u = np.array([0.6, -0.64, 0.48])
    tip = geometry.ijk_to_ras(grid, [70, 40, 30])
    zone = EllipsoidZone.from_probe(tip, tip - 80 * u, s)  # partly outside the grid: clipping
    arr = sitk.GetArrayFromImage(zone.rasterise(grid)).astype(bool)
    kji = np.indices(arr.shape).reshape(3, -1).T
    full = zone.contains(geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))).reshape(arr.shape)
    assert arr.any() and np.array_equal(arr, full)


def test_signed_distance_matches_brute_force():
    t = np.linspace(0, np.pi / 2, 200001)
    rng = np.random.default_rng(1)
    for a, b in ((24.5, 22.5), (10.0, 21.0)):
        pts = rng.uniform(0, 40, (150, 2))
        pts[:5, 1] = 0
        pts[5:10, 0] = 0
        d = _ellipse_distance(pts[:, 0], pts[:, 1], a, b)
        brute = np.array([np.min(np.hypot(a * np.cos(t) - p[0], b * np.sin(t) - p[1])) for p in pts])
        assert np.max(np.abs(d - brute)) < 1e-4


def test_coverage_and_margin_of_a_sphere_inside_the_zone():
    grid = _grid(GRIDS[0])
    logic = AblationZoneLogic(new_scene())
    s = get_device("emprint").setting(100, 600)  # semi-axes 21 x 18 mm
    centre = geometry.ijk_to_ras(grid, [55.3, 49.6, 21.2])
    kji = np.indices(grid.GetSize()[::-1]).reshape(3, -1).T
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    tumor = (np.linalg.norm(pts - centre, axis=1) <= 10.0).reshape(grid.GetSize()[::-1])
    vessel = (np.linalg.norm((pts - centre)[:, :2] - [30.0, 0.0], axis=1) <= 3.0).reshape(tumor.shape)  # outside
    ctx = logic.prepare(grid, tumor, {"vessel": vessel}, margin_mm=5.0)
    u = np.array([0.0, 0.6, 0.8])
    tip = centre + s.tip_offset_mm * u
    r = logic.table_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600)
    m = r.metrics
    assert m["coverage_percent"] == 100.0 and m["margin_coverage_percent"] == 100.0
    # the nearest zone surface is the short semi-axis: 18 - 10 mm from the tumour's surface (its voxel faces lie
    # up to half a voxel beyond the 10 mm sphere)
    assert 8.0 - max(grid.GetSpacing()) / 2 - 0.4 <= m["minimal_margin_mm"] <= 8.0 + 0.4
    assert m["margin_tolerance_mm"] < 0.4 and "analytic" in m["margin_method"]
    assert m["structures_in_zone_percent"]["vessel"] == 0.0
    assert m["zone_axes_mm"] == [42.0, 36.0, 36.0]
    # shifted 20 mm sideways: part of the tumour is outside, the margin is negative
    side = np.cross(u, [1.0, 0, 0])
    r2 = logic.table_zone(ctx, tip + 20 * side / np.linalg.norm(side), tip - 100 * u + 20 * side, "emprint", 100, 600)
    assert 0 < r2.metrics["coverage_percent"] < 100 and r2.metrics["minimal_margin_mm"] < 0


def test_tip_outside_the_image_is_refused():
    grid = _grid(GRIDS[0])
    logic = AblationZoneLogic(new_scene())
    ctx = logic.prepare(grid)
    far = geometry.ijk_to_ras(grid, [-40, 10, 10])
    with pytest.raises(ImagioError, match="outside the image"):
        logic.table_zone(ctx, far, far + [0, 0, 100.0], "emprint", 100, 600)
    with pytest.raises(ImagioError, match="same point"):
        c = geometry.ijk_to_ras(grid, [50, 50, 20])
        logic.table_zone(ctx, c, c, "emprint", 100, 600)


def test_live_update_reuses_nodes_and_matches_the_mask():
    from imagio.mrml import segments_from_segmentation_node

    grid = _grid(GRIDS[1])
    logic = AblationZoneLogic(new_scene())
    ctx = logic.prepare(grid)
    c = geometry.ijk_to_ras(grid, [45, 60, 35])
    u = np.array([0.0, 0.0, 1.0])
    seg, model = logic.update_zone_nodes(logic.table_zone(ctx, c, c - 80 * u, "neuwave-pr", 65, 300))
    n_nodes = logic.scene.GetNumberOfNodes()
    r = logic.table_zone(ctx, c + [3.0, 2.0, 0.0], c - 80 * u, "neuwave-pr", 65, 600)  # dragged, new setting
    seg2, model2 = logic.update_zone_nodes(r, seg, model)
    assert seg2 is seg and model2 is model and logic.scene.GetNumberOfNodes() == n_nodes
    out = segments_from_segmentation_node(seg)[0]
    back = sitk.GetArrayFromImage(geometry.resample_to(out.mask, grid)) > 0
    expected = sitk.GetArrayFromImage(r.full_mask()) > 0
    assert np.array_equal(back, expected)
    bounds = [0.0] * 6
    model.GetPolyData().GetBounds(bounds)
    assert bounds[5] - bounds[4] == pytest.approx(43.0, rel=0.02)  # the 43 mm long axis along S


def test_zone_never_overwrites_another_segment_of_the_chosen_node():
    from imagio.io import Segment
    from imagio.mrml import segmentation_node_from_segments, segments_from_segmentation_node

    grid = _grid(GRIDS[1])
    logic = AblationZoneLogic(new_scene())
    arr = np.zeros(grid.GetSize()[::-1], np.uint8)
    arr[10:20, 10:20, 10:20] = 1
    node = segmentation_node_from_segments(logic.scene, [Segment("liver", geometry.copy_geometry(arr, grid))], "Mine")
    c = geometry.ijk_to_ras(grid, [45, 60, 35])
    logic.update_zone_nodes(logic.table_zone(logic.prepare(grid), c, c - [0, 0, 80.0], "emprint", 75, 300), node)
    segs = {s.name: s for s in segments_from_segmentation_node(node)}
    assert set(segs) == {"liver", "ablation_zone"} and segs["liver"].voxel_count() == 1000
