"""Uncertainty of the minimal ablative margin: registration (translation, rotation) and segmentation boundaries.

Model (every sample is one possible truth given the measurement)
----------------------------------------------------------------
* registration translation: the zone is misplaced relative to the tumour by a random shift ``s ~ N(0, sigma^2 I)``
  (sigma in mm per axis). From landmarks: sigma = TRE_rms / sqrt(3) (the RMS of a 3D Gaussian error is
  sigma sqrt(3)). Default: the mean target registration error of 1.62 mm (range 1.20-2.23 mm, 7 of 29 studies)
  reported by the systematic review of software-based margin assessment after thermal ablation of liver
  tumours (``TRE_SOURCE``); the mean length of a 3D Gaussian error is sigma * 2 sqrt(2 / pi), so
  sigma = 1.62 / 1.596 = 1.02 mm per axis;
* registration rotation: a random rotation about the tumour centroid, ``N(0, sigma_rot^2)`` per axis (degrees).
  Given by the user or by the registration; without either it is 0 (the published TRE is measured at the
  target, so it already holds the effect of rotation there; a note says so);
* segmentation: the tumour and the zone boundaries are each offset along their normals by an independent
  ``N(0, sigma_seg^2)`` (a reader draws the whole boundary a little wider or tighter). Default
  ``SEGMENTATION_SIGMA_MM`` = 0.35 mm, MEASURED on the four LIDC-0314 readers in ../shared/data: for every pair of
  readers A, B the boundary offset is half the difference of the area-weighted mean signed distances of A's
  surface to B's and of B's to A's (the sub-voxel surfaces of :mod:`.metrics`); the six pairwise offsets are
  0.48, -0.34, 0.34, -0.77, -0.17, 0.60 mm (0.47, -0.45, 0.31, -0.89, -0.17, 0.73 before thin detail was held in
  the fitted surfaces: 0.39 mm); a pairwise offset has variance 2 sigma^2, so sigma = RMS / sqrt(2)
  = 0.35 mm per segmentation (``test_segmentation_sigma_is_measured`` recomputes it). The zone gets the same
  value (no multi-reader zone data here; a stated assumption).

An offset of the tumour boundary by d moves every tumour surface point by d along its normal, so the margin
changes by -d; the zone's offset changes it by +d. For each seeded sample the MAM is the minimum over the
tumour surface of the zone's signed distance (half-voxel lattice field plus the per-point sub-voxel correction
to the exact value) at the moved points, minus the tumour offset plus the zone offset.

Interval: the 2.5 and 97.5 % quantiles of the samples. A well-centred zone is thinned by a misregistration in
any direction, so the samples can all lie below the measured MAM; the interval is then widened to contain it
(the measured value is the best case; coverage stays at least 95 %) and ``widened`` says so. P(MAM >= threshold)
is the share of samples at or above the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import MarginMetrics, trilinear

TRE_SOURCE = ("Systematic review, 29 studies (mean target registration error 1.62 mm, range 1.20-2.23 mm, in the 7 "
              "studies that report it): 'Software-based assessment of tumor margins after percutaneous thermal "
              "ablation of liver tumors: A systematic review', Diagn Interv Imaging 2022;103(5):240-250, "
              "doi:10.1016/j.diii.2022.02.004, PMID 35246412")
PUBLISHED_MEAN_TRE_MM = 1.62
#: sigma per axis whose 3D mean error length is the published mean TRE: E|e| = sigma * 2 sqrt(2/pi)
DEFAULT_SIGMA_MM = round(PUBLISHED_MEAN_TRE_MM / (2.0 * np.sqrt(2.0 / np.pi)), 3)
SEGMENTATION_SIGMA_MM = 0.35
SEGMENTATION_SOURCE = ("measured: boundary offsets between the four LIDC-0314 readers (6 pairs, sub-voxel surfaces), "
                       "sigma = RMS / sqrt(2) = 0.35 mm per segmentation; the zone assumed the same")


def sigma_from_tre_rms(tre_rms_mm: float) -> float:
    """Per-axis sigma (mm) of an isotropic 3D Gaussian error whose RMS length is ``tre_rms_mm``."""
    return float(tre_rms_mm) / np.sqrt(3.0)


@dataclass
class MarginUncertainty:
    sigma_mm: float  # registration translation, per axis
    n_samples: int
    seed: int
    margin_ci_mm: tuple[float, float]  # 95 % interval (contains the measured MAM)
    p_margin_ge_threshold: float
    samples_mm: np.ndarray
    rotation_sigma_deg: float = 0.0
    tumor_boundary_sigma_mm: float = 0.0
    zone_boundary_sigma_mm: float = 0.0
    widened: bool = False  # the central interval was widened to contain the measured MAM
    central_ci_mm: tuple[float, float] = (0.0, 0.0)


def _rotations(rng, n: int, sigma_deg: float) -> np.ndarray:
    """(n, 3, 3) rotation matrices with rotation vectors ~ N(0, sigma^2) per axis (Rodrigues)."""
    out = np.tile(np.eye(3), (n, 1, 1))
    if sigma_deg <= 0:
        return out
    v = rng.normal(0.0, np.deg2rad(sigma_deg), size=(n, 3))
    th = np.linalg.norm(v, axis=1)
    for i in range(n):
        if th[i] < 1e-12:
            continue
        k = v[i] / th[i]
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        out[i] = np.eye(3) + np.sin(th[i]) * kx + (1 - np.cos(th[i])) * kx @ kx
    return out


def margin_uncertainty(metrics: MarginMetrics, threshold_mm: float, sigma_mm: float = DEFAULT_SIGMA_MM,
                       n_samples: int = 400, seed: int = 0, confidence: float = 0.95,
                       rotation_sigma_deg: float = 0.0, tumor_boundary_sigma_mm: float = SEGMENTATION_SIGMA_MM,
                       zone_boundary_sigma_mm: float = SEGMENTATION_SIGMA_MM) -> MarginUncertainty:
    field = metrics.field
    spacing_kji = np.array(field.reference.GetSpacing(), float)[::-1]
    rng = np.random.default_rng(seed)
    mam = float(metrics.minimal_margin_mm)
    # every draw is made, even for a zero sigma, so that a seed gives the same draws whatever the sigmas
    shifts_mm = rng.normal(0.0, 1.0, size=(n_samples, 3)) * float(sigma_mm)  # [k, j, i] axes (isotropic)
    rots = _rotations(rng, n_samples, float(rotation_sigma_deg))
    d_t = rng.normal(0.0, 1.0, n_samples) * float(tumor_boundary_sigma_mm)
    d_z = rng.normal(0.0, 1.0, n_samples) * float(zone_boundary_sigma_mm)
    if sigma_mm <= 0 and rotation_sigma_deg <= 0:
        samples = np.full(n_samples, mam)
    else:
        order = np.argsort(metrics.surface_margin_mm)
        vals = metrics.surface_margin_mm[order]
        half = spacing_kji * field.step_voxels  # mm per grid step of the field
        lat = field.to_grid(metrics.surface_ijk[order])  # [k, j, i] grid positions
        corr = vals - trilinear(field.phi, lat.astype(np.float32))  # sub-voxel correction to the exact map
        pos_mm = lat * half  # mm in the lattice's scaled frame
        centre = pos_mm.mean(axis=0)
        rel = pos_mm - centre
        rmax = float(np.linalg.norm(rel, axis=1).max())
        angles = np.array([np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)) for r in rots])
        moves = np.linalg.norm(shifts_mm, axis=1) + 2.0 * np.sin(angles / 2.0) * rmax  # largest point displacement
        phi = field.phi

        def sample(n: int, sel: slice) -> np.ndarray:
            # zone moved by (R, s) relative to the tumour <=> tumour points sampled at R^T (p - c) + c - s
            q = rel[sel] @ rots[n] + centre - shifts_mm[n]
            return trilinear(phi, (q / half).astype(np.float32)) + corr[sel]

        n_first = min(128, len(vals))
        samples = np.array([float(sample(n, slice(0, n_first)).min()) for n in range(n_samples)])
        # the field changes by at most the distance moved (plus about a voxel across the surface between lattice
        # samples): a point can only beat the bound if its margin < bound + move + 4 cell diagonals
        diagonal = float(np.linalg.norm(half))
        ends = np.searchsorted(vals, samples + moves + 4.0 * diagonal + float(np.abs(corr).max()), side="right")
        for n in np.flatnonzero(ends > n_first):
            samples[n] = min(samples[n], float(sample(n, slice(n_first, int(ends[n]))).min()))
        # the minimum of a moved map carries the same grid-phase bias as the unmoved one (metrics, step 5b)
        samples = np.clip(samples + float(getattr(metrics, "grid_correction_mm", 0.0)), -field.cap_mm, field.cap_mm)
    samples = samples - d_t + d_z
    a = (1.0 - confidence) / 2.0
    lo, hi = (float(v) for v in np.quantile(samples, [a, 1.0 - a]))
    widened = not (lo <= mam <= hi)
    return MarginUncertainty(
        sigma_mm=float(sigma_mm), n_samples=int(n_samples), seed=int(seed),
        margin_ci_mm=(min(lo, mam), max(hi, mam)),
        p_margin_ge_threshold=float(np.mean(samples >= threshold_mm)),
        samples_mm=samples, rotation_sigma_deg=float(rotation_sigma_deg),
        tumor_boundary_sigma_mm=float(tumor_boundary_sigma_mm), zone_boundary_sigma_mm=float(zone_boundary_sigma_mm),
        widened=bool(widened), central_ci_mm=(lo, hi),
    )
