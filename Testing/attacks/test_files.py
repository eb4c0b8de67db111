"""Attack class "files": image files that are cut short, lie about their size, hang, or are not images.

Each row hands one hostile file to `imagio convert --ct` and expects the one-line refusal (exit 2, nothing
written, inputs unchanged). Header bombs are also measured: the peak memory of the refused run stays
within a few MB of the same command on a small valid file (a child process's ru_maxrss).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def _nifti1(path: Path, dims, bitpix=16, datatype=4, vox_offset=352.0, payload=b"\0" * 64):
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, vox_offset)
    h[344:348] = b"n+1\0"
    path.write_bytes(bytes(h) + payload)
    return path


def _nifti2(path: Path, dims):
    h = bytearray(544)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", h, 12, 4, 16)
    struct.pack_into("<8q", h, 16, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<q", h, 168, 544)
    path.write_bytes(bytes(h) + b"\0" * 64)
    return path


def _nrrd(path: Path, sizes: str, extra: str = "", payload: bytes = b"\0" * 64):
    path.write_bytes(f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nencoding: raw\nendian: little\n{extra}\n"
                     .encode() + payload)
    return path


def _mha(path: Path, dims: str, extra: str = ""):
    path.write_bytes(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_SHORT\n{extra}"
                     "ElementDataFile = LOCAL\n".encode() + b"\0" * 64)
    return path


def _written_cut(name, keep=0.5, compress=False):
    def make(d, attack):
        p = d / name
        attack.write_ct(p, compress=compress)
        return attack.cut(p, keep)
    return make


def _nhdr(data_file: str, data_bytes: int | None):
    def make(d, attack):
        if data_bytes is not None:
            (d / "ct.raw").write_bytes(b"\1" * data_bytes)
        p = d / "ct.nhdr"
        p.write_text(f"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\nendian: little\n"
                     f"data file: {data_file}\n")
        return p
    return make


def _fifo(d, attack):
    p = d / "ct.nrrd"
    os.mkfifo(p)
    return p


def _nan_voxels(d, attack):
    arr = np.zeros((6, 7, 8), np.float32)
    arr[2, 3, 4] = np.nan
    p = d / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    return p


def _vector(d, attack):
    p = d / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7, 8, 3), np.int16), isVector=True), str(p))
    return p


def _image4d(d, attack):
    p = d / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 6, 7, 8), np.int16)), str(p))
    return p


def _text(name, text):
    def make(d, attack):
        p = d / name
        p.write_text(text)
        return p
    return make


def _write(make_fn, *args):
    return lambda d, attack: make_fn(d / args[0], *args[1:])


BOMB_ROWS = [
    ("nifti1 header bomb 32767^3", _write(_nifti1, "ct.nii", (32767, 32767, 32767)), "voxels, more than IMAGIO reads"),
    ("nifti2 header bomb 1e6^3", _write(_nifti2, "ct.nii", (10**6, 10**6, 10**6)), "voxels, more than IMAGIO reads"),
    ("nrrd header bomb 1e5^3", _write(_nrrd, "ct.nrrd", "100000 100000 100000"), "voxels, more than IMAGIO reads"),
    ("metaimage header bomb 1e5^3", _write(_mha, "ct.mha", "100000 100000 100000"), "voxels, more than IMAGIO reads"),
    ("nrrd within the voxel cap, beyond memory", _write(_nrrd, "ct.nrrd", "1200 1200 1400"), "would need 4.03 GB",
     {"IMAGIO_MEMORY_LIMIT": "2G"}),
]

ROWS = BOMB_ROWS + [
    ("nifti cut in half", _written_cut("ct.nii"), "cut short"),
    ("nifti.gz cut in half", _written_cut("ct.nii.gz", compress=True), "cut short"),
    ("nifti.gz cut by its last 16 bytes", _written_cut("ct.nii.gz", keep=0.995, compress=True), "cut short"),
    ("nrrd raw cut in half", _written_cut("ct.nrrd"), "cut short"),
    ("nrrd gzip cut in half", _written_cut("ct.nrrd", compress=True), "cut short"),
    ("metaimage raw cut in half", _written_cut("ct.mha"), "cut short"),
    ("metaimage compressed cut in half", _written_cut("ct.mha", compress=True), "cut short"),
    ("detached nrrd data file short", _nhdr("ct.raw", 1000), "cut short"),
    ("detached nrrd data file is /dev/zero", _nhdr("/dev/zero", None), "device file"),
    ("detached nrrd data file missing", _nhdr("nothere.raw", None), "does not exist"),
    ("nrrd sizes not numbers", _write(_nrrd, "ct.nrrd", "512 abc 10"), "not a list of whole numbers"),
    ("nifti with a zero dimension", _write(_nifti1, "ct.nii", (10, 0, 10)), "empty grid"),
    ("nifti with 0 bits per voxel", _write(_nifti1, "ct.nii", (10, 10, 10), 0), "bits per voxel"),
    ("nifti data offset NaN", _write(_nifti1, "ct.nii", (10, 10, 10), 16, 4, float("nan")), "offset"),
    ("float volume with a NaN voxel", _nan_voxels, "NaN or infinite"),
    ("vector volume (3 values per voxel)", _vector, "values per voxel"),
    ("4D volume", _image4d, "IMAGIO needs a"),
    ("named pipe as --ct", _fifo, "named pipe"),
    ("empty .nrrd file", _text("ct.nrrd", ""), "does not start with a NRRD magic line"),
    ("text named .nii.gz", _text("ct.nii.gz", "not gzip at all" * 40), "compressed header cannot be read"),
    ("text named .mha", _text("ct.mha", "hello\n" * 10), "has no DimSize"),
    ("unknown format", _text("ct.xyz", "hello"), "not an image file"),
]


ROWS = [r if len(r) == 4 else (*r, None) for r in ROWS]


@pytest.mark.parametrize("name, make, needle, env", ROWS, ids=[r[0] for r in ROWS])
def test_file_attack_is_refused(tmp_path, attack, name, make, needle, env):
    inp = tmp_path / "in"
    inp.mkdir()
    ct = make(inp, attack)
    before = attack.digest(inp)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", ct, "--out", out, timeout=120, env=env)
    attack.refused(r, out, needle, before, inp)


@pytest.mark.parametrize("path, needle", [("/dev/zero", "device file"), ("/nonexistent/ct.nrrd", "does not exist"),
                                          ("", "No path given")])
def test_system_paths_are_refused(tmp_path, attack, path, needle):
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", path, "--out", out, timeout=60)
    attack.refused(r, out, needle, {})


@pytest.mark.parametrize("name, compress", [("ct.nii.gz", True), ("ct.nii", False), ("ct.nrrd", True),
                                            ("ct.mha", True), ("ct.mha", False)])
def test_intact_files_still_read_exactly(tmp_path, attack, name, compress):
    """The explicit result: a complete file converts, voxel for voxel."""
    p = tmp_path / name
    img = attack.write_ct(p, compress=compress)
    out = tmp_path / "out"
    r = attack.run("convert", "--ct", p, "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    back = sitk.ReadImage(str(out / "ct.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def _peak_rss_mb(argv, env=None) -> tuple[float, int]:
    """Peak resident memory (MB) and exit status of one child process (os.wait4's rusage: that child only)."""
    e = dict(os.environ)
    e.update(env or {})
    proc = subprocess.Popen([sys.executable, "-m", "imagio.cli", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=e)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, proc.returncode


def test_header_bombs_use_no_more_memory_than_a_small_valid_file(tmp_path, attack):
    """Peak memory of each refused header bomb against the peer: `convert` of a valid 24x20x12 CT."""
    small = tmp_path / "small.nrrd"
    attack.write_ct(small)
    peer, rc = _peak_rss_mb(["convert", "--ct", small, "--out", tmp_path / "peer"])
    assert rc == 0
    for n, (name, make, _, *env) in enumerate(BOMB_ROWS):
        d = tmp_path / f"b{n}"
        d.mkdir()
        peak, rc = _peak_rss_mb(["convert", "--ct", make(d, attack), "--out", tmp_path / f"o{n}"], *env)
        assert rc == 2, name
        print(f"{name}: peak {peak:.0f} MB (peer {peer:.0f} MB)")
        assert peak <= peer + 64, (name, peak, peer)  # declared 2 GB to 2 PB: nothing of it allocated


def test_native_library_output_is_captured(tmp_path, attack):
    """Item 6 (ITK/MetaIO output): a compressed MetaImage cut in half makes ITK's MetaImageIO print its own
    error on the process's stderr. With --debug that raw text is shown (so the row does provoke it); without,
    the user sees IMAGIO's one line only."""
    ct = tmp_path / "ct.mha"
    attack.write_ct(ct, compress=True)
    attack.cut(ct, 0.5)
    before = attack.digest(ct)
    r = attack.run("--debug", "convert", "--ct", ct, "--out", tmp_path / "dbg", timeout=120)
    assert "native library output" in r.stderr and "MetaImageIO" in r.stderr, r.stderr[-2000:]
    r = attack.run("convert", "--ct", ct, "--out", tmp_path / "out", timeout=120)
    line = attack.refused(r, tmp_path / "out", "cut short", before, ct)
    assert "MetaImageIO" not in r.stderr and "ITK ERROR" not in r.stderr, line
