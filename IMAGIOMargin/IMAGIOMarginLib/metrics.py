"""Ablation-margin metrics between sub-voxel surfaces fitted to the binary masks (oblique, anisotropic grids; README tolerances).

Convention (what "surface" and "distance" mean here)
----------------------------------------------------
A binary mask only says which voxel centres lie inside; the continuous
surface it was drawn from lies somewhere between inside and outside
centres. Taking the minimum distance between two staircases (or between
lattice points of two iso-surfaces) is biased low: the MAM is a minimum, and
a minimum over quantisation noise picks its worst case (-0.5 to -0.9 mm on
1 mm grids). Here each mask gets a smooth sub-voxel surface first:

1. *smooth*: the 0/1 mask is convolved with a Gaussian of the same width in
   millimetres along every axis, ``SMOOTHING_VOXELS`` voxels of the finest axis,
   but never less than ``MIN_SMOOTHING_VOXELS`` voxel of an axis
   (sigma_a = max(2 min(h), h_a)): it averages the staircase over several steps
   (one voxel of sigma damps the sampling frequency by exp(-2 pi^2)) without
   smearing detail along thick slices (2 h_a there widened a one-slice
   protrusion by 3 mm; see the module README);
2. *undo the shrinkage*: smoothing moves curved level sets inwards (sigma^2 / R
   for a sphere of radius R); the field ``G`` starts as the smoothed mask ``f``
   and is refined ``FIT_ITERATIONS`` times, ``G <- G + (f - smooth(pv(G)))``
   (``pv``: the partial-volume image of ``G >= 0.5``), so that the smoothed
   surface matches the smoothed mask; inside voxel centres that this surface
   leaves more than ``HOLD_VOXELS`` (half a voxel) outside it, detail one or two
   voxels wide that the smoothing dropped, are held inside through a second
   refinement (:func:`lost_centres`, :func:`_hold`);
3. the surface is the 0.5 level set of ``G`` (flying edges, a closed triangle
   mesh; inside where G >= 0.5).

Distances are Euclidean distances in millimetres from the tumour surface's
vertices to the zone surface (to the tangent plane at the nearest zone-mesh
vertex, bounded by the vertex distance) (in scaled index space:
direction cosines rotate the grid but do not change distances), signed
positive inside the zone. The margin map is read at the smoothing's scale:
each vertex gets the area-weighted mean of the signed distances within
``MAP_VOXELS`` (1.25) of the largest spacing of it, so that the minimum does not pick the
sub-voxel noise that is left.

* signed margin at a tumour surface point: distance to the zone surface,
  positive inside the zone, negative outside (uncovered tumour);
* minimal ablative margin (MAM): the minimum signed margin over the tumour
  surface (negative = the depth by which the tumour sticks out of the zone),
  plus its grid-phase correction: a minimum picks the worst of the map's
  residual quantisation error (about -0.2 mm on 1 mm grids, -0.6 mm on
  2.5 mm slices), and smoothing flattens thin bumps. The fitted surfaces are
  rasterised again on grids shifted by sub-voxel offsets, fitted and measured
  again (4-8 replicates, a fixed seed); the mean replicate minimum minus the
  measured one is the bias (a parametric bootstrap, Efron), subtracted
  (:func:`grid_phase_bias`; not applied when larger than half the largest
  spacing, with a note). The map itself is not shifted;
* tumour volume, residual tumour (ml) and coverage (%): volumes of the
  solids G_tumour >= 0.5 and G_tumour >= 0.5 > G_zone, integrated on a grid
  ``SUPERSAMPLE`` times finer per axis (trilinear);
* shell coverage r mm: share of the points within r mm of the tumour solid
  (tumour included, 0 mm = the tumour itself) that are inside the zone solid
  (voxel centres; distances to the voxel centres of the solid);
* histogram: area-weighted distribution of the signed margin over the tumour
  surface mesh, in percent of the tumour surface area.

Limits: features thinner than a voxel are not in a binary mask at all;
one or two voxels wide, they are held at the staircase's midpoint (step 2);
a mask of only a few voxels has no surface (refused with the reason).

Everything is computed on the tumour bounding box grown by a cap (by
default threshold + 10 mm) and the smoothing's reach. Signed margins whose
magnitude is below the cap are exact; if the MAM itself reaches the cap, the
cap doubles until it does not or the region is the whole image. Outside the
image counts as "not zone" and "not tumour" (a zone cut by the image edge is
not assumed to go on). Values beyond the cap are reported clipped.

The steps are module-level functions: :func:`check_pair`,
:func:`region_of_interest`, :func:`fit_surface`, :func:`surface_mesh`,
:func:`signed_margin`, :func:`grid_phase_bias`, :func:`solid_volumes`, :func:`shell_coverage`,
:func:`margin_histogram`, :func:`lattice_field`; :func:`compute_margin` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import ijk_to_ras, ras_to_ijk, require_same_grid, signed_distance_mm
from imagio.progress import ensure

SHELLS_MM = (0.0, 3.0, 5.0, 10.0)


def check_binary(mask: sitk.Image, role: str) -> np.ndarray:
    """Read-only array view [k, j, i] of a 0/1 mask; ImagioError for non-binary or empty masks."""
    if mask.GetDimension() != 3:
        raise ImagioError(f"The {role} mask is {mask.GetDimension()}D", "Give a 3D segmentation")
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise ImagioError(f"The {role} mask has several values per voxel", "Give a binary (0/1) segmentation")
    arr = sitk.GetArrayViewFromImage(mask)
    lo, hi = arr.min(), arr.max()
    binary = lo >= 0 and hi <= 1
    if binary and arr.dtype.kind == "f":
        binary = bool(np.all((arr == 0) | (arr == 1)))
    if not binary:
        values = np.unique(arr)
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise ImagioError(
            f"The {role} mask is not binary (values {shown})",
            "Choose one segment (a 0/1 mask); for a label map pick the segment by name",
        )
    if hi == 0:
        raise ImagioError(f"The {role} segmentation is empty", f"Choose a {role} segment that contains voxels")
    return arr


def refine_mean(a: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a 0/1 [k, j, i] array at its half-voxel lattice points (float32, shape 2n-1).

    A voxel centre keeps its value, a face centre gets the mean of 2 voxels, an edge midpoint of 4, a
    corner of 8: the values are exact multiples of 1/8, so ``== 0.5`` is an exact test.
    """
    out = a.astype(np.float32)
    for ax in range(3):
        n = out.shape[ax]
        shape = list(out.shape)
        shape[ax] = 2 * n - 1
        new = np.empty(shape, np.float32)
        even = [slice(None)] * 3
        odd = [slice(None)] * 3
        first = [slice(None)] * 3
        last = [slice(None)] * 3
        even[ax] = slice(0, None, 2)
        odd[ax] = slice(1, None, 2)
        first[ax] = slice(0, n - 1)
        last[ax] = slice(1, n)
        new[tuple(even)] = out
        np.add(out[tuple(first)], out[tuple(last)], out=new[tuple(odd)])
        new[tuple(odd)] *= 0.5
        out = new
    return out


def _edt(points: np.ndarray, spacing_kji) -> np.ndarray:
    """Exact Euclidean distance (mm) from every lattice point to the nearest set point (0 on the set)."""
    return np.maximum(signed_distance_mm(points, spacing_xyz=np.asarray(spacing_kji, float)[::-1]), 0.0)


@dataclass
class MarginField:
    """Signed distance to the zone solid (mm, + inside) on a regular sub-grid of the ROI (step in voxels)."""

    phi: np.ndarray  # float32 [k, j, i]
    roi_start_ijk: np.ndarray  # voxel index (i, j, k) of phi[0, 0, 0] (may be negative: padding)
    reference: sitk.Image  # grid the indices refer to
    cap_mm: float
    step_voxels: float = 0.5  # 0.5: the half-voxel lattice; 1: voxel centres

    def to_grid(self, ijk: np.ndarray) -> np.ndarray:
        """[k, j, i] positions in ``phi`` of continuous voxel indices [i, j, k]."""
        return ((np.asarray(ijk, float) - self.roi_start_ijk) / self.step_voxels)[:, ::-1]

    def lattice_to_ijk(self, lattice_kji: np.ndarray) -> np.ndarray:
        """Continuous voxel index [i, j, k] of grid points given as [k, j, i] rows."""
        return np.asarray(lattice_kji, float)[:, ::-1] * self.step_voxels + self.roi_start_ijk

    def sample_ijk(self, ijk: np.ndarray) -> np.ndarray:
        """Trilinear value at continuous voxel indices [i, j, k] (clamped to the ROI, clipped to the cap)."""
        return np.clip(trilinear(self.phi, self.to_grid(ijk)), -self.cap_mm, self.cap_mm)

    def sample_ras(self, points_ras) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(points_ras, float))
        return self.sample_ijk(ras_to_ijk(self.reference, pts))


def trilinear(volume: np.ndarray, kji: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``volume`` (every axis >= 2 long) at float positions [k, j, i], clamped."""
    shape = np.array(volume.shape)
    p = np.clip(kji, 0.0, shape - 1.0001)
    p0 = p.astype(np.intp)  # floor, p >= 0
    f = (p - p0).astype(np.float32)
    s0, s1 = int(shape[1] * shape[2]), int(shape[2])
    base = p0[:, 0] * s0 + p0[:, 1] * s1 + p0[:, 2]
    flat = volume.reshape(-1)
    fk, fj, fi = f[:, 0], f[:, 1], f[:, 2]
    c00 = flat[base] + (flat[base + 1] - flat[base]) * fi
    c01 = flat[base + s1] + (flat[base + s1 + 1] - flat[base + s1]) * fi
    b = base + s0
    c10 = flat[b] + (flat[b + 1] - flat[b]) * fi
    c11 = flat[b + s1] + (flat[b + s1 + 1] - flat[b + s1]) * fi
    c0 = c00 + (c01 - c00) * fj
    c1 = c10 + (c11 - c10) * fj
    return c0 + (c1 - c0) * fk


SMOOTHING_VOXELS = 2.0  # Gaussian sigma in voxels of the finest axis, the same in mm along every axis ...
MIN_SMOOTHING_VOXELS = 1.0  # ... but at least this many voxels of each axis (thick slices)
FIT_ITERATIONS = 3
HOLD_VOXELS = 0.5  # inside voxel centres the fit leaves farther outside (voxels of the largest spacing) are held in
MAP_VOXELS = 1.25  # the margin map is read as the area-weighted mean within this many voxels
SUPERSAMPLE = 2  # volume integration: samples per voxel and axis
# grid-phase bias of the minimum (step 5b): replicates of the fitted surfaces rasterised on shifted grids
PHASE_MIN_REPLICATES = 4
PHASE_MAX_REPLICATES = 8
PHASE_TARGET_SE_MM = 0.05  # replicates are added until the bias's standard error is below this
PHASE_MAX_CORRECTION_VOXELS = 0.5  # a larger estimated bias (in voxels of the largest spacing) is not applied
PHASE_SEED = 20261202  # fixed: the same masks give the same margin
PHASE_WINDOW_MM = 1.0  # where the minimum can fall: surface points within this of the measured minimum


@dataclass
class MarginMetrics:
    """Margin metrics of one tumour / ablation-zone pair (all lengths mm, volumes ml)."""

    minimal_margin_mm: float
    coverage_percent: float
    shell_coverage_percent: dict[str, float]
    residual_tumor_ml: float
    tumor_volume_ml: float
    zone_volume_ml: float
    thinnest_point_ras: np.ndarray
    thinnest_point_ijk: np.ndarray
    mean_margin_mm: float
    median_margin_mm: float
    histogram_edges_mm: np.ndarray
    histogram_area_percent: np.ndarray
    surface_margin_below_threshold_percent: float
    cap_mm: float
    exact: bool
    field: MarginField  # signed distance to the zone surface on the half-voxel lattice (for shifted samples)
    surface_ijk: np.ndarray  # [i, j, k] continuous indices of the tumour surface mesh's vertices
    surface_margin_mm: np.ndarray  # signed margin at each vertex (point-to-triangle, clipped to the cap)
    surface_triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    surface_area_mm2: np.ndarray = field(default_factory=lambda: np.zeros(0))  # area per vertex (a third of its triangles')
    notes: list[str] = field(default_factory=list)
    # the minimum of the surface map before the grid-phase correction, the correction added to it (mm; the MAM
    # is their sum), its standard error (mm) and the number of shifted-grid replicates it was estimated from
    minimal_margin_uncorrected_mm: float | None = None
    grid_correction_mm: float = 0.0
    grid_correction_se_mm: float = 0.0
    grid_replicates: int = 0
    tumor_mask: sitk.Image | None = None  # the tumour mask the surfaces were fitted to (for a second zone)
    roi_lo_kji: np.ndarray | None = None  # the region the surfaces were fitted on (voxel indices, inclusive)
    roi_hi_kji: np.ndarray | None = None

    def surface_ras(self, reference: sitk.Image) -> np.ndarray:
        """The tumour surface vertices in RAS mm."""
        return ijk_to_ras(reference, self.surface_ijk)


@dataclass
class FittedSurface:
    """The smooth sub-voxel surface of one mask on a region: the 0.5 level set of ``field`` (float32 [k, j, i])."""

    field: np.ndarray
    start_ijk: np.ndarray  # voxel index (i, j, k) of field[0, 0, 0] (may be negative: padding beyond the image)
    spacing_kji: np.ndarray

    def inside(self, ijk: np.ndarray) -> np.ndarray:
        """Whether continuous voxel indices [i, j, k] lie in the solid (G >= 0.5, trilinear)."""
        return self.sample(ijk) >= 0.5

    def sample(self, ijk: np.ndarray) -> np.ndarray:
        return trilinear(self.field, (np.asarray(ijk, float) - self.start_ijk)[:, ::-1])


def check_pair(tumor: sitk.Image, zone: sitk.Image, threshold_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: both masks binary, non-empty, on one grid; a valid threshold. Returns their array views."""
    require_same_grid(tumor, zone, what="tumour mask", reference="ablation-zone mask")
    t_full = check_binary(tumor, "tumour")
    z_full = check_binary(zone, "ablation zone")
    if not np.isfinite(threshold_mm) or threshold_mm < 0:
        raise ImagioError(f"Margin threshold {threshold_mm} mm is not valid", "Give a threshold of 0 mm or more")
    return t_full, z_full


def smoothing_sigma_mm(spacing_kji: np.ndarray, radius_mm: float | None = None) -> np.ndarray:
    """Gaussian sigma (mm) per axis: SMOOTHING_VOXELS of the finest spacing, at least MIN_SMOOTHING_VOXELS of each.

    Isotropic grids: 2 voxels along every axis. On 0.8 x 0.9 x 2.5 mm: 1.6, 1.6, 2.5 mm (was 1.6, 1.8, 5.0 mm).
    At most SMOOTHING_VOXELS voxels of any axis, which the regions' padding (3 SMOOTHING_VOXELS voxels) relies on.

    ``radius_mm`` (the mask's equivalent-sphere radius): a Gaussian moves a surface of radius R inwards by about
    sigma^2 / R, which the refinement must undo; on a tiny mask that is more than it undoes in FIT_ITERATIONS
    steps (the tips of nodules 2-3 mm in radius fell 0.3 mm short). So the width is capped where that shift would
    exceed one voxel of the finest axis h: sigma <= sqrt(R h), never below MIN_SMOOTHING_VOXELS of each axis. It
    changes nothing from R = SMOOTHING_VOXELS^2 h (4 mm on a 1 mm grid, about 0.27 ml) up.
    """
    sp = np.asarray(spacing_kji, float)
    h = float(sp.min())
    c = SMOOTHING_VOXELS
    if radius_mm is not None and np.isfinite(radius_mm):
        c = min(SMOOTHING_VOXELS, max(MIN_SMOOTHING_VOXELS, float(np.sqrt(max(radius_mm, 0.0) / h))))
    return np.maximum(c * h, MIN_SMOOTHING_VOXELS * sp)


def equivalent_radius_mm(mask: np.ndarray, spacing_kji: np.ndarray) -> float:
    """Radius (mm) of the sphere with the mask's volume."""
    volume = float(np.count_nonzero(mask)) * float(np.prod(np.asarray(spacing_kji, float)))
    return (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)


def map_radius_mm(spacing_kji: np.ndarray) -> float:
    """Radius (mm) over which the margin map is averaged: MAP_VOXELS of the largest spacing."""
    return MAP_VOXELS * float(np.max(spacing_kji))


def region_of_interest(bbox, shape, spacing_kji: np.ndarray, cap_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: the tumour box grown by the cap and the smoothing's reach (3 sigma), one voxel beyond the image."""
    lo, hi = bbox
    pad = np.ceil(cap_mm / spacing_kji).astype(int) + int(np.ceil(3 * SMOOTHING_VOXELS)) + 3
    return np.maximum(lo - pad, -1 - int(np.ceil(3 * SMOOTHING_VOXELS)) - 2), \
        np.minimum(hi + pad, np.array(shape) + int(np.ceil(3 * SMOOTHING_VOXELS)) + 1)


def _gaussian(a: np.ndarray, spacing_kji: np.ndarray, sigma_mm: np.ndarray) -> np.ndarray:
    img = sitk.GetImageFromArray(a.astype(np.float32, copy=False))
    img.SetSpacing([float(v) for v in spacing_kji[::-1]])
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, [float(v) for v in sigma_mm[::-1]]))


def _partial_volume(g: np.ndarray, spacing_kji: np.ndarray) -> np.ndarray:
    """Share of each voxel inside the level set g >= 0.5 (a linear ramp across the voxel's extent along the normal)."""
    sp = [float(v) for v in spacing_kji]
    grad = np.gradient(g, *sp)
    norm = np.sqrt(grad[0] ** 2 + grad[1] ** 2 + grad[2] ** 2)
    safe = np.maximum(norm, np.float32(1e-6))
    width = sum(np.abs(grad[a]) / safe * np.float32(sp[a]) for a in range(3))  # voxel extent along the normal
    signed = (g - np.float32(0.5)) / safe  # mm from the level set (first order)
    pv = np.clip(np.float32(0.5) + signed / np.maximum(width, np.float32(1e-6)), 0.0, 1.0)
    far = norm < 1e-4
    pv[far] = (g[far] >= 0.5)
    return pv.astype(np.float32)


def _refine(f: np.ndarray, spacing_kji: np.ndarray, sigma: np.ndarray, mask: np.ndarray | None = None,
            held: np.ndarray | None = None) -> np.ndarray:
    """``G <- G + (f - smooth(pv(G)))`` FIT_ITERATIONS times from ``G = f``; with ``held``, those inside voxel centres
    are kept inside after every step (:func:`_hold`)."""
    g = f.copy()
    if held is not None:
        _hold(g, mask, held)
    for _ in range(FIT_ITERATIONS):
        g += f - _gaussian(_partial_volume(g, spacing_kji), spacing_kji, sigma)
        if held is not None:
            _hold(g, mask, held)
    return g


def _refine_held(f: np.ndarray, g: np.ndarray, spacing_kji: np.ndarray, sigma: np.ndarray, mask: np.ndarray,
                 held: np.ndarray) -> np.ndarray:
    """The refinement with ``held`` centres (:func:`_refine`), computed where it differs from the plain one ``g``:
    on the box of the held centres grown by the reach of FIT_ITERATIONS + 1 smoothings (3 sigma sqrt(n)), as the
    difference of the held and the plain refinement on that box (their edge effects cancel) added to ``g``; on
    the whole region when that box would be more than half of it."""
    sp = np.asarray(spacing_kji, float)
    reach = np.ceil(3.0 * np.asarray(sigma, float) / sp * np.sqrt(FIT_ITERATIONS + 1)).astype(int) + 2
    idx = np.argwhere(held)
    lo = np.maximum(idx.min(0) - reach, 0)
    hi = np.minimum(idx.max(0) + reach + 1, np.array(g.shape))
    if np.prod(hi - lo) > 0.5 * g.size:
        return _refine(f, spacing_kji, sigma, mask, held)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    fb = np.ascontiguousarray(f[box])
    out = g.copy()
    out[box] += _refine(fb, spacing_kji, sigma, mask[box], held[box]) - _refine(fb, spacing_kji, sigma)
    return out


def _hold(g: np.ndarray, mask: np.ndarray, held: np.ndarray) -> None:
    """Keep the ``held`` voxel centres inside the level set, in place: G there is raised to 1 - (the lowest G of its
    outside face neighbours), so that the surface crosses half-way to that neighbour (the staircase's own midpoint),
    and at least just above 0.5."""
    big = np.float32(np.inf)
    pad = np.pad(np.where(mask, big, g), 1, constant_values=big)
    n0, n1, n2 = g.shape
    low = np.full(g.shape, big, np.float32)
    for dk, dj, di in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        np.minimum(low, pad[1 + dk:1 + dk + n0, 1 + dj:1 + dj + n1, 1 + di:1 + di + n2], out=low)
    target = np.where(np.isfinite(low[held]), 1.0 - low[held], 1.0)
    g[held] = np.maximum(g[held], np.maximum(target, 0.5 + 1e-3))


def lost_centres(g: np.ndarray, mask: np.ndarray, spacing_kji: np.ndarray,
                 sigma: np.ndarray | None = None) -> np.ndarray:
    """Inside voxel centres that the level set ``g >= 0.5`` leaves more than HOLD_VOXELS of the largest spacing outside
    it (distance to its mesh, as :func:`signed_margin`): the mask's detail thinner than the smoothing (bool [k, j, i]).
    Centres within the smoothing's reach (3 sigma) of the region's edge are not held: the fit there sees the crop."""
    sp = np.asarray(spacing_kji, float)
    tol = HOLD_VOXELS * float(sp.max())
    out = np.zeros(mask.shape, bool)
    cand = mask & (g < 0.5)
    edge = np.ceil(3.0 * (smoothing_sigma_mm(sp) if sigma is None else np.asarray(sigma, float)) / sp).astype(int)
    core = np.zeros(mask.shape, bool)
    core[edge[0]:mask.shape[0] - edge[0], edge[1]:mask.shape[1] - edge[1], edge[2]:mask.shape[2] - edge[2]] = True
    cand &= core
    if not cand.any():
        return out
    # first order (|0.5 - G| / |grad G|, central differences at the candidates) pre-selects at half the tolerance
    idx = np.argwhere(cand)
    gp = np.pad(g, 1, mode="edge")
    k, j, i = (idx + 1).T
    grad2 = np.zeros(len(idx), np.float32)
    for a in range(3):
        hi = [k, j, i]
        lo = [k, j, i]
        hi[a] = hi[a] + 1
        lo[a] = lo[a] - 1
        grad2 += ((gp[tuple(hi)] - gp[tuple(lo)]) / np.float32(2.0 * sp[a])) ** 2
    idx = idx[(0.5 - g[tuple(idx.T)]) > 0.5 * tol * np.sqrt(grad2)]
    if len(idx) == 0:
        return out
    # the mesh of the level set near them only (a box grown by the tolerance and the smoothing's reach)
    reach = np.ceil(tol / sp).astype(int) + int(np.ceil(3 * SMOOTHING_VOXELS)) + 2
    lo_b = np.maximum(idx.min(0) - reach, 0)
    hi_b = np.minimum(idx.max(0) + reach + 1, np.array(g.shape))
    surface = FittedSurface(np.ascontiguousarray(g[lo_b[0]:hi_b[0], lo_b[1]:hi_b[1], lo_b[2]:hi_b[2]]), np.zeros(3), sp)
    poly = surface_mesh(surface)
    if poly.GetNumberOfPoints() == 0:
        out[tuple(idx.T)] = True
        return out
    d = -signed_margin(surface, poly, (idx - lo_b)[:, ::-1] * sp[::-1])
    out[tuple(idx[d > tol].T)] = True
    return out


def fit_surface(mask_roi: np.ndarray, spacing_kji: np.ndarray, start_ijk: np.ndarray) -> FittedSurface:
    """Step 3: a smooth surface whose Gaussian smoothing matches the smoothed mask (sigma: smoothing_sigma_mm).

    ``f`` = the 0/1 mask smoothed by the Gaussian: the quantisation of the staircase is averaged out, but
    curved level sets of ``f`` have moved (sigma^2 / R inwards for a sphere of radius R). The surface is the
    0.5 level set of ``G``, refined so that the smoothed partial-volume image of ``G >= 0.5`` equals ``f``:
    ``G <- G + (f - smooth(pv(G)))``, ``FIT_ITERATIONS`` times from ``G = f`` (a deconvolution restricted to
    the surface).

    Step 3b, detail thinner than the smoothing: a protrusion one or two voxels wide smooths to well below 0.5 and
    the refinement cannot bring it back, so the fit drops voxels the mask has. Inside voxel centres that the fitted surface leaves more than HOLD_VOXELS (half a voxel) outside it
    (:func:`lost_centres`; on smooth tumours none or a few single ones) are then held inside through a second
    refinement from ``G = f`` (a deconvolution constrained by the mask there, :func:`_hold`). A mask whose fit has
    no inside at all is left so (too small to have a surface at this resolution: refused by the caller); whether
    a mask has a surface is decided at the full width, then a tiny one is fitted with the capped width
    (:func:`smoothing_sigma_mm` with its equivalent radius), so the narrower fit never accepts a mask the method
    refused before.
    """
    mask = np.asarray(mask_roi, bool)
    sigma = smoothing_sigma_mm(spacing_kji)
    f = _gaussian(mask, spacing_kji, sigma)
    g = _refine(f, spacing_kji, sigma)
    narrow = smoothing_sigma_mm(spacing_kji, equivalent_radius_mm(mask, spacing_kji))  # capped on tiny masks
    if np.any(g >= 0.5) and np.any(narrow < sigma):  # a tiny mask that has a surface at the full width: fit narrower
        sigma = narrow
        f = _gaussian(mask, spacing_kji, sigma)
        g = _refine(f, spacing_kji, sigma)
    if np.any(g >= 0.5):  # detail of a surface; a mask the smoothing drops entirely has none (refused as too small)
        held = lost_centres(g, mask, spacing_kji, sigma)
        if held.any():
            g = _refine_held(f, g, spacing_kji, sigma, mask, held)
    return FittedSurface(g, np.asarray(start_ijk, float), np.asarray(spacing_kji, float))


def surface_mesh(surface: FittedSurface):
    """Step 4: the closed triangle mesh of the 0.5 level set, as a vtkPolyData in scaled index space (mm)."""
    import vtk
    from vtk.util import numpy_support

    img = vtk.vtkImageData()
    img.SetDimensions(*surface.field.shape[::-1])
    img.SetSpacing(*[float(v) for v in surface.spacing_kji[::-1]])
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(surface.field).ravel(), deep=True))
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.5)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    return fe.GetOutput()


def mesh_arrays(poly) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) x, y, z mm, triangles (M, 3)) of a triangle mesh."""
    from vtk.util import numpy_support

    if poly.GetNumberOfPoints() == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    conn = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).astype(np.int64)
    return pts, conn.reshape(-1, 3)


def vertex_areas(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area (mm^2) per vertex: a third of each adjacent triangle's area."""
    a = 0.5 * np.linalg.norm(np.cross(pts[tris[:, 1]] - pts[tris[:, 0]], pts[tris[:, 2]] - pts[tris[:, 0]]), axis=1)
    out = np.zeros(len(pts))
    for c in range(3):
        np.add.at(out, tris[:, c], a / 3.0)
    return out


def distance_to_mesh(poly, points_xyz: np.ndarray) -> np.ndarray:
    """Unsigned point-to-triangle distance (mm) from each point to the mesh (inf for an empty mesh)."""
    import vtk
    from vtk.util import numpy_support

    if poly.GetNumberOfPoints() == 0 or len(points_xyz) == 0:
        return np.full(len(points_xyz), np.inf)
    f = vtk.vtkImplicitPolyDataDistance()
    f.SetInput(poly)
    out = vtk.vtkDoubleArray()
    f.FunctionValue(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_xyz, float), deep=True), out)
    return np.abs(numpy_support.vtk_to_numpy(out))


def average_on_surface(points_xyz: np.ndarray, areas: np.ndarray, values: np.ndarray, radius_mm: float
                       ) -> np.ndarray:
    """Area-weighted mean of ``values`` over the vertices within ``radius_mm`` of each vertex (the map at that scale)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points_xyz)
    pairs = tree.query_pairs(radius_mm, output_type="ndarray")
    num = areas * values
    den = areas.copy()
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        n = len(values)
        num = num + np.bincount(i, areas[j] * values[j], n) + np.bincount(j, areas[i] * values[i], n)
        den = den + np.bincount(i, areas[j], n) + np.bincount(j, areas[i], n)
    return num / np.maximum(den, 1e-12)


def vertex_normals(pts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals of a triangle mesh."""
    n_face = np.cross(pts[tris[:, 1]] - pts[tris[:, 0]], pts[tris[:, 2]] - pts[tris[:, 0]])
    out = np.zeros_like(pts)
    for c in range(3):
        np.add.at(out, tris[:, c], n_face)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def signed_margin(zone_surface: FittedSurface, zone_poly, points_xyz: np.ndarray) -> np.ndarray:
    """Step 5: signed distance (mm, + inside the zone solid) from points (scaled index space of the region).

    Distance to the zone mesh: to the tangent plane at the nearest mesh vertex (k-d tree), never less than the
    distance to that vertex minus half a voxel diagonal (the farthest a mesh point can lie from its nearest
    vertex); on a smooth surface this is the point-to-surface distance up to curvature x offset^2 (< 0.01 mm).
    The sign: inside the zone solid (G >= 0.5).
    """
    from scipy.spatial import cKDTree

    zpts, ztris = mesh_arrays(zone_poly)
    if len(zpts) == 0:
        d = np.full(len(points_xyz), np.inf)
    else:
        normals = vertex_normals(zpts, ztris)
        # exact nearest neighbours either way; an unbalanced tree builds faster, and the queries use every core
        dist_v, idx = cKDTree(zpts, balanced_tree=False, compact_nodes=False).query(points_xyz, workers=-1)
        plane = np.abs(np.einsum("ij,ij->i", points_xyz - zpts[idx], normals[idx]))
        d = np.maximum(plane, dist_v - 0.5 * float(np.linalg.norm(zone_surface.spacing_kji)))
        d = np.minimum(d, dist_v)
    ijk = points_xyz / zone_surface.spacing_kji[::-1] + zone_surface.start_ijk
    return np.where(zone_surface.inside(ijk), d, -d)


def surface_map(tumor: FittedSurface, zone: FittedSurface):
    """Steps 4-5: the tumour surface mesh and its margin map at the smoothing's scale: (points mm, triangles, areas
    mm^2 per point, signed margin mm per point); empty arrays without a tumour surface. The map is read at the
    smoothing's scale: the surfaces are only known at that scale, and the minimum of a map with sub-voxel noise
    picks its worst case."""
    pts, tris = mesh_arrays(surface_mesh(tumor))
    if len(pts) == 0:
        return pts, tris, np.zeros(0), np.zeros(0)
    areas = vertex_areas(pts, tris)
    vals = average_on_surface(pts, areas, signed_margin(zone, surface_mesh(zone), pts), map_radius_mm(tumor.spacing_kji))
    return pts, tris, areas, vals


def map_minimum(tumor: FittedSurface, zone: FittedSurface, inner_lo_kji=None, inner_hi_kji=None) -> float:
    """The minimum of the margin map of two fitted surfaces, over the tumour surface points within the voxel box
    ``inner_lo..inner_hi`` of the fields' region (all without a box); inf if none."""
    pts, _, _, vals = surface_map(tumor, zone)
    if inner_lo_kji is not None and len(pts):
        kji = pts[:, ::-1] / tumor.spacing_kji
        vals = vals[np.all((kji >= inner_lo_kji) & (kji <= inner_hi_kji), axis=1)]
    return float(vals.min()) if len(vals) else float("inf")


def grid_phase_bias(tumor: FittedSurface, zone: FittedSurface, points_xyz: np.ndarray, values: np.ndarray,
                    progress=None) -> tuple[float, float, int]:
    """Step 5b: the bias of the map's minimum from the masks' rasterisation, by a parametric bootstrap over grid phase.

    A minimum over a surface map picks the worst of its residual quantisation error (about -0.2 mm for a zone
    grown by k mm around a real tumour on a 1 mm grid), and the smoothing flattens thin bumps (a positive error).
    Both depend on where the grid's voxel centres fall on the surfaces. The fitted surfaces are taken as the truth
    of a simulated world: rasterised again on grids shifted by sub-voxel offsets (stratified per axis, a fixed
    seed), fitted again and measured again; the mean replicate minimum minus the measured one estimates the bias
    (Efron's bootstrap bias estimate). Only where the minimum can fall is refitted: the box of the tumour surface
    points whose margin is within PHASE_WINDOW_MM of the minimum, grown by what the fit and the map reach.
    Replicates: from PHASE_MIN_REPLICATES until the bias's standard error is below PHASE_TARGET_SE_MM, at most
    PHASE_MAX_REPLICATES. ``points_xyz``, ``values``: the tumour surface points (mm in the fields' region) and
    their map values. Returns (bias mm, its standard error mm, replicates); the MAM is the minimum - bias.
    """
    from scipy import ndimage

    sp = tumor.spacing_kji
    minimum = float(values.min())
    kji = points_xyz[np.asarray(values) <= minimum + PHASE_WINDOW_MM][:, ::-1] / sp
    reach = map_radius_mm(sp) / sp + 1.0  # the map's averaging reach (voxels per axis)
    inner_lo, inner_hi = kji.min(0) - reach, kji.max(0) + reach
    pad = np.ceil((abs(minimum) + PHASE_WINDOW_MM + 2.0 * map_radius_mm(sp)) / sp) + np.ceil(3 * SMOOTHING_VOXELS) + 2
    shape = np.array(tumor.field.shape)
    lo = np.maximum(np.floor(inner_lo - pad).astype(int), 0)
    hi = np.minimum(np.ceil(inner_hi + pad).astype(int), shape - 1)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    start = tumor.start_ijk + lo[::-1]
    rng = np.random.default_rng(PHASE_SEED)
    n_max = PHASE_MAX_REPLICATES
    offsets = np.stack([(rng.permutation(n_max) + rng.uniform(0.0, 1.0, n_max)) / n_max - 0.5 for _ in range(3)], 1)
    reps: list[float] = []
    for b in range(n_max):
        if progress is not None:
            progress.update(0.35 + 0.2 * b / n_max, f"Grid-phase replicate {b + 1}")
        moved = []
        for surf in (tumor, zone):  # the surface's solid seen from voxel centres moved by the offset
            raster = ndimage.shift(surf.field[box], -offsets[b], order=1, mode="nearest", prefilter=False) >= 0.5
            moved.append(fit_surface(raster, sp, start))
        reps.append(map_minimum(*moved, inner_lo - lo, inner_hi - lo))
        n = len(reps)
        if n >= PHASE_MIN_REPLICATES and np.std(reps, ddof=1) / np.sqrt(n) <= PHASE_TARGET_SE_MM:
            break
    r = np.array(reps, float)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return 0.0, 0.0, len(r)
    return float(r.mean() - minimum), float(r.std(ddof=1) / np.sqrt(len(r))), len(r)


def corrected_minimum(tumor: FittedSurface, zone: FittedSurface, points_xyz: np.ndarray, values: np.ndarray,
                      progress=None) -> tuple[float, float, float, int, str | None]:
    """Step 5b applied: (MAM mm, correction mm, its standard error mm, replicates, note or None). The correction
    is -bias (:func:`grid_phase_bias`) unless larger than PHASE_MAX_CORRECTION_VOXELS of the largest spacing."""
    minimum = float(np.min(values))
    bias, se, replicates = grid_phase_bias(tumor, zone, points_xyz, values, progress)
    limit = PHASE_MAX_CORRECTION_VOXELS * float(np.max(tumor.spacing_kji))
    if abs(bias) <= limit:
        return minimum - bias, -bias, se, replicates, None
    return minimum, 0.0, se, replicates, (f"The grid-phase correction of the minimal margin ({-bias:+.2f} mm) is "
                                          f"larger than {limit:.2f} mm and was not applied: the masks are too "
                                          "coarse for a sub-voxel margin")


def solid_volumes(tumor: FittedSurface, zone: FittedSurface, lo_kji: np.ndarray, hi_kji: np.ndarray
                  ) -> tuple[float, float]:
    """Step 6: (tumour volume, residual volume outside the zone) in mm^3, supersampled on the tumour box."""
    sp = tumor.spacing_kji
    n = SUPERSAMPLE
    offs = (np.arange(n) + 0.5) / n - 0.5
    axes = [np.add.outer(np.arange(lo_kji[a] - 1, hi_kji[a] + 2), offs).ravel() for a in range(3)]
    cell = float(np.prod(sp)) / n ** 3
    vol = res = 0.0
    jj, ii = np.meshgrid(axes[1], axes[2], indexing="ij")
    for k in axes[0]:  # slab by slab: bounded memory
        ijk = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=1)
        t_in = tumor.inside(ijk)
        if not t_in.any():
            continue
        vol += float(np.count_nonzero(t_in)) * cell
        res += float(np.count_nonzero(~zone.inside(ijk[t_in]))) * cell
    return vol, res


def lattice_field(zone: FittedSurface, lo_kji: np.ndarray, hi_kji: np.ndarray, cap_mm: float,
                  reference: sitk.Image) -> MarginField:
    """Step 7: signed distance to the zone solid at the voxel centres of ``lo..hi`` (fast sampling of moved points;
    callers add each point's sub-voxel correction to the exact value)."""
    off = (np.asarray(lo_kji) - zone.start_ijk[::-1]).astype(int)
    n = np.asarray(hi_kji) - np.asarray(lo_kji) + 1
    zi = zone.field[off[0]:off[0] + n[0], off[1]:off[1] + n[1], off[2]:off[2] + n[2]] >= 0.5
    if zi.any() and not zi.all():
        phi = np.where(zi, _edt(~zi, zone.spacing_kji), -_edt(zi, zone.spacing_kji)).astype(np.float32)
    else:
        phi = np.full(zi.shape, cap_mm if zi.all() else -cap_mm, np.float32)
    return MarginField(phi=phi, roi_start_ijk=np.asarray(lo_kji, float)[::-1], reference=reference, cap_mm=cap_mm,
                       step_voxels=1.0)


def shell_coverage(t_solid: np.ndarray, z_solid: np.ndarray, spacing_kji: np.ndarray) -> dict[str, float]:
    """Step 8: share (%) of the voxel centres within r mm of the tumour solid that lie in the zone solid."""
    d_t = _edt(t_solid, spacing_kji)
    out = {}
    for r in SHELLS_MM:
        sel = d_t <= r + 1e-6
        out[f"{r:g}"] = 100.0 * float(np.count_nonzero(sel & z_solid)) / max(int(np.count_nonzero(sel)), 1)
    return out


def margin_histogram(values: np.ndarray, areas: np.ndarray, threshold_mm: float, bin_mm: float):
    """Step 9: area-weighted histogram (%), mean, median and the share below the threshold (%)."""
    lo_edge = np.floor(min(values.min(), 0.0) / bin_mm) * bin_mm
    hi_edge = np.ceil(max(values.max(), threshold_mm) / bin_mm) * bin_mm + bin_mm
    edges = np.arange(lo_edge, hi_edge + 0.5 * bin_mm, bin_mm)
    hist, edges = np.histogram(values, bins=edges, weights=areas)
    total = float(areas.sum())
    weights = areas / total
    order = np.argsort(values)
    median = float(values[order][min(np.searchsorted(np.cumsum(weights[order]), 0.5), len(values) - 1)])
    return (edges, 100.0 * hist / total, float(np.sum(values * weights)), median,
            100.0 * float(areas[values < threshold_mm].sum()) / total)


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) [k, j, i] indices of the set voxels' bounding box."""
    per_slice = mask.any(axis=(1, 2))
    k = np.flatnonzero(per_slice)
    slab = mask[k[0]:k[-1] + 1]  # the other axes only within the occupied slices
    nz = [k, np.flatnonzero(slab.any(axis=(0, 2))), np.flatnonzero(slab.any(axis=(0, 1)))]
    return np.array([a[0] for a in nz]), np.array([a[-1] for a in nz])


def _roi_bounds(bbox, shape, spacing_kji: np.ndarray, cap_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box grown by ``cap_mm`` (+2 voxels), allowed one voxel beyond the image (padding)."""
    lo, hi = bbox
    pad = np.ceil(cap_mm / spacing_kji).astype(int) + 2
    return np.maximum(lo - pad, -1), np.minimum(hi + pad, np.array(shape))


def _crop_padded(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """a[lo:hi+1] per axis, with False where the range leaves the array."""
    out = np.zeros(tuple(hi - lo + 1), bool)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, np.array(a.shape) - 1)
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0]:dst_hi[0] + 1, dst_lo[1]:dst_hi[1] + 1, dst_lo[2]:dst_hi[2] + 1] = \
        a[src_lo[0]:src_hi[0] + 1, src_lo[1]:src_hi[1] + 1, src_lo[2]:src_hi[2] + 1] != 0
    return out


def compute_margin(tumor: sitk.Image, zone: sitk.Image, threshold_mm: float = 5.0, cap_mm: float | None = None,
                   histogram_bin_mm: float = 1.0, progress=None) -> MarginMetrics:
    """Margin metrics of ``tumor`` against ``zone`` (binary masks on the same grid); see the module docstring."""
    progress = ensure(progress)
    t_full, z_full = check_pair(tumor, zone, threshold_mm)
    spacing_kji = np.array(tumor.GetSpacing(), float)[::-1]
    cap = float(cap_mm) if cap_mm is not None else float(threshold_mm) + 10.0
    cap = max(cap, max(SHELLS_MM) + 1.0)
    shape = np.array(t_full.shape)
    notes: list[str] = []
    if t_full[0].any() or t_full[-1].any() or t_full[:, 0].any() or t_full[:, -1].any() \
            or t_full[:, :, 0].any() or t_full[:, :, -1].any():
        notes.append("The tumour touches the image edge; the part outside the image is unknown")
    bbox = _bbox(t_full)
    while True:
        progress.update(0.05, "Cropping the region of interest")
        lo, hi = region_of_interest(bbox, shape, spacing_kji, cap)
        whole = bool(np.all(lo <= -1) and np.all(hi >= shape))
        start_ijk = lo[::-1].astype(float)
        progress.update(0.15, "Fitting sub-voxel surfaces")
        t_surf = fit_surface(_crop_padded(t_full, lo, hi), spacing_kji, start_ijk)
        z_surf = fit_surface(_crop_padded(z_full, lo, hi), spacing_kji, start_ijk)
        progress.update(0.35, "Distance to the ablation-zone surface")
        pts, tris, areas, vals = surface_map(t_surf, z_surf)
        if len(pts) == 0:
            raise ImagioError(f"The tumour mask ({int(np.count_nonzero(t_full))} voxels) is too small to have a "
                              "surface at this grid's resolution",
                              "Check the tumour segment; a tumour needs a few voxels across")
        mam = float(vals.min())
        if abs(mam) < cap or whole:
            break
        cap *= 2.0
        progress.update(0.3, f"Margin beyond {cap / 2:.0f} mm: growing the region to {cap:.0f} mm")

    mam_raw = mam
    correction = correction_se = 0.0
    replicates = 0
    if abs(mam) < cap:
        mam, correction, correction_se, replicates, note = corrected_minimum(t_surf, z_surf, pts, vals, progress)
        notes.extend([note] if note else [])

    progress.update(0.55, "Volumes and coverage")
    tumor_mm3, residual_mm3 = solid_volumes(t_surf, z_surf, bbox[0], bbox[1])
    zone_mm3 = float(np.count_nonzero(z_full)) * float(np.prod(spacing_kji))  # whole zone: voxel count
    coverage = 100.0 * (1.0 - residual_mm3 / tumor_mm3) if tumor_mm3 > 0 else 0.0

    progress.update(0.65, "Shell coverage")
    s_lo, s_hi = _roi_bounds(bbox, shape, spacing_kji, max(SHELLS_MM))
    off = s_lo - lo
    n = s_hi - s_lo + 1
    sl = tuple(slice(int(off[a]), int(off[a] + n[a])) for a in range(3))
    shells = shell_coverage(t_surf.field[sl] >= 0.5, z_surf.field[sl] >= 0.5, spacing_kji)

    progress.update(0.8, "Thinnest point and histogram")
    clipped = np.clip(vals, -cap, cap)
    surface_ijk = pts / spacing_kji[::-1] + start_ijk
    edges, hist_pct, mean, median, below = margin_histogram(clipped, areas, threshold_mm, histogram_bin_mm)
    i_min = int(np.argmin(vals))
    f_lo, f_hi = _roi_bounds(bbox, shape, spacing_kji, 12.0)  # where moved points are sampled (shifts of ~3 sigma)
    m_field = lattice_field(z_surf, np.maximum(f_lo, lo), np.minimum(f_hi, hi), cap, tumor)
    if np.array_equal(t_full, z_full):
        notes.append("The ablation zone is identical to the tumour: the margin is 0 mm. Check that the zone segment "
                     "is the post-treatment ablation zone, not the tumour")
    progress.update(1.0, "Margin metrics done")
    return MarginMetrics(
        minimal_margin_mm=float(np.clip(mam, -cap, cap)),
        coverage_percent=float(np.clip(coverage, 0.0, 100.0)),
        shell_coverage_percent=shells,
        residual_tumor_ml=residual_mm3 / 1000.0,
        tumor_volume_ml=tumor_mm3 / 1000.0,
        zone_volume_ml=zone_mm3 / 1000.0,
        thinnest_point_ras=ijk_to_ras(tumor, surface_ijk[i_min]),
        thinnest_point_ijk=surface_ijk[i_min],
        mean_margin_mm=mean,
        median_margin_mm=median,
        histogram_edges_mm=edges,
        histogram_area_percent=hist_pct,
        surface_margin_below_threshold_percent=below,
        cap_mm=cap,
        exact=bool(abs(mam) < cap),
        field=m_field,
        surface_ijk=surface_ijk,
        surface_margin_mm=clipped,
        surface_triangles=tris,
        surface_area_mm2=areas,
        notes=notes,
        minimal_margin_uncorrected_mm=float(np.clip(mam_raw, -cap, cap)),
        grid_correction_mm=float(correction),
        grid_correction_se_mm=float(correction_se),
        grid_replicates=int(replicates),
        tumor_mask=tumor,
        roi_lo_kji=lo,
        roi_hi_kji=hi,
    )


def margin_to(metrics: MarginMetrics, other_zone: sitk.Image) -> tuple[np.ndarray, float]:
    """The signed margin (mm) of the same tumour surface vertices to another zone mask on the same grid, and the
    minimal margin to it (the map's minimum with its own grid-phase correction, as :func:`compute_margin`'s).

    Same surfaces, region and scale as :func:`compute_margin` (for a plan against the achieved zone).
    """
    require_same_grid(metrics.field.reference, other_zone, what="zone mask", reference="tumour mask")
    z_full = check_binary(other_zone, "planned zone")
    spacing_kji = np.array(other_zone.GetSpacing(), float)[::-1]
    lo, hi = metrics.roi_lo_kji, metrics.roi_hi_kji
    start_ijk = lo[::-1].astype(float)
    z_surf = fit_surface(_crop_padded(z_full, lo, hi), spacing_kji, start_ijk)
    pts = (metrics.surface_ijk - start_ijk) * spacing_kji[::-1]
    vals = signed_margin(z_surf, surface_mesh(z_surf), pts)
    vals = average_on_surface(pts, metrics.surface_area_mm2, vals, map_radius_mm(spacing_kji))
    minimum = float(vals.min())
    if abs(minimum) < metrics.cap_mm and metrics.grid_replicates and metrics.tumor_mask is not None:
        t_surf = fit_surface(_crop_padded(sitk.GetArrayViewFromImage(metrics.tumor_mask), lo, hi), spacing_kji,
                             start_ijk)
        minimum = corrected_minimum(t_surf, z_surf, pts, vals)[0]
    return np.clip(vals, -metrics.cap_mm, metrics.cap_mm), float(np.clip(minimum, -metrics.cap_mm, metrics.cap_mm))
