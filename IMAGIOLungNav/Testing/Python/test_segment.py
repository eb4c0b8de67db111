"""Airway segmentation from CT: the phantom (known truth), LIDC-0314, LUNG1-001, and CTs without an airway."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry as g
from imagio.errors import ImagioError
from imagio.io import read_image, read_segmentation
from imagio.testing import data_path
from IMAGIOLungNavLib.centerline import extract_centerlines
from IMAGIOLungNavLib.logic import LungNavLogic
from IMAGIOLungNavLib.segment import segment_airway


def _hu_of(ct: sitk.Image, mask: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(ct)[sitk.GetArrayViewFromImage(mask) > 0]


def test_phantom_airway_matches_truth_and_the_explosion_is_stopped(phantom):
    seg = segment_airway(phantom.ct)
    truth = phantom.segments["airway_lumen"]
    assert g.same_grid(seg.mask, phantom.ct)
    assert g.dice(seg.mask, truth.mask) >= 0.9
    # no leak: the lung parenchyma (-860 HU) explodes the region; that step was seen and refused
    assert seg.explosion_hu is not None and seg.threshold_hu < seg.explosion_hu
    assert seg.curve[-1][1] > 5 * seg.curve[-2][1]
    assert seg.volume_ml <= 1.1 * truth.volume_ml()
    assert not seg.leak_check()["leak_suspected"]
    # the trachea seed lies in the true trachea
    ijk = np.round(g.ras_to_ijk(truth.mask, seg.trachea_seed_ras)).astype(int)
    assert truth.array()[ijk[2], ijk[1], ijk[0]] == 1
    tree = extract_centerlines(seg.mask)
    assert tree.max_generation >= 5


@pytest.fixture(scope="module")
def lidc_ct():
    return read_image(data_path("chest-lidc0314/ct.nrrd"))


def test_lidc0314_airway_without_leak_and_route_to_the_nodule(lidc_ct):
    logic = LungNavLogic()
    ann = json.loads(data_path("chest-lidc0314/nodule_annotations.json").read_text())
    nodule_ras = g.lps_to_ras(np.array(ann["consensus_centroid_LPS_mm"]))
    result = logic.compute(ct=lidc_ct, target_ras=nodule_ras, scope_diameter_mm=4.2)
    seg = result.segmentation
    leak = seg.leak_check()
    assert 20.0 < leak["airway_volume_ml"] < 80.0
    assert not leak["leak_suspected"]
    assert seg.explosion_hu is not None and seg.threshold_hu < seg.explosion_hu
    hu = _hu_of(lidc_ct, seg.mask)
    # lumen, not parenchyma (about -850 HU): most voxels are air, the rest partial-volume edge voxels
    assert np.median(hu) < -950 and np.percentile(hu, 90) < -800
    tree = result.tree
    assert tree.n_branches >= 60 and tree.max_generation >= 7
    assert tree.branches[0].name == "trachea" and 10.0 < tree.branches[0].diameter_mm < 25.0
    r = result.route
    # the nodule is in the right lung: the route goes trachea -> right main bronchus -> ...
    assert r.branch_names[:2] == ["trachea", "right main bronchus"]
    assert r.exit_point_ras[0] > 20.0
    assert r.gap_to_target_mm < 15.0
    assert r.generation >= 4
    # with the consensus nodule mask as the lesion an airway runs into it: bronchus sign
    lesion = read_segmentation(data_path("chest-lidc0314/nodule_consensus50.seg.nrrd"), reference=lidc_ct)[0].mask
    from IMAGIOLungNavLib.route import plan_route
    rl = plan_route(tree, lesion=lesion, airway_mask=seg.mask)
    assert rl.gap_to_target_mm <= r.gap_to_target_mm
    assert rl.bronchus_sign == (rl.gap_to_target_mm == 0.0)


def test_lung1_001_dicom_airway_without_leak():
    ct = read_image(data_path("chest-lung1-001/image"))
    seg = segment_airway(ct)
    leak = seg.leak_check()
    assert 15.0 < leak["airway_volume_ml"] < 80.0
    assert not leak["leak_suspected"]
    assert np.median(_hu_of(ct, seg.mask)) < -900
    tree = extract_centerlines(seg.mask)
    assert tree.n_branches >= 10
    names = {b.name for b in tree.branches}
    assert {"trachea", "left main bronchus", "right main bronchus"} <= names


def test_abdominal_ct_has_no_airway():
    ct = read_image(data_path("liver-crlm1004/ct.nrrd"))
    with pytest.raises(ImagioError, match="No trachea"):
        LungNavLogic().compute(ct=ct, target_ras=[0.0, 0.0, 0.0])


def test_image_without_air_is_refused():
    img = sitk.Image([40, 40, 30], sitk.sitkInt16) + 40
    with pytest.raises(ImagioError, match="no air"):
        segment_airway(img)


def test_target_outside_the_lungs_is_refused(phantom):
    # the liver tumour is below the diaphragm, far from any aerated lung
    with pytest.raises(ImagioError, match="outside the lungs"):
        LungNavLogic().compute(ct=phantom.ct, target_ras=phantom.liver_tumor_center_ras)


def test_segmentation_reports_progress_and_can_be_cancelled(phantom):
    from imagio.errors import Cancelled
    from imagio.progress import Progress

    seen = []

    def callback(fraction, message):
        seen.append(fraction)
        if fraction > 0.3:
            progress.cancel()

    progress = Progress(callback)
    with pytest.raises(Cancelled):
        segment_airway(phantom.ct, progress=progress)
    assert seen and max(seen) < 0.7


def test_chest_ct_cropped_through_the_lungs():
    """A field of view cropped through the lungs (TotalSegmentator's 1.5 mm chest crop): the lungs touch
    the sides of the image and must not be taken for outside air."""
    ct = read_image(data_path("totalseg-examples/pulmonary_report/ct_cropped.nii.gz"))
    seg = segment_airway(ct)
    leak = seg.leak_check()
    assert 15.0 < leak["airway_volume_ml"] < 80.0 and not leak["leak_suspected"]
    assert seg.explosion_hu is not None and seg.threshold_hu < seg.explosion_hu
    tree = extract_centerlines(seg.mask)
    assert {"trachea", "left main bronchus", "right main bronchus"} <= {b.name for b in tree.branches}
