"""Issue 10 item 1 on real CTs: registration that is never worse than none.

Cases (../shared/data): LIDC-0314 (chest, 512x512x275, consensus nodule of the four readers), LUNG1-001 (chest
DICOM series, 512x512x134, GTV-1 of its RTSTRUCT) and CRLM-1004 (liver, 512x512x41, 5 mm slices; no tumour
segmentation ships with it, so the tumour is a 10 mm-radius ball placed in the right liver lobe).
The ablation zone is the tumour grown by 5 mm (Euclidean distance <= 5 mm).

* identical pre/post CTs: rigid registration leaves the MAM within 0.5 mm of no registration;
* a known rigid motion (5-10 mm, 3-5 deg about a point 20 mm from the tumour) applied to the post-CT, which is
  resampled onto an oblique grid that covers only the region around the tumour (a cropped post-CT against the
  full pre-CT, the case that started the old optimiser about 86 mm off) with 10 HU noise: the tumour centroid is
  recovered to <= 1 mm and the MAM to <= 1 mm of the MAM of the truly moved tumour;
* another patient's CT as the post-CT is refused (exit 2 at the CLI, nothing written), and accepted only with
  --accept-registration, which margin.json records.

The registration works on the tumour/zone ROI only; the CTs are loaded once per module.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import rotation_matrix
from imagio.io import read_image, read_segmentation
from imagio.scene import new_scene
from imagio.testing import data_path
from IMAGIOMarginLib.logic import MarginLogic
from IMAGIOMarginLib.metrics import compute_margin
from IMAGIOMarginLib.registration import (
    DEFAULT_PARAMETERS,
    check_quality,
    crop_to_box,
    mask_box_lps,
    move_mask,
    register,
    registration_dict,
)

# the CRLM-1004 ball tumour: a point in the right liver lobe (LPS mm; slice 24, row 240, column 140, checked
# on the image: liver parenchyma, about 110 HU, portal-venous phase)
CRLM_TUMOR_CENTER_LPS = (-86.6, -12.8, -255.0)
CRLM_TUMOR_RADIUS_MM = 10.0


def grown(mask: sitk.Image, mm: float, pad_mm: float = 15.0) -> sitk.Image:
    """The mask grown by ``mm`` (Euclidean), on a crop of its grid around it."""
    lo, hi = mask_box_lps(mask)
    crop = crop_to_box(mask, lo - pad_mm, hi + pad_mm)
    d = sitk.SignedMaurerDistanceMap(crop, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Cast(d <= mm, sitk.sitkUInt8)


def centroid_lps(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.array(stats.GetCentroid(1))


def ball_on(image: sitk.Image, center_lps, radius_mm: float) -> sitk.Image:
    lo, hi = np.array(center_lps) - radius_mm - 3, np.array(center_lps) + radius_mm + 3
    crop = crop_to_box(image, lo, hi)  # its grid only
    pts = np.stack(np.meshgrid(*[np.arange(s) for s in crop.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    m = np.array(crop.GetDirection()).reshape(3, 3) * np.array(crop.GetSpacing())
    xyz = pts @ m.T + np.array(crop.GetOrigin())
    inside = np.linalg.norm(xyz - np.array(center_lps), axis=1) <= radius_mm
    arr = inside.reshape(crop.GetSize()).transpose(2, 1, 0).astype(np.uint8)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(crop)
    return out


@pytest.fixture(scope="module")
def cases():
    lidc = read_image(data_path("chest-lidc0314/ct.nrrd"))
    lidc_t = sitk.Cast(sitk.ReadImage(str(data_path("chest-lidc0314/nodule_consensus50.seg.nrrd"))) > 0,
                       sitk.sitkUInt8)
    lung1 = read_image(data_path("chest-lung1-001/image"))
    lung1_t = read_segmentation(data_path("chest-lung1-001/derived_labels/GTV-1.seg.nrrd"), reference=lung1)[0].mask
    crlm = read_image(data_path("liver-crlm1004/ct.nrrd"))
    crlm_t = ball_on(crlm, CRLM_TUMOR_CENTER_LPS, CRLM_TUMOR_RADIUS_MM)
    return {"LIDC-0314": (lidc, lidc_t), "LUNG1-001": (lung1, lung1_t), "CRLM-1004": (crlm, crlm_t)}


# (translation mm, Euler angles deg) of the post -> pre motion per case: 5-10 mm, 3-5 deg in all
MOTIONS = {"LIDC-0314": ((6.0, -4.0, 5.0), (2.0, -2.5, 2.0)),
           "LUNG1-001": ((-3.0, 5.0, -4.0), (-2.5, 1.5, 2.5)),
           "CRLM-1004": ((5.0, 3.0, -3.0), (1.5, 2.5, -2.0))}


def moved_post(ct: sitk.Image, tumor: sitk.Image, translation, angles_deg, seed: int = 3):
    """Post-CT = the CT moved by a known rigid motion, on an oblique grid around the tumour, with noise."""
    c = centroid_lps(tumor)
    motion = sitk.Euler3DTransform()  # post point -> pre point
    motion.SetCenter((c + np.array([20.0, 0.0, 0.0])).tolist())
    motion.SetRotation(*np.deg2rad(angles_deg))
    motion.SetTranslation(translation)
    lo, hi = mask_box_lps(tumor)
    half = (hi - lo) / 2 + 60.0
    sp = np.array(ct.GetSpacing())
    direction = rotation_matrix((1.0, 2.0, 0.5), 8.0) @ np.array(ct.GetDirection()).reshape(3, 3)
    size = np.ceil(2 * half / sp).astype(int)
    ref = sitk.Image([int(v) for v in size], sitk.sitkInt16)
    ref.SetSpacing(sp.tolist())
    ref.SetDirection(direction.ravel().tolist())
    center_post = np.array(motion.GetInverse().TransformPoint(c.tolist()))
    ref.SetOrigin((center_post - direction @ (sp * (size - 1) / 2)).tolist())
    post = sitk.Resample(ct, ref, motion, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    rng = np.random.default_rng(seed)
    arr = sitk.GetArrayFromImage(post) + rng.normal(0.0, 10.0, post.GetSize()[::-1])
    noisy = sitk.GetImageFromArray(arr.astype(np.int16))
    noisy.CopyInformation(post)
    tumor_post = move_mask(tumor, ref, motion)
    return noisy, tumor_post, motion, center_post


def angle_of(transform) -> float:
    m = np.array(transform.GetMatrix()).reshape(3, 3)
    return float(np.rad2deg(np.arccos(np.clip((np.trace(m) - 1) / 2, -1, 1))))


@pytest.mark.parametrize("name", list(MOTIONS))
def test_identical_ct_leaves_the_margin_as_without_registration(cases, name):
    ct, tumor = cases[name]
    zone = grown(tumor, 5.0)
    logic = MarginLogic(new_scene())
    none = logic.assess(tumor, zone, register_mode="none", n_samples=40)
    rigid = logic.assess(tumor, zone, ct, ct, register_mode="rigid", n_samples=40)
    reg = rigid.to_dict()["registration"]
    print(f"{name}: MAM none {none.metrics.minimal_margin_mm:.3f} mm, rigid {rigid.metrics.minimal_margin_mm:.3f} mm;"
          f" {reg['similarity_before']} -> {reg['similarity_after']}, t {reg['translation_mm']} mm,"
          f" r {reg['rotation_deg']} deg, ROI {reg['roi']['size_mm']} mm")
    assert abs(rigid.metrics.minimal_margin_mm - none.metrics.minimal_margin_mm) <= 0.5
    assert reg["status"] == "passed" and reg["override"] is False and reg["qc_failures"] == []
    assert reg["similarity_metric"] == "normalized_cross_correlation" and reg["similarity_before"] == pytest.approx(1.0)
    assert np.linalg.norm(reg["translation_mm"]) < 0.5 and reg["rotation_angle_deg"] < 0.5


@pytest.mark.parametrize("name", list(MOTIONS))
def test_known_rigid_motion_is_recovered(cases, name):
    ct, tumor = cases[name]
    translation, angles = MOTIONS[name]
    post, tumor_post, motion, truth_c = moved_post(ct, tumor, translation, angles)
    assert 5.0 <= np.linalg.norm(translation) <= 10.0 and 3.0 <= angle_of(motion) <= 5.0
    zone = grown(tumor_post, 5.0)
    # truth: the tumour moved by the true motion onto the zone's grid, by the rule the registration uses
    truth = compute_margin(move_mask(tumor, zone, motion), zone)
    res = MarginLogic(new_scene()).assess(tumor, zone, ct, post, register_mode="rigid", n_samples=40)
    err = np.linalg.norm(centroid_lps(res.tumor_on_zone) - truth_c)
    err_none = np.linalg.norm(centroid_lps(tumor) - truth_c)
    reg = res.to_dict()["registration"]
    # the recovered displacement of the tumour centroid, post -> pre, against the true one (RAS mm)
    true_d = np.array(motion.TransformPoint(truth_c.tolist())) - truth_c
    print(f"{name}: centroid error none {err_none:.2f} mm, rigid {err:.2f} mm; MAM {res.metrics.minimal_margin_mm:.2f}"
          f" vs {truth.minimal_margin_mm:.2f} mm; similarity {reg['similarity_before']} -> {reg['similarity_after']};"
          f" rotation {reg['rotation_angle_deg']} deg (true {angle_of(motion):.2f}); true displacement "
          f"{np.round(true_d, 2)} LPS; ROI {reg['roi']['voxels']}")
    assert err_none > 5.0
    assert err <= 1.0
    assert abs(res.metrics.minimal_margin_mm - truth.minimal_margin_mm) <= 1.0
    assert reg["status"] == "passed" and reg["similarity_after"] > reg["similarity_before"]
    assert abs(reg["rotation_angle_deg"] - angle_of(motion)) < 1.0


@pytest.fixture(scope="module")
def other_patient(cases, tmp_path_factory):
    """Files for the CLI: LIDC-0314 (pre, around its nodule) and LUNG1-001's CT placed over it (post)."""
    from imagio.io import Segment, write_image, write_segmentation

    pre_full, tumor_full = cases["LIDC-0314"]
    other, _ = cases["LUNG1-001"]
    lo, hi = mask_box_lps(tumor_full)
    pre, tumor = crop_to_box(pre_full, lo - 70, hi + 70), crop_to_box(tumor_full, lo - 70, hi + 70)
    # the other patient's chest moved over this one (both chest CTs, overlapping as two scans of one region)
    post = sitk.Image(other)
    c_other = np.array(other.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in other.GetSize()]))
    c_pre = np.array(pre_full.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in pre_full.GetSize()]))
    post.SetOrigin((np.array(other.GetOrigin()) + c_pre - c_other).tolist())
    zone = sitk.Resample(grown(tumor, 5.0), post, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    d = tmp_path_factory.mktemp("other")
    paths = {"pre": write_image(d / "pre.nrrd", pre), "post": write_image(d / "post.nrrd", post),
             "tumor": write_segmentation(d / "tumor.seg.nrrd", [Segment("nodule", tumor)]),
             "zone": write_segmentation(d / "zone.seg.nrrd", [Segment("zone", zone)])}
    return {k: str(v) for k, v in paths.items()}


def test_other_patients_ct_is_refused_at_the_cli(other_patient, tmp_path, capsys):
    from imagio.cli import main

    p = other_patient
    argv = ["margin", "--tumor", p["tumor"], "--ablation", p["zone"], "--pre-ct", p["pre"], "--post-ct", p["post"],
            "--register", "rigid", "--samples", "40"]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    print(err)
    assert len(err) == 1 and err[0].startswith("imagio: error: Registration refused:")
    assert "same anatomy" in err[0] and "--accept-registration" in err[0]
    assert not out.exists()


def test_override_uses_a_refused_registration_and_records_it(other_patient):
    """The same pair with the explicit override (the CLI's --accept-registration): returned, and recorded.

    (Here the diverged transform then moves the tumour out of the zone's image, which the margin step refuses.)
    """
    p = other_patient
    tumor = read_segmentation(p["tumor"])[0].mask
    zone = read_segmentation(p["zone"])[0].mask
    res = register(read_image(p["pre"]), read_image(p["post"]), "rigid", tumor, zone, accept=True)
    reg = registration_dict(res)  # margin.json's "registration"
    print(reg)
    assert reg["override"] is True and reg["status"] == "accepted by user"
    assert any("same anatomy" in f for f in reg["qc_failures"])
    assert max(reg["similarity_before"], reg["similarity_after"]) < DEFAULT_PARAMETERS.min_similarity
    assert len(reg["translation_mm"]) == 3 and len(reg["rotation_deg"]) == 3 and reg["roi"]["voxels"]


def test_quality_control_decides():
    """The refusal rules on analytically chosen figures (the bounds of RegistrationParameters)."""
    p = DEFAULT_PARAMETERS
    assert check_quality(0.6, 0.9, 8.0, 4.0, None, None) == []
    worse = check_quality(0.9, 0.7, 3.0, 1.0, None, None)
    assert len(worse) == 1 and "worse" in worse[0]
    assert check_quality(0.9, 0.9 - p.similarity_tolerance / 2, 0.1, 0.1, None, None) == []  # within noise
    assert "diverged" in check_quality(0.6, 0.9, p.max_translation_mm + 1, 1.0, None, None)[0]
    assert "diverged" in check_quality(0.6, 0.9, 1.0, p.max_rotation_deg + 1, None, None)[0]
    assert "same anatomy" in check_quality(0.2, 0.3, 4.0, 2.0, None, None)[0]
    assert "landmark error worse" in check_quality(0.6, 0.9, 4.0, 2.0, 1.0, 2.0)[0]
    assert check_quality(0.6, 0.9, 4.0, 2.0, 6.0, 1.0) == []


def test_refusal_in_the_logic_names_the_override(cases):
    """A registration whose ROI lies mostly outside the post-CT is refused before it runs."""
    ct, tumor = cases["LIDC-0314"]
    lo, hi = mask_box_lps(tumor)
    post = crop_to_box(ct, lo - 5, np.array([hi[0] + 5, hi[1] + 5, lo[2] + 0.5 * (hi[2] - lo[2])]))
    zone = sitk.Resample(grown(tumor, 5.0), post, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    with pytest.raises(ImagioError, match="Registration refused: only .* lies inside the post-treatment CT"):
        MarginLogic(new_scene()).assess(tumor, zone, ct, post, register_mode="rigid", n_samples=40)
