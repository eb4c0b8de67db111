"""Exactness of the margin metrics on real tumours with synthetic ablation zones of known margin.

Each real tumour mask is resampled (nearest neighbour) onto an oblique,
anisotropic grid; that voxel mask *is* the tumour (a union of voxel boxes).
Zones of known margin are built independently of the module with scipy:

* grown: voxel centres within k mm of the tumour's box union. The exact
  distance from a half-voxel-lattice point to a box union is the Euclidean
  distance transform to the lattice points touching a tumour voxel
  (maximum filter of the interleaved mask), so the continuous zone
  T (+) ball(k) has margin exactly k; its raster is what the module sees.
* grown and shifted by s (whole voxels along a grid axis): the continuous
  zone T (+) ball(k) + s has minimal margin exactly k - |s| (negative when
  |s| > k, the depth of the tumour outside the zone). The residual tumour
  volume truth integrates the continuous zone over the tumour on the
  half-voxel lattice (trapezoid rule), independent of voxel counting.

Tolerances: MAM within half a voxel (half the largest spacing of the
anisotropic grid); coverage within 0.5 %; residual tumour volume within 2 %
of the true residual (for the sphere zone, whose surface is not aligned
with the grid; the true residual is supersampled 5x5x5 per voxel).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

try:  # scipy builds the truth independently of the module (a test-only dependency)
    from scipy import ndimage
except ImportError:  # like imagio.testing.data_path: skip on a user's machine, fail under CI
    if os.environ.get("CI"):
        raise
    pytest.skip("scipy (test dependency) is not installed", allow_module_level=True)

from imagio.geometry import make_image, rotation_matrix  # noqa: E402
from imagio.io import read_segmentation  # noqa: E402
from imagio.testing import data_path  # noqa: E402
from IMAGIOMarginLib.metrics import compute_margin  # noqa: E402

CASES = {
    # name: (path, segment name or None, oblique spacing (mm))
    "sarcoma-sts001": ("sarcoma-sts001/nifti/mask/mask.nii.gz", None, (1.1, 1.3, 2.1)),
    "sarcoma-sts002": ("sarcoma-sts002/nifti/mask/mask.nii.gz", None, (0.9, 1.2, 2.2)),
    "lidc0314-nodule": ("chest-lidc0314/nodule_consensus50.seg.nrrd", None, (0.7, 0.8, 1.3)),
    "lung1-gtv": ("chest-lung1-001/derived_labels/GTV-1.seg.nrrd", None, (1.1, 1.4, 2.4)),
    "medmpd-liver-p2-nodule1": ("medmpd-liver-p2/nodule1.nii.gz", None, (0.8, 1.0, 1.8)),
}
K_MM = 5.0


def oblique_tumor(rel: str, name, spacing, pad_mm: float = 32.0) -> sitk.Image:
    """The real tumour mask on an oblique, anisotropic grid around it (nearest neighbour)."""
    segs = read_segmentation(data_path(rel))
    seg = segs[0] if name is None else next(s for s in segs if s.name == name)
    mask = seg.mask
    arr = sitk.GetArrayViewFromImage(mask) > 0
    kji = np.argwhere(arr)
    pts = np.array([mask.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in
                    np.array([kji.min(0), kji.max(0)])[:, ::-1].astype(float)])
    center_lps = pts.mean(axis=0)
    radius = 0.5 * np.linalg.norm(pts[1] - pts[0]) + pad_mm
    size = [int(np.ceil(2 * radius / s)) + 1 for s in spacing]
    rot = rotation_matrix((1.0, 2.0, 3.0), 23.0)
    ref = make_image(size, spacing, (0, 0, 0), rot)
    # place the grid centre on the tumour centre
    c_idx = np.array(ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    ref.SetOrigin(tuple(np.array(ref.GetOrigin()) + center_lps - c_idx))
    out = sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt8)
    assert sitk.GetArrayViewFromImage(out).any()
    return out


def lattice_touching(t: np.ndarray) -> np.ndarray:
    """Half-voxel-lattice points (shape 2n-1) that touch a set voxel (closed box union)."""
    inter = np.zeros(tuple(2 * n - 1 for n in t.shape), bool)
    inter[::2, ::2, ::2] = t
    return ndimage.maximum_filter(inter, size=3, mode="constant", cval=0)


def box_distance_lattice(t: np.ndarray, spacing_kji) -> np.ndarray:
    """Exact distance (mm) of every half-voxel-lattice point to the tumour's box union."""
    return ndimage.distance_transform_edt(~lattice_touching(t), sampling=np.asarray(spacing_kji) / 2.0)


def like(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(ref)
    return img




@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    rel, name, spacing = CASES[request.param]
    tumor = oblique_tumor(rel, name, spacing)
    t = sitk.GetArrayFromImage(tumor) > 0
    sp = np.array(tumor.GetSpacing())[::-1]
    d = box_distance_lattice(t, sp)
    half_voxel = 0.5 * float(sp.max())
    return request.param, tumor, t, sp, d, half_voxel


def test_grown_zone_margin_is_k(case):
    name, tumor, t, sp, d, half_voxel = case
    zone = d[::2, ::2, ::2] <= K_MM
    m = compute_margin(tumor, like(zone, tumor), threshold_mm=5.0)
    err = m.minimal_margin_mm - K_MM
    print(f"{name}: grown {K_MM} mm: MAM {m.minimal_margin_mm:.3f} mm (error {err:+.3f} mm, "
          f"half voxel {half_voxel:.3f} mm, spacing {tuple(np.round(sp[::-1], 2))})")
    assert abs(err) <= half_voxel
    assert m.coverage_percent == pytest.approx(100.0, abs=1e-9)
    assert m.residual_tumor_ml == 0.0
    # the zone is exactly the 5 mm shell: its coverage is 100 %, the 10 mm shell is covered |Z| / |E10|
    assert m.shell_coverage_percent["5"] == pytest.approx(100.0, abs=1e-9)
    assert m.shell_coverage_percent["3"] == pytest.approx(100.0, abs=1e-9)
    e10 = d[::2, ::2, ::2] <= 10.0
    assert m.shell_coverage_percent["10"] == pytest.approx(100.0 * zone.sum() / e10.sum(), abs=1e-6)
    assert m.exact


@pytest.mark.parametrize("k_mm, shift_mm", [(5.0, 3.0), (2.0, 8.0)])
def test_grown_and_shifted_zone(case, k_mm, shift_mm):
    """Zone T(+)ball(k) shifted by whole voxels along the grid's first axis: MAM = k - |s| exactly."""
    name, tumor, t, sp, d, half_voxel = case
    shift_vox = max(1, int(round(shift_mm / sp[2])))
    s_mm = shift_vox * sp[2]  # along i (x) of the oblique grid
    # shifting the zone by +n voxels: lattice point p is in the shifted zone iff p - s is in the zone
    d_shift = np.full_like(d, np.inf)
    d_shift[:, :, 2 * shift_vox:] = d[:, :, :-2 * shift_vox]
    zone = d_shift[::2, ::2, ::2] <= k_mm
    m = compute_margin(tumor, like(zone, tumor), threshold_mm=5.0)
    truth = k_mm - s_mm
    err = m.minimal_margin_mm - truth
    print(f"{name}: k {k_mm} mm shift {s_mm:.2f} mm: MAM {m.minimal_margin_mm:.3f} (truth {truth:.3f}, "
          f"error {err:+.3f}, half voxel {half_voxel:.3f})")
    assert abs(err) <= half_voxel
    if truth > half_voxel:
        assert m.coverage_percent == 100.0 and m.residual_tumor_ml == 0.0
    if truth < -half_voxel:
        assert m.minimal_margin_mm < 0 and m.residual_tumor_ml > 0


def sphere_truth(tumor: sitk.Image, t: np.ndarray, center_lps: np.ndarray, radius: float, sub: int = 5):
    """Exact MAM and (supersampled) residual volume of the tumour's box union against a continuous sphere."""
    sp = np.array(tumor.GetSpacing())
    d = np.array(tumor.GetDirection()).reshape(3, 3)
    o = np.array(tumor.GetOrigin())
    ijk = np.argwhere(t)[:, ::-1].astype(float)
    corners = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    far = 0.0
    for c in corners:
        p = (ijk + c) * sp @ d.T + o
        far = max(far, float(np.linalg.norm(p - center_lps, axis=1).max()))
    mam = radius - far
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    grid = np.array(np.meshgrid(offs, offs, offs, indexing="ij")).reshape(3, -1).T
    outside = 0
    for g in grid:
        p = (ijk + g) * sp @ d.T + o
        outside += int(np.count_nonzero(np.linalg.norm(p - center_lps, axis=1) > radius))
    residual_ml = outside / sub ** 3 * float(np.prod(sp)) / 1000.0
    return mam, residual_ml


@pytest.mark.parametrize("gap_mm", [2.0, -10.0])
def test_off_centre_sphere_zone(case, gap_mm):
    """A spherical zone, off the tumour centre along an oblique direction, sized to leave a known gap.

    Truth (continuous, not grid-aligned): MAM = R - max |tumour corner - centre|; the residual tumour volume
    is the tumour's box union outside the sphere, supersampled 5x5x5 per voxel.
    """
    name, tumor, t, sp, d, half_voxel = case
    ijk = np.argwhere(t)[:, ::-1].mean(axis=0)
    centroid = np.array(tumor.TransformContinuousIndexToPhysicalPoint(ijk.tolist()))
    offset = np.array([1.0, -1.0, 0.5])
    center = centroid + 4.0 * offset / np.linalg.norm(offset)
    sp_xyz = np.array(tumor.GetSpacing())
    # radius from the farthest corner, so that the true MAM is gap_mm
    far = -sphere_truth(tumor, t, center, 0.0, sub=1)[0]
    radius = far + gap_mm
    kji = np.indices(t.shape).reshape(3, -1)[::-1].T.astype(float)
    dmat = np.array(tumor.GetDirection()).reshape(3, 3)
    pts = kji * sp_xyz @ dmat.T + np.array(tumor.GetOrigin())
    zone = (np.linalg.norm(pts - center, axis=1) <= radius).reshape(t.shape)
    m = compute_margin(tumor, like(zone, tumor), threshold_mm=5.0)
    mam_truth, res_truth = sphere_truth(tumor, t, center, radius)
    vol_ml = float(t.sum()) * float(np.prod(sp)) / 1000.0
    cov_truth = 100.0 * (1.0 - res_truth / vol_ml)
    err = m.minimal_margin_mm - mam_truth
    print(f"{name}: sphere gap {gap_mm:+.1f} mm: MAM {m.minimal_margin_mm:.3f} (truth {mam_truth:.3f}, error "
          f"{err:+.3f}, half voxel {half_voxel:.3f}) coverage {m.coverage_percent:.3f} % (truth {cov_truth:.3f}) "
          f"residual {m.residual_tumor_ml:.4f} ml (truth {res_truth:.4f}, "
          f"{100 * (m.residual_tumor_ml - res_truth) / max(res_truth, 1e-12):+.2f} %)")
    assert abs(err) <= half_voxel
    assert abs(m.coverage_percent - cov_truth) <= 0.5
    if gap_mm < 0:
        assert abs(m.residual_tumor_ml - res_truth) <= 0.02 * res_truth
    else:
        assert m.residual_tumor_ml == pytest.approx(res_truth, abs=1e-9)
