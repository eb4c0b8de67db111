"""The digital phantom: deterministic, plausible HU, and its truth agrees with its image."""

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry as g
from imagio.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3)


def test_deterministic_from_seed(phantom):
    again = make_phantom(seed=3)
    assert np.array_equal(sitk.GetArrayViewFromImage(again.ct), sitk.GetArrayViewFromImage(phantom.ct))
    other = make_phantom(seed=4)
    assert not np.array_equal(sitk.GetArrayViewFromImage(other.ct), sitk.GetArrayViewFromImage(phantom.ct))


def test_truth_matches_image(phantom):
    ct = sitk.GetArrayViewFromImage(phantom.ct)
    seg = {k: s.array() for k, s in phantom.segments.items()}
    assert np.median(ct[seg["lungs"]]) == pytest.approx(-860, abs=30)
    assert np.median(ct[seg["airway_lumen"]]) < -900
    assert np.median(ct[seg["liver"] & ~seg["liver_tumor"] & ~seg["hepatic_vessels"]]) == pytest.approx(65, abs=15)
    assert np.median(ct[seg["liver_tumor"]]) < np.median(ct[seg["liver"]]) - 25  # hypodense
    assert np.median(ct[seg["hepatic_vessels"]]) > 150
    # the nodule lies in the lung, the tumour in the liver
    assert seg["lung_nodule"].sum() > 0 and seg["liver_tumor"].sum() > 0
    k, j, i = np.argwhere(seg["lung_nodule"]).mean(0).round().astype(int)
    assert np.allclose(g.ijk_to_ras(phantom.ct, [i, j, k]), phantom.lung_nodule_center_ras, atol=2.0)


def test_airway_tree_depth_and_centerlines_inside_lumen(phantom):
    gens = [b["generation"] for b in phantom.airway_centerlines]
    assert max(gens) >= 5
    lumen = phantom.segments["airway_lumen"].mask
    arr = sitk.GetArrayViewFromImage(lumen)
    inside = total = 0
    for b in phantom.airway_centerlines:
        ijk = np.round(g.ras_to_ijk(lumen, np.array(b["points_ras"]))).astype(int)
        ok = np.all((ijk >= 0) & (ijk < lumen.GetSize()), axis=1)
        inside += int(arr[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]].sum())
        total += len(ijk)
    assert inside / total > 0.99
    # trachea lumen diameter ~16 mm at its middle
    tr = phantom.airway_centerlines[0]
    assert tr["name"] == "trachea" and tr["radius_mm"] == 8.0
