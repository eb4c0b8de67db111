"""Uncertainty of the minimal ablative margin under misregistration.

Model: the zone is misplaced relative to the tumour by a random rigid shift
``s ~ N(0, sigma^2 I)`` (sigma in mm per axis, isotropic). With the default
sigma = 1.6 mm (the published mean registration error, used here per axis,
which is conservative: the mean 3D shift is then 2.55 mm) or a sigma from
the registration's landmark error.

Reading: with a flat prior on where the zone truly lies, the sampled values
are the distribution of the true MAM given the measured configuration. A
well-centred zone is thinned by a shift in any direction, so the interval
can lie below the measured MAM (the measurement is then the best case).

For each of ``n_samples`` seeded shifts the MAM of the shifted zone is the
minimum of the signed-distance field at the shifted tumour-surface points
(trilinear on the half-voxel lattice). The signed distance changes by at
most the distance moved, except across the surface between samples (within
about one voxel), so a surface point whose unshifted margin exceeds the best
value found so far by more than |s| + 4 lattice-cell diagonals cannot be the
minimum for that sample and is skipped (points are visited in order of their
margin; a test checks the result against brute force).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import MarginMetrics, trilinear

DEFAULT_SIGMA_MM = 1.6


@dataclass
class MarginUncertainty:
    sigma_mm: float
    n_samples: int
    seed: int
    margin_ci_mm: tuple[float, float]  # 95 % interval
    p_margin_ge_threshold: float
    samples_mm: np.ndarray


def margin_uncertainty(metrics: MarginMetrics, threshold_mm: float, sigma_mm: float = DEFAULT_SIGMA_MM,
                       n_samples: int = 400, seed: int = 0, confidence: float = 0.95) -> MarginUncertainty:
    field = metrics.field
    spacing_kji = np.array(field.reference.GetSpacing(), float)[::-1]
    if sigma_mm <= 0:
        samples = np.full(n_samples, metrics.minimal_margin_mm)
    else:
        rng = np.random.default_rng(seed)
        # isotropic Gaussian: its law is the same in the grid's own (rotated) axes
        shifts_mm = rng.normal(0.0, sigma_mm, size=(n_samples, 3))  # [k, j, i] axes
        norms = np.linalg.norm(shifts_mm, axis=1)
        order = np.argsort(metrics.surface_margin_mm)
        vals = metrics.surface_margin_mm[order]
        lat = ((metrics.surface_ijk[order] - field.roi_start_ijk)[:, ::-1] * 2.0).astype(np.float32)
        phi = field.phi
        shifts_lat = (shifts_mm / (spacing_kji / 2.0)).astype(np.float32)
        n_first = min(128, len(vals))
        # first pass, all samples at once: the best value over the lowest-margin points (an upper bound)
        first = trilinear(phi, (lat[None, :n_first] - shifts_lat[:, None]).reshape(-1, 3))
        samples = first.reshape(n_samples, n_first).min(axis=1).astype(float)
        # the trilinear value at q - s mixes the lattice values at the corners of one cell, each at most
        # |s| + d from q (d: cell diagonal). The signed distance to the surface samples changes by at most
        # the distance moved, plus a voxel or so where it changes sign between samples. So a point can only
        # beat the bound if margin(q) < bound + |s| + 4 d (generous; checked against brute force in the tests).
        diagonal = float(np.linalg.norm(spacing_kji / 2.0))
        ends = np.searchsorted(vals, samples + norms + 4.0 * diagonal, side="right")
        for n in np.flatnonzero(ends > n_first):
            # zone moved by +s  <=>  tumour points sampled at p - s
            rest = trilinear(phi, lat[n_first:ends[n]] - shifts_lat[n])
            samples[n] = min(samples[n], float(rest.min()))
        samples = np.clip(samples, -field.cap_mm, field.cap_mm)
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return MarginUncertainty(
        sigma_mm=float(sigma_mm), n_samples=int(n_samples), seed=int(seed),
        margin_ci_mm=(float(lo), float(hi)),
        p_margin_ge_threshold=float(np.mean(samples >= threshold_mm)),
        samples_mm=samples,
    )
