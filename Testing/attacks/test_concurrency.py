"""Attack class "concurrency": runs that race for one --out folder, or read one input at the same time.

Two processes started together into the same new --out: each stages in its own hidden folder; the first to
publish wins with its whole result, the other is refused with the one-line error (without --overwrite) or
replaces the first as a whole (with it). --out never holds a mix of two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

RACE = """
import sys, time
t0 = float(sys.argv[3])
while time.time() < t0:
    time.sleep(0.001)
from imagio.cli import main
sys.exit(main(["convert", "--ct", sys.argv[1], "--out", sys.argv[2]] + sys.argv[4:]))
"""


def _race(ct, out, n=2, extra=()):
    start = time.time() + 3.0  # both processes have imported Python by then
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(ct), str(out), str(start), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    return [(p, *p.communicate(timeout=300)) for p in procs]


def _one_whole_result(out, ct_path):
    names = sorted(p.name for p in out.iterdir())
    assert names == [".imagio-output.json", "case.json", "ct.nrrd"], names
    assert json.loads((out / "case.json").read_text())["source_ct"] == str(ct_path)
    assert not [p for p in out.parent.iterdir() if ".imagio-staging-" in p.name or ".imagio-old-" in p.name]


@pytest.mark.parametrize("overwrite", [False, True], ids=["without --overwrite", "with --overwrite"])
def test_two_runs_into_one_out(tmp_path, attack, overwrite):
    ct = tmp_path / "ct.nrrd"
    attack.write_ct(ct, shape_kji=(40, 64, 64))
    before = attack.digest(ct)
    out = tmp_path / "out"
    results = _race(ct, out, 2, ["--overwrite"] if overwrite else [])
    codes = sorted(p.returncode for p, _, _ in results)
    if overwrite:
        assert codes == [0, 0], [e for _, _, e in results]
    else:
        assert codes in ([0, 2], [0, 0]), [e for _, _, e in results]  # [0, 0]: the second started after the first
        for p, _, err in results:
            if p.returncode == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("imagio: error: --out ") and (
                    "exists and is not empty" in lines[0] or "was filled while IMAGIO was running" in lines[0]), err
    _one_whole_result(out, ct)
    assert attack.digest(ct) == before


def test_parallel_reads_of_one_input_agree(tmp_path, attack):
    ct = tmp_path / "ct.nrrd"
    attack.write_ct(ct, shape_kji=(40, 64, 64))
    results = []
    start = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(ct), str(tmp_path / f"out{n}"), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    for n, p in enumerate(procs):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(attack.digest(tmp_path / f"out{n}" / "ct.nrrd").popitem()[1])
    assert len(set(results)) == 1
    assert os.path.getsize(ct) > 0
