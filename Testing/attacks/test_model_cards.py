"""Attack class "model cards": cards that lie, exhaust memory or time, point outside their folder, or are not JSON.

Rows run `imagio segment --model CARD` on a small CT; the card is checked (imagio.model_card.CARD_SCHEMA)
before the model is opened. `imagio models` lists the good cards and names the broken one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from imagio.model_card import SHIPPED_MODELS_DIR

SHIPPED = SHIPPED_MODELS_DIR / "phantom_lesions" / "phantom_lesions.json"


def _card(d: Path, edit) -> Path:
    folder = d / "model"
    folder.mkdir()
    shutil.copy(SHIPPED.with_suffix(".onnx"), folder / "phantom_lesions.onnx")
    card = json.loads(SHIPPED.read_text())
    edit(card)
    p = folder / "card.json"
    p.write_text(json.dumps(card))
    return p


def _norm(**kw):
    return lambda c: c["normalization"][0].update(kw)


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


def _text(text):
    def make(d):
        folder = d / "model"
        folder.mkdir()
        p = folder / "card.json"
        p.write_text(text)
        return p
    return make


def _literal(card: Path, old: str, new: str) -> Path:
    card.write_text(card.read_text().replace(old, new))
    return card


def _fifo(d):
    folder = d / "model"
    folder.mkdir()
    p = folder / "card.json"
    os.mkfifo(p)
    return p


def _big(d):
    return _card(d, lambda c: c.__setitem__("description", "x" * (2 << 20)))


ROWS = [
    ("std = 0", lambda d: _card(d, _norm(std=0.0)), "normalization[0].std: must be a number more than 0"),
    ("std < 0", lambda d: _card(d, _norm(std=-348.2)), "normalization[0].std: must be a number more than 0"),
    ("clip_low > clip_high", lambda d: _card(d, _norm(clip_low=700.0)), "clip_low: must be less than clip_high"),
    ("patch of 100000 voxels on an axis", lambda d: _card(d, _set("patch_size_kji", [32, 32, 100000])),
     "patch_size_kji[2]: must be a whole number at least 1 and at most 512"),
    ("patch of 512^3 voxels", lambda d: _card(d, _set("patch_size_kji", [512, 512, 512])),
     "the product of the patch sizes"),
    ("spacing 0.0001 mm", lambda d: _card(d, _set("target_spacing_kji_mm", [1e-4, 2, 2])), "at least 0.05 mm"),
    ("overlap 0.999 (never finishes)", lambda d: _card(d, _set("overlap", 0.999)), "at most 0.9, got 0.999"),
    ("onnx outside the card's folder", lambda d: _card(d, _set("onnx", "../../../../etc/model.onnx")),
     "points outside the file's folder"),
    ("onnx as an absolute path", lambda d: _card(d, _set("onnx", "/usr/lib/model.onnx")), "must be a path relative"),
    ("patch size as a string", lambda d: _card(d, _set("patch_size_kji", "32x32x32")), "must be a list, got a string"),
    ("labels as a number", lambda d: _card(d, _set("labels", 3)), "labels: must be a list"),
    ("NaN literal", lambda d: _card(d, _set("overlap", float("nan"))), "NaN is not a JSON number"),
    ("1e309 literal (inf)", lambda d: _literal(_card(d, _set("overlap", 0.123)), "0.123", "1e309"),
     "overlap: must be a finite number"),
    ("not JSON", _text("{imagio_model_card: 1"), "not readable JSON"),
    ("card of 2 MB", _big, "more than the 1.0 MB allowed"),
    ("card is a named pipe", _fifo, "named pipe"),
]


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    import numpy as np
    import SimpleITK as sitk

    d = tmp_path_factory.mktemp("ct")
    p = d / "ct.nrrd"  # not constant (a constant CT is refused before any card value is used)
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 400, (30, 40, 40)).astype(np.int16))
    img.SetSpacing((2.0, 2.0, 2.5))
    sitk.WriteImage(img, str(p))
    return p


@pytest.mark.parametrize("name, make, needle", ROWS, ids=[r[0] for r in ROWS])
def test_broken_card_is_refused(tmp_path, attack, small_ct, name, make, needle):
    card = make(tmp_path)
    before = attack.digest(card.parent, small_ct)
    out = tmp_path / "out"
    # --force: past the card's intended use (this CT's spacing is outside it), so only the card check stands
    r = attack.main("segment", "--ct", small_ct, "--model", card, "--force", "--out", out)
    attack.refused(r, out, needle, before, card.parent, small_ct)


def test_models_lists_the_good_and_names_the_broken(tmp_path, attack):
    (tmp_path / "a").mkdir()
    bad = _card(tmp_path / "a", _norm(std=-1.0))
    r = attack.run("models", env={"IMAGIO_MODELS": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "phantom-lesions" in r.stdout
    assert r.stderr.strip() == (f"imagio: warning: skipped a broken model card: Model card {bad.resolve()}: "
                                "normalization[0].std: must be a number more than 0 and at most 100000, got -1.0. Fix the card (see "
                                "imagio/model_card.py) or re-export the model")


def test_window_count_is_bounded_before_the_run(tmp_path, attack):
    """A valid card (overlap 0.9, 0.5 mm) on a 120 x 120 x 100 mm CT: 54 x 67 x 67 = 242,406 windows of 32^3,
    tens of minutes: it is refused before anything runs (imagio.engine.MAX_WINDOWS, 20,000 windows)."""
    import numpy as np
    import SimpleITK as sitk

    ct = tmp_path / "ct.nrrd"
    noise = np.random.default_rng(0).integers(-900, 300, (100, 120, 120)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(noise), str(ct))
    card = _card(tmp_path, lambda c: c.update(overlap=0.9, target_spacing_kji_mm=[0.5, 0.5, 0.5],
                                              intended_use="any CT (no ranges: the run itself is under test)"))
    out = tmp_path / "out"
    r = attack.run("segment", "--ct", ct, "--model", card, "--out", out, "--quiet", timeout=20)
    attack.refused(r, out, "windows", attack.digest(card.parent), card.parent)


# ---------------------------------------------------------------------------------------------- device libraries
# The other JSON document a command reads (`imagio ablation zone|plan|replan|devices --library`): read bounded
# and checked by the same imagio.schema as the cards.
from IMAGIOAblationZoneLib.devices import DEFAULT_LIBRARY  # noqa: E402

ZONE = ["ablation", "zone", "--device", "emprint", "--power", "75", "--time", "300", "--tip", "1,2,3",
        "--entry", "1,2,60"]


def _library(edit=None, text=None):
    def make(d):
        p = d / "devices.json"
        if text is not None:
            p.write_text(text)
            return p
        lib = json.loads(DEFAULT_LIBRARY.read_text())
        edit(lib)
        p.write_text(json.dumps(lib))
        return p
    return make


def _setting(**kw):
    return _library(lambda lib: lib["devices"][0]["settings"][0].update(kw))


def _lib_fifo(d):
    p = d / "devices.json"
    os.mkfifo(p)
    return p


LIBRARY_ROWS = [
    ("zone of negative size", _setting(zone_short_mm=-3.0), "zone_short_mm"),
    ("time as a string", _setting(time_s="300"), "time_s"),
    ("NaN literal", lambda d: _literal(_setting(power_w=75.125)(d), "75.125", "NaN"), "NaN is not a JSON number"),
    ("1e309 literal (inf)", lambda d: _literal(_setting(power_w=75.125)(d), "75.125", "1e309"), "power_w"),
    ("unknown modality", _library(lambda lib: lib["devices"][0].update(modality="laser")), "modality"),
    ("devices not a list", _library(lambda lib: lib.update(devices={"emprint": {}})), "devices"),
    ("one device id twice", _library(lambda lib: lib["devices"].append(lib["devices"][0])), "appears twice"),
    ("nested 100000 deep", _library(text='{"devices": ' + "[" * 100_000 + "]" * 100_000 + "}"), "devices.json"),
    ("not JSON", _library(text="{devices: ["), "not readable JSON"),
    ("library of 2 MB", _library(lambda lib: lib.update(about="x" * (2 << 20))), "more than the 1.0 MB allowed"),
    ("library is a named pipe", _lib_fifo, "named pipe"),
]


@pytest.mark.parametrize("name, make, needle", LIBRARY_ROWS, ids=[r[0] for r in LIBRARY_ROWS])
def test_broken_device_library_is_refused(tmp_path, attack, name, make, needle):
    lib = make(tmp_path)
    before = attack.digest(tmp_path)
    out = tmp_path / "out"
    r = attack.main(*ZONE, "--library", lib, "--out", out)
    attack.refused(r, out, needle, before, tmp_path)
