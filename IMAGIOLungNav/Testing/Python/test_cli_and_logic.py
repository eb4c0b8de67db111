"""`imagio lungnav` as a user runs it, and the scene-level logic on slicer-core's MRML."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import bundle, mrml
from imagio.io import read_segmentation
from imagio.phantom import write_phantom
from imagio.scene import new_scene
from imagio.testing import data_path
from IMAGIOLungNavLib.logic import LungNavLogic
from IMAGIOLungNavLib.route import ROUTE_KEYS


def run_imagio(*args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imagio.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def case(phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    write_phantom(phantom, folder)
    return folder


def _point(p):
    return ",".join(f"{v:.3f}" for v in p)


def test_cli_from_ct_to_lesion(case, phantom, tmp_path):
    out = tmp_path / "out"
    r = run_imagio("lungnav", "--ct", case / "ct.nrrd", "--lesion", case / "truth.seg.nrrd",
                   "--lesion-segment", "lung_nodule", "--scope-diameter-mm", "3.0", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    route = json.loads((out / "route.json").read_text())
    assert list(route) == list(ROUTE_KEYS)
    pts = np.asarray(route["route_points_ras"])
    assert pts.shape[1] == 3 and len(pts) > 20
    assert route["exit_point_ras"] == route["route_points_ras"][-1]
    assert route["path_length_mm"] == pytest.approx(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum(), abs=0.1)
    assert route["gap_to_target_mm"] < 6.0
    assert route["reachable"] == (route["min_lumen_diameter_mm"] >= 3.0)
    # the route starts at the top of the phantom's trachea and follows its true centerlines
    truth = np.vstack([np.asarray(b["points_ras"]) for b in phantom.airway_centerlines])
    near = np.linalg.norm(truth[None, :, :] - pts[:, None, :], axis=2).min(axis=1)
    assert np.mean(near <= 3.0) > 0.9
    airway = read_segmentation(out / "airway.seg.nrrd")
    assert airway[0].name == "airway" and airway[0].volume_ml() > 20
    details = json.loads((out / "details.json").read_text())
    assert details["leak_check"]["leak_suspected"] is False
    scene = bundle.load_mrb(out / "route.mrb")
    curves = scene.GetNodesByClass("vtkMRMLMarkupsCurveNode")
    assert curves.GetNumberOfItems() == 1
    assert curves.GetItemAsObject(0).GetNumberOfControlPoints() == len(pts)
    assert scene.GetNodesByClass("vtkMRMLModelNode").GetNumberOfItems() >= 2
    assert scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() >= 1


def test_cli_from_airway_to_point(case, phantom, tmp_path):
    out = tmp_path / "out"
    r = run_imagio("lungnav", "--airway", case / "truth.seg.nrrd", "--airway-segment", "airway_lumen",
                   "--target", _point(phantom.lung_nodule_center_ras), "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (out / "airway.seg.nrrd").exists()
    route = json.loads((out / "route.json").read_text())
    assert set(route) == set(ROUTE_KEYS)
    assert route["bronchus_sign"] is True or route["gap_to_target_mm"] > 5.0
    assert "gap to target" in r.stdout and "mm" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--target", "0,10,120"], "inside the trachea"),
    (["--target", "400,10,0"], "outside the CT"),
    (["--target", "1,2"], "is not a target point"),
])
def test_cli_bad_targets(case, tmp_path, args, message):
    out = tmp_path / "out"
    r = run_imagio("lungnav", "--ct", case / "ct.nrrd", *args, "--out", out)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_ct_without_airway(tmp_path):
    ct = data_path("liver-crlm1004/ct.nrrd")
    r = run_imagio("lungnav", "--ct", ct, "--target", "0,0,0", "--out", tmp_path / "out")
    assert r.returncode == 2 and "No trachea" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_needs_one_source_and_one_target(case, tmp_path):
    r = run_imagio("lungnav", "--ct", case / "ct.nrrd", "--out", tmp_path / "out")
    assert r.returncode == 2
    r = run_imagio("lungnav", "--ct", case / "ct.nrrd", "--target", "1,2,3", "--scope-diameter-mm", "0",
                   "--out", tmp_path / "out")
    assert r.returncode == 2 and "scope" in r.stderr.lower()


def test_logic_on_nodes_adds_new_nodes_and_leaves_inputs(phantom):
    scene = new_scene()
    ct_node = mrml.volume_node_from_image(scene, phantom.ct, "CT")
    airway_node = mrml.segmentation_node_from_segments(scene, [phantom.segments["airway_lumen"]], "Airway", ct_node)
    target_node = mrml.add_fiducials(scene, "Target", [phantom.lung_nodule_center_ras])
    before = scene.GetNumberOfNodes()
    ct_before = mrml.image_from_volume_node(ct_node)
    result = LungNavLogic(scene).run_nodes(ct_node=ct_node, airway_node=airway_node, target_node=target_node,
                                           scope_diameter_mm=2.0)
    assert result.segmentation is None  # the given airway was used, not re-segmented
    assert scene.GetNumberOfNodes() > before
    curve = result.nodes["route_curve"]
    assert np.allclose(mrml.points_from_markups(curve), result.route.route_points_ras, atol=1e-3)
    assert result.nodes["branch_table"].GetNumberOfRows() == result.tree.n_branches
    # inputs untouched
    assert np.array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(ct_node)), sitk.GetArrayFromImage(ct_before))
    assert airway_node.GetSegmentation().GetNumberOfSegments() == 1
    assert target_node.GetNumberOfControlPoints() == 1
    assert result.route.gap_to_target_mm < 12.0


def test_cli_route_from_a_start_point(case, phantom, tmp_path):
    """--start: the route begins at the tree node nearest the given point (e.g. a scope pose)."""
    right_main = next(b for b in phantom.airway_centerlines if b["name"] == "right main bronchus")
    start = np.asarray(right_main["points_ras"])[len(right_main["points_ras"]) // 2]
    out = tmp_path / "out"
    r = run_imagio("lungnav", "--airway", case / "truth.seg.nrrd", "--airway-segment", "airway_lumen",
                   "--target", _point(phantom.lung_nodule_center_ras), "--start", _point(start), "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    route = json.loads((out / "route.json").read_text())
    assert np.linalg.norm(np.asarray(route["route_points_ras"][0]) - start) < 3.0
