"""One physical point lands on the same voxel through every path: SimpleITK <-> MRML <-> file."""

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry as g
from imagio import io, mrml
from imagio.scene import new_scene
from imagio.testing import oblique_image


def _marked_image():
    img = oblique_image(pixel=sitk.sitkInt16)
    arr = np.zeros(img.GetSize()[::-1], np.int16)
    arr[17, 11, 23] = 1000  # k, j, i
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def test_lps_ras_flip_and_matrix_against_sitk():
    img = _marked_image()
    ijk = np.array([23.0, 11.0, 17.0])
    lps = np.array(img.TransformContinuousIndexToPhysicalPoint(ijk.tolist()))
    ras = g.ijk_to_ras(img, ijk)
    assert np.allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)
    assert np.allclose(g.ras_to_ijk(img, ras), ijk, atol=1e-9)
    assert np.allclose(g.ras_to_lps(g.lps_to_ras(lps)), lps)
    # the image really is oblique and anisotropic
    assert not np.allclose(np.array(img.GetDirection()).reshape(3, 3), np.eye(3), atol=0.1)
    assert len(set(np.round(img.GetSpacing(), 3))) == 3


def test_point_survives_mrml_and_files(tmp_path):
    img = _marked_image()
    target_ras = g.ijk_to_ras(img, [23, 11, 17])
    scene = new_scene()
    node = mrml.volume_node_from_image(scene, img, "ct")
    # MRML path: node's own IJK->RAS matrix
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(m)
    ijk = np.array(m.MultiplyPoint([*target_ras, 1.0])[:3])
    assert np.allclose(ijk, [23, 11, 17], atol=1e-4)
    back = mrml.image_from_volume_node(node)
    assert g.same_grid(back, img, tol_mm=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    for name in ("v.nrrd", "v.nii.gz", "v.mha"):
        io.write_image(tmp_path / name, back)
        reread = io.read_image(tmp_path / name)
        kji = np.argwhere(sitk.GetArrayFromImage(reread) == 1000)[0]
        assert np.allclose(g.ijk_to_ras(reread, kji[::-1]), target_ras, atol=1e-4), name


def test_segmentation_roundtrip_oblique(tmp_path):
    ref = oblique_image()
    arr = np.zeros(ref.GetSize()[::-1], np.uint8)
    arr[5:20, 8:25, 10:30] = 1
    arr2 = np.zeros_like(arr)
    arr2[22:27, 3:6, 2:9] = 1
    segs = [io.Segment("tumour", g.copy_geometry(arr, ref), (1, 0, 0)),
            io.Segment("vessel", g.copy_geometry(arr2, ref), (0, 0, 1))]
    out = io.write_segmentation(tmp_path / "s.seg.nrrd", segs)
    back = io.read_segmentation(out, reference=ref)
    assert [s.name for s in back] == ["tumour", "vessel"]
    assert np.allclose(back[1].color, (0, 0, 1), atol=1e-3)
    assert np.array_equal(back[0].array(), arr > 0)
    assert np.array_equal(back[1].array(), arr2 > 0)
    scene = new_scene()
    vol = mrml.volume_node_from_image(scene, ref, "ref")
    node = mrml.segmentation_node_from_segments(scene, segs, "seg", vol)
    scene.GetSubjectHierarchyNode()  # the singleton Slicer's scene always has

    def node_ids():
        return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}

    before = node_ids()
    again = mrml.segments_from_segmentation_node(node, vol)
    assert node_ids() == before  # reading a segment leaves no labelmap, display or colour node behind
    assert np.array_equal(again[0].array(), arr > 0)
    assert np.allclose(g.centroid_ras(again[1].mask), g.centroid_ras(segs[1].mask), atol=1e-4)
    only = mrml.segments_from_segmentation_node(node, vol, segment_ids=["Vessel"])
    assert [s.name for s in only] == ["vessel"] and np.array_equal(only[0].array(), arr2 > 0)
    from imagio.errors import ImagioError

    with pytest.raises(ImagioError, match="no segment 'liver'"):
        mrml.segments_from_segmentation_node(node, vol, segment_ids=["liver"])


def test_surface_is_in_ras():
    ref = oblique_image(size=(30, 30, 30), spacing=(1.0, 1.0, 1.0))
    arr = np.zeros(ref.GetSize()[::-1], np.uint8)
    arr[10:20, 10:20, 10:20] = 1
    mask = g.copy_geometry(arr, ref)
    poly = mrml.mask_to_surface_ras(mask, smoothing=False)
    from vtk.util.numpy_support import vtk_to_numpy

    pts = vtk_to_numpy(poly.GetPoints().GetData())
    assert np.allclose(pts.mean(axis=0), g.centroid_ras(mask), atol=0.3)


def test_label_map_and_bad_inputs(tmp_path):
    ref = oblique_image()
    arr = np.zeros(ref.GetSize()[::-1], np.uint8)
    arr[1:4, 1:4, 1:4] = 2
    arr[10:14, 10:14, 10:14] = 5
    sitk.WriteImage(g.copy_geometry(arr, ref), str(tmp_path / "labels.nii.gz"))
    segs = io.read_segmentation(tmp_path / "labels.nii.gz")
    assert [s.label_value for s in segs] == [2, 5]
    assert [s.voxel_count() for s in segs] == [27, 64]
    (tmp_path / "junk.nrrd").write_text("not an image")
    from imagio.errors import ImagioError

    with pytest.raises(ImagioError, match="not an image file"):
        io.read_image(tmp_path / "junk.nrrd")
    with pytest.raises(ImagioError, match="does not exist"):
        io.read_image(tmp_path / "missing.nrrd")
    far = oblique_image(origin_ras=(900, 900, 900))
    with pytest.raises(ImagioError, match="outside the image"):
        io.on_reference_grid(segs[0].mask, far)


def test_signed_distance_is_exact_on_an_anisotropic_grid():
    """The one distance transform: a slab on 0.7 x 0.9 x 2.5 mm voxels; distances (mm) known exactly."""
    arr = np.zeros((12, 10, 8), np.uint8)
    arr[4:8] = 1  # slab of 4 slices along k (2.5 mm each)
    ref = oblique_image(size=(8, 10, 12), spacing=(0.7, 0.9, 2.5))
    as_image = g.signed_distance_mm(g.copy_geometry(arr, ref))
    as_array = g.signed_distance_mm(arr, (0.7, 0.9, 2.5))
    assert np.array_equal(as_image, as_array) and as_array.dtype == np.float32
    column = as_array[:, 5, 4]
    # outside: to the nearest inside voxel centre; inside: 0 on the boundary voxels, minus the distance to them
    assert np.allclose(column, [10.0, 7.5, 5.0, 2.5, 0.0, -2.5, -2.5, 0.0, 2.5, 5.0, 7.5, 10.0])
    with pytest.raises(ValueError):
        g.signed_distance_mm(arr)


def test_get_scene_never_falls_back_to_slicers_global_scene():
    from imagio.errors import ImagioError
    from imagio.scene import get_scene
    from imagio.testing_slicer import SlicerHarness

    outside = get_scene(None)
    assert outside.IsA("vtkMRMLScene") and get_scene(outside) is outside  # outside Slicer: a new, private scene
    with SlicerHarness():
        import slicer

        assert get_scene(slicer.mrmlScene) is slicer.mrmlScene
        with pytest.raises(ImagioError, match="No MRML scene was given"):
            get_scene(None)
        from IMAGIOLungNavLib.logic import LungNavLogic

        with pytest.raises(ImagioError, match="never uses a global scene"):
            LungNavLogic()


def test_dice_one_helper_and_its_empty_mask_conventions():
    a = np.zeros((4, 5, 6), np.uint8)
    b = np.zeros_like(a)
    a[1:3, 1:3, 1:3] = 1  # 8 voxels
    b[1:3, 1:3, 2:4] = 1  # 8 voxels, 4 shared
    assert g.dice(a, b) == pytest.approx(0.5)
    ref = g.make_image(a.shape[::-1], (0.7, 0.9, 2.5))
    assert g.dice(g.copy_geometry(a, ref), b.astype(bool)) == pytest.approx(0.5)  # an image and an array
    assert g.dice(a, a) == 1.0
    assert g.dice(a, np.zeros_like(a), empty=1.0) == 0.0  # one empty mask: 0 whatever the convention
    empty = np.zeros_like(a)
    assert np.isnan(g.dice(empty, empty))  # both empty: undefined by default (the planning demo's NaN)
    assert g.dice(empty, empty, empty=0.0) == 0.0  # the lung navigation demo's airway Dice
    assert g.dice(empty, empty, empty=1.0) == 1.0  # the planning benchmark's per-class Dice
    with pytest.raises(ValueError, match="different shapes"):
        g.dice(a, a[:, :, :5])


def test_dilate_and_erode_mm_are_exact_balls_on_an_anisotropic_grid():
    sp = (0.7, 0.9, 2.5)  # i, j, k
    ref = g.make_image((31, 25, 11), sp)
    arr = np.zeros((11, 25, 31), np.uint8)
    arr[5, 12, 15] = 1
    arr[5, 12, 20] = 1
    mask = g.copy_geometry(arr, ref)
    kk, jj, ii = np.indices(arr.shape)
    seeds = np.argwhere(arr > 0)
    d = np.min([np.sqrt(((ii - s[2]) * sp[0]) ** 2 + ((jj - s[1]) * sp[1]) ** 2 + ((kk - s[0]) * sp[2]) ** 2)
                for s in seeds], axis=0)
    for r in (1.0, 2.5, 3.1):  # 2.5 mm: the neighbours along k (at exactly r) are in
        grown = sitk.GetArrayFromImage(g.dilate_mm(mask, r)) > 0
        assert np.array_equal(grown, d <= r + 1e-6), r
        assert g.dilate_mm(mask, r).GetPixelID() == sitk.sitkUInt8
    assert not (sitk.GetArrayFromImage(g.dilate_mm(mask, 2.4))[[4, 6], 12, 15]).any()  # r under the k spacing
    # erosion is the dual: background voxels dilated
    big = g.dilate_mm(mask, 5.0)
    bg = g.copy_geometry((sitk.GetArrayFromImage(big) == 0).astype(np.uint8), ref)
    eroded = sitk.GetArrayFromImage(g.erode_mm(big, 2.0)) > 0
    assert np.array_equal(eroded, ~(sitk.GetArrayFromImage(g.dilate_mm(bg, 2.0)) > 0))
    # opening lies inside the mask and removes a part narrower than the ball; closing contains the mask
    b = sitk.GetArrayFromImage(big) > 0
    assert not np.any((sitk.GetArrayFromImage(g.opening_mm(big, 1.0)) > 0) & ~b)
    assert np.all(sitk.GetArrayFromImage(g.closing_mm(big, 1.0))[b] > 0)
    thin = np.zeros_like(arr)
    thin[5, 12, 3:28] = 1
    assert not np.any(sitk.GetArrayFromImage(g.opening_mm(g.copy_geometry(thin, ref), 1.0)))
    # no-ops return the input itself
    empty = g.copy_geometry(np.zeros_like(arr), ref)
    assert g.dilate_mm(mask, 0.0) is mask and g.dilate_mm(empty, 3.0) is empty and g.erode_mm(mask, -1) is mask
    full = g.copy_geometry(np.ones_like(arr), ref)
    assert g.erode_mm(full, 2.0) is full
