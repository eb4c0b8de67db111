"""Plan versus achieved (analytic geometry), honest uncertainty (measured defaults, cited TRE), bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import make_image, rotation_matrix
from imagio.io import Segment, write_segmentation
from imagio.scene import new_scene
from IMAGIOMarginLib.logic import MarginLogic

SPACING = (0.9, 1.0, 1.2)
AXIS_RAS = np.array([1.0, 0.0, 0.0])  # the achieved zone is shifted towards Right


def grid():
    return make_image((70, 64, 56), SPACING, origin_ras=(-31.0, -32.0, -33.0),
                      direction_ras=rotation_matrix((1.0, 2.0, 3.0), 20.0))


def ball(ref, centre_ras, radius_mm):
    from imagio.geometry import ijk_to_ras

    kji = np.indices(ref.GetSize()[::-1]).reshape(3, -1)
    ras = ijk_to_ras(ref, kji[::-1].T.astype(float))
    img = sitk.GetImageFromArray((np.linalg.norm(ras - centre_ras, axis=1) <= radius_mm)
                                 .reshape(ref.GetSize()[::-1]).astype(np.uint8))
    img.CopyInformation(ref)
    return img


@pytest.fixture(scope="module")
def plan_case():
    ref = grid()
    c = np.zeros(3)
    tumor = ball(ref, c, 8.0)
    planned = ball(ref, c, 15.0)  # planned: concentric, 7 mm margin all round
    achieved = ball(ref, c + 3.0 * AXIS_RAS, 15.0)  # achieved: 3 mm towards Right
    return tumor, planned, achieved


def test_plan_vs_achieved_analytic(plan_case):
    """Tumour ball R 8, planned ball R 15 concentric, achieved ball R 15 shifted 3 mm to the Right.

    At the tumour point in direction u: planned margin 7 mm, achieved 15 - |8u - 3e|: achieved - planned is
    +3 mm at u = +e (Right), -3 mm at u = -e (Left). Planned but not ablated: the planned ball outside the achieved
    one, V - pi (4R + d)(2R - d)^2 / 12 = 2.114 ml (R 15 mm, d 3 mm).
    """
    tumor, planned, achieved = plan_case
    res = MarginLogic(new_scene()).assess(tumor, achieved, planned_zone=planned, n_samples=50)
    pva = res.plan_vs_achieved
    v_ball = 4.0 / 3.0 * np.pi * 15.0 ** 3
    lens = np.pi * (4 * 15.0 + 3.0) * (2 * 15.0 - 3.0) ** 2 / 12.0
    assert pva.planned_not_ablated_ml == pytest.approx((v_ball - lens) / 1000.0, rel=0.05)
    assert pva.ablated_not_planned_ml == pytest.approx((v_ball - lens) / 1000.0, rel=0.05)
    assert pva.planned_minimal_margin_mm == pytest.approx(7.0, abs=0.3 * max(SPACING))
    assert pva.achieved_minimal_margin_mm == pytest.approx(4.0, abs=0.3 * max(SPACING))
    sectors = {r["sector"]: r for r in pva.sectors}
    assert set(sectors) == {"Right", "Left", "Anterior", "Posterior", "Superior", "Inferior"}
    assert sectors["Left"]["worst_achieved_minus_planned_mm"] == pytest.approx(-3.0, abs=0.4)
    assert sectors["Left"]["short_of_plan_percent"] > 90.0
    assert sectors["Right"]["mean_achieved_minus_planned_mm"] > 1.5 and sectors["Right"]["short_of_plan_percent"] == 0
    # the per-vertex map follows 8 - |8u - 3e| (within the stated exactness of two margins)
    from imagio.geometry import ijk_to_ras

    p = ijk_to_ras(res.zone, res.metrics.surface_ijk)
    u = p / np.linalg.norm(p, axis=1, keepdims=True)
    expected = 8.0 - np.linalg.norm(8.0 * u - 3.0 * AXIS_RAS, axis=1)
    assert np.percentile(np.abs(pva.achieved_minus_planned_mm - expected), 95) < 0.6
    d = res.to_dict()["plan_vs_achieved"]
    assert d["planned_not_ablated_ml"] == pytest.approx(pva.planned_not_ablated_ml, abs=1e-4)
    nodes = MarginLogic(new_scene()).add_to_scene(res)
    arr = nodes.model.GetPolyData().GetPointData().GetArray("achieved_minus_planned_mm")
    assert arr is not None and arr.GetNumberOfTuples() == nodes.model.GetPolyData().GetNumberOfPoints()
    assert nodes.plan_table.GetTable().GetNumberOfRows() == 6


def test_cli_planned_zone(plan_case, tmp_path):
    from imagio.cli import main

    tumor, planned, achieved = plan_case
    t = write_segmentation(tmp_path / "t.seg.nrrd", [Segment("tumour", tumor)])
    p = write_segmentation(tmp_path / "p.seg.nrrd", [Segment("planned", planned)])
    a = write_segmentation(tmp_path / "a.seg.nrrd", [Segment("zone", achieved)])
    out = tmp_path / "out"
    assert main(["margin", "--tumor", str(t), "--ablation", str(a), "--planned-zone", str(p), "--samples", "40",
                 "--out", str(out)]) == 0
    d = json.loads((out / "margin.json").read_text())
    pva = d["plan_vs_achieved"]
    assert pva["planned_not_ablated_ml"] > 1.5 and len(pva["sectors"]) == 6
    assert all(k.endswith(("_mm", "_ml", "_percent", "_mm2")) or k == "sector" for k in pva["sectors"][0])
    u = d["uncertainty"]
    assert u["registration_sigma_mm"] == pytest.approx(1.015, abs=1e-3) and "1.62" in u["registration_sigma_source"]
    assert u["tumor_boundary_sigma_mm"] == 0.35 and "LIDC-0314" in u["segmentation_source"]
    assert (out / "plan_vs_achieved.csv").exists()


def test_zone_equal_to_tumour_is_zero_with_a_hint(plan_case):
    tumor, _, _ = plan_case
    res = MarginLogic(new_scene()).assess(tumor, tumor, n_samples=40)
    assert res.metrics.minimal_margin_mm == pytest.approx(0.0, abs=1e-6)
    assert res.verdict == "insufficient"
    assert any("identical to the tumour" in n for n in res.to_dict()["notes"])


def test_masks_on_mismatched_grids_are_refused(plan_case):
    from IMAGIOMarginLib.metrics import compute_margin

    tumor, _, achieved = plan_case
    other = sitk.Image(achieved)
    other.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(ImagioError, match="grid"):
        compute_margin(tumor, other)
    far = sitk.Image(achieved)
    far.SetOrigin(tuple(np.array(achieved.GetOrigin()) + [400.0, 0.0, 0.0]))
    with pytest.raises(ImagioError, match="different frames"):
        MarginLogic(new_scene()).assess(tumor, far)
    with pytest.raises(ImagioError, match="planned zone"):
        MarginLogic(new_scene()).assess(tumor, achieved, planned_zone=sitk.Cast(far * 2, sitk.sitkUInt8))


def test_default_sigma_is_the_published_tre():
    """1.62 mm mean 3D TRE (systematic review) -> sigma per axis = 1.62 / (2 sqrt(2/pi)); checked by sampling."""
    from IMAGIOMarginLib.uncertainty import DEFAULT_SIGMA_MM, TRE_SOURCE, sigma_from_tre_rms

    e = np.random.default_rng(0).normal(0.0, DEFAULT_SIGMA_MM, size=(200000, 3))
    assert np.linalg.norm(e, axis=1).mean() == pytest.approx(1.62, abs=0.01)
    assert "10.1016/j.diii.2022.02.004" in TRE_SOURCE
    assert np.sqrt(np.mean(np.sum(np.random.default_rng(1).normal(0, sigma_from_tre_rms(2.0), (200000, 3)) ** 2,
                                  axis=1))) == pytest.approx(2.0, abs=0.01)


def test_segmentation_sigma_is_measured():
    """The default boundary sigma is what the four LIDC-0314 readers give (README, uncertainty.py)."""
    from imagio.testing import data_path
    from IMAGIOMarginLib.metrics import compute_margin
    from IMAGIOMarginLib.uncertainty import SEGMENTATION_SIGMA_MM

    masks = [sitk.Cast(sitk.ReadImage(str(data_path(f"chest-lidc0314/nodule_reader{i}.seg.nrrd"))) > 0,
                       sitk.sitkUInt8) for i in range(1, 5)]
    mean = {(a, b): compute_margin(masks[a], masks[b], threshold_mm=0.0).mean_margin_mm
            for a, b in itertools.permutations(range(4), 2)}
    offsets = [0.5 * (mean[(a, b)] - mean[(b, a)]) for a, b in itertools.combinations(range(4), 2)]
    sigma = float(np.sqrt(np.mean(np.square(offsets))) / np.sqrt(2.0))
    assert sigma == pytest.approx(SEGMENTATION_SIGMA_MM, abs=0.03)


def test_interval_contains_the_measurement_and_widens_with_boundaries(plan_case):
    tumor, _, achieved = plan_case
    logic = MarginLogic(new_scene())
    base = logic.assess(tumor, achieved, sigma_mm=0.5, tumor_boundary_sigma_mm=0.0, zone_boundary_sigma_mm=0.0,
                        n_samples=200, seed=1)
    seg = logic.assess(tumor, achieved, sigma_mm=0.5, n_samples=200, seed=1)
    rot = logic.assess(tumor, achieved, sigma_mm=0.5, rotation_sigma_deg=5.0, n_samples=200, seed=1)
    for r in (base, seg, rot):
        lo, hi = r.uncertainty.margin_ci_mm
        assert lo <= r.metrics.minimal_margin_mm <= hi
        assert r.uncertainty.p_margin_ge_threshold == pytest.approx(np.mean(r.uncertainty.samples_mm >= 5.0))
    width = [r.uncertainty.central_ci_mm[1] - r.uncertainty.central_ci_mm[0] for r in (base, seg, rot)]
    assert width[1] > width[0] and width[2] > width[0]
    assert rot.to_dict()["uncertainty"]["rotation_sigma_deg"] == 5.0


def test_plan_on_mrml_nodes_and_panel_text(plan_case):
    """What the Slicer module calls: assess_nodes with a planned-zone node; the panel names every source and unit."""
    from imagio.mrml import segmentation_node_from_segments
    from IMAGIOMarginLib.logic import panel_text

    tumor, planned, achieved = plan_case
    scene = new_scene()
    nodes = [segmentation_node_from_segments(scene, [Segment(n, m)], n) for n, m in
             (("tumour", tumor), ("zone", achieved), ("planned", planned))]
    sid = [n.GetSegmentation().GetNthSegmentID(0) for n in nodes]
    res = MarginLogic(scene).assess_nodes(nodes[0], sid[0], nodes[1], sid[1], n_samples=40,
                                          planned_zone_node=nodes[2], planned_zone_segment_id=sid[2])
    assert res.plan_vs_achieved is not None and res.plan_vs_achieved.planned_not_ablated_ml > 1.5
    text = panel_text(res)
    assert text.splitlines()[0] == res.verdict_text
    for part in ("1.62", "LIDC-0314", " deg", "ml planned but not ablated", " mm"):
        assert part in text
