"""Margins between a tumour and ablation zones, measured the same way for planned, placed and simulated zones.

Convention: a mask's surface is the boundary of the union of its voxel cells (each voxel a box of the grid's
spacing around its centre). The *signed margin* at a point of the tumour surface is its Euclidean distance to
the zone surface, positive inside the zone; the *minimal margin* is the smallest signed margin over the tumour
surface (negative: the depth by which the tumour sticks out of the zone).

* The tumour surface is sampled on every face between a tumour voxel and a non-tumour voxel, each face cut into
  patches no larger than ``max_patch_mm`` (default 0.5 mm): the sampled minimum is within the patch
  half-diagonal (``Surface.tolerance_mm``, at most 0.36 mm) of the minimum over the whole surface (the distance
  is 1-Lipschitz).
* Table zones are analytic ellipsoids: the distance to one is exact (Eberly's closest point); to a union of
  several it is exact wherever the nearest point of the deepest zone is not inside another zone, and elsewhere
  (seams of overlapping zones) it is the distance to the union's exposed surface sampled every 0.3 mm
  (tolerance 0.3 mm).
* Simulated zones are masks: their surface is sampled the same way as the tumour's.

``target_mask`` is the tumour grown by a margin with the same convention: the voxels whose centres lie within
the margin of the tumour's voxel cells (an exact Euclidean distance on the half-voxel lattice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from imagio import geometry

from .zone import EllipsoidZone, crop, mask_box

EXPOSED_SPACING_MM = 0.3


@dataclass
class Surface:
    """Sample points of a mask's surface (the faces of its voxel cells), RAS mm."""

    points_ras: np.ndarray  # (N, 3)
    outside_kji: np.ndarray  # (N, 3) index of the voxel on the outer side of each sample's face
    tolerance_mm: float  # half-diagonal of the largest face patch: the sampled minimum is this close
    area_mm2: float

    def __len__(self) -> int:
        return len(self.points_ras)


def mask_surface(mask: np.ndarray, grid: sitk.Image, max_patch_mm: float = 0.5) -> Surface:
    """Samples of the surface of ``mask`` (bool [k, j, i] on ``grid``): patch centres on every outer face."""
    mask = np.asarray(mask, bool)
    box = mask_box(mask)
    if box is None:
        return Surface(np.zeros((0, 3)), np.zeros((0, 3), int), 0.0, 0.0)
    k0, k1, j0, j1, i0, i1 = box
    sub = np.pad(mask[k0:k1, j0:j1, i0:i1], 1)
    offset = np.array([k0 - 1, j0 - 1, i0 - 1])
    sp_kji = np.array(grid.GetSpacing(), float)[::-1]
    m = geometry.ijk_to_ras_matrix(grid)
    pts, outs, tol, area = [], [], 0.0, 0.0
    for ax in range(3):
        others = [a for a in range(3) if a != ax]
        n = [max(int(np.ceil(sp_kji[a] / max_patch_mm - 1e-9)), 1) for a in others]
        tol = max(tol, 0.5 * float(np.hypot(sp_kji[others[0]] / n[0], sp_kji[others[1]] / n[1])))
        g0, g1 = np.meshgrid((np.arange(n[0]) + 0.5) / n[0] - 0.5, (np.arange(n[1]) + 0.5) / n[1] - 0.5, indexing="ij")
        patch = np.zeros((g0.size, 3))
        patch[:, others[0]] = g0.ravel()
        patch[:, others[1]] = g1.ravel()
        for side in (-1, 1):
            face = sub & ~np.roll(sub, -side, axis=ax)  # inside voxel whose neighbour on this side is outside
            kji = np.argwhere(face)
            if not len(kji):
                continue
            area += len(kji) * float(sp_kji[others[0]] * sp_kji[others[1]])
            centre = kji + offset
            step = np.zeros(3)
            step[ax] = 0.5 * side
            c = (centre[:, None, :] + step + patch[None, :, :]).reshape(-1, 3)
            pts.append(c[:, ::-1] @ m[:3, :3].T + m[:3, 3])
            out = centre.copy()
            out[:, ax] += side
            outs.append(np.repeat(out, len(patch), axis=0))
    return Surface(np.concatenate(pts), np.concatenate(outs), tol, area)


def union_signed_distance(zones: list[EllipsoidZone], points_ras: np.ndarray,
                          exposed_spacing_mm: float = EXPOSED_SPACING_MM, cap: float | None = None) -> np.ndarray:
    """Signed distance (mm, positive inside) of points to the surface of the union of ``zones``.

    With ``cap``, values are exact up to ``cap`` and only known to be >= ``cap`` beyond it (faster near seams).
    Without it, the smallest value over the points is exact (points deeper than that are not refined)."""
    pts = np.atleast_2d(np.asarray(points_ras, float))
    if not zones:
        return np.full(len(pts), -np.inf)
    sd, near = zip(*(z.closest(pts) for z in zones), strict=True)
    sd = np.stack(sd)
    best = np.argmax(sd, axis=0)
    d = sd[best, np.arange(len(pts))]
    if len(zones) == 1:
        return d
    nearest = np.stack(near)[best, np.arange(len(pts))]
    covered = np.zeros(len(pts), bool)
    for j, z in enumerate(zones):  # is the deepest zone's nearest surface point inside another zone?
        sel = (best != j) & (d > 0)
        if sel.any():
            covered[sel] |= z.quadratic(nearest[sel]) < 1.0 - 1e-9
    if cap is None:  # only points that could hold the minimum need the exposed surface
        cap = float(d[~covered].min()) if (~covered).any() else np.inf
    need = np.flatnonzero(covered & (d < cap))
    if len(need):
        from scipy.spatial import cKDTree

        exposed = []
        for j, z in enumerate(zones):
            s = z.surface_points(exposed_spacing_mm)
            keep = np.ones(len(s), bool)
            for k, other in enumerate(zones):
                if k != j:
                    keep &= other.quadratic(s) >= 1.0 - 1e-9
            exposed.append(s[keep])
        tree = cKDTree(np.concatenate(exposed))
        dist, _ = tree.query(pts[need], distance_upper_bound=cap + exposed_spacing_mm if np.isfinite(cap) else np.inf)
        dist = np.minimum(dist, cap)  # no exposed surface within the cap: at least the cap deep
        d[need] = np.maximum(d[need], dist)  # the union reaches at least as deep as its deepest zone
    return d


def mask_signed_distance(zone: np.ndarray, grid: sitk.Image, surface: Surface) -> np.ndarray:
    """Signed distance (mm) from the samples of ``surface`` to the surface of the ``zone`` mask (bool [k, j, i] on
    ``grid``), positive where the sample's outer voxel is inside the zone."""
    from scipy.spatial import cKDTree

    zone = np.asarray(zone, bool)
    zs = mask_surface(zone, grid)
    if not len(surface):
        return np.zeros(0)
    if not len(zs):
        return np.full(len(surface), -np.inf)
    dist, _ = cKDTree(zs.points_ras).query(surface.points_ras)
    o = surface.outside_kji
    valid = np.all((o >= 0) & (o < np.array(zone.shape)), axis=1)
    inside = np.zeros(len(o), bool)
    inside[valid] = zone[o[valid, 0], o[valid, 1], o[valid, 2]]
    return np.where(inside, dist, -dist)


@dataclass
class Margin:
    """The minimal margin (mm) and where it is."""

    minimal_margin_mm: float
    thinnest_point_ras: np.ndarray
    tolerance_mm: float
    method: str

    def as_dict(self) -> dict:
        return {"minimal_margin_mm": round(float(self.minimal_margin_mm), 2),
                "thinnest_point_ras": [round(float(v), 2) for v in self.thinnest_point_ras],
                "margin_tolerance_mm": round(float(self.tolerance_mm), 2), "margin_method": self.method}


TABLE_METHOD = ("distance from the tumour's voxel-face surface (sampled every <= 0.5 mm) to the analytic surface of "
                "the zone ellipsoids (their union)")
MASK_METHOD = "distance between the voxel-face surfaces of the tumour and of the zone mask (sampled every <= 0.5 mm)"


def table_margin(zones: list[EllipsoidZone], surface: Surface) -> Margin:
    """Minimal margin of analytic zones around a tumour surface."""
    d = union_signed_distance(zones, surface.points_ras)
    i = int(np.argmin(d))
    tol = surface.tolerance_mm + (EXPOSED_SPACING_MM if len(zones) > 1 else 0.0)
    return Margin(float(d[i]), surface.points_ras[i], tol, TABLE_METHOD)


def mask_margin(zone: np.ndarray, grid: sitk.Image, surface: Surface) -> Margin:
    """Minimal margin of a zone mask (bool [k, j, i] on ``grid``) around a tumour surface."""
    d = mask_signed_distance(zone, grid, surface)
    i = int(np.argmin(d))
    return Margin(float(d[i]), surface.points_ras[i], 2 * surface.tolerance_mm, MASK_METHOD)


def target_mask(tumor: np.ndarray, grid: sitk.Image, margin_mm: float) -> np.ndarray:
    """Voxels whose centres lie within ``margin_mm`` of the tumour's voxel cells (bool [k, j, i] on ``grid``)."""
    tumor = np.asarray(tumor, bool)
    if margin_mm <= 0:
        return tumor.copy()
    return _cell_distance(tumor, grid, margin_mm) <= margin_mm + 1e-6


def _cell_distance(tumor: np.ndarray, grid: sitk.Image, reach_mm: float) -> np.ndarray:
    """Distance (mm) from every voxel centre to the tumour's voxel cells (0 inside), exact up to ``reach_mm``
    (inf beyond the crop it is computed on).

    Exact: for a voxel centre the nearest point of a union of voxel cells is a face centre, edge midpoint or
    corner, i.e. a point of the half-voxel lattice, so a Euclidean distance transform on that lattice (spacing
    h / 2) read at the voxel centres is the exact distance to the cells."""
    tumor = np.asarray(tumor, bool)
    out = np.full(tumor.shape, np.inf, np.float32)
    tb = mask_box(tumor)
    if tb is None:
        return out
    sp = np.array(grid.GetSpacing(), float)[::-1]
    pad = np.ceil(max(reach_mm, 0.0) / sp).astype(int) + 1
    lo = [max(tb[2 * a] - pad[a], 0) for a in range(3)]
    hi = [min(tb[2 * a + 1] + pad[a], tumor.shape[a]) for a in range(3)]
    sub = tumor[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    lat = np.zeros(tuple(2 * n + 1 for n in sub.shape), bool)
    lat[1::2, 1::2, 1::2] = sub
    for ax in range(3):  # a lattice point on a cell's face, edge or corner belongs to that closed cell
        even = [slice(None)] * 3
        even[ax] = slice(2, -1, 2)
        left = [slice(None)] * 3
        left[ax] = slice(1, -2, 2)
        right = [slice(None)] * 3
        right[ax] = slice(3, None, 2)
        lat[tuple(even)] |= lat[tuple(left)] | lat[tuple(right)]
        for edge, inner in ((0, 1), (-1, -2)):
            e = [slice(None)] * 3
            e[ax] = edge
            i = [slice(None)] * 3
            i[ax] = inner
            lat[tuple(e)] |= lat[tuple(i)]
    dist = geometry.signed_distance_mm(lat, [float(h) / 2.0 for h in sp[::-1]])[1::2, 1::2, 1::2]
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.where(sub, 0.0, np.maximum(dist, 0.0))
    return out


def zones_mask(zones: list[EllipsoidZone], grid: sitk.Image, shape=None, box=None) -> np.ndarray:
    """The union of ``zones`` rasterised on ``grid`` (voxel centres inside), only inside their boxes."""
    out = np.zeros(shape if shape is not None else grid.GetSize()[::-1], bool)
    for z in zones:
        b, sub = z.rasterise_box(grid)
        if b is not None:
            crop(out, b)[...] |= sub.astype(bool)
    return out
