"""The margin report's slice pictures: the sub-voxel tumour surface the margins are measured on is drawn, cut by
the slice plane, and the thinnest point lies on that line (on thick slices it can lie off the voxel outline)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio.geometry import make_image, rotation_matrix
from IMAGIOMarginLib.logic import assess, tumour_surface_polydata
from IMAGIOMarginLib.report import figures, surface_cut


def ball_on_thick_slices(centre_mm, radius_mm: float) -> sitk.Image:
    """A ball on an oblique grid of 0.8 x 0.8 x 3 mm (voxel centres within the radius)."""
    ref = make_image((64, 64, 24), (0.8, 0.8, 3.0), (-25.0, -25.0, -33.0), rotation_matrix((1.0, 2.0, 3.0), 17.0))
    size = np.array(ref.GetSize())
    ijk = np.indices(size[::-1]).reshape(3, -1)[::-1].T.astype(float)
    d = np.array(ref.GetDirection()).reshape(3, 3)
    lps = (ijk * np.array(ref.GetSpacing())) @ d.T + np.array(ref.GetOrigin())
    inside = np.linalg.norm(lps - np.asarray(centre_mm, float), axis=1) <= radius_mm
    img = sitk.GetImageFromArray(inside.reshape(size[::-1]).astype(np.uint8))
    img.CopyInformation(ref)
    return img


def test_thinnest_point_lies_on_the_drawn_surface_cut():
    tumor = ball_on_thick_slices((0.0, 0.0, 0.0), 9.0)
    zone = ball_on_thick_slices((2.0, -1.0, 2.5), 14.0)  # shifted: the thinnest point is on one side
    result = assess(tumor, zone, n_samples=20)
    thin = np.asarray(result.metrics.thinnest_point_ras, float)
    poly = tumour_surface_polydata(result)
    for axis, normal in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        cut = surface_cut(poly, thin, axis)
        pts = cut[np.isfinite(cut).all(axis=1)]
        assert len(pts) > 20, axis
        assert np.allclose(pts[:, normal], thin[normal], atol=1e-6)  # in the slice plane
        # a closed outline of the 9 mm ball, passing through the thinnest point (a mesh vertex): segments
        # between consecutive points, distance from the point to the nearest segment
        a, b = cut[:-1], cut[1:]
        ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        a, b = a[ok], b[ok]
        t = np.clip(np.einsum("ij,ij->i", thin - a, b - a) / np.maximum(np.einsum("ij,ij->i", b - a, b - a), 1e-12),
                    0, 1)
        dist = np.linalg.norm(a + t[:, None] * (b - a) - thin, axis=1).min()
        assert dist < 1e-3, (axis, dist)
        radius = np.linalg.norm(np.delete(pts, normal, axis=1) - np.delete(thin * 0, normal), axis=1)
        assert radius.max() < 9.0 + 1.5  # the tumour's surface, not the zone's
    assert surface_cut(poly, thin + np.array([0.0, 0.0, 40.0]), "axial").shape == (0, 3)  # a plane that misses
    figs = figures(result)
    assert [f.name for f in figs[:2]] == ["margin_axial", "margin_coronal"]
    assert all("sub-voxel tumour surface" in f.caption for f in figs[:2])
