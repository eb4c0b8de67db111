"""Scene bundles round-trip through slicer-core; unsafe archives and outputs are refused."""

import zipfile

import numpy as np
import pytest

from imagio import bundle, io, mrml
from imagio import geometry as g
from imagio.cli_utils import parse_point, staged_output
from imagio.errors import ImagioError
from imagio.scene import new_scene
from imagio.testing import oblique_image


def test_mrb_roundtrip(tmp_path):
    ref = oblique_image()
    arr = np.zeros(ref.GetSize()[::-1], np.uint8)
    arr[5:15, 5:15, 5:15] = 1
    scene = new_scene()
    vol = mrml.volume_node_from_image(scene, g.copy_geometry(arr.astype(np.int16) * 100, ref), "CT")
    mrml.segmentation_node_from_segments(scene, [io.Segment("tumour", g.copy_geometry(arr, ref))], "Seg", vol)
    mrml.add_fiducials(scene, "Target", [[1.5, -2.0, 3.25]], ["t"])
    mrml.add_table(scene, "Metrics", [{"metric": "a", "value": 1.5, "unit": "mm"}])
    out = bundle.save_mrb(scene, tmp_path / "scene.mrb")
    loaded = bundle.load_mrb(out)
    vols = loaded.GetNodesByClass("vtkMRMLScalarVolumeNode")
    assert vols.GetNumberOfItems() == 1
    back = mrml.image_from_volume_node(vols.GetItemAsObject(0))
    assert g.same_grid(back, ref, tol_mm=1e-4)
    segn = loaded.GetNodesByClass("vtkMRMLSegmentationNode").GetItemAsObject(0)
    segs = mrml.segments_from_segmentation_node(segn, vols.GetItemAsObject(0))
    assert segs[0].name == "tumour" and segs[0].voxel_count() == 1000
    fid = loaded.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetItemAsObject(0)
    assert np.allclose(mrml.points_from_markups(fid)[0], [1.5, -2.0, 3.25])


def test_unsafe_archive_refused(tmp_path):
    evil = tmp_path / "evil.mrb"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("scene/scene.mrml", "<MRML></MRML>")
        z.writestr("../../escaped.txt", "x")
    target = tmp_path / "target"
    with pytest.raises(ImagioError, match="outside"):
        bundle.safe_extract_zip(evil, target)
    assert not (tmp_path / "escaped.txt").exists() and not target.exists()
    with pytest.raises(ImagioError, match="not a valid"):
        junk = tmp_path / "junk.mrb"
        junk.write_text("junk")
        bundle.load_mrb(junk)


def test_staged_output_writes_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "a.json").write_text("{}")
            raise RuntimeError("boom")
    assert not out.exists()
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.json").write_text("precious")
    with pytest.raises(ImagioError, match="overwrite an input"):
        with staged_output(inp, inputs=[inp / "a.json"]) as stage:
            (stage / "a.json").write_text("{}")
    assert (inp / "a.json").read_text() == "precious"


def test_parse_point():
    assert np.allclose(parse_point("1,-2.5, 3"), [1, -2.5, 3])
    with pytest.raises(ImagioError, match="R,A,S"):
        parse_point("1,2")
