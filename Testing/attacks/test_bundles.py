"""Attack class "bundles": scene bundles (.mrb) that reach outside themselves, bombs, damaged archives.

No command reads a bundle (they are written), so the rows call the loader, ``imagio.bundle.load_mrb``,
as Slicer scripts and IMAGIO's tests do: a refusal is one ImagioError line, nothing is unpacked outside
the temporary folder, no file outside the bundle is read into the scene, and the bundle is unchanged.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from imagio import bundle, io, mrml
from imagio import geometry as g
from imagio.errors import ImagioError
from imagio.scene import new_scene
from imagio.testing import oblique_image


@pytest.fixture(scope="module")
def good_mrb(tmp_path_factory):
    """A real bundle written by IMAGIO: a CT, a segmentation, a table."""
    ref = oblique_image()
    arr = np.zeros(ref.GetSize()[::-1], np.uint8)
    arr[5:15, 5:15, 5:15] = 1
    scene = new_scene()
    vol = mrml.volume_node_from_image(scene, g.copy_geometry(arr.astype(np.int16) * 100, ref), "CT")
    mrml.segmentation_node_from_segments(scene, [io.Segment("tumour", g.copy_geometry(arr, ref))], "Seg", vol)
    mrml.add_table(scene, "Metrics", [{"metric": "a", "value": 1.5, "unit": "mm"}])
    return bundle.save_mrb(scene, tmp_path_factory.mktemp("good") / "scene.mrb")


def _members(mrb: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(mrb) as z:
        return {m.filename: z.read(m) for m in z.infolist() if not m.is_dir()}


def _rewrite(mrb: Path, dest: Path, edit_mrml=None, extra=None, compression=zipfile.ZIP_DEFLATED):
    members = _members(mrb)
    with zipfile.ZipFile(dest, "w", compression) as z:
        for name, data in members.items():
            if name.endswith(".mrml") and edit_mrml is not None:
                data = edit_mrml(data.decode()).encode()
            z.writestr(name, data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return dest


def _file_name(new: str):
    return lambda text: text.replace('fileName="Data/CT.nrrd"', f'fileName="{new}"', 1)


def _secret(tmp_path: Path) -> Path:
    s = tmp_path / "secret.nrrd"
    s.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nendian: little\n\n" + b"\7" * 16)
    return s


def _climb(tmp_path: Path, encode: bool = False) -> str:
    """A relative name that climbs from the unpacked scene folder (<tmp>/imagio-mrb-load-*/scene) to a real file."""
    import tempfile

    rel = "../../" + str(_secret(tmp_path).relative_to(Path(tempfile.gettempdir()).resolve()))
    return rel.replace("..", "%2E%2E") if encode else rel


def _symlink_member(mrb, dest):
    _rewrite(mrb, dest)
    with zipfile.ZipFile(dest, "a") as z:
        info = zipfile.ZipInfo("scene/Data/link.nrrd")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    return dest


def _nhdr_outside(tmp_path):
    def edit(text):
        return text.replace('fileName="Data/CT.nrrd"', 'fileName="Data/CT.nhdr"', 1)

    nhdr = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\nendian: little\n"
            f"data file: {tmp_path / 'secret.raw'}\n").encode()
    (tmp_path / "secret.raw").write_bytes(b"\7" * 16)
    return edit, {"scene/Data/CT.nhdr": nhdr}


ROWS = [
    ("storage node with an absolute path", lambda t, m, d: _rewrite(m, d, _file_name(str(_secret(t)))),
     "outside the bundle"),
    ("storage node climbing out with ..", lambda t, m, d: _rewrite(m, d, _file_name(_climb(t))),
     "outside the bundle"),
    ("storage node climbing out, %-encoded", lambda t, m, d: _rewrite(m, d, _file_name(_climb(t, True))),
     "outside the bundle"),
    ("file list member outside", lambda t, m, d: _rewrite(
        m, d, lambda x: x.replace('fileListMember0="Data/CT.nrrd"', 'fileListMember0="/etc/hostname"', 1)),
     "outside the bundle"),
    ("storage node reading a URL", lambda t, m, d: _rewrite(m, d, _file_name("http://example.org/ct.nrrd")),
     "reads from"),
    ("XML entity declarations", lambda t, m, d: _rewrite(
        m, d, lambda x: '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa">]>' + x), "entities"),
    ("detached NRRD data outside the bundle", lambda t, m, d: _rewrite(m, d, *_nhdr_outside(t)), "lies outside"),
    ("header bomb inside the bundle", lambda t, m, d: _rewrite(m, d, extra={
        "scene/Data/bomb.nrrd": b"NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\n"
                                b"encoding: raw\nendian: little\n\n"}), "voxels, more than IMAGIO reads"),
    ("member escaping with ..", lambda t, m, d: _rewrite(m, d, extra={"../../escaped.txt": b"x"}), "written outside"),
    ("absolute member name", lambda t, m, d: _rewrite(m, d, extra={"/tmp/imagio-escaped.txt": b"x"}),
     "written outside"),
    ("symbolic link member", lambda t, m, d: _symlink_member(m, d), "symbolic link"),
    ("not a zip archive", lambda t, m, d: (d.write_bytes(b"PK\3\4 not really"), d)[1], "not a valid scene bundle"),
    ("archive cut in half", lambda t, m, d: (d.write_bytes(m.read_bytes()[: m.stat().st_size // 2]), d)[1],
     "not a valid scene bundle"),
    ("bundle without a scene file", lambda t, m, d: _write_zip(d, {"a.txt": b"x"}), "contains no .mrml"),
]


def _write_zip(dest, members):
    with zipfile.ZipFile(dest, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return dest


@pytest.mark.parametrize("name, make, needle", ROWS, ids=[r[0] for r in ROWS])
def test_hostile_bundle_is_refused(tmp_path, attack, good_mrb, name, make, needle):
    mrb = make(tmp_path, good_mrb, tmp_path / "evil.mrb")
    before = attack.digest(tmp_path)
    outside = set(Path("/tmp").iterdir())
    with pytest.raises(ImagioError) as e:
        bundle.load_mrb(mrb)
    msg = str(e.value)
    assert needle.lower() in msg.lower() and "\n" not in msg, msg
    assert attack.digest(tmp_path) == before
    assert not (tmp_path.parent / "escaped.txt").exists() and not Path("/tmp/imagio-escaped.txt").exists()
    assert not [p for p in set(Path("/tmp").iterdir()) - outside if p.name.startswith("imagio-mrb-load-")]


def test_zip_bomb_and_size_cap(tmp_path, monkeypatch):
    """A member that unpacks 64 MB of zeros from ~64 kB: refused by the ratio (the size thresholds are scaled
    down here so the test stays small; the rule is the same) and by the size cap, before anything is written."""
    bomb = tmp_path / "bomb.mrb"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("scene/scene.mrml", "<MRML></MRML>")
        z.writestr("scene/Data/zeros.raw", b"\0" * (64 << 20))
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(bundle, "RATIO_CHECK_FROM_BYTES", 1 << 20)
    target = tmp_path / "t1"
    with pytest.raises(ImagioError, match="looks like a zip bomb"):
        bundle.safe_extract_zip(bomb, target)
    assert not target.exists()
    with pytest.raises(ImagioError, match="unpacks to 67.1 MB, more than the 10 MB"):
        bundle.safe_extract_zip(bomb, tmp_path / "t2", max_bytes=10**7)
    assert not (tmp_path / "t2").exists()
    monkeypatch.setattr(bundle, "MAX_MEMBERS", 10)
    many = _write_zip(tmp_path / "many.mrb", {f"f{n}": b"" for n in range(11)})
    with pytest.raises(ImagioError, match="holds 11 files"):
        bundle.safe_extract_zip(many, tmp_path / "t3")


def test_good_bundle_still_loads(good_mrb):
    scene = bundle.load_mrb(good_mrb)
    vols = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    segs = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert vols.GetNumberOfItems() == 1 and segs.GetNumberOfItems() == 1
    back = mrml.segments_from_segmentation_node(segs.GetItemAsObject(0), vols.GetItemAsObject(0))
    assert back[0].voxel_count() == 1000


def test_fifo_as_bundle_is_refused(tmp_path):
    import os

    p = tmp_path / "scene.mrb"
    os.mkfifo(p)
    with pytest.raises(ImagioError, match="named pipe"):
        bundle.load_mrb(p)
