"""Seeded lesion segmentation: one click (RAS mm) and an optional radius, no model.

Method (3D, in a region of interest around the seed, all distances in mm):

* lung-nodule: the lesion is tissue denser than a threshold set halfway
  between the seed's intensity and the surrounding lung; the chest wall is cut
  off by a rolling-ball lung envelope (closing of the lung air by a ball
  larger than the lesion, so a juxtapleural nodule lies inside the envelope
  and the wall outside); attached vessels are cut by a morphological opening
  whose radius follows the lesion's inscribed radius; the component at the
  seed is kept and dilated back inside the tissue mask (geodesic
  reconstruction of its boundary).
* liver-tumor and soft-tissue: intensity-adaptive region growing from the
  seed's own statistics (mean +- k std of a small sphere, smoothed image),
  the range then widened to the half-contrast level towards the surrounding
  tissue (median of a 3 mm shell) so partial-volume edges are kept,
  the same opening and seed-component rule, holes filled, and growth kept
  within 1.2 given (1.5 estimated) radii of the seed, so a leak into similar
  tissue is bounded.

The radius, when not given, is estimated from the lesion-like region at the
seed (inscribed radius x 1.6). Morphology uses Maurer distance maps, so balls
are true physical balls on anisotropic grids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.geometry import ras_to_ijk
from imagio.progress import Progress, ensure

KINDS = {
    "lung-nodule": {"default_radius_mm": 10.0, "max_radius_mm": 60.0, "air_below_hu": -600.0,
                    "max_volume_ml": 65.0},
    "liver-tumor": {"default_radius_mm": 20.0, "max_radius_mm": 80.0, "air_below_hu": -300.0, "k_std": 2.5,
                    "max_volume_ml": 525.0},
    "soft-tissue": {"default_radius_mm": 25.0, "max_radius_mm": 100.0, "air_below_hu": -300.0, "k_std": 3.0,
                    "max_volume_ml": 1800.0},
}
#: Seed intensities that are not a lesion of any kind here (HU, at the seed's 3x3x3 median): subcutaneous and
#: visceral fat (-190 to -30 HU, the usual CT fat window) and bone or calcification (above 400 HU: cortical and
#: dense trabecular bone; enhancing lesions stay below about 250 HU).
FAT_HU = (-190.0, -30.0)
BONE_ABOVE_HU = 400.0
#: Without a radius the region may be at most the kind's ``max_volume_ml`` (lung nodule: a 5 cm sphere; liver
#: tumour: 10 cm; soft-tissue mass: 15 cm); with a radius, at most this many times the volume of its sphere.
LARGE_FACTOR = 3.0
SOFT_OPENING = 0.4   # opening radius / inscribed radius (liver-tumor, soft-tissue)
SOFT_CLOSING = 0.0   # final closing radius / largest voxel spacing (0: none; it merged leaks on real sarcomas)
SOFT_BOUND = (1.2, 1.5)   # growth stays within this many radii of the seed (radius given, estimated)
SOFT_HALF_CONTRAST = True  # widen the intensity range to the half-contrast level of the surroundings
SEGMENT_NAMES = {"lung-nodule": "Lung nodule", "liver-tumor": "Liver tumor", "soft-tissue": "Soft-tissue lesion"}


@dataclass(frozen=True)
class LungNoduleParameters:
    """The tuning constants of the lung-nodule method (unit and source, one line each)."""

    aerated_below_hu: float = -500.0     # HU; voxels counted as aerated lung for its median: chosen here
    min_aerated_voxels: int = 50         # fewer: the lung level is assumed (next field): chosen here
    assumed_lung_hu: float = -850.0      # HU; lung level with too few such voxels (LungNav measured -790..-850)
    lesion_cap_hu: float = 100.0         # HU; seed level capped (calcified/contrast voxels): chosen here
    threshold_range_hu: tuple[float, float] = (-650.0, -300.0)  # HU; half-way threshold clipped to this: chosen here
    radius_factor: float = 1.6           # estimated radius = this x the inscribed radius at the seed: chosen here
    inscribed_search_mm: float = 6.0     # mm searched for the inscribed radius without a given radius: chosen here
    radius_range_mm: tuple[float, float] = (3.0, 0.0)  # mm; estimated radius clip (upper 0: the kind's maximum)
    envelope_factor: float = 1.3         # rolling-ball (closing) radius = this x radius + the next field, at most 20
    envelope_add_mm: float = 2.0         # mm: chosen here
    envelope_max_mm: float = 20.0        # mm: chosen here
    bound_factor: float = 1.5            # growth stays within this many radii of the seed: chosen here
    component_search_mm: float = 2.0     # mm a component may lie off the seed: chosen here
    min_inscribed_mm: float = 3.0        # mm; the inscribed-radius search is at least this (or half the radius)
    opening_factor: float = 0.5          # opening radius = this x inscribed radius, clipped to the next fields
    max_opening_mm: float = 3.5          # mm; or 0.2 x radius when larger: chosen here
    max_opening_per_radius: float = 0.2  # chosen here


@dataclass(frozen=True)
class SoftLesionParameters:
    """The tuning constants of the liver-tumor / soft-tissue method (unit and source, one line each)."""

    curvature_flow_time_step: float = 0.0625  # below CurvatureFlow's stability bound 1/2^3 for 3D (ITK docs)
    curvature_flow_iterations: int = 3   # chosen here
    stats_radius_factor: float = 0.3     # intensity statistics in a ball of this x the given radius: chosen here
    stats_radius_mm: float = 4.0         # mm; that ball without a given radius: chosen here
    mad_to_sd: float = 1.4826            # median absolute deviation -> SD of a normal distribution (a constant)
    sd_range_hu: tuple[float, float] = (8.0, 40.0)  # HU; the robust SD is clipped to this: chosen here
    component_search_mm: float = 3.0     # mm a component may lie off the seed: chosen here
    radius_range_mm: tuple[float, float] = (5.0, 0.0)  # mm; estimated radius clip (upper 0: the kind's maximum)
    shell_mm: float = 3.0                # mm; the surroundings' shell of the half-contrast edge: chosen here
    min_inscribed_mm: float = 4.0        # mm; the inscribed-radius search is at least this (or half the radius)
    max_opening_mm: float = 8.0          # mm; opening radius cap (SOFT_OPENING x inscribed radius): chosen here


LUNG_NODULE = LungNoduleParameters()
SOFT_LESION = SoftLesionParameters()


@dataclass
class SeededResult:
    mask: sitk.Image                # uint8 0/1 on the CT grid
    kind: str
    seed_ras: np.ndarray
    radius_mm: float                # radius used (given or estimated)
    runtime_s: float
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _component_at(mask: sitk.Image, seed_idx, search_mm: float = 0.0) -> sitk.Image:
    """The connected component of ``mask`` at ``seed_idx`` (or the nearest one within ``search_mm``)."""
    cc = sitk.ConnectedComponent(mask, True)
    arr = sitk.GetArrayViewFromImage(cc)
    i, j, k = seed_idx
    lab = int(arr[k, j, i])
    if lab == 0 and search_mm > 0:
        sp = np.array(mask.GetSpacing())
        r = np.ceil(search_mm / sp).astype(int)
        sl = tuple(slice(max(c - rr, 0), c + rr + 1) for c, rr in zip((k, j, i), r[::-1], strict=True))
        sub = arr[sl]
        if np.any(sub):
            zz, yy, xx = np.nonzero(sub)
            off = np.array([s.start for s in sl])
            pts = np.c_[zz, yy, xx] + off
            d = np.linalg.norm((pts - np.array([k, j, i])) * sp[::-1], axis=1)
            best = int(np.argmin(d))
            if d[best] <= search_mm:
                lab = int(arr[tuple(pts[best])])
    out = sitk.Cast(cc == lab, sitk.sitkUInt8) if lab else sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(mask)
    return out


def _ball_stats(roi: np.ndarray, center_kji, spacing_kji, r_mm: float):
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in roi.shape)]
    c = center_kji
    d2 = ((zz - c[0]) * spacing_kji[0]) ** 2 + ((yy - c[1]) * spacing_kji[1]) ** 2 + ((xx - c[2]) * spacing_kji[2]) ** 2
    vals = roi[d2 <= r_mm ** 2]
    if vals.size == 0:
        vals = roi[tuple(int(v) for v in c)].reshape(1)
    return vals


def _sphere_mask(ref: sitk.Image, center_kji, r_mm: float) -> np.ndarray:
    sp = np.array(ref.GetSpacing())[::-1]
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in ref.GetSize()[::-1])]
    d2 = ((zz - center_kji[0]) * sp[0]) ** 2 + ((yy - center_kji[1]) * sp[1]) ** 2 + ((xx - center_kji[2]) * sp[2]) ** 2
    return d2 <= r_mm ** 2


def _inscribed_radius(comp: sitk.Image, seed_idx, near_mm: float) -> float:
    d = geometry.signed_distance_mm(comp)
    i, j, k = seed_idx
    near = _sphere_mask(comp, (k, j, i), near_mm)
    inside = -d[near]
    return float(max(inside.max(), 0.0)) if inside.size else 0.0


def _bounded(mask: sitk.Image, keep: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(((sitk.GetArrayViewFromImage(mask) > 0) & keep).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def check_ct(ct: sitk.Image) -> None:
    if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
        raise ImagioError("The CT must be a 3D scalar volume", "Give a 3D CT")
    a = sitk.GetArrayViewFromImage(ct)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ImagioError("The CT has NaN or infinite voxels", "Fix or re-export the CT")
    if float(a.min()) == float(a.max()):
        raise ImagioError(f"The CT has one constant value ({float(a.min()):g}) in every voxel",
                          "This is not a usable CT; check the file or series")


def segment_from_seed(ct: sitk.Image, seed_ras, kind: str = "lung-nodule", radius_mm: float | None = None,
                      progress: Progress | None = None, accept_large: bool = False) -> SeededResult:
    """Segment the lesion at ``seed_ras`` (RAS mm) in ``ct`` (HU). Raises ImagioError for bad input.

    Refused (ImagioError, with the reason): a seed in air or lung, fat or bone; a region that reaches the
    border of the region of interest (it leaked into what surrounds it) or grows far past the size expected
    for the kind. ``accept_large`` returns the last two with a warning instead.
    """
    t0 = time.perf_counter()
    progress = ensure(progress)
    if kind not in KINDS:
        raise ImagioError(f"Unknown lesion kind {kind!r}", f"Use one of {', '.join(KINDS)}")
    cfg = KINDS[kind]
    check_ct(ct)
    seed_ras = np.asarray(seed_ras, float).reshape(3)
    if not np.all(np.isfinite(seed_ras)):
        raise ImagioError("The seed point is not a finite R,A,S position", "Give the seed as three numbers in mm")
    cont = ras_to_ijk(ct, seed_ras)
    size = np.array(ct.GetSize())
    if np.any(cont < -0.5) or np.any(cont > size - 0.5):
        raise ImagioError(f"The seed ({seed_ras[0]:.1f}, {seed_ras[1]:.1f}, {seed_ras[2]:.1f}) RAS mm lies outside "
                          f"the CT", "Place the seed inside the lesion on this CT (coordinates are RAS mm)")
    if radius_mm is not None and not (0 < float(radius_mm) <= cfg["max_radius_mm"]):
        raise ImagioError(f"Radius {radius_mm} mm is outside (0, {cfg['max_radius_mm']:g}] mm for a {kind}",
                          "Give the lesion's approximate radius in mm, or leave it out")
    seed = np.clip(np.round(cont).astype(int), 0, size - 1)
    progress.update(0.05, "Reading the seed region")
    # a first region of interest large enough for any lesion of this kind
    r_guess = float(radius_mm) if radius_mm else cfg["default_radius_mm"]
    sp = np.array(ct.GetSpacing())
    arr_full = sitk.GetArrayViewFromImage(ct)
    k0, j0, i0 = seed[::-1]
    local = arr_full[max(k0 - 1, 0):k0 + 2, max(j0 - 1, 0):j0 + 2, max(i0 - 1, 0):i0 + 2].astype(np.float32)
    seed_hu = float(np.median(local))
    what = kind.replace("-", " ")
    if seed_hu < cfg["air_below_hu"]:
        raise ImagioError(f"The seed lies in air or lung ({seed_hu:.0f} HU), not in a {what}",
                          "Click inside the lesion")
    if FAT_HU[0] <= seed_hu <= FAT_HU[1]:
        raise ImagioError(f"The seed lies in fat ({seed_hu:.0f} HU), not in a {what}", "Click inside the lesion")
    if seed_hu > BONE_ABOVE_HU:
        raise ImagioError(f"The seed lies in bone or calcification ({seed_hu:.0f} HU), not in a {what}",
                          "Click inside the lesion")

    half = min(max(2.5 * r_guess, 25.0) if radius_mm else cfg["max_radius_mm"] * 0.8, cfg["max_radius_mm"] * 1.6)
    lo = np.maximum(seed - np.ceil(half / sp).astype(int), 0)
    hi = np.minimum(seed + np.ceil(half / sp).astype(int) + 1, size)
    roi = sitk.RegionOfInterest(ct, [int(v) for v in hi - lo], [int(v) for v in lo])
    roi = sitk.Cast(roi, sitk.sitkFloat32)
    s_idx = [int(v) for v in seed - lo]
    roi_arr = sitk.GetArrayViewFromImage(roi)
    progress.update(0.2, "Growing the region")
    info = {"seed_hu": seed_hu}
    if kind == "lung-nodule":
        mask, radius = _lung_nodule(roi, roi_arr, s_idx, seed_hu, radius_mm, cfg, info, progress)
    else:
        mask, radius = _soft_lesion(roi, roi_arr, s_idx, radius_mm, cfg, info, progress)
    progress.update(0.9, "Placing the result on the CT grid")
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise ImagioError(f"No {kind.replace('-', ' ')} was found at the seed",
                          "Click nearer the lesion's centre or give its radius")
    out = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(ct)
    out = sitk.Paste(out, sitk.Cast(mask, sitk.sitkUInt8), mask.GetSize(), [0, 0, 0], [int(v) for v in lo])
    m = sitk.GetArrayViewFromImage(mask)
    touches = bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    info["touches_roi_border"] = touches
    volume_ml = float(np.count_nonzero(m)) * float(np.prod(sp)) / 1000.0
    limit_ml = (LARGE_FACTOR * 4.0 / 3.0 * np.pi * float(radius_mm) ** 3 / 1000.0) if radius_mm else cfg["max_volume_ml"]
    info.update(volume_ml=volume_ml, expected_max_ml=round(limit_ml, 2))
    problems = []
    if touches:
        half_mm = 0.5 * (hi - lo) * sp
        problems.append(f"the region reaches the border of the {' x '.join(f'{v:.0f}' for v in 2 * half_mm)} mm "
                        "search region around the seed (it leaked into the surroundings)")
    if volume_ml > limit_ml:
        why = f"{LARGE_FACTOR:g} x the {float(radius_mm):g} mm sphere" if radius_mm else f"the most for a {what}"
        problems.append(f"the region is {volume_ml:.1f} ml, more than {limit_ml:.1f} ml ({why})")
    warnings = []
    if problems:
        if not accept_large:
            raise ImagioError(f"Not a {what} at the seed: {'; '.join(problems)}",
                              "Click inside the lesion, give its radius, or pass --accept-large to keep the region "
                              "(marked with a warning)")
        warnings = [f"seeded region accepted with --accept-large: {p}" for p in problems]
    progress.update(1.0, "Done")
    return SeededResult(out, kind, seed_ras, float(radius), time.perf_counter() - t0, info, warnings)


def _lung_nodule(roi, roi_arr, s_idx, seed_hu, radius_mm, cfg, info, progress, prm: LungNoduleParameters = LUNG_NODULE):
    # lung parenchyma level: median of clearly aerated voxels in the ROI
    air_vals = roi_arr[roi_arr < prm.aerated_below_hu]
    lung_hu = float(np.median(air_vals)) if air_vals.size > prm.min_aerated_voxels else prm.assumed_lung_hu
    lesion_hu = min(seed_hu, prm.lesion_cap_hu)
    thr = float(np.clip(0.5 * (lesion_hu + lung_hu), *prm.threshold_range_hu))
    info.update(lung_hu=lung_hu, threshold_hu=thr)
    tissue = sitk.Cast(roi > thr, sitk.sitkUInt8)
    air = sitk.Cast(roi <= thr, sitk.sitkUInt8)
    comp = _component_at(tissue, s_idx)
    if radius_mm:
        radius = float(radius_mm)
    else:
        # inscribed radius of the tissue at the seed, inside a lung envelope of moderate size
        radius = float(np.clip(prm.radius_factor * _inscribed_radius(comp, s_idx, prm.inscribed_search_mm),
                               prm.radius_range_mm[0], prm.radius_range_mm[1] or cfg["max_radius_mm"]))
    progress.update(0.4, "Cutting the chest wall (rolling-ball envelope)")
    envelope = sitk.BinaryFillhole(geometry.closing_mm(air, min(prm.envelope_factor * radius + prm.envelope_add_mm,
                                                    prm.envelope_max_mm)))
    cand = _bounded(sitk.And(tissue, envelope), _sphere_mask(roi, s_idx[::-1], prm.bound_factor * radius))
    comp = _component_at(cand, s_idx, search_mm=prm.component_search_mm)
    if not np.any(sitk.GetArrayViewFromImage(comp)):
        comp = _component_at(tissue, s_idx)
    progress.update(0.6, "Cutting attached vessels (opening)")
    inscribed = _inscribed_radius(comp, s_idx, max(0.5 * radius, prm.min_inscribed_mm))
    r_open = float(np.clip(prm.opening_factor * inscribed, min(roi.GetSpacing()),
                           max(prm.max_opening_mm, prm.max_opening_per_radius * radius)))
    info.update(inscribed_radius_mm=inscribed, opening_radius_mm=r_open)
    core = _component_at(geometry.opening_mm(comp, r_open), s_idx, search_mm=max(inscribed, prm.component_search_mm))
    if not np.any(sitk.GetArrayViewFromImage(core)):
        core = comp
    mask = sitk.And(geometry.dilate_mm(core, r_open + 0.5 * min(roi.GetSpacing())), comp)
    mask = sitk.BinaryFillhole(mask)
    return mask, radius


def _soft_lesion(roi, roi_arr, s_idx, radius_mm, cfg, info, progress, prm: SoftLesionParameters = SOFT_LESION):
    smooth = sitk.CurvatureFlow(roi, timeStep=prm.curvature_flow_time_step,
                                numberOfIterations=prm.curvature_flow_iterations)
    sm = sitk.GetArrayViewFromImage(smooth)
    sp = np.array(roi.GetSpacing())[::-1]
    c = s_idx[::-1]
    r_stats = prm.stats_radius_factor * float(radius_mm) if radius_mm else prm.stats_radius_mm
    vals = _ball_stats(sm, c, sp, max(r_stats, 2.0 * float(sp.max())))
    mu = float(np.median(vals))
    sigma = float(np.clip(prm.mad_to_sd * np.median(np.abs(vals - mu)), *prm.sd_range_hu))
    k = cfg["k_std"]
    lower, upper = mu - k * sigma, mu + k * sigma
    info.update(lesion_hu=mu, lesion_sd_hu=sigma, lower_hu=lower, upper_hu=upper)
    grown = sitk.Cast((smooth >= lower) & (smooth <= upper), sitk.sitkUInt8)
    comp = _component_at(grown, s_idx, search_mm=prm.component_search_mm)
    if radius_mm:
        radius = float(radius_mm)
    else:
        # equivalent-sphere radius of the grown region within the kind's default radius
        near = _bounded(comp, _sphere_mask(roi, c, cfg["default_radius_mm"]))
        vol = float(np.count_nonzero(sitk.GetArrayViewFromImage(near))) * float(np.prod(sp))
        radius = float(np.clip((3.0 * vol / (4.0 * np.pi)) ** (1.0 / 3.0), prm.radius_range_mm[0],
                               prm.radius_range_mm[1] or cfg["max_radius_mm"]))
    progress.update(0.5, "Bounding the region and cutting leaks (opening)")
    ball = _sphere_mask(roi, c, (SOFT_BOUND[0] if radius_mm else SOFT_BOUND[1]) * radius)
    bounded = _bounded(comp, ball)
    # half-contrast edge: widen the range towards the surrounding tissue's level, so partial-volume
    # boundary voxels that are nearer the lesion than the surroundings are kept
    widened = geometry.dilate_mm(bounded, prm.shell_mm)  # kept alive while its array view is read
    shell = (sitk.GetArrayViewFromImage(widened) > 0) & ~(sitk.GetArrayViewFromImage(bounded) > 0) & ball
    if shell.any() and SOFT_HALF_CONTRAST:
        around = float(np.median(sm[shell]))
        mid = 0.5 * (mu + around)
        if around > upper and mid > upper:
            upper = mid
        elif around < lower and mid < lower:
            lower = mid
        info.update(surrounding_hu=around, lower_hu=lower, upper_hu=upper)
        grown = sitk.Cast((smooth >= lower) & (smooth <= upper), sitk.sitkUInt8)
        bounded = _bounded(_component_at(grown, s_idx, search_mm=prm.component_search_mm), ball)
    inscribed = _inscribed_radius(bounded, s_idx, max(0.5 * radius, prm.min_inscribed_mm))
    r_open = float(np.clip(SOFT_OPENING * inscribed, float(sp.min()), prm.max_opening_mm))
    info.update(inscribed_radius_mm=inscribed, opening_radius_mm=r_open)
    core = _component_at(geometry.opening_mm(bounded, r_open), s_idx, search_mm=max(inscribed, prm.component_search_mm))
    if not np.any(sitk.GetArrayViewFromImage(core)):
        core = bounded
    mask = sitk.And(geometry.dilate_mm(core, r_open), bounded)
    mask = sitk.BinaryFillhole(geometry.closing_mm(mask, SOFT_CLOSING * float(sp.max())))
    return mask, radius
