"""Attack class "outputs": --out folders that are unusable, taken, hold inputs, or are killed while written.

Every command stages its files in a hidden sibling of --out and publishes them with one rename, so --out
holds a whole result or nothing. The rows use `imagio convert` (quick) unless the promise needs a longer run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture
def case(tmp_path, attack):
    d = tmp_path / "in"
    d.mkdir()
    ct = d / "ct.nrrd"
    attack.write_ct(ct)
    return d, ct


def _file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    return f


ROWS = [
    ("--out ''", lambda t, d: "", "--out is empty"),
    ("--out under /proc", lambda t, d: "/proc/imagio-out", "on the system's proc file system"),
    ("--out under /sys", lambda t, d: "/sys/kernel/imagio-out", "sysfs file system"),
    ("--out /dev/null", lambda t, d: "/dev/null", "exists and is not a folder"),
    ("--out under a file", lambda t, d: _file(t) / "out", "is a file, so no folder can be made under it"),
    ("--out is a file", lambda t, d: _file(t), "exists and is not a folder"),
    ("--out is the input folder", lambda t, d: d, "would overwrite an input"),
]


@pytest.mark.parametrize("name, out, needle", ROWS, ids=[r[0] for r in ROWS])
def test_unusable_out_is_refused(tmp_path, attack, case, name, out, needle):
    d, ct = case
    out = out(tmp_path, d)
    before = attack.digest(tmp_path)
    r = attack.main("convert", "--ct", ct, "--out", out)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(err) == 1 and needle in err[0], r.stderr
    assert attack.digest(tmp_path) == before  # nothing written anywhere, inputs unchanged
    assert not [p for p in tmp_path.iterdir() if ".imagio-" in p.name]


def test_taken_out_is_refused_then_replaced_only_with_overwrite(tmp_path, attack, case):
    d, ct = case
    out = tmp_path / "out"
    assert attack.main("convert", "--ct", ct, "--out", out).returncode == 0
    first = attack.digest(out)
    (out / "mine.txt").write_text("a note the user put there")
    r = attack.main("convert", "--ct", ct, "--out", out)
    assert r.returncode == 2 and "exists and is not empty" in r.stderr and "--overwrite" in r.stderr
    assert (out / "mine.txt").exists()
    r = attack.main("convert", "--ct", ct, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (out / "mine.txt").exists()  # replaced as a whole: never a mix of two runs
    assert attack.digest(out).keys() == first.keys()
    assert not [p for p in tmp_path.iterdir() if ".imagio-" in p.name]


def test_overwrite_refuses_a_folder_imagio_did_not_write(tmp_path, attack, case):
    d, ct = case
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    before = attack.digest(mine)
    r = attack.main("convert", "--ct", ct, "--out", mine, "--overwrite")
    assert r.returncode == 2 and "was not written by IMAGIO" in r.stderr
    assert attack.digest(mine) == before


def test_overwrite_refuses_an_out_holding_the_input(tmp_path, attack, case):
    d, ct = case
    out = tmp_path / "out"
    assert attack.main("convert", "--ct", ct, "--out", out).returncode == 0
    r = attack.main("convert", "--ct", out / "ct.nrrd", "--out", out, "--overwrite")
    assert r.returncode == 2 and "would overwrite an input" in r.stderr
    assert (out / "ct.nrrd").exists()


KILLABLE = """
import sys, time
import imagio.phantom as ph
def slow_write(phantom, out):
    (out / "summary.json").write_text('{"complete": true}')
    (out / "scene.mrb").write_bytes(b"half")
    time.sleep(120)
ph.make_phantom = lambda seed: None
ph.write_phantom = slow_write
from imagio.cli import main
sys.exit(main(["phantom", "--out", sys.argv[1]]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_run_killed_while_writing_leaves_no_result(tmp_path, tmp_path_factory, attack, sig):
    """Issue 13: a run killed while its outputs moved into --out left a complete-looking summary.json beside a
    truncated scene.mrb. Now --out never appears; a SIGKILLed run's hidden staging is removed by the next run."""
    out = tmp_path / "ph"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t = time.time()
    while not list(tmp_path.glob(".ph.imagio-staging-*/scene.mrb")) and time.time() - t < 120:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert not out.exists()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert len(list(tmp_path.glob(".ph.imagio-staging-*"))) == 1  # hidden, and no --out
        ct = tmp_path_factory.mktemp("ct") / "ct.nrrd"
        attack.write_ct(ct)
        r = attack.main("convert", "--ct", ct, "--out", tmp_path / "other")  # a later run beside it cleans up
        assert r.returncode == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
    else:
        assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
        assert len(err.strip().splitlines()) == 1
        assert list(tmp_path.iterdir()) == []


def test_published_folder_is_whole(tmp_path, attack, case):
    """Explicit result: the published folder holds every file, and IMAGIO's marker saying which command wrote it."""
    d, ct = case
    out = tmp_path / "out"
    assert attack.main("convert", "--ct", ct, "--out", out).returncode == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [".imagio-output.json", "case.json", "ct.nrrd"]
    marker = json.loads((out / ".imagio-output.json").read_text())
    assert marker["written_by"].startswith("imagio ")
    assert os.stat(out).st_dev == os.stat(tmp_path).st_dev


# ---------------------------------------------------------------------------------------------- a full disk
# Each row runs a real step with --out on a small tmpfs that fills while the step writes. The tmpfs is mounted in
# a private mount namespace (unshare --mount as root, else a user namespace), so nothing stays mounted afterwards;
# the shell lists what is left on it before the namespace ends. The size (and a filler file) puts the end of the
# space inside the named file: pages of 4 KiB, sizes of today's outputs (ablation.json 3.3 KB, zone.seg.nrrd 4.3 KB,
# ablation.mrb 70 KB, report.html 95 KB, report.pdf 124 KB; STS-002's seg.dcm 68 KB).
IN_TMPFS = r"""
mnt=$1; size=$2; fill=$3; shift 3
mount -t tmpfs -o size="$size" imagio-full "$mnt" || exit 97
if [ "$fill" -gt 0 ]; then head -c "$fill" /dev/zero > "$mnt/filler" || exit 98; fi
"$@"; rc=$?
find "$mnt" -mindepth 1 -printf '%P\n' | sort > "$mnt.left"
exit $rc
"""
NAMESPACES = (["unshare", "--mount", "--propagation", "private"],
              ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"])


@pytest.fixture(scope="module")
def in_tmpfs(tmp_path_factory):
    """A function running a command with a fresh tmpfs of ``size`` bytes mounted on ``mnt``; skips where no mount
    namespace can be made (no unshare, or user namespaces disabled), with the reason."""
    probe = tmp_path_factory.mktemp("probe")
    reasons = []
    for prefix in NAMESPACES:
        try:
            r = subprocess.run([*prefix, "sh", "-c", IN_TMPFS, "sh", str(probe), "4k", "0", "true"],
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            reasons.append(f"{' '.join(prefix)}: {e}")
            continue
        if r.returncode == 0:
            break
        reasons.append(f"{' '.join(prefix)}: exit {r.returncode} {r.stderr.strip()[-200:]}")
    else:
        pytest.skip("no tmpfs can be mounted here (" + "; ".join(reasons) + ")")

    def run(mnt, size, fill, *args, env=None, timeout=300):
        mnt.mkdir()
        cmd = [*prefix, "sh", "-c", IN_TMPFS, "sh", str(mnt), str(size), str(fill), sys.executable, "-m", "imagio.cli",
               *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        assert r.returncode not in (97, 98), r.stderr  # the tmpfs itself could not be made
        left = (mnt.parent / f"{mnt.name}.left").read_text().split()
        return r, left

    return run


def _noise_ct(d):
    """A CT whose compressed NRRD stays large (0.64 MB): uniform noise, 100 x 100 x 40 int16."""
    import numpy as np
    import SimpleITK as sitk

    d.mkdir()
    img = sitk.GetImageFromArray(np.random.default_rng(13).integers(-1000, 1000, (40, 100, 100)).astype(np.int16))
    sitk.WriteImage(img, str(d / "ct.nrrd"), True)
    return [d / "ct.nrrd"]


def _sts002(d):
    from imagio.testing import data_path

    return [data_path("sarcoma-sts002/dicom/image"), data_path("sarcoma-sts002/dicom/mask/RS.dcm")]


ZONE_ARGS = ["ablation", "zone", "--device", "emprint", "--power", "75", "--time", "300", "--tip", "1,2,3",
             "--entry", "1,2,90"]
FULL_ROWS = [
    # id, inputs, argv (from the inputs), tmpfs size, filler bytes, the file being written when the space ends
    ("convert: ct.nrrd by ITK's NRRD writer", _noise_ct, lambda i: ["convert", "--ct", i[0]], "64k", 0, "ct.nrrd"),
    ("ablation zone: ablation.json by Python, disk already full", lambda d: [], lambda i: ZONE_ARGS, "4k", 4096,
     "ablation.json"),
    ("ablation zone: zone.seg.nrrd by VTK's writer", lambda d: [], lambda i: ZONE_ARGS, "4k", 0, "zone.seg.nrrd"),
    ("ablation zone: ablation.mrb copied in from the temporary folder", lambda d: [], lambda i: ZONE_ARGS, "16k", 0,
     "ablation.mrb"),
    ("ablation zone: report.pdf by matplotlib", lambda d: [], lambda i: ZONE_ARGS, "256k", 0, "report.pdf"),
    ("export-dicom: seg.dcm by pydicom", _sts002, lambda i: ["export-dicom", "--ct", i[0], "--seg", i[1]], "32k", 0,
     "seg.dcm"),
]


@pytest.mark.parametrize("name, inputs, argv, size, fill, writing", FULL_ROWS, ids=[r[0] for r in FULL_ROWS])
def test_disk_full_while_writing_is_refused(tmp_path, attack, in_tmpfs, name, inputs, argv, size, fill, writing):
    """Issue 13: a full disk (ENOSPC) while a step writes --out. ITK's writer raised a RuntimeError with its own
    multi-line text (exit 1, 'internal error'); Python's and shutil's OSErrors without a file name inside the staging
    folder were internal errors too; VTK's writer said "Check that the folder exists and is writable". Now every
    one is the same refusal naming the disk, the file and what to do, and the tmpfs holds only what was there."""
    if "export-dicom" in name:
        pytest.importorskip("highdicom", reason="highdicom (test extra) writes the DICOM SEG")
    files = inputs(tmp_path / "in")
    before = attack.digest(*files)
    mnt = tmp_path / "disk"
    r, left = in_tmpfs(mnt, size, fill, *argv(files), "--out", mnt / "out")
    line = attack.refused(r, mnt / "out", "no space left on the disk holding", before, *files)
    assert writing in line and "free disk space" in line.lower(), line
    assert left == (["filler"] if fill else []), left  # nothing published, no staging left, the filler kept


def test_full_temporary_folder_is_named(tmp_path, attack, in_tmpfs):
    """The scene (ablation.mrb) is assembled in the temporary folder and then copied into --out: with TMPDIR on a full
    disk and --out on a disk with space, the refusal names the temporary folder and TMPDIR (before: "Could not write the
    scene bundle <the hidden staging folder>/ablation.mrb. Check free disk space and permissions", about the wrong disk)."""
    mnt, out = tmp_path / "tmp", tmp_path / "out"
    r, left = in_tmpfs(mnt, "16k", 0, *ZONE_ARGS, "--out", out, env={"TMPDIR": str(mnt)})
    line = attack.refused(r, out, "no space left in the temporary folder", {})
    assert str(mnt) in line and "TMPDIR" in line, line
    assert left == [], left
