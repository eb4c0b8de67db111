"""Attack class "DICOM": damaged CT series, structure sets and DICOM SEGs (real data: TCIA sarcoma STS-002).

Each row copies the real series (48 slices), breaks one thing, and runs `imagio convert`; the refusal
must name the damaged slice, contour or frame. Control rows read the intact data to the known result.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagio.testing import data_path

pydicom = pytest.importorskip("pydicom")

CASE = "sarcoma-sts002"


@pytest.fixture(scope="module")
def series_files():
    src = data_path(f"{CASE}/dicom/image")
    return src, sorted(os.listdir(src))


def _copy_series(series_files, dest: Path) -> list[Path]:
    src, files = series_files
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(src / f, dest / f)
    return [dest / f for f in files]


def _edit(path: Path, fn):
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def _raw_value(ds, keyword: str, text: bytes):
    """Store ``text`` as the raw value of ``keyword`` (pydicom would refuse to write an invalid DS)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    tag = tag_for_keyword(keyword)
    ds[tag] = RawDataElement(pydicom.tag.Tag(tag), dictionary_VR(tag), len(text), text, 0, False, True)


def _slices(fn):
    """A series maker: ``fn(files)`` breaks the copied series in place."""
    def make(series_files, d):
        files = _copy_series(series_files, d / "ct")
        fn(files)
        return d / "ct"
    return make


def _cut_slice(files):
    data = files[20].read_bytes()
    files[20].write_bytes(data[: len(data) // 2])


def _cut_header(files):
    data = files[20].read_bytes()
    files[20].write_bytes(data[:300])


def _positions(fn):
    def apply(files):
        dss = [pydicom.dcmread(f) for f in files]
        pos = [np.array([float(v) for v in ds.ImagePositionPatient]) for ds in dss]
        order = np.argsort([p[2] for p in pos])
        fn(dss, pos, order)
        for ds, p, f in zip(dss, pos, files, strict=True):
            ds.ImagePositionPatient = [f"{v:.6f}" for v in p]
            ds.save_as(f)
    return apply


def _close_slices(dss, pos, order):
    base = pos[order[10]].copy()
    pos[order[11]] = base + [0, 0, 0.002]
    pos[order[12]] = base + [0, 0, 0.004]


def _remove(n):
    def apply(files):
        for f in files[10:10 + n]:
            f.unlink()
    return apply


def _duplicate_position(dss, pos, order):
    pos[order[11]] = pos[order[10]].copy()


def _tilt(dss, pos, order):
    for rank, i in enumerate(order):
        pos[i] = pos[i] + [0, 0.3 * rank * 3.27, 0]


def _nan_position(dss, pos, order):
    pos[order[5]] = np.array([np.nan, 0.0, 0.0])


def _one(fn, index=20):
    return lambda files: _edit(files[index], fn)


def _rows(ds):
    a = ds.pixel_array[:-4]
    ds.Rows = a.shape[0]
    ds.PixelData = a.tobytes()


def _fifo(files):
    os.mkfifo(files[0].parent / "zz_pipe.dcm")


def _junk(files):
    (files[0].parent / "README.txt").write_text("notes about this series")
    (files[0].parent / "sub").mkdir()


SERIES_ROWS = [
    ("slice cut in half", _slices(_cut_slice), "000020.dcm is cut short"),
    ("slice header cut at 300 bytes", _slices(_cut_header), "000020.dcm is a damaged DICOM file"),
    ("slice with another orientation",
     _slices(_one(lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]))),
     "000020.dcm has another orientation"),
    ("slice with other rows", _slices(_one(_rows)), "000020.dcm is 139 x 161 pixels"),
    ("slice with other pixel spacing", _slices(_one(lambda ds: setattr(ds, "PixelSpacing", [0.5, 0.5]))),
     "000020.dcm has pixel spacing [0.5, 0.5] mm"),
    ("slice of another frame of reference", _slices(_one(lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4"))),
     "000020.dcm has another frame of reference"),
    ("orientation not numbers", _slices(_one(lambda ds: _raw_value(ds, "ImageOrientationPatient", b"a\\b\\c\\d\\e\\f"))),
     "ImageOrientationPatient is missing or not 6 numbers"),
    ("position NaN", _slices(_positions(_nan_position)), "ImagePositionPatient is not 3 finite numbers"),
    ("three slices 0.002 mm apart", _slices(_positions(_close_slices)), "0.002 mm apart, while the series steps 3.27 mm"),
    ("ten slices missing", _slices(_remove(10)), "about 10 slices are missing"),
    ("two slices at one position", _slices(_positions(_duplicate_position)), "several slices at the same position"),
    ("gantry tilt", _slices(_positions(_tilt)), "gantry tilt"),
    ("series beyond the memory limit", _slices(lambda files: None), "would need", {"IMAGIO_MEMORY_LIMIT": "1M"}),
    ("named pipe inside the series folder", _slices(_fifo), "zz_pipe.dcm is a named pipe"),
]
SERIES_ROWS = [r if len(r) == 4 else (*r, None) for r in SERIES_ROWS]


@pytest.mark.parametrize("name, make, needle, env", SERIES_ROWS, ids=[r[0] for r in SERIES_ROWS])
def test_damaged_series_is_refused(tmp_path, attack, series_files, name, make, needle, env):
    ct = make(series_files, tmp_path)
    before = attack.digest(ct)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct, "--out", out, env=env, timeout=120)
    attack.refused(r, out, needle, before, ct)


def test_series_with_a_text_file_and_a_subfolder_reads_as_without(tmp_path, attack, series_files):
    """Explicit result: a README and a subfolder in the series folder are ignored, the volume is the same."""
    import SimpleITK as sitk

    ct = _slices(_junk)(series_files, tmp_path)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct, "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series_files[0])))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nrrd"))), sitk.GetArrayFromImage(ref))


def test_one_missing_slice_is_resampled_with_a_warning(tmp_path, attack, series_files):
    ct = _slices(_remove(1))(series_files, tmp_path)
    r = attack.run("convert", "--ct", ct, "--out", tmp_path / "out", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "imagio: Non-uniform slice spacing (3.27-6.54 mm): resampled to 48 slices of 3.27 mm" in r.stderr
    assert not any(m in r.stderr for m in ("WARNING: In", "itk::"))


def test_itk_warning_is_captured_and_reworded(tmp_path, attack, series_files):
    """Item 6 (ITK output): a missing slice makes ITK's ImageSeriesReader print 'WARNING: In ...
    itkImageSeriesReader.hxx ... Non uniform sampling or missing slices detected'. With --debug that raw text is
    shown (the row provokes it); without, only IMAGIO's own line about the resampling."""
    ct = _slices(_remove(1))(series_files, tmp_path)
    r = attack.run("--debug", "convert", "--ct", ct, "--out", tmp_path / "dbg", timeout=120)
    assert r.returncode == 0 and "Non uniform sampling or missing slices detected" in r.stderr, r.stderr[-2000:]
    r = attack.run("convert", "--ct", ct, "--out", tmp_path / "out", timeout=120)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        "imagio: Non-uniform slice spacing (3.27-6.54 mm): resampled to 48 slices of 3.27 mm"], r.stderr


# ---------------------------------------------------------------------------------------------- RTSTRUCT
@pytest.fixture(scope="module")
def rtstruct():
    return data_path(f"{CASE}/dicom/mask/RS.dcm")


def _rs(fn):
    def make(rtstruct, d):
        p = d / "RS.dcm"
        ds = pydicom.dcmread(rtstruct)
        fn(ds)
        ds.save_as(p)
        return p
    return make


def _contour(fn, index=5):
    def apply(ds):
        fn(ds.ROIContourSequence[0].ContourSequence[index])
    return apply


def _other_frame(ds):
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4.5"
    for r in ds.StructureSetROISequence:
        r.ReferencedFrameOfReferenceUID = "1.2.3.4.5"


def _shift_half_slice(ds):
    for c in ds.ROIContourSequence[0].ContourSequence:
        pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
        pts[:, 2] += 3.27 / 2
        c.ContourData = [f"{v:.4f}" for v in pts.ravel()]


def _far_away(ds):
    for c in ds.ROIContourSequence[0].ContourSequence:
        pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
        pts[:, 0] += 5000
        c.ContourData = [f"{v:.4f}" for v in pts.ravel()]


def _drop_points(c):
    c.ContourData = [float(v) for v in c.ContourData][:-1]


def _nan_point(c):
    _raw_value(c, "ContourData", b"NaN\\" + b"\\".join(str(v).encode() for v in c.ContourData[1:]))


RTSTRUCT_ROWS = [
    ("structure set of another frame of reference", _rs(_other_frame), "another frame of reference"),
    ("empty contour", _rs(_contour(lambda c: setattr(c, "ContourData", []))), "contour 5 of ROI 'GTV_Mass_CT' has no points"),
    ("contour length not a multiple of 3", _rs(_contour(_drop_points)), "not a multiple of 3"),
    ("NaN coordinate", _rs(_contour(_nan_point)), "NaN, infinite or absurd coordinates"),
    ("non-numeric coordinate", _rs(_contour(lambda c: _raw_value(c, "ContourData", b"1\\x\\3"))), "non-numeric coordinates"),
    ("contours between the CT's slices", _rs(_shift_half_slice), "lies between the CT's slices"),
    ("contours 5 m away", _rs(_far_away), "17090 of 17090 voxels (100.0 %, 53.30 ml) of 'GTV_Mass_CT' lie outside"),
    ("ROI without a number", _rs(lambda ds: delattr(ds.ROIContourSequence[0], "ReferencedROINumber")),
     "no valid ReferencedROINumber"),
]


@pytest.mark.parametrize("name, make, needle", RTSTRUCT_ROWS, ids=[r[0] for r in RTSTRUCT_ROWS])
def test_damaged_rtstruct_is_refused(tmp_path, attack, series_files, rtstruct, name, make, needle):
    rs = make(rtstruct, tmp_path)
    ct = series_files[0]
    before = attack.digest(rs, ct)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct, "--seg", rs, "--out", out, timeout=180)
    attack.refused(r, out, needle, before, rs, ct)


def _crop_top(series_files, d: Path, n: int) -> Path:
    """The real series without its top ``n`` slices: a CT that does not cover the whole tumour."""
    files = _copy_series(series_files, d / "ct")
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    for i in np.argsort(z)[-n:]:
        files[i].unlink()
    return d / "ct"


def test_tumour_partly_outside_a_cropped_ct_is_refused(tmp_path, attack, series_files, rtstruct):
    """Issue 13: the 53.3 ml GTV on a CT that misses its top 7 slices was silently cropped to 31.4 ml."""
    ct = _crop_top(series_files, tmp_path, 23)  # keeps slices 0-24; the GTV spans 16-31
    mask = data_path(f"{CASE}/nifti/mask/mask.nii.gz")
    before = attack.digest(ct, rtstruct, mask)
    out = tmp_path / "out"
    for seg, name in ((rtstruct, "GTV_Mass_CT"), (mask, "mask.nii.gz")):
        r = attack.run("convert", "--ct", ct, "--seg", seg, "--out", out, timeout=180)
        line = attack.refused(r, out, "7020 of 17090 voxels (41.1 %, 21.89 ml)", before, ct, rtstruct, mask)
        assert name in line and "more than 1 %" in line, line


def test_intact_rtstruct_gives_the_known_volume(tmp_path, attack, series_files, rtstruct):
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", series_files[0], "--seg", rtstruct, "--out", out, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "GTV_Mass_CT: 53." in r.stdout, r.stdout
    assert "imagio: " not in r.stderr  # no warning: nothing was lost


# ---------------------------------------------------------------------------------------------- DICOM SEG
hd = pytest.importorskip("highdicom", reason="highdicom (test extra) writes the DICOM SEG under test")


@pytest.fixture(scope="module")
def seg_case(tmp_path_factory):
    """A valid two-segment DICOM SEG made with highdicom on the real 3-slice CT (dcmqi test data)."""
    from highdicom.seg import SegmentAlgorithmTypeValues, Segmentation, SegmentationTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    from imagio import io

    folder = data_path("dicom-3slice/ct-3slice")
    ct = io.read_image(folder)
    liver = io.read_segmentation(data_path("dicom-3slice/liver_seg.nrrd"), reference=ct)[0].array()
    spine = io.read_segmentation(data_path("dicom-3slice/spine_seg.nrrd"), reference=ct)[0].array()
    sources = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    for ds in sources:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            ds.SpecificCharacterSet = "ISO_IR 100"
    descs = [SegmentDescription(segment_number=n + 1, segment_label=label, segmented_property_category=codes.SCT.Organ,
                                segmented_property_type=prop, algorithm_type=SegmentAlgorithmTypeValues.MANUAL)
             for n, (label, prop) in enumerate((("Liver", codes.SCT.Liver), ("Spine", codes.SCT.Spine)))]
    seg = Segmentation(
        source_images=sources, pixel_array=np.stack([liver, spine], -1).astype(np.uint8),
        segmentation_type=SegmentationTypeValues.BINARY, segment_descriptions=descs, series_instance_uid=hd.UID(),
        series_number=2, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="IMAGIO tests",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0", omit_empty_frames=False)
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg.save_as(path)
    return folder, path, {"Liver": int(liver.sum()), "Spine": int(spine.sum())}


def _seg(fn):
    def make(seg_case, d):
        p = d / "seg.dcm"
        ds = pydicom.dcmread(seg_case[1])
        fn(ds)
        ds.save_as(p, enforce_file_format=False) if "enforce_file_format" in ds.save_as.__code__.co_varnames \
            else ds.save_as(p)
        return p
    return make


def _zero_frames(ds):
    ds.NumberOfFrames = 0
    ds.PerFrameFunctionalGroupsSequence = []
    ds.PixelData = b""


def _short_pixels(ds):
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]


def _same_slice(ds):
    pf = ds.PerFrameFunctionalGroupsSequence
    pf[1].PlanePositionSequence[0].ImagePositionPatient = pf[0].PlanePositionSequence[0].ImagePositionPatient


def _unknown_segment(ds):
    ds.PerFrameFunctionalGroupsSequence[2].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 7


def _off_grid(ds):
    pos = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    p = [float(v) for v in pos.ImagePositionPatient]
    p[2] += 0.37  # the slices are 1 mm apart
    pos.ImagePositionPatient = p


def _tilted_frame(ds):
    import copy

    seq = copy.deepcopy(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence)
    seq[0].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.PerFrameFunctionalGroupsSequence[1].PlaneOrientationSequence = seq


def _giant_frames(ds):
    ds.Rows = 65535
    ds.Columns = 65535


SEG_ROWS = [
    ("zero-frame SEG", _seg(_zero_frames), "it has no frames"),
    ("more frames declared than described", _seg(lambda ds: setattr(ds, "NumberOfFrames", 60)),
     "NumberOfFrames is 60 but 6 frames are described"),
    ("pixel data a third of the declared frames", _seg(_short_pixels), "bytes of pixel data"),
    ("frames of 65535 x 65535 declared", _seg(_giant_frames), "bytes of pixel data"),
    ("two frames of one segment on one slice", _seg(_same_slice), "on the same slice"),
    ("frame of a segment that does not exist", _seg(_unknown_segment), "refers to segment 7"),
    ("frame off the slice grid", _seg(_off_grid), "regular slice grid"),
    ("frame with another orientation", _seg(_tilted_frame), "another orientation"),
    ("SEG of another frame of reference", _seg(lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4.5")),
     "another frame of reference"),
    ("SEG without segments", _seg(lambda ds: setattr(ds, "SegmentSequence", [])), "no SegmentSequence"),
]


@pytest.mark.parametrize("name, make, needle", SEG_ROWS, ids=[r[0] for r in SEG_ROWS])
def test_malformed_dicom_seg_is_refused(tmp_path, attack, seg_case, name, make, needle):
    seg = make(seg_case, tmp_path)
    ct = seg_case[0]
    before = attack.digest(seg, ct)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct, "--seg", seg, "--out", out, timeout=180)
    attack.refused(r, out, needle, before, seg, ct)


def test_intact_dicom_seg_reads_every_voxel(tmp_path, attack, seg_case):
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", seg_case[0], "--seg", seg_case[1], "--out", out, timeout=180)
    assert r.returncode == 0, r.stderr
    import json

    got = {s["name"]: s["voxels"] for s in json.loads((out / "case.json").read_text())["segments"]}
    assert got == seg_case[2]


def test_seg_without_the_frames_of_empty_slices_reads_exactly(tmp_path, attack, seg_case):
    """Explicit result: highdicom omits the frames of empty slices; a SEG with frames on slices 0 and 2 only was read
    with a slice step of 2 (the smallest gap), and nearest-neighbour resampling then filled slice 1 too."""
    import json

    from highdicom.seg import SegmentAlgorithmTypeValues, Segmentation, SegmentationTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    from imagio import io

    folder = seg_case[0]
    ct = io.read_image(folder)
    liver = io.read_segmentation(data_path("dicom-3slice/liver_seg.nrrd"), reference=ct)[0].array()
    liver[1] = False
    sources = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    for ds in sources:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            ds.SpecificCharacterSet = "ISO_IR 100"
    desc = SegmentDescription(segment_number=1, segment_label="Liver", segmented_property_category=codes.SCT.Organ,
                              segmented_property_type=codes.SCT.Liver, algorithm_type=SegmentAlgorithmTypeValues.MANUAL)
    seg = Segmentation(source_images=sources, pixel_array=liver.astype(np.uint8),
                       segmentation_type=SegmentationTypeValues.BINARY, segment_descriptions=[desc],
                       series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
                       manufacturer="IMAGIO tests", manufacturer_model_name="test", software_versions="0",
                       device_serial_number="0")
    path = tmp_path / "sparse.dcm"
    seg.save_as(path)
    assert pydicom.dcmread(path).NumberOfFrames == 2
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", folder, "--seg", path, "--out", out, timeout=180)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "case.json").read_text())["segments"][0]["voxels"] == int(liver.sum())
    back = io.read_segmentation(path, reference=ct)[0].array()
    assert np.array_equal(back, liver)
    assert io.read_segmentation(path)[0].voxel_count() == int(liver.sum())  # on its own grid as well
