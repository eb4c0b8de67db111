"""Geometry: the one place that converts between Slicer's RAS and ITK/DICOM's LPS.

Conventions used across IMAGIO:

* SimpleITK images live in ITK's physical frame, LPS millimetres:
  ``p_lps = origin + direction @ diag(spacing) @ [i, j, k]``.
* MRML nodes, markups, models, JSON outputs and the command line use RAS
  millimetres: ``p_ras = LPS_TO_RAS[:3, :3] @ p_lps``.
* numpy arrays from SimpleITK are indexed ``[k, j, i]``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import ImagioError

#: Homogeneous matrix that flips L->R and P->A (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS
#: Axes (RAS direction columns, for ``make_image``) of an image stored like a CT series:
#: i to the patient's left, j to posterior, k to superior (identity in LPS).
CT_AXES_RAS = np.diag([-1.0, -1.0, 1.0])
_FLIP = np.array([-1.0, -1.0, 1.0])


def _points(points) -> tuple[np.ndarray, bool]:
    p = np.asarray(points, dtype=float)
    single = p.ndim == 1
    p = np.atleast_2d(p)
    if p.shape[-1] != 3:
        raise ImagioError(f"Expected 3D points, got an array of shape {np.shape(points)}",
                          "Give points as R,A,S (or an N x 3 array)")
    return p, single


def lps_to_ras(points) -> np.ndarray:
    """Convert a point (3,) or points (N, 3) from LPS to RAS."""
    p, single = _points(points)
    out = p * _FLIP
    return out[0] if single else out


def ras_to_lps(points) -> np.ndarray:
    """Convert a point (3,) or points (N, 3) from RAS to LPS."""
    return lps_to_ras(points)  # the flip is its own inverse


def ijk_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping homogeneous [i, j, k, 1] to LPS mm."""
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a SimpleITK image (what MRML volume nodes store)."""
    return LPS_TO_RAS @ ijk_to_lps_matrix(image)


def ras_to_ijk_matrix(image: sitk.Image) -> np.ndarray:
    return np.linalg.inv(ijk_to_ras_matrix(image))


def ras_to_ijk(image: sitk.Image, points_ras) -> np.ndarray:
    """Continuous [i, j, k] index of RAS point(s) in ``image``."""
    p, single = _points(points_ras)
    h = np.c_[p, np.ones(len(p))] @ ras_to_ijk_matrix(image).T
    return h[0, :3] if single else h[:, :3]


def ijk_to_ras(image: sitk.Image, ijk) -> np.ndarray:
    """RAS mm of continuous index/indices [i, j, k] in ``image``."""
    p, single = _points(ijk)
    h = np.c_[p, np.ones(len(p))] @ ijk_to_ras_matrix(image).T
    return h[0, :3] if single else h[:, :3]


def geometry_from_ijk_to_ras(ijk_to_ras) -> tuple[tuple, tuple, tuple]:
    """(origin_lps, spacing, direction_lps) from a 4x4 IJK-to-RAS matrix."""
    m = np.asarray(ijk_to_ras, dtype=float)
    if m.shape != (4, 4):
        raise ImagioError(f"IJK-to-RAS matrix must be 4x4, got {m.shape}")
    lin = (LPS_TO_RAS @ m)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise ImagioError("IJK-to-RAS matrix has a zero-length axis", "Check the volume's spacing")
    direction = lin / spacing
    origin = (LPS_TO_RAS @ m)[:3, 3]
    return tuple(origin), tuple(spacing), tuple(direction.ravel())


def image_from_array(array_kji: np.ndarray, ijk_to_ras) -> sitk.Image:
    """SimpleITK (LPS) image from a [k, j, i] array and a 4x4 IJK-to-RAS matrix."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def copy_geometry(array_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """SimpleITK image from an array on ``reference``'s grid."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    if img.GetSize() != reference.GetSize():
        raise ImagioError(f"Array of size {img.GetSize()} does not fit the reference grid {reference.GetSize()}")
    img.CopyInformation(reference)
    return img


def same_grid(a: sitk.Image, b: sitk.Image, tol_mm: float = 1e-3, tol_dir: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` have the same size, spacing, origin and axes."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol_mm)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol_dir)
    )


def describe_grid(image: sitk.Image) -> str:
    sp = "x".join(f"{s:.3g}" for s in image.GetSpacing())
    sz = "x".join(str(s) for s in image.GetSize())
    org = ",".join(f"{v:.1f}" for v in lps_to_ras(image.GetOrigin()))
    return f"{sz} voxels of {sp} mm, origin RAS ({org})"


def require_same_grid(a: sitk.Image, b: sitk.Image, what: str = "segmentation", reference: str = "CT") -> None:
    """Raise ImagioError unless ``a`` lies on ``b``'s grid."""
    if not same_grid(a, b):
        raise ImagioError(
            f"The {what} grid ({describe_grid(a)}) does not match the {reference} grid ({describe_grid(b)})",
            f"Use the {what} made on this {reference}, or resample it onto the {reference} first",
        )


def physical_bounds_ras(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) RAS corners of the box spanned by the voxel centres."""
    size = np.array(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], float)
    ras = ijk_to_ras(image, corners)
    return ras.min(axis=0), ras.max(axis=0)


def bounds_overlap(a: sitk.Image, b: sitk.Image, margin_mm: float = 0.0) -> bool:
    """True when the physical boxes of ``a`` and ``b`` overlap (they may share a patient frame)."""
    amin, amax = physical_bounds_ras(a)
    bmin, bmax = physical_bounds_ras(b)
    return bool(np.all(amin <= bmax + margin_mm) and np.all(bmin <= amax + margin_mm))


def resample_to(image: sitk.Image, reference: sitk.Image, nearest: bool = True, default: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in physical space (identity transform)."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interp, default, image.GetPixelID())


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres (spacing in mm)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of a mask, in millilitres."""
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel_volume_ml(mask)


def centroid_ras(mask: sitk.Image) -> np.ndarray:
    """Centroid (RAS mm) of a mask's non-zero voxels."""
    arr = sitk.GetArrayViewFromImage(mask)
    kji = np.argwhere(arr > 0)
    if len(kji) == 0:
        raise ImagioError("The mask is empty", "Choose a segment that contains voxels")
    return ijk_to_ras(mask, kji[:, ::-1].mean(axis=0))


def make_image(size_ijk, spacing, origin_ras=(0.0, 0.0, 0.0), direction_ras=None, pixel=sitk.sitkUInt8) -> sitk.Image:
    """An empty image given RAS origin and RAS direction columns (tests and phantoms)."""
    img = sitk.Image([int(s) for s in size_ijk], pixel)
    img.SetSpacing([float(s) for s in spacing])
    d_ras = np.eye(3) if direction_ras is None else np.asarray(direction_ras, float).reshape(3, 3)
    img.SetDirection(tuple((np.diag(_FLIP) @ d_ras).ravel()))
    img.SetOrigin(tuple(ras_to_lps(np.asarray(origin_ras, float))))
    return img


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``angle_deg`` (right-handed)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def signed_distance_mm(mask, spacing_xyz=None) -> np.ndarray:
    """Signed Euclidean distance (mm) from each voxel to the mask's boundary: negative inside, positive outside.

    The one distance transform of IMAGIO (exact: Maurer's algorithm, SimpleITK's ``SignedMaurerDistanceMap`` with
    the voxel spacing). ``mask``: a SimpleITK image (its spacing), or a [k, j, i] numpy array with ``spacing_xyz``
    (mm per voxel along i, j, k). Returns a new float32 numpy array [k, j, i] (a copy, never a view of a
    temporary image).
    """
    if isinstance(mask, sitk.Image):
        img = sitk.Cast(mask != 0, sitk.sitkUInt8)
    else:
        if spacing_xyz is None:
            raise ValueError("a numpy mask needs spacing_xyz")
        img = sitk.GetImageFromArray((np.asarray(mask) != 0).astype(np.uint8))
        img.SetSpacing([float(s) for s in spacing_xyz])
    return sitk.GetArrayFromImage(_signed_distance_image(img))


def _signed_distance_image(mask: sitk.Image) -> sitk.Image:
    """:func:`signed_distance_mm` as a float32 SimpleITK image on ``mask``'s grid (non-zero voxels are the set)."""
    return sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)


# Morphology by a radius in mm. One convention: a voxel belongs to ``dilate_mm(mask, r)`` when its centre lies
# within ``r`` mm (<=) of the centre of a voxel of the mask, and to ``erode_mm(mask, r)`` when its centre lies more
# than ``r`` mm from the centre of every voxel outside the mask (the dual). Distances are Euclidean in physical
# space from :func:`signed_distance_mm`, so the structuring element is an exact ball of radius r mm on any
# (anisotropic) grid; a radius under the spacing along an axis grows nothing along that axis. Inputs: SimpleITK
# masks (non-zero voxels are the set); outputs: uint8 0/1 images on the same grid (the input itself where the
# operation leaves it unchanged: r <= 0, an empty mask, or erosion of a full one).
def dilate_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Add every voxel whose centre lies within ``radius_mm`` mm of the mask's voxel centres."""
    if radius_mm <= 0 or not np.any(sitk.GetArrayViewFromImage(mask)):
        return mask
    return sitk.Cast(_signed_distance_image(mask) <= radius_mm, sitk.sitkUInt8)


def erode_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Keep the voxels whose centres lie more than ``radius_mm`` mm from every background voxel centre."""
    if radius_mm <= 0:
        return mask
    a = sitk.GetArrayViewFromImage(mask)
    if not np.any(a) or np.all(a):
        return mask
    return sitk.Cast(_signed_distance_image(sitk.Cast(mask == 0, sitk.sitkUInt8)) > radius_mm, sitk.sitkUInt8)


def opening_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Erode then dilate by ``radius_mm`` mm: removes the parts narrower than the ball."""
    return dilate_mm(erode_mm(mask, radius_mm), radius_mm)


def _mask_array(mask) -> np.ndarray:
    """Boolean [k, j, i] array of a mask's set (> 0) voxels (a SimpleITK image or an array)."""
    arr = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    return arr > 0


def dice(a, b, *, empty: float = float("nan")) -> float:
    """Dice coefficient 2|A & B| / (|A| + |B|) of two masks' set (> 0) voxels (SimpleITK images or arrays on one grid).

    The one Dice of IMAGIO. ``empty``: the value when both masks are empty (0/0): NaN by default (undefined);
    callers that report a number pass their convention explicitly (1.0: two empty masks agree; 0.0: nothing found).
    """
    x, y = _mask_array(a), _mask_array(b)
    if x.shape != y.shape:
        raise ValueError(f"Dice of masks of different shapes {x.shape} and {y.shape}: resample them onto one grid")
    s = int(np.count_nonzero(x)) + int(np.count_nonzero(y))
    return float(empty) if s == 0 else 2.0 * int(np.count_nonzero(x & y)) / s


def closing_mm(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Dilate then erode by ``radius_mm`` mm: fills the gaps and dents narrower than the ball."""
    return erode_mm(dilate_mm(mask, radius_mm), radius_mm)
