"""Real-data figures of issue 3: DICOM + RTSTRUCT volumes, sarcoma agreement, LIDC centroid."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry as g
from imagio import io
from imagio.errors import ImagioError
from imagio.testing import data_path


def test_lung1_rtstruct_gtv_volume():
    ct = io.read_image(data_path("chest-lung1-001/image"))
    assert ct.GetSize() == (512, 512, 134)
    assert np.allclose(ct.GetSpacing(), (0.9765625, 0.9765625, 3.0), atol=1e-4)
    segs = io.read_segmentation(data_path("chest-lung1-001/mask_rtstruct/1-1.dcm"), reference=ct)
    gtv = io.find_segment(segs, "GTV-1")
    assert gtv.volume_ml() == pytest.approx(156.3, rel=0.02)
    assert {s.name for s in segs} >= {"GTV-1", "Lung-Left", "Lung-Right", "Spinal-Cord"}
    derived = io.read_segmentation(data_path("chest-lung1-001/derived_labels/GTV-1.seg.nrrd"), reference=ct)
    assert g.dice(gtv.array(), derived[0].array()) >= 0.99


@pytest.mark.parametrize("case,ml", [("sarcoma-sts001", 365.3), ("sarcoma-sts002", 53.3)])
def test_sarcoma_rtstruct_matches_nifti(case, ml):
    ct = io.read_image(data_path(f"{case}/dicom/image"))
    rs = io.read_segmentation(data_path(f"{case}/dicom/mask/RS.dcm"), reference=ct)
    nifti = io.read_segmentation(data_path(f"{case}/nifti/mask/mask.nii.gz"), reference=ct)
    assert len(rs) == 1 and len(nifti) == 1
    assert g.dice(rs[0].array(), nifti[0].array()) >= 0.99
    assert rs[0].volume_ml() == pytest.approx(ml, rel=0.02)


def test_lidc_nodule_masks_keep_lps_centroid():
    ann = json.loads(data_path("chest-lidc0314/nodule_annotations.json").read_text())
    ct = io.read_image(data_path("chest-lidc0314/ct.nrrd"))
    seg = io.read_segmentation(data_path("chest-lidc0314/nodule_consensus50.seg.nrrd"), reference=ct)[0]
    assert seg.voxel_count() == ann["consensus50_voxels"]
    lps = g.ras_to_lps(g.centroid_ras(seg.mask))
    assert np.allclose(lps, ann["consensus_centroid_LPS_mm"], atol=0.05)
    for n in range(1, 5):
        reader = io.read_segmentation(data_path(f"chest-lidc0314/nodule_reader{n}.seg.nrrd"), reference=ct)[0]
        assert reader.voxel_count() == ann["readers"][n - 1]["voxels"]


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    src = data_path("dicom-3slice/ct-3slice")
    import pydicom

    files = sorted(os.listdir(src))
    for n, f in enumerate(files):
        ds = pydicom.dcmread(src / f)
        ds.save_as(tmp_path / f"a{n}.dcm")
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.save_as(tmp_path / f"b{n}.dcm")
    with pytest.raises(ImagioError, match="holds 2 DICOM series"):
        io.read_image(tmp_path)
    uid = str(pydicom.dcmread(src / files[0]).SeriesInstanceUID)
    img = io.read_image(tmp_path, series_uid=uid)
    assert img.GetSize() == (512, 512, 3)


def test_non_uniform_spacing_is_resampled_and_tilt_refused(tmp_path):
    src = data_path("sarcoma-sts002/dicom/image")
    import pydicom

    files = sorted(os.listdir(src))
    ref = io.read_image(src)
    for n, f in enumerate(files):
        if n == 5:
            continue  # a missing slice makes spacing non-uniform
        pydicom.dcmread(src / f).save_as(tmp_path / f)
    img = io.read_image(tmp_path)
    assert img.GetMetaData("imagio:warning").startswith("non-uniform")
    assert img.GetSpacing()[2] == pytest.approx(ref.GetSpacing()[2], abs=1e-3)
    assert img.GetSize()[2] == ref.GetSize()[2]
    a = sitk.GetArrayFromImage(img).astype(float)
    b = sitk.GetArrayFromImage(ref).astype(float)
    assert np.array_equal(a[:5], b[:5]) and np.array_equal(a[6:], b[6:])  # slices kept exactly
    tilt = tmp_path / "tilt"
    tilt.mkdir()
    for n, f in enumerate(files):
        ds = pydicom.dcmread(src / f)
        pos = [float(v) for v in ds.ImagePositionPatient]
        pos[1] += 0.3 * n * float(ds.SliceThickness or 3)  # shear along y: a gantry tilt
        ds.ImagePositionPatient = pos
        ds.save_as(tilt / f)
    with pytest.raises(ImagioError, match="gantry tilt"):
        io.read_image(tilt)
