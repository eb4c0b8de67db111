"""Ellipsoidal ablation zones along a probe, rasterised on any (oblique, anisotropic) grid.

A zone is an ellipsoid of revolution: semi-axis ``a`` along the probe axis
(entry -> tip), ``b`` across it, centred ``tip_offset_mm`` back from the tip.
Rasterisation works in physical space and only touches the zone's bounding
box in index space (exact for any direction matrix), which keeps live
updates fast on clinical CT grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError

from .devices import ZoneSetting

Box = tuple[int, int, int, int, int, int]  # k0, k1, j0, j1, i0, i1 (half-open)


def probe_axis(tip_ras, entry_ras) -> np.ndarray:
    """Unit vector from entry to tip (RAS)."""
    tip = np.asarray(tip_ras, float)
    entry = np.asarray(entry_ras, float)
    d = tip - entry
    n = float(np.linalg.norm(d))
    if not np.all(np.isfinite(d)) or n < 1e-3:
        raise ImagioError("The probe's entry and tip are the same point",
                          "Place the entry point on the skin and the tip in the target, at least 1 mm apart")
    return d / n


@dataclass(frozen=True)
class EllipsoidZone:
    """Ellipsoid of revolution in RAS mm."""

    centre_ras: np.ndarray
    axis_ras: np.ndarray  # unit, entry -> tip
    semi_long_mm: float
    semi_short_mm: float

    @classmethod
    def from_probe(cls, tip_ras, entry_ras, setting: ZoneSetting) -> EllipsoidZone:
        u = probe_axis(tip_ras, entry_ras)
        centre = np.asarray(tip_ras, float) - setting.tip_offset_mm * u
        return cls(centre, u, setting.zone_long_mm / 2.0, setting.zone_short_mm / 2.0)

    @property
    def axes_mm(self) -> list[float]:
        return [2 * self.semi_long_mm, 2 * self.semi_short_mm, 2 * self.semi_short_mm]

    def _shape_matrix(self) -> np.ndarray:
        u = self.axis_ras
        return self.semi_long_mm ** 2 * np.outer(u, u) + self.semi_short_mm ** 2 * (np.eye(3) - np.outer(u, u))

    def quadratic(self, points_ras) -> np.ndarray:
        """(z / a)^2 + (rho / b)^2 of points: < 1 inside, 1 on the surface, > 1 outside."""
        p = np.atleast_2d(np.asarray(points_ras, float)) - self.centre_ras
        z = p @ self.axis_ras
        r2 = np.einsum("ij,ij->i", p, p) - z * z
        return (z * z) / self.semi_long_mm ** 2 + r2 / self.semi_short_mm ** 2

    def contains(self, points_ras) -> np.ndarray:
        return self.quadratic(points_ras) <= 1.0

    def signed_distance(self, points_ras) -> np.ndarray:
        """Euclidean distance (mm) of points to the zone surface, positive inside."""
        return self.closest(points_ras)[0]

    def closest(self, points_ras) -> tuple[np.ndarray, np.ndarray]:
        """(signed distance in mm, positive inside; the nearest surface points in RAS) of ``points_ras``."""
        p = np.atleast_2d(np.asarray(points_ras, float)) - self.centre_ras
        zs = p @ self.axis_ras
        z = np.abs(zs)
        radial = p - np.outer(zs, self.axis_ras)
        rho = np.sqrt(np.einsum("ij,ij->i", radial, radial))
        x0, x1, d = _ellipse_closest(z, rho, self.semi_long_mm, self.semi_short_mm)
        inside = (z / self.semi_long_mm) ** 2 + (rho / self.semi_short_mm) ** 2 <= 1.0
        # the radial unit vector (any one perpendicular to the axis on the axis itself)
        helper = np.array([1.0, 0, 0]) if abs(self.axis_ras[0]) < 0.9 else np.array([0, 1.0, 0])
        perp = np.cross(self.axis_ras, helper)
        perp /= np.linalg.norm(perp)
        unit = np.where(rho[:, None] > 1e-12, radial / np.maximum(rho, 1e-12)[:, None], perp[None, :])
        near = self.centre_ras + np.outer(np.where(zs < 0, -x0, x0), self.axis_ras) + unit * x1[:, None]
        return np.where(inside, d, -d), near

    def surface_points(self, spacing_mm: float = 0.3) -> np.ndarray:
        """Points on the zone surface (RAS), about ``spacing_mm`` apart (Fibonacci lattice mapped from a sphere)."""
        r = max(self.semi_long_mm, self.semi_short_mm)
        n = int(np.ceil(4.0 * np.pi * r * r / spacing_mm ** 2))
        i = np.arange(n) + 0.5
        cz = 1.0 - 2.0 * i / n
        sz = np.sqrt(np.maximum(1.0 - cz * cz, 0.0))
        th = np.pi * (1.0 + 5.0 ** 0.5) * i
        u = self.axis_ras
        helper = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
        v = np.cross(u, helper)
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        return (self.centre_ras + np.outer(cz * self.semi_long_mm, u)
                + np.outer(sz * np.cos(th) * self.semi_short_mm, v) + np.outer(sz * np.sin(th) * self.semi_short_mm, w))

    def index_box(self, image: sitk.Image, pad: int = 1) -> Box | None:
        """Half-open index box (k0, k1, j0, j1, i0, i1) holding the zone, clipped; None if outside."""
        m = geometry.ras_to_ijk_matrix(image)
        c = m[:3, :3] @ self.centre_ras + m[:3, 3]
        q = self._shape_matrix()
        ext = np.sqrt(np.einsum("ij,jk,ik->i", m[:3, :3], q, m[:3, :3]))
        lo = np.floor(c - ext).astype(int) - pad
        hi = np.ceil(c + ext).astype(int) + pad + 1
        size = np.array(image.GetSize())
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, size)
        if np.any(hi <= lo):
            return None
        return (int(lo[2]), int(hi[2]), int(lo[1]), int(hi[1]), int(lo[0]), int(hi[0]))

    def rasterise_box(self, image: sitk.Image) -> tuple[Box | None, np.ndarray]:
        """(box, uint8 mask [k, j, i] of the box). Only the bounding box is computed."""
        box = self.index_box(image)
        if box is None:
            return None, np.zeros((0, 0, 0), np.uint8)
        k0, k1, j0, j1, i0, i1 = box
        m = geometry.ijk_to_ras_matrix(image)
        a = m[:3, :3]
        off = m[:3, 3] - self.centre_ras
        # p(i, j, k) - centre = a[:, 0] i + a[:, 1] j + a[:, 2] k + off, separable per axis
        ii = np.arange(i0, i1, dtype=float)
        jj = np.arange(j0, j1, dtype=float)
        kk = np.arange(k0, k1, dtype=float)
        u = self.axis_ras
        # axial coordinate z and squared distance |p-c|^2 from separable parts
        zi, zj, zk = (u @ a[:, 0]) * ii, (u @ a[:, 1]) * jj, (u @ a[:, 2]) * kk
        z = zk[:, None, None] + zj[None, :, None] + zi[None, None, :] + u @ off
        px = (a[0, 2] * kk[:, None, None] + a[0, 1] * jj[None, :, None] + a[0, 0] * ii[None, None, :] + off[0])
        py = (a[1, 2] * kk[:, None, None] + a[1, 1] * jj[None, :, None] + a[1, 0] * ii[None, None, :] + off[1])
        pz = (a[2, 2] * kk[:, None, None] + a[2, 1] * jj[None, :, None] + a[2, 0] * ii[None, None, :] + off[2])
        r2 = px * px + py * py + pz * pz - z * z
        inside = z * z * (1.0 / self.semi_long_mm ** 2) + r2 * (1.0 / self.semi_short_mm ** 2) <= 1.0
        return box, inside.astype(np.uint8)

    def rasterise(self, image: sitk.Image) -> sitk.Image:
        """Full-grid uint8 mask (LPS image on ``image``'s grid)."""
        arr = np.zeros(image.GetSize()[::-1], np.uint8)
        box, sub = self.rasterise_box(image)
        if box is not None:
            k0, k1, j0, j1, i0, i1 = box
            arr[k0:k1, j0:j1, i0:i1] = sub
        return geometry.copy_geometry(arr, image)

    def polydata_ras(self, resolution: int = 32):
        """Closed surface of the zone in RAS mm (analytic, cheap): a ``vtkPolyData``."""
        import vtk  # only where surfaces are made: the background planning process never loads VTK

        sphere = vtk.vtkSphereSource()
        sphere.SetRadius(1.0)
        sphere.SetThetaResolution(resolution)
        sphere.SetPhiResolution(resolution)
        u = self.axis_ras
        # orthonormal frame with z' = u
        helper = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
        v = np.cross(u, helper)
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        rot = np.c_[v * self.semi_short_mm, w * self.semi_short_mm, u * self.semi_long_mm]
        mat = vtk.vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                mat.SetElement(r, c, rot[r, c])
            mat.SetElement(r, 3, self.centre_ras[r])
        tr = vtk.vtkTransform()
        tr.SetMatrix(mat)
        f = vtk.vtkTransformPolyDataFilter()
        f.SetInputConnection(sphere.GetOutputPort())
        f.SetTransform(tr)
        f.Update()
        out = vtk.vtkPolyData()
        out.DeepCopy(f.GetOutput())
        return out


def _ellipse_closest(y0: np.ndarray, y1: np.ndarray, e0: float, e1: float, iterations: int = 48):
    """Closest points (x0, x1) on the ellipse (x0 / e0)^2 + (x1 / e1)^2 = 1 to first-quadrant points (y0, y1),
    and their distances (Eberly, "Distance from a point to an ellipse", bisection on the Lagrange parameter)."""
    y0 = np.asarray(y0, float)
    y1 = np.asarray(y1, float)
    if e0 < e1:  # the method needs e0 >= e1
        x1, x0, d = _ellipse_closest(y1, y0, e1, e0, iterations)
        return x0, x1, d
    x0 = np.empty_like(y0)
    x1 = np.empty_like(y0)
    gen = (y1 > 1e-12) & (y0 > 1e-12)
    if np.any(gen):  # general position: G(s) = (r0 z0 / (s + r0))^2 + (z1 / (s + 1))^2 - 1 = 0
        z0 = y0[gen] / e0
        z1 = y1[gen] / e1
        r0 = (e0 / e1) ** 2
        n0 = r0 * z0
        s0 = z1 - 1.0
        s1 = np.where(np.hypot(n0, z1) - 1.0 > s0, np.hypot(n0, z1) - 1.0, s0)
        for _ in range(iterations):
            s = 0.5 * (s0 + s1)
            g = (n0 / (s + r0)) ** 2 + (z1 / (s + 1.0)) ** 2 - 1.0
            pos = g > 0
            s0 = np.where(pos, s, s0)
            s1 = np.where(pos, s1, s)
        s = 0.5 * (s0 + s1)
        x0[gen] = r0 * y0[gen] / (s + r0)
        x1[gen] = y1[gen] / (s + 1.0)
    on_minor = (~gen) & (y0 <= 1e-12)  # on the short axis' line (or the centre): nearest is (0, e1)
    x0[on_minor] = 0.0
    x1[on_minor] = e1
    on_major = (~gen) & (y0 > 1e-12)  # y1 == 0
    if np.any(on_major):
        yy = y0[on_major]
        den = e0 * e0 - e1 * e1
        near = e0 * yy < den
        xm = np.where(near, e0 * e0 * yy / np.where(den > 0, den, 1.0), e0)
        xde = np.clip(xm / e0, -1, 1)
        x0[on_major] = xm
        x1[on_major] = np.where(near, e1 * np.sqrt(np.maximum(1 - xde * xde, 0)), 0.0)
    return x0, x1, np.hypot(x0 - y0, x1 - y1)


def _ellipse_distance(y0: np.ndarray, y1: np.ndarray, e0: float, e1: float, iterations: int = 48) -> np.ndarray:
    """Distance from first-quadrant points (y0, y1) to the ellipse with semi-axes (e0, e1)."""
    return _ellipse_closest(y0, y1, e0, e1, iterations)[2]


def union_box(boxes: list[Box | None]) -> Box | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    a = np.array(boxes)
    return (int(a[:, 0].min()), int(a[:, 1].max()), int(a[:, 2].min()), int(a[:, 3].max()),
            int(a[:, 4].min()), int(a[:, 5].max()))


def mask_box(arr: np.ndarray, pad: int = 0) -> Box | None:
    """Bounding box (half-open, padded, clipped) of the non-zero voxels of a [k, j, i] array."""
    nz = [np.flatnonzero(arr.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if any(len(n) == 0 for n in nz):
        return None
    out = []
    for n, size in zip(nz, arr.shape, strict=True):
        out += [max(int(n[0]) - pad, 0), min(int(n[-1]) + 1 + pad, size)]
    return tuple(out)


def crop(arr: np.ndarray, box: Box) -> np.ndarray:
    k0, k1, j0, j1, i0, i1 = box
    return arr[k0:k1, j0:j1, i0:i1]


def sub_grid(grid: sitk.Image, box) -> sitk.Image:
    """An empty image with the geometry of the index box (k0, k1, j0, j1, i0, i1) of ``grid``."""
    k0, k1, j0, j1, i0, i1 = box
    img = sitk.Image([i1 - i0, j1 - j0, k1 - k0], sitk.sitkUInt8)
    img.SetSpacing(grid.GetSpacing())
    img.SetDirection(grid.GetDirection())
    img.SetOrigin(grid.TransformIndexToPhysicalPoint([int(i0), int(j0), int(k0)]))
    return img
