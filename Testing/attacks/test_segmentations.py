"""Attack class "segmentations": .seg.nrrd metadata, label maps, masks that do not fit the CT, duplicate names.

Refusals run through `imagio convert --ct CT --seg SEG`; the explicit results check what is kept, renamed
or reported when the input is usable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import io


def _ct(d: Path, attack) -> tuple[Path, sitk.Image]:
    p = d / "ct.nrrd"
    return p, attack.write_ct(p, shape_kji=(12, 20, 24))


def _mask(ct: sitk.Image, box) -> sitk.Image:
    a = np.zeros(ct.GetSize()[::-1], np.uint8)
    a[box] = 1
    m = sitk.GetImageFromArray(a)
    m.CopyInformation(ct)
    return m


def _two_layer_seg(d: Path, ct: sitk.Image) -> Path:
    """tumour (value 1, layer 0) and airway (overlapping it: layer 1), written by IMAGIO (Slicer's format)."""
    p = d / "case.seg.nrrd"
    io.write_segmentation(p, [io.Segment("tumour", _mask(ct, np.s_[2:6, 3:9, 4:10])),
                              io.Segment("airway", _mask(ct, np.s_[4:10, 5:15, 6:20]))], ct)
    return p


def _header_edit(pattern: str, repl: str):
    def make(d, ct, attack):
        p = _two_layer_seg(d, ct)
        data = p.read_bytes()
        head, sep, body = data.partition(b"\n\n")
        new, n = re.subn(pattern.encode(), repl.encode(), head)
        assert n >= 1, pattern
        p.write_bytes(new + sep + body)
        return p
    return make


def _labels(n_labels: int, dtype=np.uint16):
    def make(d, ct, attack):
        a = (np.arange(int(np.prod(ct.GetSize()))) % (n_labels + 1)).reshape(ct.GetSize()[::-1]).astype(dtype)
        m = sitk.GetImageFromArray(a)
        m.CopyInformation(ct)
        p = d / "labels.nii.gz"
        sitk.WriteImage(m, str(p))
        return p
    return make


def _float_mask(d, ct, attack):
    a = np.zeros(ct.GetSize()[::-1], np.float32)
    a[2:5, 2:5, 2:5] = 0.5
    m = sitk.GetImageFromArray(a)
    m.CopyInformation(ct)
    p = d / "soft.nii.gz"
    sitk.WriteImage(m, str(p))
    return p


def _shifted_mask(shift_mm, box=np.s_[2:10, 2:18, 2:22]):
    def make(d, ct, attack):
        m = _mask(ct, box)
        m.SetOrigin(tuple(np.array(ct.GetOrigin()) + shift_mm))
        p = d / "moved.nii.gz"
        sitk.WriteImage(m, str(p))
        return p
    return make


def _cut_seg(d, ct, attack):
    return attack.cut(_two_layer_seg(d, ct), 0.7)


ROWS = [
    ("negative layer picks another segment", _header_edit(r"Segment0_Layer:=0", "Segment0_Layer:=-1"),
     "segment 'tumour' refers to layer -1, and the file has layers 0 to 1"),
    ("layer beyond the file", _header_edit(r"Segment1_Layer:=1", "Segment1_Layer:=7"), "refers to layer 7"),
    ("layer not a number", _header_edit(r"Segment0_Layer:=0", "Segment0_Layer:=1.5"),
     "Segment0_Layer is '1.5', not a whole number"),
    ("label value not a number", _header_edit(r"Segment0_LabelValue:=1", "Segment0_LabelValue:=one"),
     "Segment0_LabelValue is 'one', not a whole number"),
    ("label value 0 (the background)", _header_edit(r"Segment0_LabelValue:=1", "Segment0_LabelValue:=0"),
     "0 is the background"),
    ("label value 300 in a uint8 layer", _header_edit(r"Segment0_LabelValue:=1", "Segment0_LabelValue:=300"),
     "label value 300; its uint8 layer holds 1 to 255"),
    ("colour not numbers", _header_edit(r"Segment0_Color:=[^\n]*", "Segment0_Color:=red green blue"),
     "Segment0_Color is 'red green blue', not three numbers"),
    ("segmentation cut short", _cut_seg, "cut short"),
    ("label map with fractions", _float_mask, "non-integer values"),
    ("label map with 300 labels", _labels(300), "300 different values"),
    ("255 labels beyond the memory limit", _labels(255), "255 labels, one mask each", {"IMAGIO_MEMORY_LIMIT": "2M"}),
    ("mask in another place", _shifted_mask((500.0, 0, 0)), "lies outside the image"),
    ("mask 25 % outside the CT", _shifted_mask((0, 0, 8.0)),
     "640 of 2560 voxels (25.0 %, 0.92 ml) of 'moved.nii.gz: moved' lie outside the image"),
]
ROWS = [r if len(r) == 4 else (*r, None) for r in ROWS]


@pytest.mark.parametrize("name, make, needle, env", ROWS, ids=[r[0] for r in ROWS])
def test_bad_segmentation_is_refused(tmp_path, attack, name, make, needle, env):
    inp = tmp_path / "in"
    inp.mkdir()
    ct_path, ct = _ct(inp, attack)
    seg = make(inp, ct, attack)
    before = attack.digest(inp)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct_path, "--seg", seg, "--out", out, env=env, timeout=180)
    attack.refused(r, out, needle, before, inp)


def test_structure_set_as_ct_is_refused(tmp_path, attack):
    from imagio.testing import data_path

    rs = data_path("sarcoma-sts002/dicom/mask/RS.dcm")
    r = attack.run("convert", "--ct", rs, "--out", tmp_path / "out")
    attack.refused(r, tmp_path / "out", "is a DICOM RTSTRUCT, not an image", {})


def test_small_loss_is_kept_with_a_warning(tmp_path, attack):
    """Explicit result: a mask (on a 10x finer grid) with 2 of its 240 columns outside the CT (0.83 %, under the
    1 % limit) is kept, the loss is reported, and the CT voxels it covers are all set."""
    inp = tmp_path / "in"
    inp.mkdir()
    ct_path, ct = _ct(inp, attack)  # i centres at x = -10 + 0.8 i, so the grid starts at x = -10.4
    big = np.zeros((12, 20, 240), np.uint8)
    big[1:11, 1:19, :] = 1
    wide = sitk.GetImageFromArray(big)
    wide.SetSpacing((0.08, 0.9, 2.0))
    wide.SetOrigin((-10.52, 20.0, -30.0))  # columns at -10.52 and -10.44 lie outside, -10.36 inside
    p = inp / "wide.nii.gz"
    sitk.WriteImage(wide, str(p))
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct_path, "--seg", p, "--out", out, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "imagio: 360 of 43200 voxels (0.83 %) of 'wide.nii.gz: wide' lie outside the image and are left out" \
        in r.stderr, r.stderr
    back = io.read_segmentation(out / "segmentation.seg.nrrd", reference=ct)[0]
    assert back.voxel_count() == 10 * 18 * 24


def test_duplicate_names_across_files_are_renamed_not_replaced(tmp_path, attack):
    inp = tmp_path / "in"
    inp.mkdir()
    ct_path, ct = _ct(inp, attack)
    a, b, c = inp / "a.seg.nrrd", inp / "b.seg.nrrd", inp / "c.seg.nrrd"
    io.write_segmentation(a, [io.Segment("tumour", _mask(ct, np.s_[2:6, 3:9, 4:10]))], ct)
    io.write_segmentation(b, [io.Segment("Tumour", _mask(ct, np.s_[6:10, 3:9, 4:10]))], ct)  # another tumour
    io.write_segmentation(c, [io.Segment("tumour", _mask(ct, np.s_[2:6, 3:9, 4:10]))], ct)  # the same as a
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct_path, "--seg", a, b, c, "--out", out, timeout=180)
    assert r.returncode == 0, r.stderr
    segs = {s["name"]: s["voxels"] for s in json.loads((out / "case.json").read_text())["segments"]}
    assert segs == {"tumour": 144, "Tumour (b.seg.nrrd)": 144}
    assert "imagio: segment 'Tumour' of b.seg.nrrd has the name of an earlier, different segment: renamed " \
           "'Tumour (b.seg.nrrd)'" in r.stderr


def test_many_labels_are_read_exactly(tmp_path, attack):
    inp = tmp_path / "in"
    inp.mkdir()
    ct_path, ct = _ct(inp, attack)
    p = _labels(255)(inp, ct, attack)
    segs = io.read_segmentation(p, reference=ct)
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    assert len(segs) == 255
    assert all(s.voxel_count() == int((a == s.label_value).sum()) for s in segs)
