"""Device library: every entry sourced, settings looked up, interpolated inside the table, refused outside."""

import json

import pytest

from imagio.errors import ImagioError
from IMAGIOAblationZoneLib.devices import MODALITIES, get_device, load_library


def test_library_entries_have_sources_and_plausible_zones():
    lib = load_library()
    assert {d.modality for d in lib.values()} == set(MODALITIES)  # microwave, RF and cryo all present
    assert len([d for d in lib.values() if d.modality == "microwave"]) >= 3
    for d in lib.values():
        assert len(d.source) > 20, d.id
        for s in d.settings:
            assert 10 < s.zone_short_mm <= s.zone_long_mm < 80
            assert 0 <= s.tip_offset_mm < s.zone_long_mm / 2  # the zone reaches beyond the tip


def test_table_setting_is_returned_as_is():
    s = get_device("emprint").setting(100, 600)
    assert (s.zone_long_mm, s.zone_short_mm, s.tip_offset_mm) == (49, 45, 19)
    assert not s.interpolated


def test_interpolation_inside_the_table_is_linear_and_stated():
    dev = get_device("EMPRINT")  # ids are case-insensitive
    s = dev.setting(100, 450)  # halfway between 300 s (41 x 37) and 600 s (49 x 45)
    assert s.interpolated and "interpolated" in s.note
    assert s.zone_long_mm == pytest.approx(45.0) and s.zone_short_mm == pytest.approx(41.0)
    s2 = dev.setting(60, 300)  # between 45 W (32 x 28) and 75 W (37 x 33) at 300 s
    assert s2.zone_long_mm == pytest.approx(34.5) and s2.zone_short_mm == pytest.approx(30.5)


def test_unknown_device_is_refused_with_the_known_ids():
    with pytest.raises(ImagioError) as e:
        get_device("microwave-9000")
    assert "Unknown ablation device" in str(e.value) and "emprint" in str(e.value)


@pytest.mark.parametrize("power,time,word", [(150, 600, "Power"), (30, 600, "Power"), (100, 900, "Time"),
                                             (100, 60, "Time")])
def test_settings_outside_the_table_are_refused(power, time, word):
    with pytest.raises(ImagioError) as e:
        get_device("emprint").setting(power, time)
    assert word in str(e.value) and "outside the table" in str(e.value)


def test_user_library_extends_without_code(tmp_path):
    lib = json.loads(load_library.__globals__["DEFAULT_LIBRARY"].read_text())
    lib["devices"].append({"id": "my-probe", "name": "My probe", "modality": "microwave", "source": "my own ex-vivo tests",
                           "settings": [{"power_w": 50, "time_s": 300, "zone_long_mm": 30, "zone_short_mm": 25,
                                         "tip_offset_mm": 10}]})
    p = tmp_path / "devices.json"
    p.write_text(json.dumps(lib))
    dev = get_device("my-probe", load_library(p))
    assert dev.setting(50, 300).zone_short_mm == 25
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"devices": [{"id": "x", "modality": "laser", "source": "s", "settings": []}]}))
    with pytest.raises(ImagioError, match="modality"):
        load_library(bad)
