"""The node-level Logic (what the Slicer module calls) on a real MRML scene: plans from segmentation nodes, the
zone written into the user's node without touching its other segments, a content stamp that sees segment edits,
re-planning from markups lines, and the typed results' scene nodes."""

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.io import Segment
from imagio.mrml import add_line, segmentation_node_from_segments, segments_from_segmentation_node
from imagio.scene import new_scene
from imagio.testing import oblique_image
from IMAGIOAblationZoneLib.logic import AblationZoneLogic, segmentation_stamp, write_zone_segment


def _case():
    grid = oblique_image(size=(70, 64, 40), spacing=(1.1, 1.0, 1.6), origin_ras=(-40.0, -30.0, -35.0),
                         axis=(1.0, -2.0, 1.0), angle_deg=19.0)
    kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    centre = geometry.ijk_to_ras(grid, [35, 32, 20])
    tumor = (np.linalg.norm(pts - centre, axis=1) <= 6.0).reshape(grid.GetSize()[::-1]).astype(np.uint8)
    vessel = (np.linalg.norm((pts - centre)[:, :2] - [14.0, 0.0], axis=1) <= 2.0).reshape(tumor.shape).astype(np.uint8)
    return grid, centre, tumor, vessel


def test_plan_from_nodes_writes_into_the_chosen_node_and_keeps_its_other_segments():
    grid, centre, tumor, vessel = _case()
    logic = AblationZoneLogic(new_scene())
    seg = segmentation_node_from_segments(logic.scene, [Segment("kidney_tumor", geometry.copy_geometry(tumor, grid)),
                                                        Segment("vessel", geometry.copy_geometry(vessel, grid))], "In")
    plan = logic.plan_nodes(None, seg, "kidney_tumor", "neuwave-pr", avoid_segments=["vessel"], margin_mm=5.0)
    assert plan.feasible and plan.tissue == "kidney" and plan.minimal_margin_mm >= 5.0  # tissue from the name
    mine = np.zeros(tumor.shape, np.uint8)
    mine[2:6, 2:6, 2:6] = 1
    user = segmentation_node_from_segments(logic.scene, [Segment("my_notes", geometry.copy_geometry(mine, grid))], "Mine")
    write_zone_segment(logic.scene, plan.union_mask, user, "planned_ablation_zone")
    segs = {s.name: s for s in segments_from_segmentation_node(user)}
    assert set(segs) == {"my_notes", "planned_ablation_zone"} and segs["my_notes"].voxel_count() == 64
    back = sitk.GetArrayFromImage(geometry.resample_to(segs["planned_ablation_zone"].mask, grid)) > 0
    assert np.array_equal(back, sitk.GetArrayFromImage(geometry.resample_to(plan.union_mask, grid)) > 0)
    nodes = plan.add_to_scene(logic.scene)
    assert len(nodes["lines"]) == len(plan.probes) and nodes["table"].GetNumberOfRows() > 5


def test_segmentation_stamp_sees_an_edit_that_leaves_the_node_mtime_unchanged():
    grid, _, tumor, _ = _case()
    scene = new_scene()
    node = segmentation_node_from_segments(scene, [Segment("liver_tumor", geometry.copy_geometry(tumor, grid))], "S")
    stamp, mtime = segmentation_stamp(node), node.GetMTime()
    grown = tumor.copy()
    grown[18:22, 30:34, 40:44] = 1
    write_zone_segment(scene, geometry.copy_geometry(grown, grid), node, "liver_tumor")
    assert node.GetMTime() == mtime  # what a cache keyed on the node's MTime would have missed
    assert segmentation_stamp(node) != stamp


def test_replan_from_markups_lines():
    grid, centre, tumor, vessel = _case()
    logic = AblationZoneLogic(new_scene())
    s = logic.device("emprint").setting(75, 300)
    u = np.array([0.0, 0.6, 0.8])
    line = add_line(logic.scene, "placed", centre + 9.0 * np.cross(u, [1.0, 0, 0]) - 90 * u,
                    centre + 9.0 * np.cross(u, [1.0, 0, 0]) + s.tip_offset_mm * u)  # point 0 entry, point 1 tip
    placed = [logic.probe_from_line(line)]
    res = logic.replan(grid, tumor.astype(bool), placed, "emprint", 75, 300, 5.0, tissue="liver")
    assert res.residual_target_ml > 0 and res.proposal is not None
    assert res.proposal_zone.metrics["minimal_margin_mm"] >= 5.0
    nodes = res.add_to_scene(logic.scene)
    names = {nodes["segmentation"].GetSegmentation().GetNthSegment(i).GetName() for i in range(3)}
    assert names == {"zone_as_placed", "residual_tumor_and_margin", "zone_with_proposal"}
