"""Ablation-margin metrics on a region of interest, exact on anisotropic and oblique grids.

Convention (what "surface" and "distance" mean here)
----------------------------------------------------
A binary mask's surface is the 0.5 iso-surface of its trilinearly
interpolated 0/1 values (what marching cubes draws): it crosses the line
between a voxel inside and a neighbour outside half-way, at their common
face centre. Everything is done on the *half-voxel lattice* of a region of
interest: voxel centres, face centres, edge midpoints and corners (index
step 1/2), where the interpolated mask is the mean of the 1, 2, 4 or 8
voxels that touch the point (exact multiples of 1/8). The surface samples
are the lattice points where that mean is exactly 0.5: every face between an
inside and an outside voxel, plus the edge midpoints and corners on the
surface. Distances are exact Euclidean distances in millimetres between
lattice points (a Maurer distance transform with the lattice spacing);
direction cosines rotate the grid but do not change distances, so the work
is done in scaled index space. Along a grid line the iso-surface lies
exactly half-way between voxel centres; between sample points it is not
resolved finer than the lattice, so a margin read from binary masks is
known to about half a voxel (the masks themselves carry no finer
information).

* signed margin at a tumour surface point: distance to the zone surface,
  positive inside the zone, negative outside (uncovered tumour);
* minimal ablative margin (MAM): the minimum signed margin over the tumour
  surface (negative = the depth by which the tumour sticks out of the zone);
* coverage: share of tumour voxels (centres) inside the zone, in percent;
  residual tumour: volume of tumour voxels outside the zone, in ml;
* shell coverage r mm: share of the voxels whose centres lie within r mm of
  the tumour (of the union of its voxel boxes; tumour included, 0 mm = the
  tumour itself) that are inside the zone;
* histogram: area-weighted distribution of the signed margin over the tumour
  surface (face centres, weighted by face area), in percent of tumour surface.

Everything is computed on the tumour bounding box grown by a cap (by
default threshold + 10 mm). Signed margins whose magnitude is below the cap
are exact; if the MAM itself reaches the cap, the cap doubles until it does
not or the region is the whole image. Outside the image counts as "not
zone" and "not tumour" (a zone cut by the image edge is not assumed to go
on). Values beyond the cap are reported clipped to +/- the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import ijk_to_ras, require_same_grid

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
    """Exact Euclidean distance (mm) from every lattice point to the nearest set point."""
    img = sitk.GetImageFromArray(points.astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing_kji[::-1]])
    d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    out = np.abs(sitk.GetArrayFromImage(d))
    out[points] = 0.0
    return out


@dataclass
class MarginField:
    """Signed distance to the zone surface (mm, + inside) on the half-voxel lattice of the ROI."""

    phi: np.ndarray  # float32 [k, j, i] on the lattice
    roi_start_ijk: np.ndarray  # voxel index (i, j, k) of lattice point 0 (may be -1: padding)
    reference: sitk.Image  # grid the indices refer to
    cap_mm: float

    def lattice_to_ijk(self, lattice_kji: np.ndarray) -> np.ndarray:
        """Continuous voxel index [i, j, k] of lattice points given as [k, j, i] rows."""
        return np.asarray(lattice_kji, float)[:, ::-1] / 2.0 + self.roi_start_ijk

    def sample_ijk(self, ijk: np.ndarray) -> np.ndarray:
        """Trilinear value at continuous voxel indices [i, j, k] (clamped to the ROI, clipped to the cap)."""
        lat = (np.asarray(ijk, float) - self.roi_start_ijk) * 2.0
        return np.clip(trilinear(self.phi, lat[:, ::-1]), -self.cap_mm, self.cap_mm)

    def sample_ras(self, points_ras) -> np.ndarray:
        from imagio.geometry import ras_to_ijk

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
    field: MarginField
    surface_ijk: np.ndarray  # [i, j, k] continuous indices of tumour surface lattice points
    surface_margin_mm: np.ndarray
    notes: list[str] = field(default_factory=list)


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
    from imagio.progress import ensure

    progress = ensure(progress)
    require_same_grid(tumor, zone, what="tumour mask", reference="ablation-zone mask")
    t_full = check_binary(tumor, "tumour")
    z_full = check_binary(zone, "ablation zone")
    if not np.isfinite(threshold_mm) or threshold_mm < 0:
        raise ImagioError(f"Margin threshold {threshold_mm} mm is not valid", "Give a threshold of 0 mm or more")
    spacing_kji = np.array(tumor.GetSpacing(), float)[::-1]
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    cap = float(cap_mm) if cap_mm is not None else float(threshold_mm) + 10.0
    cap = max(cap, max(SHELLS_MM) + 1.0)
    shape = np.array(t_full.shape)
    notes: list[str] = []
    if t_full[0].any() or t_full[-1].any() or t_full[:, 0].any() or t_full[:, -1].any() \
            or t_full[:, :, 0].any() or t_full[:, :, -1].any():
        notes.append("The tumour touches the image edge; the part outside the image is unknown")

    bbox = _bbox(t_full)
    # the tumour's bounding box holds every tumour voxel: counts there are exact
    (k0, j0, i0), (k1, j1, i1) = bbox
    t_box = t_full[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1]
    n_tumor = int(np.count_nonzero(t_box))
    n_covered = int(np.count_nonzero((t_box != 0) & (z_full[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] != 0)))
    coverage = 100.0 * n_covered / n_tumor
    residual_ml = (n_tumor - n_covered) * voxel_ml

    while True:
        progress.update(0.05, "Cropping the region of interest")
        lo, hi = _roi_bounds(bbox, shape, spacing_kji, cap)
        whole = bool(np.all(lo <= -1) and np.all(hi >= shape))
        t = _crop_padded(t_full, lo, hi)
        z = _crop_padded(z_full, lo, hi)
        half = spacing_kji / 2.0
        progress.update(0.15, "Building the half-voxel lattice")
        zi = refine_mean(z)
        surf_z = zi == 0.5  # on the zone's iso-surface
        ti = refine_mean(t)
        surf_t = ti == 0.5
        t_any = ti > 0.0  # the closed box union of the tumour voxels (for the shells)
        del ti
        progress.update(0.3, "Distance to the ablation-zone surface")
        if surf_z.any():
            phi = _edt(surf_z, half).astype(np.float32)
            phi[zi < 0.5] *= -1.0
            del zi
        else:
            phi = np.full(surf_z.shape, np.inf, np.float32)
        del surf_z
        pts = np.argwhere(surf_t)
        vals = phi[surf_t].astype(float)
        mam = float(vals.min())
        if abs(mam) < cap or whole:
            break
        cap *= 2.0
        progress.update(0.3, f"Margin beyond {cap / 2:.0f} mm: growing the region to {cap:.0f} mm")

    progress.update(0.6, "Shell coverage")
    # only voxels within the largest shell matter: crop the lattice to the tumour box + that shell
    s_lo, s_hi = _roi_bounds(bbox, shape, spacing_kji, max(SHELLS_MM))
    a = 2 * (s_lo - lo)
    b = 2 * (s_hi - lo) + 1
    d_t = _edt(t_any[a[0]:b[0], a[1]:b[1], a[2]:b[2]], half)[::2, ::2, ::2]  # mm from voxel centres to the tumour
    del t_any
    z_s = z[s_lo[0] - lo[0]:s_hi[0] - lo[0] + 1, s_lo[1] - lo[1]:s_hi[1] - lo[1] + 1,
            s_lo[2] - lo[2]:s_hi[2] - lo[2] + 1]
    shells = {}
    for r in SHELLS_MM:
        sel = d_t <= r + 1e-6
        shells[f"{r:g}"] = 100.0 * float(np.count_nonzero(sel & z_s)) / max(int(np.count_nonzero(sel)), 1)
    del d_t

    progress.update(0.8, "Thinnest point and histogram")
    i_min = int(np.argmin(vals))
    m_field = MarginField(phi=phi, roi_start_ijk=lo[::-1].astype(float), reference=tumor, cap_mm=cap)
    surface_ijk = m_field.lattice_to_ijk(pts)
    thinnest_ijk = surface_ijk[i_min]
    thinnest_ras = ijk_to_ras(tumor, thinnest_ijk)
    clipped = np.clip(vals, -cap, cap)

    # area-weighted histogram over face centres (exactly one odd lattice coordinate)
    odd = pts % 2 == 1
    faces = odd.sum(axis=1) == 1
    face_axis = np.argmax(odd[faces], axis=1)  # axis (k, j, i) the face is normal to
    areas = np.prod(spacing_kji) / spacing_kji[face_axis]
    fvals = clipped[faces]
    lo_edge = np.floor(min(fvals.min(), 0.0) / histogram_bin_mm) * histogram_bin_mm
    hi_edge = np.ceil(max(fvals.max(), threshold_mm) / histogram_bin_mm) * histogram_bin_mm + histogram_bin_mm
    edges = np.arange(lo_edge, hi_edge + 0.5 * histogram_bin_mm, histogram_bin_mm)
    hist, edges = np.histogram(fvals, bins=edges, weights=areas)
    total_area = float(areas.sum())
    hist_pct = 100.0 * hist / total_area
    below = 100.0 * float(areas[fvals < threshold_mm].sum()) / total_area
    weights = areas / total_area
    order = np.argsort(fvals)
    cum = np.cumsum(weights[order])
    median = float(fvals[order][np.searchsorted(cum, 0.5)])
    progress.update(1.0, "Margin metrics done")
    return MarginMetrics(
        minimal_margin_mm=float(np.clip(mam, -cap, cap)),
        coverage_percent=coverage,
        shell_coverage_percent=shells,
        residual_tumor_ml=residual_ml,
        tumor_volume_ml=n_tumor * voxel_ml,
        zone_volume_ml=float(np.count_nonzero(z_full)) * voxel_ml,
        thinnest_point_ras=thinnest_ras,
        thinnest_point_ijk=thinnest_ijk,
        mean_margin_mm=float(np.sum(fvals * weights)),
        median_margin_mm=median,
        histogram_edges_mm=edges,
        histogram_area_percent=hist_pct,
        surface_margin_below_threshold_percent=below,
        cap_mm=cap,
        exact=bool(abs(mam) < cap),
        field=m_field,
        surface_ijk=surface_ijk,
        surface_margin_mm=clipped,
        notes=notes,
    )
