"""Device library: provenance per setting, schema checks, unsourced settings gated, interpolation, refusals."""

import json
import math
import re

import pytest

from imagio.errors import ImagioError
from IMAGIOAblationZoneLib.devices import (
    DEFAULT_LIBRARY,
    TISSUE_CHOICES,
    get_device,
    load_library,
    setting_warnings,
)

IDENTIFIERS = ("doi", "pmid", "pmc", "url", "ifu_document", "repository")


def test_every_offered_setting_names_a_source_with_an_identifier():
    lib = load_library()
    offered = [(d, s) for d in lib.values() for s in d.offered()]
    assert len(offered) >= 10 and {d.modality for d, _ in offered} >= {"microwave", "radiofrequency"}
    for d, s in offered:
        assert s.sources, (d.id, s.label)
        for src in s.sources:
            assert len(src.citation) > 20 and src.locator, (d.id, s.label)
            assert any(k in src.identifiers for k in IDENTIFIERS), (d.id, s.label, src.ref)
            if src.kind == "repository":
                assert re.fullmatch(r"[0-9a-f]{40}", src.identifiers["commit"])
        assert s.tissue and (s.organ is None or s.organ in TISSUE_CHOICES)
        assert 10 < s.zone_short_mm <= s.zone_long_mm < 80
        assert 0 <= s.tip_offset_mm < s.zone_long_mm / 2  # the zone reaches beyond the tip
    for d in lib.values():
        assert d.tip_reference, d.id
        for s in d.settings:
            assert not (s.verified and not s.sources)  # verified only where read in a cited document


def test_repository_values_match_the_ellipsoid_their_locator_quotes():
    """Every setting read from a profile file quotes the measured ellipsoid: the values must be those numbers."""
    n = 0
    for d in load_library().values():
        for s in d.settings:
            for src in s.sources:
                m = re.search(r"\(([\d.]+) x ([\d.]+) x ([\d.]+) mm, centre ([\d.]+) mm behind the origin, ([\d.]+) ml\)",
                              src.locator)
                if src.kind != "repository" or not m:
                    continue
                a, b, c, off, ml = map(float, m.groups())
                assert (s.zone_short_mm, s.zone_long_mm, s.tip_offset_mm) == (a, c, off), (d.id, s.label)
                assert a == b
                assert s.volume_ml == pytest.approx(ml, abs=0.02)  # 4/3 pi abc: the profiles are ellipsoids
                n += 1
    assert n >= 10


def test_changed_values_keep_their_previous_values_for_the_record():
    e = get_device("emprint").setting(100, 600)
    assert (e.zone_long_mm, e.zone_short_mm) == (42, 36) and e.previous == {"zone_long_mm": 49, "zone_short_mm": 45,
                                                                           "tip_offset_mm": 19}
    c = get_device("cool-tip-3cm").setting(200, 720)
    assert c.zone_long_mm == 46.0 and c.previous["zone_long_mm"] == 38 and c.organ == "liver"
    assert "in vivo" in c.tissue and "tip_offset_mm" in c.assumed


def test_unsourced_settings_are_not_offered_unless_allowed():
    dev = get_device("emprint")
    with pytest.raises(ImagioError, match="has no source") as e:
        dev.setting(45, 300)
    assert "--allow-unsourced" in str(e.value)
    s = dev.setting(45, 300, allow_unsourced=True)
    assert not s.sourced and any("has no source" in w for w in setting_warnings(dev, s, "liver"))
    # StarBurst and the cryoprobes have no sourced setting at all
    for did in ("starburst-xl", "icerod", "icesphere"):
        with pytest.raises(ImagioError, match="no setting with a source"):
            get_device(did).largest()
        assert get_device(did).largest(allow_unsourced=True).volume_ml > 0
    # the withdrawn -40 C label: cryo isotherms are unknown and say so
    ice = get_device("icerod").setting(0, 600, allow_unsourced=True)
    assert ice.isotherm_c is None and ice.previous["isotherm_c"] == -40
    assert any("isotherm" in w for w in setting_warnings(get_device("icerod"), ice, "kidney"))


def test_tissue_warnings():
    amica = get_device("amica")
    s = amica.setting(60, 600)
    assert not any("measured in" in w for w in setting_warnings(amica, s, "liver"))
    assert any("not in lung" in w for w in setting_warnings(amica, s, "lung"))
    assert any("derived" in w for w in setting_warnings(amica, s, "liver"))  # the long axis came from the SI
    em = get_device("emprint")
    assert any("not stated by its source" in w for w in setting_warnings(em, em.setting(100, 600), "liver"))


def test_interpolation_is_linear_stated_and_keeps_provenance():
    dev = get_device("EMPRINT")  # ids are case-insensitive
    s = dev.setting(100, 525)  # halfway between 450 s (41 x 35) and 600 s (42 x 36)
    assert s.interpolated and "interpolated" in s.note
    assert s.zone_long_mm == pytest.approx(41.5) and s.zone_short_mm == pytest.approx(35.5)
    assert sorted(src.locator.split(" (")[0] for src in s.sources) == ["solid emprint 100w 10m.stl",
                                                                       "solid emprint 100w 7_5m.stl"]
    s2 = dev.setting(125, 600)  # between 100 W (42 x 36, 11.55) and 150 W (42 x 39, 13.2) at 600 s
    assert (s2.zone_long_mm, s2.zone_short_mm, s2.tip_offset_mm) == pytest.approx((42.0, 37.5, 12.375))
    assert len(s2.sources) == 4 and s2.verified


def test_unknown_device_is_refused_with_the_known_ids():
    with pytest.raises(ImagioError) as e:
        get_device("microwave-9000")
    assert "Unknown ablation device" in str(e.value) and "emprint" in str(e.value)


@pytest.mark.parametrize("power,time,word", [(200, 600, "Power"), (30, 600, "Power"), (100, 900, "Time"),
                                             (100, 60, "Time"), (float("nan"), 600, "finite"),
                                             (100, float("inf"), "finite"), (-5, 600, "valid"), (100, -1, "valid")])
def test_settings_outside_the_table_or_not_finite_are_refused(power, time, word):
    with pytest.raises(ImagioError) as e:
        get_device("emprint").setting(power, time)
    assert word in str(e.value)


def _lib(tmp_path, mutate):
    data = json.loads(DEFAULT_LIBRARY.read_text())
    mutate(data)
    p = tmp_path / "devices.json"
    p.write_text(json.dumps(data))
    return p


def test_user_library_extends_without_code(tmp_path):
    def add(data):
        data["references"]["my-tests"] = {"citation": "My own ex vivo bovine liver tests, lab book 7, 2024",
                                          "kind": "peer-reviewed", "url": "https://example.org/lab-book-7"}
        data["devices"].append({"id": "my-probe", "name": "My probe", "modality": "microwave",
                                "tip_reference": "the tip", "settings": [
                                    {"power_w": 50, "time_s": 300, "zone_long_mm": 30, "zone_short_mm": 25,
                                     "tip_offset_mm": 10, "tissue": "ex vivo bovine liver", "organ": "liver",
                                     "sources": [{"ref": "my-tests", "locator": "table 1"}], "verified": True}]})
    dev = get_device("my-probe", load_library(_lib(tmp_path, add)))
    assert dev.setting(50, 300).zone_short_mm == 25 and dev.setting(50, 300).sources[0].locator == "table 1"


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["devices"][0]["settings"][0].update(zone_long_mm=math.inf), "Infinity is not a JSON number"),
    (lambda d: d["devices"][0]["settings"][0].update(zone_short_mm=-3), "zone_short_mm: must be a number more than 0"),
    (lambda d: d["devices"][0]["settings"][0].update(power_w="100"), "power_w: must be a number"),
    (lambda d: d["devices"][0]["settings"][0].update(colour="red"), "colour: is not a known key"),
    (lambda d: d["devices"][0]["settings"][0].pop("tissue"), "tissue: is required but missing"),
    (lambda d: d["devices"][0]["settings"][0].update(organ="brain"), "organ"),
    (lambda d: d["devices"][0]["settings"][0].update(sources=[]), "verified but has no source"),
    (lambda d: d["devices"][0]["settings"][0]["sources"][0].update(ref="nowhere"), "unknown reference"),
    (lambda d: d["devices"][0]["settings"][0].update(tip_offset_mm=30), "would not reach the tip"),
    (lambda d: d["devices"][0].update(modality="laser"), "modality"),
    (lambda d: d["references"]["amabile-2017"].pop("url"), "no identifier"),
    (lambda d: d["devices"][1].update(id="emprint"), "appears twice"),
])
def test_bad_library_files_are_refused_with_the_reason(tmp_path, mutate, message):
    with pytest.raises(ImagioError, match=message):
        load_library(_lib(tmp_path, mutate))


def test_tissue_from_the_option_the_terminology_or_the_name():
    from IMAGIOAblationZoneLib.logic import resolve_tissue

    assert resolve_tissue("Lung")[:2] == ("lung", "given")
    with pytest.raises(ImagioError, match="Unknown tissue"):
        resolve_tissue("brain")
    term = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
            "Structure~SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~^^")
    t, how, warns = resolve_tissue(None, "GTV", term)
    assert t == "kidney" and "terminology" in how and not warns
    assert resolve_tissue(None, "lung_nodule")[0] == "lung"
    assert resolve_tissue(None, "sarcoma thigh")[0] == "soft-tissue"
    t, how, warns = resolve_tissue(None, "tumour 2")  # nothing to go by: liver, and the user is told
    assert (t, how) == ("liver", "assumed") and "give --tissue" in warns[0]
