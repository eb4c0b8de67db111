"""Margins: tumour + margin exact on the half-voxel lattice; surface-to-zone distances against brute force."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from imagio import geometry
from imagio.testing import oblique_image
from IMAGIOAblationZoneLib import margins as M
from IMAGIOAblationZoneLib.zone import EllipsoidZone

GRID = dict(size=(34, 30, 18), spacing=(0.8, 0.9, 2.5), origin_ras=(-14.0, -12.0, -22.0), axis=(1.0, 2.0, -1.0),
            angle_deg=29.0)


@pytest.fixture(scope="module")
def case():
    g = oblique_image(**GRID)
    t = np.zeros(g.GetSize()[::-1], bool)
    t[6:11, 9:19, 9:22] = True
    t[8, 6:9, 14] = True  # a thin spur: corners and edges
    return g, t


def test_tumour_plus_margin_is_exact_against_the_cell_distance(case):
    g, t = case
    sp = np.array(g.GetSpacing())[::-1]
    c = np.argwhere(np.ones(t.shape, bool)).astype(float)
    d = np.full(len(c), np.inf)
    for v in np.argwhere(t).astype(float):  # distance from each voxel centre to each tumour cell (a box)
        d = np.minimum(d, np.sqrt(((np.maximum(np.abs(c - v) - 0.5, 0) * sp) ** 2).sum(axis=1)))
    for r in (2.0, 4.0, 6.3):
        assert np.array_equal(M.target_mask(t, g, r), (d <= r + 1e-6).reshape(t.shape))


def test_surface_samples_cover_every_outer_face(case):
    g, _ = case
    box = np.zeros(g.GetSize()[::-1], bool)
    box[2:5, 3:7, 4:9] = True
    s = M.mask_surface(box, g)
    h = np.array(g.GetSpacing())[::-1]  # k, j, i
    area = 2 * (4 * 5 * h[1] * h[2] + 3 * 5 * h[0] * h[2] + 3 * 4 * h[0] * h[1])
    assert s.area_mm2 == pytest.approx(area)
    # every sample lies on the box's surface in physical space
    centre = geometry.ijk_to_ras(g, [6.0, 4.5, 3.0])
    rot = geometry.ijk_to_ras_matrix(g)[:3, :3] / np.array(g.GetSpacing())
    q = (s.points_ras - centre) @ rot  # in the grid's axes (i, j, k), mm
    half = np.array([5 * h[2], 4 * h[1], 3 * h[0]]) / 2
    assert np.allclose(np.max(np.abs(q) / half, axis=1), 1.0)
    assert s.tolerance_mm <= 0.36


def test_single_zone_margin_matches_a_dense_sampling(case):
    g, t = case
    z = EllipsoidZone(geometry.ijk_to_ras(g, [15.0, 13.5, 8.0]), np.array([0.0, 0.6, 0.8]), 14.0, 11.0)
    coarse = M.table_margin([z], M.mask_surface(t, g))
    dense = z.signed_distance(M.mask_surface(t, g, max_patch_mm=0.1).points_ras).min()
    assert coarse.minimal_margin_mm - coarse.tolerance_mm <= dense <= coarse.minimal_margin_mm + 1e-9
    assert coarse.tolerance_mm <= 0.36


def test_union_margin_matches_brute_force_on_the_exposed_surface(case):
    g, t = case
    z1 = EllipsoidZone(geometry.ijk_to_ras(g, [15.0, 13.5, 8.0]), np.array([0.0, 0.6, 0.8]), 14.0, 11.0)
    u2 = np.array([0.2, 0.6, 0.77]) / np.linalg.norm([0.2, 0.6, 0.77])
    z2 = EllipsoidZone(z1.centre_ras + [4.0, 1.0, 0.0], u2, 12.0, 9.0)
    surf = M.mask_surface(t, g)
    got = M.table_margin([z1, z2], surf).minimal_margin_mm
    # brute force: distance to the union's exposed surface sampled every 0.1 mm
    exposed = [a.surface_points(0.1) for a in (z1, z2)]
    exposed = [exposed[0][z2.quadratic(exposed[0]) >= 1], exposed[1][z1.quadratic(exposed[1]) >= 1]]
    dist, _ = cKDTree(np.concatenate(exposed)).query(surf.points_ras)
    inside = (z1.quadratic(surf.points_ras) <= 1) | (z2.quadratic(surf.points_ras) <= 1)
    brute = np.where(inside, dist, -dist).min()
    assert got == pytest.approx(brute, abs=0.1)
    # the union reaches deeper than either zone alone where they overlap
    assert got >= max(M.table_margin([z], surf).minimal_margin_mm for z in (z1, z2)) - 1e-9


def test_mask_margin_of_a_rasterised_zone_agrees_with_the_analytic_one(case):
    g, t = case
    z = EllipsoidZone(geometry.ijk_to_ras(g, [15.0, 13.5, 8.0]), np.array([0.0, 0.6, 0.8]), 14.0, 11.0)
    surf = M.mask_surface(t, g)
    analytic = M.table_margin([z], surf).minimal_margin_mm
    mask = M.zones_mask([z], g)
    assert abs(M.mask_margin(mask, g, surf).minimal_margin_mm - analytic) <= max(g.GetSpacing()) / 2 + 0.4
    # a zone that misses part of the tumour: negative margin of about the depth it sticks out
    z_off = EllipsoidZone(z.centre_ras + 14.0 * np.cross(z.axis_ras, [1.0, 0, 0]), z.axis_ras, 14.0, 11.0)
    assert M.table_margin([z_off], surf).minimal_margin_mm < -1.0
    assert M.mask_margin(M.zones_mask([z_off], g), g, surf).minimal_margin_mm < -1.0
