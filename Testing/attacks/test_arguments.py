"""Attack class "arguments": numbers that are not finite or absurd, points that are not points, flags misused.

The central checks (imagio.cli_utils: every float/int option finite and bounded, every point R,A,S finite and
within 1e5 mm) refuse these before any work. Rows whose rule lives in a module (a range only the module
knows) are marked xfail(strict=True) with the owner named until that module's fix is on main.
"""

from __future__ import annotations

import json

import pytest

ZONE = ["ablation", "zone", "--device", "emprint", "--power", "75", "--time", "300", "--tip", "1,2,3",
        "--entry", "1,2,60"]


def _zone(**replace):
    argv = list(ZONE)
    for k, v in replace.items():
        argv[argv.index("--" + k) + 1] = v
    return argv


ROWS = [
    ("--time nan (a table zone as valid)", _zone(time="nan"), "argument --time: 'nan' is not a finite number"),
    ("--power inf", _zone(power="inf"), "argument --power: 'inf' is not a finite number"),
    ("--power -inf", _zone(power="-inf"), "argument --power: '-inf' is not a finite number"),
    ("--time 1e308", _zone(time="1e308"), "argument --time: '1e308' is out of range"),
    ("--margin-mm NaN", _zone() + ["--margin-mm", "NaN"], "argument --margin-mm: 'NaN' is not a finite number"),
    ("--max-probes 1e308", ["ablation", "plan", "--tumor", "t", "--device", "emprint", "--max-probes", "1e308"],
     "argument --max-probes: '1e308' is out of range"),
    ("--max-probes 2.5", ["ablation", "plan", "--tumor", "t", "--device", "emprint", "--max-probes", "2.5"],
     "is not a whole number"),
    ("--samples nan", ["margin", "--tumor", "t", "--ablation", "a", "--samples", "nan"], "'nan' is not a finite"),
    ("--threshold-mm -inf", ["margin", "--tumor", "t", "--ablation", "a", "--threshold-mm", "-inf"],
     "argument --threshold-mm: '-inf' is not a finite number"),
    ("--scope-diameter-mm nan", ["lungnav", "--airway", "a", "--target", "1,2,3", "--scope-diameter-mm", "nan"],
     "argument --scope-diameter-mm"),
    ("--radius inf", ["segment", "--ct", "c", "--seed", "1,2,3", "--radius", "inf"], "argument --radius"),
    ("--random-seed -1", ["demo", "--random-seed", "-1"], "argument --random-seed: '-1' is out of range"),
    ("--random-seed 1.5", ["phantom", "--random-seed", "1.5"], "is not a whole number"),
    ("--random-seed 2^32", ["phantom", "--random-seed", str(2**32)], "is out of range"),
    ("point with NaN", _zone(tip="1,nan,3"), "argument --tip: '1,nan,3' is not a point. Write it as R,A,S"),
    ("point with 2 numbers", _zone(tip="-1,2"), "argument --tip: '-1,2' is not a point"),
    ("point 1000 m away", _zone(tip="1e6,0,0"), "each within +-100000 mm"),
    ("point as words", _zone(entry="left,up,high"), "argument --entry: 'left,up,high' is not a point"),
    ("--clearance-mm -5 (a path through a vessel)", ["ablation", "plan", "--tumor", "t", "--device", "emprint",
                                                     "--clearance-mm", "-5"], "argument --clearance-mm: '-5' is out of range"),
    ("probe pair with NaN", ["ablation", "replan", "--tumor", "t", "--probe", "-41.5,12,nan:-80,40,-22", "--device",
                             "emprint", "--power", "45", "--time", "150"], "argument --probe"),
    ("option without its value", ["lungnav", "--airway", "a", "--target"], "argument --target: expected one argument"),
    ("unknown option", _zone() + ["--bogus", "1"], "unrecognized arguments: --bogus 1"),
]


@pytest.mark.parametrize("name, argv, needle", ROWS, ids=[r[0] for r in ROWS])
def test_bad_argument_is_refused(tmp_path, attack, name, argv, needle):
    out = tmp_path / "out"
    r = attack.main(*argv, "--out", out)
    attack.refused(r, out, needle, {})


MODULE_ROWS = [
    pytest.param(["lungnav", "--airway", "{airway}", "--target", "100,0,0", "--max-gap-mm", "-1"], "--max-gap-mm",
                 id="--max-gap-mm -1"),
]


@pytest.fixture(scope="module")
def phantom_segs(tmp_path_factory):
    """Tumour, vessel and airway segmentations of the digital phantom, each its own .seg.nrrd."""
    from imagio import io
    from imagio.phantom import make_phantom

    d = tmp_path_factory.mktemp("ph")
    ph = make_phantom(0)
    files = {}
    for key, name in (("tumor", "liver_tumor"), ("vessels", "hepatic_vessels"), ("airway", "airway_lumen")):
        files[key] = io.write_segmentation(d / f"{name}.seg.nrrd", [ph.segments[name]], ph.ct)
    return files


@pytest.mark.parametrize("argv, needle", MODULE_ROWS)
def test_module_range_is_refused(tmp_path, attack, phantom_segs, argv, needle):
    out = tmp_path / "out"
    argv = [a.format(**phantom_segs) for a in argv]
    before = attack.digest(*phantom_segs.values())
    r = attack.run(*argv, "--out", out, timeout=300)
    attack.refused(r, out, needle, before, *phantom_segs.values())


def test_negative_point_as_typed_equals_the_equals_form(tmp_path, attack):
    """Explicit result: `--tip -12.5,30,-40` (as typed) gives the very zone `--tip=-12.5,30,-40` gives."""
    results = []
    for n, form in enumerate((["--tip", "-12.5,30,-40", "--entry", "-12.5,30,20"],
                              ["--tip=-12.5,30,-40", "--entry=-12.5,30,20"])):
        argv = _zone()
        i = argv.index("--tip")
        argv[i:i + 4] = form
        out = tmp_path / f"out{n}"
        r = attack.run(*argv, "--out", out, timeout=300)
        assert r.returncode == 0, r.stderr
        results.append(json.loads((out / "ablation.json").read_text()))
    assert results[0] == results[1]
    assert results[0]["zone_axes_mm"][0] > 0
