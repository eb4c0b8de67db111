"""A deterministic digital phantom: a synthetic chest/upper-abdomen CT in HU with known truth.

Body with a fat layer, spine, ribs, two lungs, a branching airway tree
(trachea + bronchi down to generation 6, lumen and wall, with its true
centerlines), a liver with a hypodense tumour and contrast-filled vessels
(one passing close to the tumour, a heat sink), and a peripheral lung
nodule. Everything is built in RAS millimetres; the image is stored like a
CT series (LPS axes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import CT_AXES_RAS, copy_geometry, ijk_to_ras, make_image, ras_to_ijk
from .io import Segment, write_image, write_segmentation

HU = {"air": -1000, "fat": -90, "soft": 40, "lung": -860, "liver": 65, "tumor": 20, "vessel": 190,
      "bone": 650, "wall": 30, "nodule": 25}

COLORS = {
    "body": (0.96, 0.84, 0.57), "lungs": (0.77, 0.91, 1.0), "airway_lumen": (0.35, 0.65, 0.95),
    "airway_wall": (0.85, 0.55, 0.55), "ribs": (0.95, 0.95, 0.85), "liver": (0.87, 0.51, 0.40),
    "liver_tumor": (0.95, 0.85, 0.15), "hepatic_vessels": (0.70, 0.10, 0.90), "lung_nodule": (0.95, 0.30, 0.10),
}


@dataclass
class Phantom:
    ct: sitk.Image
    segments: dict[str, Segment]
    airway_centerlines: list[dict]
    lung_nodule_center_ras: np.ndarray
    liver_tumor_center_ras: np.ndarray
    seed: int
    info: dict = field(default_factory=dict)


class _Grid:
    def __init__(self, image: sitk.Image):
        self.image = image
        self.shape = image.GetSize()[::-1]  # k, j, i

    def box(self, lo_ras, hi_ras):
        """Index slices (k, j, i) covering the RAS box, and the RAS coordinates of those voxels."""
        corners = np.array([[x, y, z] for x in (lo_ras[0], hi_ras[0]) for y in (lo_ras[1], hi_ras[1])
                            for z in (lo_ras[2], hi_ras[2])])
        ijk = ras_to_ijk(self.image, corners)
        lo = np.maximum(np.floor(ijk.min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 1, np.array(self.shape[::-1]))
        if np.any(hi <= lo):
            return None, None
        sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]),
                                 indexing="ij")
        ras = ijk_to_ras(self.image, np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1)).reshape(kk.shape + (3,))
        return sl, ras


def _segment_distance(p, a, b):
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _tube(grid: _Grid, out: np.ndarray, a, b, radius, value=True):
    a, b = np.asarray(a, float), np.asarray(b, float)
    pad = radius + 1.5
    sl, ras = grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if sl is None:
        return
    inside = _segment_distance(ras, a, b) <= radius
    out[sl][inside] = value


def _ellipsoid(grid: _Grid, center, semi, pad=1.5):
    c, s = np.asarray(center, float), np.asarray(semi, float)
    sl, ras = grid.box(c - s - pad, c + s + pad)
    return sl, (((ras - c) / s) ** 2).sum(-1)


def _rotate(v, axis, deg):
    axis = axis / np.linalg.norm(axis)
    t = np.deg2rad(deg)
    return v * np.cos(t) + np.cross(axis, v) * np.sin(t) + axis * (axis @ v) * (1 - np.cos(t))


def _lung_centers():
    return {"right": np.array([62.0, 5.0, 45.0]), "left": np.array([-62.0, 5.0, 45.0])}


LUNG_SEMI = np.array([52.0, 68.0, 85.0])


def _in_lung(p, shrink=0.0):
    for c in _lung_centers().values():
        if ((((p - c) / (LUNG_SEMI - shrink)) ** 2).sum()) <= 1.0:
            return True
    return False


def _grow_airways(rng: np.random.Generator, max_generation: int = 6) -> list[dict]:
    branches: list[dict] = []
    trachea_top = np.array([0.0, 10.0, 139.0])
    carina = np.array([0.0, 10.0, 100.0])
    branches.append({"id": 0, "parent": -1, "generation": 0, "start": trachea_top, "end": carina, "radius_mm": 8.0,
                     "name": "trachea"})
    queue = []
    for side, sign in (("right", 1.0), ("left", -1.0)):
        d = np.array([sign * np.sin(np.deg2rad(42 if side == "left" else 32)), 0.0,
                      -np.cos(np.deg2rad(42 if side == "left" else 32))])
        queue.append((0, carina, d, 48.0 if side == "left" else 40.0, 6.0, 1, np.array([0.0, 1.0, 0.0]),
                      f"{side} main bronchus"))
    while queue:
        parent, start, d, length, radius, gen, plane_n, name = queue.pop(0)
        end = start + d * length
        if gen >= 2 and not _in_lung(end, shrink=radius + 2):
            for frac in (0.7, 0.5):
                end = start + d * length * frac
                if _in_lung(end, shrink=radius + 2):
                    break
            else:
                continue
        bid = len(branches)
        branches.append({"id": bid, "parent": parent, "generation": gen, "start": start, "end": end,
                         "radius_mm": radius, "name": name})
        if gen >= max_generation:
            continue
        # children: split in the branching plane, planes turn ~90 deg per generation
        n = _rotate(plane_n, d, 90.0 + rng.uniform(-20, 20))
        n = n - d * (n @ d)
        n /= np.linalg.norm(n)
        for k, sign in enumerate((1.0, -1.0)):
            angle = rng.uniform(28, 40) * (1.0 if k == 0 else rng.uniform(0.8, 1.1))
            cd = _rotate(d, n, sign * angle)
            queue.append((bid, end, cd / np.linalg.norm(cd), length * rng.uniform(0.72, 0.85),
                          max(radius * 0.79, 1.0), gen + 1, n, ""))
    for b in branches:
        n = max(2, int(np.ceil(np.linalg.norm(b["end"] - b["start"]) / 1.0)) + 1)
        t = np.linspace(0, 1, n)[:, None]
        b["points_ras"] = (b["start"] + t * (b["end"] - b["start"])).tolist()
        b["length_mm"] = float(np.linalg.norm(b["end"] - b["start"]))
        b["start"] = b["start"].tolist()
        b["end"] = b["end"].tolist()
    return branches


def make_phantom(seed: int = 0, spacing=(1.0, 1.0, 1.25), size=(288, 208, 224), noise_hu: float = 12.0) -> Phantom:
    """Build the phantom; everything (shape jitter, airway angles, noise) follows ``seed``."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing, float)
    size = np.asarray(size, int)
    extent = (size - 1) * spacing
    # LPS-axis-aligned grid like a CT series, centred on the RAS origin
    origin_ras = np.array([extent[0] / 2, extent[1] / 2, -extent[2] / 2])
    image = make_image(size, spacing, origin_ras, CT_AXES_RAS, sitk.sitkInt16)
    grid = _Grid(image)
    shape = grid.shape
    masks = {name: np.zeros(shape, bool) for name in COLORS}

    # body: elliptic cylinder, with fat layer; in-plane coordinates of one slice
    _, ras0 = grid.box(np.array([-1e4, -1e4, origin_ras[2]]), np.array([1e4, 1e4, origin_ras[2]]))
    x, y = ras0[0, ..., 0], ras0[0, ..., 1]
    ab = np.array([138.0, 96.0]) * rng.uniform(0.97, 1.03, 2)
    r_body = (x / ab[0]) ** 2 + ((y + 5) / ab[1]) ** 2
    body2d = r_body <= 1.0
    fat2d = body2d & (r_body > 0.86)
    masks["body"][:] = body2d[None]
    ct = np.full(shape, HU["air"], np.float32)
    ct[masks["body"]] = HU["soft"]
    ct[:, fat2d] = HU["fat"]
    # spine
    spine2d = (x ** 2 + (y + 68) ** 2) <= 16.0 ** 2
    ct[:, spine2d] = HU["bone"]
    # lungs
    lungs = masks["lungs"]
    for c in _lung_centers().values():
        c = c + rng.uniform(-2, 2, 3)
        sl, r = _ellipsoid(grid, c, LUNG_SEMI)
        lungs[sl] |= r <= 1.0
    ras_x = ijk_to_ras(image, np.c_[np.arange(shape[2]), np.zeros(shape[2]), np.zeros(shape[2])])[:, 0]
    lungs[:, :, np.abs(ras_x) < 14.0] = False  # mediastinum
    lungs &= masks["body"]
    # liver (right upper abdomen, under the right lung's dome)
    liver_c = np.array([48.0, 8.0, -62.0]) + rng.uniform(-2, 2, 3)
    sl, r = _ellipsoid(grid, liver_c, [78.0, 62.0, 58.0])
    masks["liver"][sl] = r <= 1.0
    masks["liver"] &= ~lungs & masks["body"]
    # liver tumour: a lobulated sphere, radius ~13 mm
    tumor_c = liver_c + np.array([18.0, -8.0, -4.0]) + rng.uniform(-2, 2, 3)
    sl, ras = grid.box(tumor_c - 20, tumor_c + 20)
    d = ras - tumor_c
    rr = np.linalg.norm(d, axis=-1)
    theta = np.arctan2(d[..., 1], d[..., 0])
    phi = np.arccos(np.clip(d[..., 2] / np.maximum(rr, 1e-6), -1, 1))
    radius = 13.0 * (1 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6)) * np.sin(2 * phi))
    masks["liver_tumor"][sl] = rr <= radius
    masks["liver_tumor"] &= masks["liver"]
    # hepatic vessels: a trunk with branches; one passes ~6 mm from the tumour surface
    trunk_a = liver_c + np.array([-45.0, 5.0, 30.0])
    trunk_b = liver_c + np.array([30.0, 0.0, -25.0])
    vessel_segments = [(trunk_a, trunk_b, 5.0)]
    side_dir = np.cross(trunk_b - trunk_a, [0, 1.0, 0])
    side_dir /= np.linalg.norm(side_dir)
    near = tumor_c + side_dir * (13.0 + 6.0 + 3.5)
    vessel_segments.append((near + np.array([0, 0, 35.0]), near - np.array([0, 0, 35.0]), 3.5))
    for _ in range(4):
        t = rng.uniform(0.2, 0.8)
        a = trunk_a + t * (trunk_b - trunk_a)
        b = a + rng.normal(0, 1, 3) * 25
        vessel_segments.append((a, b, 2.5))
    for a, b, rad in vessel_segments:
        _tube(grid, masks["hepatic_vessels"], a, b, rad)
    masks["hepatic_vessels"] &= masks["liver"] & ~masks["liver_tumor"]
    # ribs: bands around the thorax (and over the liver's dome)
    ribs = masks["ribs"]
    z_ras = ijk_to_ras(image, np.c_[np.zeros(shape[0]), np.zeros(shape[0]), np.arange(shape[0])])[:, 2]
    ring2d = (r_body <= 0.83) & (r_body >= 0.74) & (y > -70)
    for zc in np.arange(-60.0, 130.0, 24.0) + rng.uniform(-3, 3):
        ks = np.nonzero(np.abs(z_ras - zc) <= 4.5)[0]
        ribs[ks] |= ring2d[None]
    # airway tree
    branches = _grow_airways(rng)
    lumen, outer = masks["airway_lumen"], np.zeros(shape, bool)
    for b in branches:
        wall = 0.5 + 0.2 * b["radius_mm"]
        _tube(grid, outer, b["start"], b["end"], b["radius_mm"] + wall)
        _tube(grid, lumen, b["start"], b["end"], b["radius_mm"])
    masks["airway_wall"][:] = outer & ~lumen
    # lung nodule: periphery of the right lower lobe, next to (not inside) a distal bronchus
    distal = [b for b in branches if b["generation"] >= 5 and b["end"][0] > 30 and b["end"][2] < 40]
    distal = distal or [b for b in branches if b["generation"] >= 4]
    nodule_r = 7.0

    def _nodule_center(b):
        d = np.asarray(b["end"]) - np.asarray(b["start"])
        return np.asarray(b["end"]) + d / np.linalg.norm(d) * (nodule_r + 4.0)

    inside = [b for b in distal if _in_lung(_nodule_center(b), shrink=nodule_r + 3.0)] or distal
    tip = inside[int(rng.integers(len(inside)))]
    nodule_c = _nodule_center(tip)
    sl, ras = grid.box(nodule_c - nodule_r - 2, nodule_c + nodule_r + 2)
    masks["lung_nodule"][sl] = np.linalg.norm(ras - nodule_c, axis=-1) <= nodule_r
    masks["lung_nodule"] &= lungs & ~outer
    lungs &= ~outer & ~masks["lung_nodule"]

    # assemble HU (later wins)
    ct[lungs] = HU["lung"]
    ct[masks["liver"]] = HU["liver"]
    ct[masks["hepatic_vessels"]] = HU["vessel"]
    ct[masks["liver_tumor"]] = HU["tumor"]
    ct[ribs & masks["body"] & ~lungs] = HU["bone"]
    masks["ribs"] &= masks["body"] & ~lungs & ~masks["liver"]
    ct[masks["airway_wall"]] = HU["wall"]
    ct[lumen] = HU["air"]
    ct[masks["lung_nodule"]] = HU["nodule"]
    ct += rng.normal(0.0, noise_hu, shape).astype(np.float32)
    ct_img = copy_geometry(np.clip(np.rint(ct), -1024, 3071).astype(np.int16), image)
    ct_img = sitk.Cast(sitk.SmoothingRecursiveGaussian(ct_img, 0.5), sitk.sitkInt16)

    segments = {name: Segment(name, copy_geometry(m.astype(np.uint8), image), COLORS[name], n + 1)
                for n, (name, m) in enumerate(masks.items())}
    centerlines = [{k: b[k] for k in ("id", "parent", "generation", "name", "points_ras", "radius_mm", "length_mm")}
                   for b in branches]
    info = {
        "description": "IMAGIO digital phantom: synthetic CT (HU) with ground truth; not patient data",
        "seed": seed, "size_ijk": size.tolist(), "spacing_mm": spacing.tolist(),
        "airway_generations": int(max(b["generation"] for b in branches)),
        "airway_branches": len(branches),
        "lung_nodule_center_ras": nodule_c.tolist(), "lung_nodule_radius_mm": nodule_r,
        "liver_tumor_center_ras": tumor_c.tolist(),
        "volumes_ml": {k: s.volume_ml() for k, s in segments.items()},
        "nodule_airway": tip["id"],
    }
    return Phantom(ct_img, segments, centerlines, nodule_c, tumor_c, seed, info)


def write_phantom(phantom: Phantom, out_dir) -> dict[str, Path]:
    """Write ct.nrrd, truth.seg.nrrd, airway_centerlines.json and case.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "ct": write_image(out / "ct.nrrd", phantom.ct),
        "truth": write_segmentation(out / "truth.seg.nrrd", list(phantom.segments.values()), phantom.ct),
    }
    (out / "airway_centerlines.json").write_text(json.dumps({"unit": "mm, RAS", "branches": phantom.airway_centerlines}))
    paths["centerlines"] = out / "airway_centerlines.json"
    (out / "case.json").write_text(json.dumps(phantom.info, indent=2))
    paths["case"] = out / "case.json"
    return paths
