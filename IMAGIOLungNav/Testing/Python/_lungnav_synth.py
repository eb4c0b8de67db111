"""An analytic airway Y (trachea + two main bronchi) on an oblique, anisotropic grid, for the tests."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio import geometry as g
from imagio.testing import oblique_image

CARINA = np.array([3.0, -2.0, 0.0])
TRACHEA_TOP = CARINA + np.array([0.0, 0.0, 45.0])
TRACHEA_R = 5.0
CHILD_R = 3.5
CHILD_LEN = 38.0
RIGHT_DIR = np.array([np.sin(np.radians(40.0)), 0.0, -np.cos(np.radians(40.0))])
LEFT_DIR = np.array([-np.sin(np.radians(35.0)), 0.2, -np.cos(np.radians(35.0))])
LEFT_DIR = LEFT_DIR / np.linalg.norm(LEFT_DIR)


def _seg_dist(p, a, b):
    d = b - a
    t = np.clip(((p - a) @ d) / (d @ d), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * d), axis=1)


def y_truth() -> dict:
    """True centerlines (RAS mm) and radii of the analytic Y."""
    return {
        "trachea": (TRACHEA_TOP, CARINA, TRACHEA_R),
        "right": (CARINA, CARINA + RIGHT_DIR * CHILD_LEN, CHILD_R),
        "left": (CARINA, CARINA + LEFT_DIR * CHILD_LEN, CHILD_R),
    }


def make_y(cut_right: tuple[float, float] | None = None, noise: bool = False, seed: int = 0) -> sitk.Image:
    """Binary Y (trachea + two main bronchi) on an oblique grid of 0.7 x 0.8 x 1.1 mm voxels.

    ``cut_right=(a, b)`` removes the right bronchus between a and b mm from the carina along its axis;
    ``noise`` punches random holes inside and adds random one-voxel bumps on the surface.
    """
    img = oblique_image(size=(150, 110, 100), spacing=(0.7, 0.8, 1.1), origin_ras=(-52.0, -40.0, -45.0),
                        axis=(1.0, 2.0, 3.0), angle_deg=23.0)
    # place the grid so that it covers the Y: centre its box on the Y's centre
    size = np.array(img.GetSize())
    centre_ijk = (size - 1) / 2.0
    shift = np.array([0.0, -2.0, 12.0]) - g.ijk_to_ras(img, centre_ijk)
    img = oblique_image(size=(150, 110, 100), spacing=(0.7, 0.8, 1.1),
                        origin_ras=tuple(np.array([-52.0, -40.0, -45.0]) + shift), axis=(1.0, 2.0, 3.0), angle_deg=23.0)
    kji = np.indices(img.GetSize()[::-1]).reshape(3, -1).T
    ras = g.ijk_to_ras(img, kji[:, ::-1].astype(float))
    inside = np.zeros(len(ras), bool)
    for a, b, r in y_truth().values():
        inside |= _seg_dist(ras, a, b) <= r
    if cut_right is not None:
        t = (ras - CARINA) @ RIGHT_DIR
        off = np.linalg.norm((ras - CARINA) - t[:, None] * RIGHT_DIR, axis=1)
        inside &= ~((t >= cut_right[0]) & (t <= cut_right[1]) & (off <= CHILD_R + 1.0))
    arr = inside.reshape(img.GetSize()[::-1]).astype(np.uint8)
    if noise:
        rng = np.random.default_rng(seed)
        m = sitk.GetImageFromArray(arr)
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(m == 0, insideIsPositive=False,
                                                                   squaredDistance=False, useImageSpacing=False))
        deep = np.argwhere((arr > 0) & (dist >= 2.5))
        holes = deep[rng.choice(len(deep), 60, replace=False)]
        arr[tuple(holes.T)] = 0
        outer = np.argwhere((arr == 0) & (dist > -1.5) & (dist <= 0))
        bumps = outer[rng.choice(len(outer), 150, replace=False)]
        arr[tuple(bumps.T)] = 1
    return g.copy_geometry(arr, img)


