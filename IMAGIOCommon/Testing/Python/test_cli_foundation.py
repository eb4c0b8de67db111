"""The command line's foundation: values as typed, bounded numbers, the --out policy, signals, progress lines."""

from __future__ import annotations

import argparse
import errno
import io as pyio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imagio import cli_utils
from imagio.cli import build_parser, main
from imagio.cli_utils import (
    MARKER,
    ArgumentParser,
    check_out_dir,
    iter_parsers,
    number,
    parse_point,
    point,
    staged_output,
)
from imagio.errors import ImagioError
from imagio.progress import Progress, terminal_progress

REPO = Path(__file__).resolve().parents[3]


def _commands(parser, prefix=()):
    """(argv prefix, parser) for every command that runs (has a handler) below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))
    if prefix and parser.get_default("func") is not None:
        yield prefix, parser


def _accepts(action, text) -> bool:
    if action.type is None:
        return True
    try:
        action.type(text)
        return True
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def _filler(action):
    """A value the option's own type accepts (a number, a point, a probe pair, or a word)."""
    if action.choices:
        return str(next(iter(action.choices)))
    return next(t for t in ("x", "1", "1,2,3", "1,2,3:4,5,6") if _accepts(action, t))


def _typed(action, text):
    """``text`` as the option takes it: a point, or a TIP:ENTRY pair of the same point."""
    return text if _accepts(action, text) else f"{text}:{text}"


def _argv(prefix, parser, option=None, value=None):
    """A complete command line for ``parser``: every required option filled, ``option`` set to ``value``."""
    argv = list(prefix)
    chosen = {option} if option else set()
    for group in parser._mutually_exclusive_groups:
        if group.required:
            names = [a.option_strings[0] for a in group._group_actions]
            if not chosen & set(names):
                chosen.add(names[0])
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction,)):
            continue
        name = action.option_strings[0]
        if name == option:
            argv += [name, value]
        elif (action.required or name in chosen) and action.nargs != 0:
            argv += [name, _filler(action)]
        elif name in chosen:
            argv += [name]
    return argv


PARSER = build_parser()
COMMANDS = list(_commands(PARSER))
POINT_OPTIONS = [(prefix, p, a.option_strings[0]) for prefix, p in COMMANDS for a in p._actions
                 if a.option_strings and a.help and "R,A,S" in a.help and "file" not in a.help]
NUMBER_OPTIONS = [(prefix, p, a.option_strings[0], a.type) for prefix, p in COMMANDS for a in p._actions
                  if a.option_strings and isinstance(a.type, cli_utils.Number)]


def test_every_parser_is_ours_and_has_overwrite_with_out():
    names = {" ".join(prefix) for prefix, _ in COMMANDS}
    assert {"segment", "lungnav", "ablation zone", "ablation plan", "margin", "demo", "phantom", "convert"} <= names
    for p in iter_parsers(PARSER):
        assert isinstance(p, ArgumentParser), p.prog
        if "--out" in p._option_string_actions:
            assert "--overwrite" in p._option_string_actions, p.prog


def test_point_options_take_negative_values_as_typed():
    found = {(" ".join(prefix), opt) for prefix, _, opt in POINT_OPTIONS}
    # the three of issue 14 and the other point options
    assert {("lungnav", "--target"), ("segment", "--seed"), ("ablation zone", "--tip"),
            ("ablation zone", "--entry"), ("lungnav", "--start")} <= found, found
    for prefix, parser, opt in POINT_OPTIONS:
        action = parser._option_string_actions[opt]
        for text, expected in (("-12.5,30,40", [-12.5, 30, 40]), ("-57,-10,3", [-57, -10, 3]),
                               ("-1e1,-.5,-0", [-10, -0.5, 0]), ("-3, 4, 5", [-3, 4, 5])):
            ns = PARSER.parse_args(_argv(prefix, parser, opt, _typed(action, text)))
            value = getattr(ns, action.dest)
            for v in (value if isinstance(value, list) else [value]):  # action="append"
                for point_value in (v if isinstance(v, tuple) else (v,)):  # TIP:ENTRY pairs
                    assert np.allclose(parse_point(point_value), expected), (prefix, opt, text, value)


def test_number_options_refuse_nan_inf_and_absurd_magnitudes(capsys):
    assert len(NUMBER_OPTIONS) >= 12
    for prefix, parser, opt, _ in NUMBER_OPTIONS:
        for bad in ("nan", "-inf", "inf", "1e308", "-1e308", "abc"):
            with pytest.raises(SystemExit) as e:
                PARSER.parse_args(_argv(prefix, parser, opt, bad))
            assert e.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("imagio: error: argument " + opt), err
            assert bad in err[0] and ("finite" in err[0] or "range" in err[0] or "not a number" in err[0]), err


def test_number_type_messages_and_ranges():
    t = number(min=0, max=3600, unit="s", min_inclusive=False)
    assert t("12.5") == 12.5 and t("3600") == 3600
    for bad, needle in (("0", "more than 0 s and at most 3600 s"), ("-1", "out of range"), ("nan", "finite"),
                        ("3600.1", "out of range"), ("x", "not a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=needle):
            t(bad)
    n = number(min=1, max=10, integer=True)
    assert n("3") == 3 and n("4.0") == 4 and isinstance(n("4.0"), int)
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        n("2.5")
    big = number(integer=True)
    with pytest.raises(argparse.ArgumentTypeError, match="out of range"):
        big(str(10**400))
    assert big(str(2**32 - 1)) == 2**32 - 1
    with pytest.raises(ImagioError, match="--samples: 'nan' is not a finite number"):
        number().check("nan", "--samples")
    assert np.allclose(point("-1,2,-3"), [-1, 2, -3])
    with pytest.raises(argparse.ArgumentTypeError, match="within"):
        point("1e6,0,0")
    with pytest.raises(ImagioError, match="R,A,S"):
        parse_point("1,nan,3")


def test_parse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        PARSER.parse_args(["lungnav", "--ct", "x", "--target"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected one argument" in err[0] and "imagio lungnav --help" in err[0]


# ---------------------------------------------------------------------------------------------- --out policy
def _write_result(stage: Path, text="new"):
    (stage / "summary.json").write_text(json.dumps({"v": text}))
    (stage / "sub").mkdir()
    (stage / "sub" / "data.bin").write_bytes(b"\0" * 10)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_staged_output_publishes_once_and_refuses_reuse(tmp_path):
    out = tmp_path / "a" / "b" / "out"  # parents created only when publishing
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            assert stage.parent == tmp_path and stage.name.startswith(".out.imagio-staging-")
            assert os.stat(stage).st_dev == os.stat(tmp_path).st_dev
            _write_result(stage)
            raise RuntimeError("boom")
    assert _siblings(tmp_path) == []  # nothing written, not even the parents
    with staged_output(out) as stage:
        _write_result(stage, "first")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "sub", "summary.json"]
    assert (out / "sub" / "data.bin").stat().st_size == 10
    assert _siblings(out.parent) == ["out"]  # no staging left beside it
    with pytest.raises(ImagioError, match="exists and is not empty.*--overwrite"):
        with staged_output(out) as stage:
            _write_result(stage, "second")
    assert json.loads((out / "summary.json").read_text()) == {"v": "first"}
    with staged_output(out, overwrite=True) as stage:
        (stage / "summary.json").write_text(json.dumps({"v": "third"}))
    assert json.loads((out / "summary.json").read_text()) == {"v": "third"}
    assert not (out / "sub").exists()  # the old folder is gone, not mixed with the new one
    assert _siblings(out.parent) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_output(empty) as stage:  # an existing empty folder is fine
        _write_result(stage)
    assert (empty / "summary.json").exists()
    assert (empty.stat().st_mode & 0o777) == (0o777 & ~_umask())


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_overwrite_never_deletes_inputs_or_foreign_folders(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as stage:
        _write_result(stage)
    (out / "ct.nrrd").write_bytes(b"precious")
    with pytest.raises(ImagioError, match="overwrite an input"):
        with staged_output(out, inputs=[out / "ct.nrrd"], overwrite=True) as stage:
            _write_result(stage)
    assert (out / "ct.nrrd").read_bytes() == b"precious"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ImagioError, match="not written by IMAGIO"):
        check_out_dir(mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("bad, needle", [
    ("", "--out is empty"),
    ("   ", "--out is empty"),
    ("/proc/imagio-out", "proc file system"),
    ("/sys/imagio-out", "sysfs file system"),
])
def test_unusable_out_is_a_user_error(bad, needle):
    with pytest.raises(ImagioError, match=needle):
        check_out_dir(bad)


def test_out_under_a_file_or_unwritable(tmp_path, monkeypatch):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ImagioError, match="is a file"):
        check_out_dir(f / "out")
    with pytest.raises(ImagioError, match="not a folder"):
        check_out_dir(f)

    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(cli_utils.os, "mkdir", read_only)
    with pytest.raises(ImagioError, match="Read-only file system"):
        with staged_output(tmp_path / "out"):
            pass
    assert _siblings(tmp_path) == ["file.txt"]


def test_stale_staging_of_a_killed_run_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.imagio-staging-{int(dead.stdout)}-abcd1234"
    stale.mkdir()
    (stale / "scene.mrb").write_bytes(b"half")
    with staged_output(tmp_path / "out") as stage:
        _write_result(stage)
    assert _siblings(tmp_path) == ["out"]


def test_cli_out_policy_end_to_end(tmp_path, capsys):
    out = tmp_path / "ph"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["phantom", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"imagio: error: --out {out} exists and is not empty (1 entries). Choose a new folder, "
                   "or add --overwrite to replace it"]
    assert main(["phantom", "--out", str(out), "--overwrite"]) == 2  # not an IMAGIO folder
    assert (out / "notes.txt").read_text() == "keep"
    assert main(["phantom", "--out", "/proc/imagio"]) == 2
    assert "proc" in capsys.readouterr().err


def _wait_for(pred, timeout=60.0):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.02)
    return False


SLOW_PHANTOM = """
import sys, time
import imagio.phantom as ph
def slow_write(phantom, out):
    (out / "ct.nrrd").write_bytes(b"half a volume")
    time.sleep(120)
ph.make_phantom = lambda seed: None
ph.write_phantom = slow_write
from imagio.cli import main
sys.exit(main(["phantom", "--out", sys.argv[1]]))
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_signal_removes_staging(tmp_path, sig, code):
    """A run killed while it writes leaves nothing: no --out, no staging folder."""
    out = tmp_path / "ph"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PHANTOM, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def writing():
        return any((p / "ct.nrrd").exists() for p in tmp_path.glob(".ph.imagio-staging-*"))

    assert _wait_for(writing, timeout=120), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == ["imagio: interrupted" if sig == signal.SIGINT
                                        else f"imagio: terminated by signal {int(sig)}"]
    assert _siblings(tmp_path) == []


def test_fifo_input_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "ct.nrrd"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "imagio.cli", "convert", "--ct", str(fifo), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == (f"imagio: error: {fifo} is a named pipe (FIFO). Give the "
                                                      "input as a regular file or folder")
    r = subprocess.run([sys.executable, "-m", "imagio.cli", "convert", "--ct", "/dev/zero", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "device file" in r.stderr
    assert _siblings(tmp_path) == ["ct.nrrd"]


def test_random_seed_and_deprecated_seed(tmp_path, capsys):
    ns = PARSER.parse_args(["demo", "--out", "o", "--random-seed", "7"])
    assert ns.random_seed == 7 and ns.seed_deprecated is None
    from imagio.cli import _random_seed

    assert _random_seed(ns, "demo") == 7
    ns = PARSER.parse_args(["phantom", "--out", "o", "--seed", "3"])
    assert _random_seed(ns, "phantom") == 3
    assert "deprecated" in capsys.readouterr().err
    for bad in ("-1", "4294967296", "1.5"):
        with pytest.raises(SystemExit):
            PARSER.parse_args(["phantom", "--out", "o", "--random-seed", bad])
    ns = PARSER.parse_args(["segment", "--ct", "c", "--seed", "-57,-10,3", "--out", "o"])
    assert np.allclose(parse_point(ns.seed), [-57, -10, 3])  # segment --seed stays the seed point


# ---------------------------------------------------------------------------------------------- progress, start-up
def test_progress_on_a_log_is_a_few_lines():
    buf = pyio.StringIO()
    p = Progress(terminal_progress(buf))
    p.update(0.0, "reading the CT")
    for i in range(288):
        p.sub(0.05, 0.95).update(i / 288, f"Window {i + 1} of 288")
    p.update(0.97, "writing the scene bundle")
    p.update(1.0, "done in 12.3 s")
    lines = buf.getvalue().splitlines()
    assert 5 <= len(lines) <= 16, lines
    assert lines[0] == "[  0.0%] reading the CT" and lines[-1] == "[100.0%] done in 12.3 s"
    assert "[ 97.0%] writing the scene bundle" in lines
    assert sum("Window" in line for line in lines) <= 11


def test_progress_on_a_terminal_is_one_live_line():
    buf = pyio.StringIO()
    show = terminal_progress(buf, tty=True)
    for i in range(101):
        show(i / 100, f"step {i}")
    text = buf.getvalue()
    assert text.count("\r") == 101 and text.count("\n") == 1 and text.endswith("\n")


def test_help_imports_no_heavy_library():
    probe = ("import sys, runpy\nsys.argv = ['imagio', {cmd}'--help']\ntry:\n"
             "    runpy.run_module('imagio.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('numpy', 'SimpleITK', 'vtkmodules', 'slicer', 'scipy', 'onnxruntime', "
             "'pydicom') if m in sys.modules))")
    for cmd in ("", "'lungnav', ", "'ablation', 'zone', ", "'segment', ", "'margin', ", "'demo', "):
        r = subprocess.run([sys.executable, "-c", probe.format(cmd=cmd)], capture_output=True, text=True,
                           timeout=120)
        assert r.stdout.strip().splitlines()[-1] == "[]", (cmd, r.stdout[-300:], r.stderr[-2000:])


def test_vtk_requirement_agrees_with_slicer_core():
    """One vtk download: the project asks exactly the vtk that slicer-core pins."""
    import re
    import tomllib
    from importlib import metadata

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ours = [d.replace(" ", "") for d in deps if re.match(r"vtk\b", d)]
    pins = [r.split(";")[0].replace(" ", "") for r in metadata.requires("slicer-core") or []
            if re.match(r"vtk\b", r) and "extra" not in r]
    assert ours == pins, (ours, pins)


def test_one_terminal_writer_for_progress_and_the_batch_bar():
    """terminal_progress and the batch bar both write through progress.TerminalLine; an open live line of either
    is ended by end_live_lines before an error message."""
    from imagio.batch import _Progress
    from imagio.progress import TerminalLine, end_live_lines

    class Tty(pyio.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    out = TerminalLine(tty)
    assert out.live and not TerminalLine(pyio.StringIO()).live and TerminalLine(pyio.StringIO(), tty=True).live
    out.draw("a")
    out.line("note")  # erases the live line, prints a whole line
    out.draw("b")
    end_live_lines()
    assert tty.getvalue() == "\r\033[Ka\r\033[Knote\n\r\033[Kb\n"
    out.end()  # nothing open: nothing written
    assert tty.getvalue().endswith("b\n")
    log = pyio.StringIO()
    TerminalLine(log).draw("live only on a terminal")
    TerminalLine(log).line("a line")
    assert log.getvalue() == "a line\n"
    bar = Tty()
    p = _Progress(4, stream=bar)
    p.update(1, 0, 1, force=True)
    end_live_lines()  # e.g. the batch failed: its bar is ended, not overwritten by the error
    assert bar.getvalue().startswith("\r\033[Kbatch [") and bar.getvalue().endswith("min left\n")
    p = _Progress(4, stream=bar)
    p.close()  # no bar drawn: no stray newline
    assert bar.getvalue().count("\n") == 1
