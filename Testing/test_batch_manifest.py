"""The `imagio batch` manifest: each row becomes the step's own command line; bad manifests exit 2, run nothing.

No cluster is started here (quick): a bad manifest is refused before Dask is even imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imagio.batch_case import HEADLINES, headline_numbers
from imagio.batch_manifest import STEP_COMMANDS, read_manifest, sha256_path, step_parser
from imagio.cli import build_parser, main
from imagio.errors import ImagioError


@pytest.fixture()
def files(tmp_path):
    d = tmp_path / "cases" / "p1"
    d.mkdir(parents=True)
    for name in ("tumor.seg.nrrd", "zone.seg.nrrd", "ct.nrrd", "vessels.seg.nrrd", "ribs.seg.nrrd"):
        (d / name).write_bytes(name.encode() * 3)  # content only matters for the hashes here
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    p = folder / "manifest.csv"
    p.write_text(text)
    return p


def test_rows_become_the_step_command_lines(files):
    m = read_manifest(_write(files, (
        "case_id,step,tumor,ablation,device,margin_mm,avoid,ct,seed,kind,largest_component,register,tip,entry,"
        "power,time\n"
        "p1-margin,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,,,,,,,,none,,,,\n"
        "# a comment row\n"
        "\n"
        "p1-plan,ablation-plan,cases/p1/tumor.seg.nrrd,,emprint,7.5,cases/p1/vessels.seg.nrrd; cases/p1/ribs.seg.nrrd,"
        ",,,,,,,,\n"
        'p1-seg,segment,,,,,,cases/p1/ct.nrrd,"-57.5,30,-120",liver-tumor,yes,,,,,\n'
        'p1-zone,ablation-zone,cases/p1/tumor.seg.nrrd,,emprint,,,,,,,,"-10,2,3","-40,2,3",45,300\n')))
    base = files / "cases" / "p1"
    by = {c.case_id: c for c in m.cases}
    assert list(by) == ["p1-margin", "p1-plan", "p1-seg", "p1-zone"]  # comments and blank rows skipped
    assert by["p1-margin"].argv == ["margin", f"--tumor={base / 'tumor.seg.nrrd'}",
                                    f"--ablation={base / 'zone.seg.nrrd'}", "--register=none"]
    assert by["p1-plan"].argv == ["ablation", "plan", f"--tumor={base / 'tumor.seg.nrrd'}", "--device=emprint",
                                  "--margin-mm=7.5", "--avoid", str(base / "vessels.seg.nrrd"),
                                  str(base / "ribs.seg.nrrd")]
    # negative coordinates survive (the option=value form), and a flag column becomes the bare flag
    assert by["p1-seg"].argv == ["segment", f"--ct={base / 'ct.nrrd'}", "--seed=-57.5,30,-120", "--kind=liver-tumor",
                                 "--largest-component"]
    assert by["p1-zone"].argv[-4:] == ["--tip=-10,2,3", "--entry=-40,2,3", "--power=45", "--time=300"]
    # the very parser of `imagio <step>` accepts each of them
    parser = build_parser()
    for c in m.cases:
        ns = parser.parse_args([*c.argv, "--out", "x"])
        assert ns.func is step_parser(parser, c.step).get_default("func")
    # inputs are hashed (shared files once), paths made absolute against the manifest's folder
    assert by["p1-plan"].input_sha256["avoid"] == [sha256_path(base / "vessels.seg.nrrd"),
                                                   sha256_path(base / "ribs.seg.nrrd")]
    assert by["p1-margin"].inputs["tumor"] == [str(base / "tumor.seg.nrrd")]
    assert by["p1-margin"].options_sha256() != by["p1-plan"].options_sha256()


def test_folder_hash_changes_with_any_file(tmp_path):
    d = tmp_path / "dicom"
    d.mkdir()
    (d / "a.dcm").write_bytes(b"1")
    (d / "b.dcm").write_bytes(b"2")
    h = sha256_path(d)
    (d / "b.dcm").write_bytes(b"3")
    assert sha256_path(d) != h
    (d / "b.dcm").write_bytes(b"2")
    assert sha256_path(d) == h


@pytest.mark.parametrize("body,expect", [
    ("c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\nc2,biopsy,cases/p1/tumor.seg.nrrd,\n",
     "line 3 (case c2): unknown step 'biopsy'"),
    ("c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\nc1,margin,cases/p1/tumor.seg.nrrd,"
     "cases/p1/zone.seg.nrrd\n", "line 3 (case c1): duplicate case_id (first on line 2)"),
    ("c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/missing.seg.nrrd\n",
     "line 2 (case c1): column ablation: cases/p1/missing.seg.nrrd does not exist"),
    ("c1,margin,cases/p1/tumor.seg.nrrd,\n",  # the step's own parser: a required option is missing
     "line 2 (case c1): imagio margin: the following arguments are required: --ablation"),
    ("c1,margin,,cases/p1/zone.seg.nrrd\n", "the following arguments are required: --tumor"),
    ("../c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\n", "is not a usable folder name"),
    ("summary.csv,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\n", "is not a usable folder name"),
    ("c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,extra\n", "line 2: 5 cells but the header has 4"),
])
def test_bad_rows_are_named(files, body, expect):
    with pytest.raises(ImagioError, match="problem") as e:
        read_manifest(_write(files, "case_id,step,tumor,ablation\n" + body))
    assert expect in str(e.value), str(e.value)
    assert "nothing was run" in str(e.value)


@pytest.mark.parametrize("header,row,expect", [
    ("case_id,step,tumor,ablation,tumour_name", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,GTV",
     "unknown column(s) tumour_name: no step has --tumour-name"),
    ("case_id,step,tumor,ablation,device", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,emprint",
     "line 2 (case c1): step margin has no option --device"),
    # a column of another step, empty in this manifest's rows, is fine (a manifest filtered to some rows)
    ("case_id,step,tumor,ablation,device,foo", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,,",
     "1 problem(s): unknown column(s) foo"),
    ("case_id,step,tumor,ablation,out", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,x",
     "column 'out' is not allowed"),
    ("case_id,step,tumor,ablation,help", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,yes",
     "unknown column(s) help"),
    ("case_id,tumor,ablation", "c1,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd", "has no 'step' column"),
    ("case_id,step,tumor,tumor", "c1,margin,a,b", "names column(s) tumor twice"),
    ("case_id,step,tumor,ablation,register", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,affine",
     "argument --register: invalid choice: 'affine'"),
    ("case_id,step,tumor,ablation,threshold_mm", "c1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,five",
     "imagio margin: argument --threshold-mm: 'five' is not a number"),
])
def test_bad_columns_and_values(files, header, row, expect):
    with pytest.raises(ImagioError) as e:
        read_manifest(_write(files, f"{header}\n{row}\n"))
    assert expect in str(e.value), str(e.value)


def test_option_of_another_step_in_a_row(files):
    text = ("case_id,step,tumor,ablation,device\n"
            "c1,ablation-plan,cases/p1/tumor.seg.nrrd,,emprint\n"
            "c2,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd,emprint\n")
    with pytest.raises(ImagioError, match=r"line 3 \(case c2\): step margin has no option --device"):
        read_manifest(_write(files, text))


def test_cli_exits_2_and_writes_nothing(files, capsys):
    man = _write(files, "case_id,step,tumor,ablation\nc1,margin,cases/p1/tumor.seg.nrrd,cases/p1/nope.seg.nrrd\n")
    out = files / "out"
    assert main(["batch", "--manifest", str(man), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imagio: error: Manifest") and "nope.seg.nrrd" in err[0]
    assert not out.exists()
    assert main(["batch", "--manifest", str(files / "none.csv"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        main(["batch", "--manifest", str(man), "--out", str(out), "--workers", "0"])
    assert e.value.code == 2 and "--workers: '0' is out of range" in capsys.readouterr().err
    assert not out.exists()


def test_non_empty_out_needs_resume(files, capsys):
    man = _write(files, "case_id,step,tumor,ablation\nc1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\n")
    out = files / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["batch", "--manifest", str(man), "--out", str(out), "--workers", "1"]) == 2
    assert "is not empty. Use --resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # inputs inside a case folder of the output would be replaced by it: refused
    inside = files / "out2" / "c1"
    inside.mkdir(parents=True)
    (inside / "t.seg.nrrd").write_bytes(b"t")
    man2 = _write(files, "case_id,step,tumor,ablation\nc1,margin,out2/c1/t.seg.nrrd,cases/p1/zone.seg.nrrd\n")
    assert main(["batch", "--manifest", str(man2), "--out", str(files / "out2"), "--resume"]) == 2
    assert "lies inside a case folder" in capsys.readouterr().err


def test_every_step_maps_to_a_command_or_is_refused_by_name(files):
    import argparse

    parser = build_parser()
    # every step of issue 15's list is a command of this imagio
    assert {s for s in STEP_COMMANDS if step_parser(parser, s) is not None} == set(STEP_COMMANDS) == {
        "segment", "lungnav", "margin", "ablation-zone", "ablation-plan", "ablation-replan", "export-dicom", "demo"}
    assert set(HEADLINES) == set(STEP_COMMANDS)
    # an imagio without a step's command (e.g. a trimmed build) refuses that row by name
    trimmed = argparse.ArgumentParser(prog="imagio")
    sub = trimmed.add_subparsers()
    sub.add_parser("margin").add_argument("--out")
    for step in ("export-dicom", "ablation-replan"):
        with pytest.raises(ImagioError, match=f"step '{step}' needs `imagio {' '.join(STEP_COMMANDS[step])}`"):
            read_manifest(_write(files, f"case_id,step\nc1,{step}\n"), root_parser=trimmed)


def test_headline_numbers_are_read_from_the_step_json(tmp_path):
    d = tmp_path / "margin"
    d.mkdir()
    (d / "margin.json").write_text('{"minimal_margin_mm": 4.076, "coverage_percent": 100.0, "residual_tumor_ml": 0.0,'
                                   ' "p_margin_ge_threshold": 0.25, "threshold_mm": 5.0, "verdict": "insufficient",'
                                   ' "runtime_s": 3.2, "notes": ["x"]}')
    assert headline_numbers("margin", d) == {"minimal_margin_mm": 4.076, "coverage_percent": 100.0,
                                             "residual_tumor_ml": 0.0, "threshold_mm": 5.0,
                                             "verdict": "insufficient", "p_margin_ge_threshold_percent": 25.0}
    r = tmp_path / "lungnav"
    r.mkdir()
    (r / "route.json").write_text('{"reachable": false, "path_length_mm": 246.4, "generation": 6, '
                                  '"gap_to_target_mm": 40.5, "route_points_ras": [[1, 2, 3]]}')
    assert headline_numbers("lungnav", r) == {"route_length_mm": 246.4, "reachable": False, "generation": 6,
                                              "gap_to_target_mm": 40.5}
    # a step without a curated list (e.g. a new one): numbers whose key names a unit, and yes/no fields
    x = tmp_path / "ablation-replan"
    x.mkdir()
    (x / "replan.json").write_text('{"residual_ml": 1.5, "feasible": true, "probes": 2, "run_time_s": 1, '
                                   '"minimal_margin_mm": 2.0, "note": "n"}')
    assert headline_numbers("ablation-replan", x) == {"residual_ml": 1.5, "feasible": True, "minimal_margin_mm": 2.0}
    # export-dicom: the exported segments, the SR's measurements and dciodvfy's own errors
    e = tmp_path / "export-dicom"
    e.mkdir()
    (e / "export.json").write_text('{"segments": [{"label": "GTV", "volume_ml": 53.2954}, {"label": "zone", '
                                   '"volume_ml": 120.5}], "measurements": [{}, {}, {}], "seg": {"frames": 40}, '
                                   '"validation": {"seg": {"errors": []}, "sr": {"errors": ["Error - x"]}}}')
    assert headline_numbers("export-dicom", e) == {"volume_ml": 173.7954, "segment_count": 2, "segments": "GTV; zone",
                                                   "measurement_count": 3, "seg_frames": 40, "dciodvfy_seg_errors": 0,
                                                   "dciodvfy_sr_errors": 1}
    (e / "export.json").write_text('{"segments": [], "measurements": [], "validation": {"dciodvfy": "not found"}}')
    assert headline_numbers("export-dicom", e) == {"volume_ml": None, "segment_count": 0, "segments": "",
                                                   "measurement_count": 0, "seg_frames": None}


def test_batch_imports_without_dask_and_says_what_to_install(files):
    """The step code and `imagio batch`'s own module import without dask; running a batch asks for the extra."""
    man = _write(files, "case_id,step,tumor,ablation\nc1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\n")
    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
            "import imagio.batch, IMAGIOMarginLib.cli, IMAGIOPlanningLib.cli\n"
            "from imagio.cli import main\n"
            f"sys.exit(main(['batch', '--manifest', {str(man)!r}, '--out', {str(files / 'o')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "needs dask.distributed" in r.stderr and "pip install 'imagio[batch]'" in r.stderr
    assert "Traceback" not in r.stderr and not (files / "o").exists()
    code = "import sys, imagio.batch, imagio.cli; imagio.cli.build_parser(); print('dask' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stdout + r.stderr


def test_overwrite_and_resume_rules(files, capsys):
    man = _write(files, "case_id,step,tumor,ablation\nc1,margin,cases/p1/tumor.seg.nrrd,cases/p1/zone.seg.nrrd\n")
    out = files / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for flag in ("--overwrite", "--resume"):  # a folder that no batch wrote is never taken over
        assert main(["batch", "--manifest", str(man), "--out", str(out), flag]) == 2
        assert "was not written by imagio batch" in capsys.readouterr().err
    assert main(["batch", "--manifest", str(man), "--out", str(out), "--overwrite", "--resume"]) == 2
    assert "Give one of them" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_progress_bar_on_a_terminal_and_lines_on_a_log():
    import io

    from imagio.batch import _Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = _Progress(10, stream=tty)
    for done in range(11):
        p.update(done, done // 4, min(2, 10 - done), force=True)
    p.close()
    text = tty.getvalue()
    assert text.count("\n") == 1 and text.count("\r") == 11  # one live line, redrawn
    assert "batch [" + "#" * 30 + "] 10/10 done, 2 failed, 0 running" in text
    assert "3/10 done, 0 failed, 2 running" in text and "min left" in text
    log = io.StringIO()
    p = _Progress(40, stream=log)
    for done in range(41):
        p.update(done, 0, 2)
    lines = log.getvalue().splitlines()
    assert 4 <= len(lines) <= 6 and lines[-1].startswith("batch: 40/40 cases done")  # a few lines, not 40
