"""Re-planning from the probes as placed: on the phantom's liver tumour, one planned probe misplaced by 8 mm."""

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.phantom import make_phantom
from imagio.scene import new_scene
from IMAGIOAblationZoneLib.logic import AblationZoneLogic
from IMAGIOAblationZoneLib.margins import zones_mask
from IMAGIOMarginLib.metrics import compute_margin

AVOID = ("hepatic_vessels", "ribs", "lungs")


@pytest.fixture(scope="module")
def planned():
    ph = make_phantom(0)
    logic = AblationZoneLogic(new_scene())
    avoid = {n: ph.segments[n].mask for n in AVOID}
    plan = logic.plan(ph.ct, ph.segments["liver_tumor"].mask, "emprint", 5.0, avoid, ph.segments["body"].array(),
                      tissue="liver")
    # the plan keeps its 5 mm: by the planner and independently (IMAGIOMargin's metric of the rasterised zones)
    tumor = ph.segments["liver_tumor"].mask
    indep = compute_margin(tumor, geometry.copy_geometry(
        zones_mask([p.zone() for p in plan.probes], ph.ct).astype(np.uint8), ph.ct)).minimal_margin_mm
    assert plan.feasible and plan.minimal_margin_mm >= 5.0 and indep >= 5.0 - max(ph.ct.GetSpacing()) / 2, indep
    assert all(p.min_clearance_mm >= 3.0 for p in plan.probes)
    return ph, logic, avoid, plan


@pytest.mark.parametrize("moved", [0, 1])
def test_a_probe_misplaced_by_8_mm_leaves_a_residual_that_the_proposal_covers(planned, moved):
    """Either of the plan's two probes moved 8 mm sideways (the second one's residual lies where no path from its
    own centre is clear: the added probe's directions come from the tumour's centre as well)."""
    ph, logic, avoid, plan = planned
    tumor = ph.segments["liver_tumor"].mask
    assert len(plan.probes) == 2
    p0 = plan.probes[moved]
    u = (p0.tip_ras - p0.entry_ras) / np.linalg.norm(p0.tip_ras - p0.entry_ras)
    side = np.cross(u, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    placed = [(p.tip_ras + 8.0 * side, p.entry_ras + 8.0 * side) if i == moved else (p.tip_ras, p.entry_ras)
              for i, p in enumerate(plan.probes)]
    s = p0.setting
    res = logic.replan(ph.ct, tumor, placed, "emprint", s.power_w, s.time_s, 5.0, avoid, ph.segments["body"].array(),
                       tissue="liver")
    d = res.to_dict()
    # the residual is found: the placed zones no longer keep 5 mm, part of tumour + 5 mm is left
    assert d["minimal_margin_mm"] < 5.0 and d["residual_target_ml"] > 0.1 and not d["margin_kept"]
    vox = geometry.voxel_volume_ml(ph.ct)
    assert sitk.GetArrayViewFromImage(res.residual_mask).sum() * vox == pytest.approx(d["residual_target_ml"], abs=1e-3)
    # and covered by the proposal: checked independently on the rasterised zones (IMAGIOMargin's margin)
    assert d["proposal"] is not None and d["after_proposal"]["residual_target_ml"] == 0.0
    after = compute_margin(tumor, res.proposal_zone.full_mask()).minimal_margin_mm
    assert after >= 5.0 - max(ph.ct.GetSpacing()) / 2
    assert abs(after - d["after_proposal"]["minimal_margin_mm"]) <= max(ph.ct.GetSpacing()) / 2 + 0.7
    if d["proposal"]["kind"] == "added probe":  # its path keeps the clearance and enters through the skin
        assert d["proposal"]["probe"]["min_clearance_mm"] >= 3.0
    scene = new_scene()
    nodes = res.add_to_scene(scene)
    assert nodes["segmentation"].GetSegmentation().GetNumberOfSegments() == 3


def test_probes_that_keep_the_margin_need_nothing_and_bad_probes_are_refused(planned):
    ph, logic, avoid, plan = planned
    placed = [(p.tip_ras, p.entry_ras) for p in plan.probes]
    s = plan.probes[0].setting
    same = [p.setting for p in plan.probes]
    if all(x.label == s.label for x in same):  # the plan's probes as placed, one setting: nothing to add
        res = logic.replan(ph.ct, ph.segments["liver_tumor"].mask, placed, "emprint", s.power_w, s.time_s, 5.0,
                           avoid, ph.segments["body"].array(), tissue="liver")
        assert res.proposal is None and "nothing to add" in res.reason and res.residual_target_ml == 0.0
    with pytest.raises(ImagioError, match="No placed probe"):
        logic.replan(ph.ct, ph.segments["liver_tumor"].mask, [], "emprint", 100, 600)
    with pytest.raises(ImagioError, match="same point"):
        logic.replan(ph.ct, ph.segments["liver_tumor"].mask, [(placed[0][0], placed[0][0])], "emprint", 100, 600)
