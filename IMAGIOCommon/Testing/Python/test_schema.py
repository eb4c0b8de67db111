"""imagio.schema: each rule refuses what it should, with the file, the key path and the rule in one line."""

import json

import pytest

from imagio import schema as S
from imagio.errors import ImagioError

SETTING = S.Obj({"power_w": S.Num(min=0, max=1000, unit="W"),
                 "time_s": S.Num(min=0, max=7200, unit="s", min_inclusive=False),
                 "n": S.Int(min=1, max=10)}, required=("power_w", "time_s"), defaults={"n": 1})
LIB = S.Obj({"devices": S.List(S.Obj({"id": S.Str(min_len=1, max_len=8),
                                      "kind": S.Enum("microwave", "cryo", name="modality"),
                                      "settings": S.List(SETTING, min_len=1, max_len=3)},
                                     required=("id", "settings"), extra="forbid"), min_len=1)},
            required=("devices",))


def _lib(**setting):
    s = {"power_w": 50, "time_s": 300}
    s.update(setting)
    return {"devices": [{"id": "a", "kind": "cryo", "settings": [s]}]}


def test_valid_document_is_returned_checked():
    out = S.validate(LIB, _lib(), source="lib.json")
    s = out["devices"][0]["settings"][0]
    assert s == {"power_w": 50.0, "time_s": 300.0, "n": 1} and isinstance(s["power_w"], float)
    assert S.validate(S.Int(), 3.0) == 3 and isinstance(S.validate(S.Int(), 3.0), int)


@pytest.mark.parametrize("doc, message", [
    (_lib(time_s=0), "lib.json: devices[0].settings[0].time_s: must be a number more than 0 s and at most 7200 s, got 0"),
    (_lib(time_s=float("nan")), "devices[0].settings[0].time_s: must be a finite number, got nan"),
    (_lib(time_s=1e308 * 10), "must be a finite number, got inf"),
    (_lib(power_w="50"), "devices[0].settings[0].power_w: must be a number at least 0 W and at most 1000 W, got a string"),
    (_lib(power_w=True), "got true/false true"),
    (_lib(n=2.5), "devices[0].settings[0].n: must be a whole number, got 2.5"),
    (_lib(n=11), "must be a whole number at least 1 and at most 10, got 11"),
    ({"devices": []}, "devices: must have at least 1 items, got 0"),
    ({"devices": "x"}, "devices: must be a list, got a string"),
    ({}, "lib.json: devices: is required but missing"),
    ([], "lib.json: (top level): must be an object, got a list"),
    ({"devices": [{"id": "a", "settings": [{"power_w": 1, "time_s": 1}] * 4}]}, "settings: must have at most 3 items"),
    ({"devices": [{"id": "", "settings": [{"power_w": 1, "time_s": 1}]}]}, "devices[0].id: must not be empty"),
    ({"devices": [{"id": "abcdefghi", "settings": [{"power_w": 1, "time_s": 1}]}]}, "at most 8 characters, got 9"),
    ({"devices": [{"id": "a", "kind": "laser", "settings": [{"power_w": 1, "time_s": 1}]}]},
     'devices[0].kind: unknown modality "laser": use one of "microwave", "cryo"'),
    ({"devices": [{"id": "a", "kind": ["x"], "settings": [{"power_w": 1, "time_s": 1}]}]}, "unknown modality"),
    ({"devices": [{"id": "a", "extra": 1, "settings": [{"power_w": 1, "time_s": 1}]}]},
     "devices[0].extra: is not a known key"),
])
def test_rules_refuse_with_path_and_rule(doc, message):
    with pytest.raises(ImagioError) as e:
        S.validate(LIB, doc, source="lib.json")
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_list_product_unique_and_cross_field_checks():
    patch = S.List(S.Int(min=1, max=512), length=3, product_max=256 ** 3, what="sizes")
    assert S.validate(patch, [128, 128, 128]) == [128, 128, 128]
    with pytest.raises(ImagioError, match=r"the product of the sizes must be at most 1.67772e\+07, got 1.34218e\+08"):
        S.validate(patch, [512, 512, 512])
    with pytest.raises(ImagioError, match="exactly 3 sizes, got 2"):
        S.validate(patch, [1, 2])
    with pytest.raises(ImagioError, match=r"\[2\]: repeats 0"):
        S.validate(S.List(S.Int(), unique=True), [0, 1, 0])
    clip = S.Obj({"lo": S.Num(), "hi": S.Num()}, checks=[S.Less("lo", "hi")])
    with pytest.raises(ImagioError, match=r"norm: lo: must be less than hi \(400.0\), got 500.0"):
        S.validate(clip, {"lo": 500, "hi": 400}, source="norm")
    with pytest.raises(ImagioError, match="must be less than hi"):
        S.validate(clip, {"lo": 400, "hi": 400})
    assert S.validate(S.Optional(S.Bool()), None) is None
    with pytest.raises(ImagioError, match=r"must be a number, got a list \[1\] or must be a string"):
        S.validate(S.OneOf(S.Num(), S.Str()), [1])


def test_relpath_stays_inside_the_folder(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    rule = S.RelPath(suffix=".onnx", must_exist=True)
    assert S.validate(rule, "m.onnx", base_dir=tmp_path) == (tmp_path / "m.onnx").resolve()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.onnx").symlink_to("/etc/hostname")
    for bad, needle in (("../m.onnx", "points outside"), ("/etc/passwd.onnx", "relative"), ("~/x.onnx", "relative"),
                        ("sub/../../x.onnx", "points outside"), ("link.onnx", "points outside"),
                        ("m.txt", "must name a .onnx file"), ("", "must be a file name"), (3, "must be a file name"),
                        ("nothere.onnx", "does not exist")):
        with pytest.raises(ImagioError, match=needle):
            S.validate(rule, bad, source="card.json", base_dir=tmp_path)


def test_load_json_is_bounded_and_strict(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"x": NaN}')
    with pytest.raises(ImagioError, match="NaN is not a JSON number"):
        S.load_json(p)
    p.write_text(json.dumps({"x": "y" * 2000}))
    with pytest.raises(ImagioError, match="more than the 0.0 MB allowed"):
        S.load_json(p, max_bytes=1000)
    p.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ImagioError, match="not readable JSON"):
        S.load_json(p)
    p.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ImagioError, match="not readable JSON"):
        S.load_json(p)
    with pytest.raises(ImagioError, match="is not a regular file"):
        S.load_json(tmp_path)
