"""DICOM SEG reading: a SEG made with highdicom from real CT slices lands on the CT voxels."""

import numpy as np
import pytest

from imagio import io
from imagio.testing import data_path

hd = pytest.importorskip("highdicom", reason="highdicom (test extra) writes the DICOM SEG under test")


def test_dicom_seg_roundtrip(tmp_path):
    import pydicom
    from highdicom.seg import SegmentAlgorithmTypeValues, Segmentation, SegmentationTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    folder = data_path("dicom-3slice/ct-3slice")
    ct = io.read_image(folder)
    liver = io.read_segmentation(data_path("dicom-3slice/liver_seg.nrrd"), reference=ct)[0]
    assert liver.voxel_count() > 0
    sources = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    for ds in sources:  # the test slices carry an empty character set, which highdicom rejects
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            ds.SpecificCharacterSet = "ISO_IR 100"
    mask = liver.array()  # [k, j, i]
    # highdicom wants frames in the order of the source images (sorted by position like our reader)
    desc = SegmentDescription(
        segment_number=1, segment_label="Liver", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=SegmentAlgorithmTypeValues.MANUAL)
    seg = Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8), segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="IMAGIO tests", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0")
    path = tmp_path / "liver_seg.dcm"
    seg.save_as(path)
    back = io.read_segmentation(path, reference=ct)
    assert [s.name for s in back] == ["Liver"]
    assert np.array_equal(back[0].array(), mask)
    own = io.read_segmentation(path)  # on its own grid, no reference
    assert own[0].voxel_count() == liver.voxel_count()
