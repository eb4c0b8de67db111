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
