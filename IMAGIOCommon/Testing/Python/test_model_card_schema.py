"""Model cards are checked key by key (imagio.model_card.CARD_SCHEMA); one broken card never hides the others."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from imagio.errors import ImagioError
from imagio.model_card import SHIPPED_MODELS_DIR, load_card

SHIPPED = SHIPPED_MODELS_DIR / "phantom_lesions" / "phantom_lesions.json"


def _card(tmp_path, edit):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    shutil.copy(SHIPPED.with_suffix(".onnx"), folder / "phantom_lesions.onnx")
    d = json.loads(SHIPPED.read_text())
    edit(d)
    p = folder / "card.json"
    p.write_text(json.dumps(d))
    return p


def _set(path, value):
    def edit(d):
        *head, last = path
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return edit


BROKEN = [
    (("normalization", 0, "std"), 0.0, "normalization[0].std: must be a number more than 0"),
    (("normalization", 0, "std"), -348.0, "normalization[0].std: must be a number more than 0"),
    (("normalization", 0, "clip_low"), 700.0, "normalization[0].clip_low: must be less than clip_high"),
    (("normalization", 0, "mean"), "x", "normalization[0].mean: must be a number"),
    (("normalization", 0, "std"), KeyError, "the CT scheme needs clip_low, clip_high, mean and std"),
    (("normalization", 0, "scheme"), "Mystery", "unknown normalisation scheme"),
    (("patch_size_kji",), [32, 32, 100000], "patch_size_kji[2]: must be a whole number at least 1 and at most 512"),
    (("patch_size_kji",), [512, 512, 512], "patch_size_kji: the product of the patch sizes"),
    (("patch_size_kji",), [32, 32], "patch_size_kji: must have exactly 3"),
    (("patch_size_kji",), "32x32x32", "patch_size_kji: must be a list, got a string"),
    (("patch_size_kji",), [32, 32.5, 32], "patch_size_kji[1]: must be a whole number"),
    (("target_spacing_kji_mm",), [2.5, 0.0, 2.0], "target_spacing_kji_mm[1]: must be a number at least 0.05 mm"),
    (("target_spacing_kji_mm",), [2.5, 2.0, 1e4], "at most 20 mm, got 10000"),
    (("target_spacing_kji_mm",), [2.5, None, 2.0], "target_spacing_kji_mm[1]: must be a number"),
    (("overlap",), 0.999, "overlap: must be a number at least 0 and at most 0.9, got 0.999"),
    (("overlap",), -0.1, "overlap: must be a number at least 0"),
    (("onnx",), "../../etc/passwd.onnx", "onnx: \"../../etc/passwd.onnx\" points outside the file's folder"),
    (("onnx",), "/tmp/model.onnx", "onnx: must be a path relative to the file's folder"),
    (("onnx",), 42, "onnx: must be a file name"),
    (("input", "channels"), "1", "input.channels: must be a whole number"),
    (("input", "channels"), 2, "input.modality: must name one modality per input channel"),
    (("labels",), [{"value": 0, "name": "background"}], "labels: must have at least 2 labels"),
    (("labels",), [{"value": 0, "name": "background"}, {"value": 2, "name": "x"}], "numbered 0..N-1"),
    (("labels", 1, "name"), 7, "labels[1].name: must be a string"),
    (("mirror_axes_kji",), [0, 0], "mirror_axes_kji[1]: repeats 0"),
    (("transpose_forward",), [0, 1, 1], "transpose_forward[2]: repeats 1"),
    (("resampling", "force_separate_z"), "yes", "resampling.force_separate_z: must be true or false"),
    (("clinical_use",), "no", "clinical_use: must be true or false"),
    (("imagio_model_card",), 2, "unknown model card version 2"),
]


@pytest.mark.parametrize("path, value, needle", BROKEN, ids=[".".join(map(str, b[0])) + "=" + repr(b[1])[:20]
                                                             for b in BROKEN])
def test_broken_card_is_refused_naming_key_and_rule(tmp_path, path, value, needle):
    p = _card(tmp_path, _set(path, value))
    with pytest.raises(ImagioError) as e:
        load_card(p)
    msg = str(e.value)
    assert msg.startswith(f"Model card {p}: ") and needle in msg and "\n" not in msg, msg


def test_valid_card_values(tmp_path):
    c = load_card(_card(tmp_path, lambda d: None))
    assert c.onnx_path == (tmp_path / "model" / "phantom_lesions.onnx").resolve()
    assert c.patch_size_kji == [32, 32, 32] and c.overlap == 0.5 and c.normalization[0]["std"] > 0
    assert [lab.name for lab in c.labels] == ["background", "Liver tumor", "Lung nodule"]


def test_models_lists_good_cards_and_warns_on_a_broken_one(tmp_path):
    bad = _card(tmp_path, _set(("normalization", 0, "std"), -1.0))
    (bad.parent / "types.json").write_text(json.dumps({"imagio_model_card": 1, "onnx": 5, "input": [],
                                                       "labels": "x"}))
    env = dict(os.environ, IMAGIO_MODELS=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "imagio.cli", "models"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out, err = r.stdout, r.stderr
    assert "phantom-lesions" in out
    assert "skipped a broken model card" in err and "normalization[0].std" in err and str(bad) in err
    assert "Traceback" not in err
