"""Pennes solver: against the analytic point source, against the device table, and the vessel heat sink."""

import numpy as np
import pytest

from imagio import geometry
from imagio.errors import ImagioError
from imagio.scene import new_scene
from imagio.testing import oblique_image
from IMAGIOAblationZoneLib import bioheat as bh
from IMAGIOAblationZoneLib.logic import AblationZoneLogic

LIVER = bh.TISSUES["liver"]


def _point_source_run(perfusion_per_s, duration_s, power_w=2.0):
    grid = oblique_image(size=(61, 61, 49), spacing=(1.0, 1.0, 1.25), origin_ras=(-30.0, -30.0, -30.0))
    shape = grid.GetSize()[::-1]
    k = np.full(shape, LIVER.k_w_per_m_k, np.float32)
    rc = np.full(shape, LIVER.rho_c_j_per_m3_k, np.float32)
    w = np.full(shape, perfusion_per_s, np.float32)
    c = geometry.ijk_to_ras(grid, [30, 30, 24])
    res = bh.simulate(grid, k, rc, w, bh.point_source(grid, c, power_w), duration_s, perfusion_shutdown_c=None)
    kji = np.argwhere(np.ones(shape, bool))
    r = np.linalg.norm(geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float)) - c, axis=1)
    return r, (res.t_final_c - bh.BODY_C).ravel()


def test_point_source_matches_the_transient_analytic_solution_with_perfusion():
    w = 1.5e-3  # moderate perfusion: the transient is still far from steady at 300 s
    r, rise = _point_source_run(w, 300.0)
    sel = (r >= 5.0) & (r <= 16.0)
    exact = bh.analytic_point_source(r[sel], 300.0, 2.0, LIVER.k_w_per_m_k, LIVER.rho_c_j_per_m3_k, w)
    rel = np.abs(rise[sel] - exact) / exact
    assert np.median(rel) < 0.01 and rel.max() < 0.05  # the single-voxel source is coarse at 5 mm


def test_point_source_reaches_the_steady_state_p_over_4_pi_k_r():
    w = 6e-3  # strong perfusion: steady within 1500 s (time constant rho c / (w rho_b c_b) ~ 170 s)
    r, rise = _point_source_run(w, 1500.0)
    sel = (r >= 5.0) & (r <= 16.0)
    steady = bh.analytic_point_source(r[sel], float("inf"), 2.0, LIVER.k_w_per_m_k, LIVER.rho_c_j_per_m3_k, w)
    rel = np.abs(rise[sel] - steady) / steady
    assert np.median(rel) < 0.01 and rel.max() < 0.05  # the single-voxel source is coarse at 5 mm
    # and it is not the no-perfusion 1/r field: perfusion matters
    assert np.median(np.abs(rise[sel] - 2.0 / (4 * np.pi * LIVER.k_w_per_m_k * r[sel] * 1e-3))) > 1.0


def _probe_grid():
    grid = oblique_image(size=(80, 80, 60), spacing=(1.0, 1.0, 1.25), origin_ras=(-40.0, -40.0, -40.0))
    c = geometry.ijk_to_ras(grid, [40, 40, 30])
    u = np.array([0.2, 0.3, 0.93])
    u /= np.linalg.norm(u)
    return grid, c, u


def test_calibrated_source_reproduces_the_table_on_another_grid():
    """A table measured in an unstated tissue is calibrated as non-perfused liver (and says so)."""
    grid, c, u = _probe_grid()
    logic = AblationZoneLogic(new_scene())
    s = logic.device("emprint").setting(100, 600)
    tip = c + s.tip_offset_mm * u
    ctx = logic.prepare(grid, tissue="liver")
    r = logic.bioheat_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600, perfusion=False)
    long_mm, short_mm, _ = r.metrics["zone_axes_mm"]
    assert abs(short_mm - s.zone_short_mm) <= 2.0  # calibrated on a 1.5 mm axis-aligned grid; here oblique 1 x 1 x 1.25
    assert abs(long_mm - s.zone_long_mm) <= 2.5
    assert "non-perfused" in r.metrics["calibration"] and any("assumed non-perfused" in w for w in r.warnings)
    # perfusion (in vivo, IT'IS liver perfusion) shrinks the zone
    r2 = logic.bioheat_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600, perfusion=True)
    assert r2.metrics["zone_volume_ml"] < 0.8 * r.metrics["zone_volume_ml"]


def test_an_in_vivo_table_is_calibrated_with_perfusion_and_reproduced_in_perfused_liver():
    grid, c, u = _probe_grid()
    logic = AblationZoneLogic(new_scene())
    s = logic.device("cool-tip-3cm").setting(200, 720)  # in vivo porcine liver: 46.0 x 30.2 mm
    assert bh.calibration_conditions(s)[1] is True
    tip = c + s.tip_offset_mm * u
    ctx = logic.prepare(grid, tissue="liver")
    r = logic.bioheat_zone(ctx, tip, tip - 100 * u, "cool-tip-3cm", 200, 720, perfusion=True)
    long_mm, short_mm, _ = r.metrics["zone_axes_mm"]
    assert abs(short_mm - s.zone_short_mm) <= 2.0 and abs(long_mm - s.zone_long_mm) <= 2.5
    assert "in perfused" in r.metrics["calibration"]
    # the same source without perfusion (ex vivo) makes a larger zone
    r0 = logic.bioheat_zone(ctx, tip, tip - 100 * u, "cool-tip-3cm", 200, 720, perfusion=False)
    assert r0.metrics["zone_volume_ml"] > 1.3 * r.metrics["zone_volume_ml"]


def test_thermal_dose_zone_contains_the_60c_isotherm():
    grid = oblique_image(size=(50, 50, 40), spacing=(1.5, 1.5, 1.8), origin_ras=(-37.0, -37.0, -36.0))
    c = geometry.ijk_to_ras(grid, [25, 25, 20])
    u = np.array([0.0, 0.0, 1.0])
    logic = AblationZoneLogic(new_scene())
    s = logic.device("emprint").setting(75, 300)
    tip = c + s.tip_offset_mm * u
    iso = logic.bioheat_zone(logic.prepare(grid), tip, tip - 100 * u, "emprint", 75, 300)
    dose = logic.bioheat_zone(logic.prepare(grid), tip, tip - 100 * u, "emprint", 75, 300, criterion="cem43")
    assert np.array_equal(iso.bioheat.t_max_c, dose.bioheat.t_max_c)
    a, b = iso.mask_box.astype(bool), dose.mask_box.astype(bool)
    assert a.any() and not (a & ~b).any() and b.sum() > a.sum()  # >= 60 C for one step is >= 240 CEM43 min
    assert "CEM43" in dose.metrics["criterion"]


def test_vessel_heat_sink_shrinks_the_zone_towards_the_vessel_only():
    grid, c, u = _probe_grid()
    logic = AblationZoneLogic(new_scene())
    s = logic.device("emprint").setting(100, 600)
    tip = c + s.tip_offset_mm * u
    side = np.cross(u, [1.0, 0, 0])
    side /= np.linalg.norm(side)
    kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
    q = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float)) - (c + 10.0 * side)
    vessel = (np.linalg.norm(q - np.outer(q @ u, u), axis=1) <= 3.0).reshape(grid.GetSize()[::-1])  # 6 mm vessel
    ctx = logic.prepare(grid)
    free = logic.bioheat_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600, perfusion=True)
    sink = logic.bioheat_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600, perfusion=True, vessels=vessel)
    g = free.bioheat.grid
    toward = bh.ray_extent_mm(free.mask_box, g, c, side) - bh.ray_extent_mm(sink.mask_box, g, c, side)
    away = bh.ray_extent_mm(free.mask_box, g, c, -side) - bh.ray_extent_mm(sink.mask_box, g, c, -side)
    assert toward >= 4.0  # the zone stops short of the vessel wall, 7 mm from the probe axis, instead of ~13 mm
    assert abs(away) <= 1.5
    lumen_in_free = int((free.mask_box.astype(bool) & vessel[tuple(slice(a, b) for a, b in
                                                                   zip(free.box[::2], free.box[1::2], strict=True))]).sum())
    lost_tissue = int(free.mask_box.sum()) - int(sink.mask_box.sum()) - lumen_in_free
    assert lost_tissue > 0  # tissue next to the vessel that is no longer ablated (not only the lumen)


def test_bad_bioheat_input():
    grid, c, u = _probe_grid()
    logic = AblationZoneLogic(new_scene())
    with pytest.raises(ImagioError, match="has no source"):  # the cryo settings are unsourced
        logic.bioheat_zone(logic.prepare(grid), c, c - 50 * u, "icerod", 0, 600)
    with pytest.raises(ImagioError, match="cryo"):
        logic.bioheat_zone(logic.prepare(grid), c, c - 50 * u, "icerod", 0, 600, allow_unsourced=True)
    shape = grid.GetSize()[::-1]
    with pytest.raises(ImagioError, match="Unknown tissue"):
        logic.bioheat_zone(logic.prepare(grid), c, c - 50 * u, "emprint", 75, 300,
                           tissue_labels={"brain": np.zeros(shape, bool)})
    with pytest.raises(ImagioError, match="Unknown tissue"):
        logic.prepare(grid, tissue="brain")
    for bad in (float("nan"), -10.0):
        with pytest.raises(ImagioError, match="Time|time"):
            logic.bioheat_zone(logic.prepare(grid), c, c - 50 * u, "emprint", 75, bad)
    ones = np.ones(shape, np.float32)
    with pytest.raises(ImagioError, match="stable limit"):
        bh.simulate(grid, ones * 0.5, ones * 3.8e6, ones * 0, ones * 0, 10.0, dt_s=100.0)
    with pytest.raises(ImagioError, match="shape"):
        bh.simulate(grid, ones[:-1], ones, ones, ones, 10.0)


def test_long_work_reports_progress_and_can_be_cancelled():
    from imagio.errors import Cancelled
    from imagio.progress import Progress

    grid, c, u = _probe_grid()
    logic = AblationZoneLogic(new_scene())
    seen = []
    p = Progress(lambda f, m: seen.append(f))
    logic.bioheat_zone(logic.prepare(grid), c, c - 100 * u, "emprint", 45, 150, progress=p, allow_unsourced=True)
    assert seen[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(seen, seen[1:], strict=False))
    cancelled = Progress()
    cancelled.cancel()
    with pytest.raises(Cancelled):
        logic.bioheat_zone(logic.prepare(grid), c, c - 100 * u, "emprint", 45, 150, progress=cancelled,
                           allow_unsourced=True)
    tumor = np.zeros(grid.GetSize()[::-1], bool)
    tumor[35:45, 35:45, 25:35] = True
    with pytest.raises(Cancelled):
        logic.plan(grid, tumor, "emprint", progress=cancelled)


def test_combined_heating_of_two_probes_is_at_least_the_union_and_grows_where_they_overlap():
    from IMAGIOAblationZoneLib.logic import Probe

    grid = oblique_image(size=(96, 72, 56), spacing=(1.0, 1.0, 1.25), origin_ras=(-48.0, -36.0, -35.0))
    logic = AblationZoneLogic(new_scene())
    dev = logic.device("emprint")
    s = dev.setting(75, 300)
    u = np.array([0.0, 0.0, 1.0])
    c = geometry.ijk_to_ras(grid, [48, 36, 28])
    side = np.array([1.0, 0.0, 0.0])
    ctx = logic.prepare(grid, tissue="liver")

    def run(offset_mm):
        probes = [Probe(c + d * side + s.tip_offset_mm * u, c + d * side - 90 * u, s) for d in (-offset_mm, offset_mm)]
        both = logic.bioheat_zones(ctx, probes, dev)
        single = [logic.bioheat_zones(ctx, [p], dev) for p in probes]
        union = np.zeros(grid.GetSize()[::-1], bool)
        for r in single:
            union[tuple(slice(a, b) for a, b in zip(r.box[::2], r.box[1::2], strict=True))] |= r.mask_box.astype(bool)
        full = sitk_array(both)
        return full, union, both

    def sitk_array(r):
        arr = np.zeros(grid.GetSize()[::-1], bool)
        arr[tuple(slice(a, b) for a, b in zip(r.box[::2], r.box[1::2], strict=True))] = r.mask_box.astype(bool)
        return arr

    near, union_near, both = run(8.0)  # 16 mm apart: the zones overlap
    assert both.metrics["combined_heating"] and not (union_near & ~near).any()  # heat sources add up
    assert near.sum() > 1.05 * union_near.sum()  # and the combined zone grows beyond the union
    far, union_far, _ = run(30.0)  # 60 mm apart: no interaction
    assert not (union_far & ~far).any() and far.sum() <= 1.02 * union_far.sum()


def test_lung_tissue_uses_lung_properties():
    grid, c, u = _probe_grid()
    logic = AblationZoneLogic(new_scene())
    s = logic.device("emprint").setting(75, 300)
    tip = c + s.tip_offset_mm * u
    lung = logic.bioheat_zone(logic.prepare(grid, tissue="lung"), tip, tip - 100 * u, "emprint", 75, 300)
    # the same source in a homogeneous lung run by hand
    src = bh.calibrate_source(logic.device("emprint"), s)
    g = lung.bioheat.grid
    shape = g.GetSize()[::-1]
    t = bh.TISSUES["lung"]
    ref = bh.simulate(g, np.full(shape, t.k_w_per_m_k, np.float32), np.full(shape, t.rho_c_j_per_m3_k, np.float32),
                      np.full(shape, t.perfusion_per_s, np.float32), src.density(g, tip, tip - 100 * u, 75.0), 300.0)
    assert np.array_equal(ref.zone, lung.mask_box)
    assert t.density_kg_m3 < 0.5 * bh.TISSUES["liver"].density_kg_m3  # air content
    assert lung.metrics["tissue"] == "lung" and "lung" in lung.metrics["tissue_properties"]
    assert any("calibrated in liver and is used in lung" in w for w in lung.warnings)
