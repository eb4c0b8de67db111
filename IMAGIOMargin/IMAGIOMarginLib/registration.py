"""Registration of the pre-treatment CT (tumour) to the post-treatment CT (ablation zone) with SimpleITK.

Modes
-----
* ``none``: the masks already share one physical frame.
* ``rigid``: Euler 3D transform started from the identity (both CTs are in the scanner's patient frame:
  DICOM's patient coordinates), multi-resolution Mattes mutual information, on a region of interest (ROI)
  around the tumour and the ablation zone only, restricted to the organ when an organ mask (on the
  post-treatment CT) is given. Only the ROI of each CT is cast to float and registered, so memory and time are
  bounded by the ROI, not by the CTs.
* ``deformable``: the rigid result, then a B-spline transform (control points about every 30 mm) on the same
  ROI. The tumour is kept rigid: the deformation is sampled over the tumour (and 5 mm around it) and the best
  rigid transform through those displacements (least squares) moves the tumour, so the tumour cannot be warped
  or shrunk "into" the zone.

In both modes the metric ignores the ablation zone itself (grown by 3 mm) on the post-treatment CT, where the
tissue changed appearance. Transforms follow ITK's convention: they map points of the fixed (post) image into
the moving (pre) image, in LPS mm.

Quality control that decides (:func:`check_quality`): the similarity (normalised cross-correlation over the
ROI's metric mask) before and after, the rigid parameters, the landmark error before and after when landmarks
are given, and how much of the ROI both CTs cover. A registration that makes the similarity or the landmark
error worse, that diverged (translation or rotation beyond the stated bounds), or whose CTs do not show the same
anatomy (the ROI mostly outside a CT, or a low similarity both at the identity and after) is refused with an
:class:`ImagioError`, unless the caller accepts it explicitly (``accept=True``, the CLI's
``--accept-registration``); the result then records the override and the failed checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import bounds_overlap, dilate_mm, lps_to_ras, ras_to_lps, resample_to, same_grid
from imagio.progress import ensure

MODES = ("none", "rigid", "deformable")
SIMILARITY_METRIC = "normalized_cross_correlation"
OVERRIDE_FLAG = "--accept-registration"

# Reproducibility: the same inputs give the same registration on every machine.
# SimpleITK reads a sampling seed of 0 as "seed from the wall clock" (sitk.sitkWallClock == 0), so the user's
# seed (default 0) is offset to a fixed non-zero seed.
SAMPLING_SEED_OFFSET = 1
# ITK sums the metric in per-thread parts whose order of addition changes the last bits of every metric value
# and gradient, which the optimiser amplifies. Measured on the LIDC-0314 test: with 2 registration threads two
# runs differed (metric -0.65874806 vs -0.65874807, centroid error 0.74 vs 0.75 mm); with 1 thread the values
# were bit-identical with ITK's global default set to 1 or 4 threads. The small ROI keeps one thread fast.
REGISTRATION_THREADS = 1


@dataclass(frozen=True)
class RegistrationParameters:
    """Every tuning constant of the registration and its quality control, with its unit and reason."""

    # ROI = the boxes of the tumour and the zone grown by this (mm): enough anatomy around the lesion (ribs,
    # vessels, organ edges) to fix 6 rigid parameters, small enough that the lesion's region dominates.
    # Measured: 30 mm suffices on LIDC-0314 (centroid error 0.03 mm) but not for a 10 mm tumour in CRLM-1004's
    # homogeneous liver (its CT registered to itself drifted 3 mm); 40 mm recovers both (0.04 and 0.44 mm).
    roi_margin_mm: float = 40.0
    # the zone grown by this (mm) is left out of the metric: ablated tissue and its rim changed appearance.
    zone_exclusion_mm: float = 3.0
    # an organ mask grown by this (mm) bounds the metric: its edge is anatomy the metric needs.
    organ_dilation_mm: float = 5.0
    # Mattes MI histogram bins (ITK's examples use 32-50 for CT).
    histogram_bins: int = 48
    # share of the ROI's voxels sampled per iteration and level (random, fixed seed): at full resolution 3 %
    # of a 90-150 mm ROI is 5x10^4-2x10^5 samples, far more than 6 parameters need (LIDC-0314 test: 15 % ->
    # 3 % at the finest level changed the recovered centroid by 0.004 mm and halved the time).
    rigid_sampling: tuple[float, ...] = (0.15, 0.10, 0.03)
    deformable_sampling: float = 0.05
    # multi-resolution pyramid, coarse to fine: each level's voxel size (mm; 0 = the CT's own), per axis never
    # finer than the CT's, after a Gaussian of sigma half that size. Physical sizes, not shrink factors, so a CT
    # with 5 mm slices keeps its few slices at the coarse levels (ITK's shrink factor 4 made 20 mm slices of it
    # and CRLM-1004's registration of the CT to itself drifted: NCC 1.000 -> 0.981).
    rigid_levels_mm: tuple[float, ...] = (4.0, 2.0, 0.0)
    # CT values outside this window (HU) are clamped before the metric: padding outside the scan's field of view
    # (-2048, -3024 on CRLM-1004) and metal would stretch the histogram so that soft tissue falls into a few bins.
    intensity_window_hu: tuple[float, float] = (-1000.0, 1500.0)
    # regular-step gradient descent (scales from physical shift): first step (mm) at the coarsest level, halved
    # per level; smallest step (mm); iterations per level; step reduction when the gradient turns.
    max_step_mm: float = 2.0
    min_step_mm: float = 1e-3
    rigid_iterations: int = 100
    relaxation: float = 0.6
    # B-spline control-point spacing (mm): respiratory/organ deformation varies over centimetres.
    bspline_spacing_mm: float = 30.0
    # B-spline: L-BFGS-B iterations per level, and its (coarser) pyramid: the fine level adds little to a
    # 30 mm control-point grid and costs most of the time.
    deformable_iterations: int = 40
    deformable_shrink_factors: tuple[int, ...] = (4, 2)
    deformable_smoothing_mm: tuple[float, ...] = (2.0, 1.0)
    # L-BFGS-B: gradient tolerance (relative) and stored corrections (SimpleITK's example values).
    lbfgs_tolerance: float = 1e-5
    lbfgs_corrections: int = 5
    # the tumour is kept rigid over itself and this shell (mm): the tissue that moves with it.
    tumor_rigid_shell_mm: float = 5.0
    # an organ mask with fewer voxels than this in the ROI does not describe the region (a refusal).
    min_organ_voxels: int = 1000
    # the zone may fill the ROI; below this share of the ROI left for the metric, the zone is not left out.
    min_metric_share: float = 0.1
    # Divergence: a tumour displacement beyond this (mm) is not a patient's motion between two CTs of one
    # procedure: breathing moves lower-lobe lung tumours up to about 25 mm (Seppenwoolde et al., IJROBP 2002).
    # The moving CT's ROI is padded by this much, so a larger translation also leaves the ROI.
    max_translation_mm: float = 30.0
    # Divergence: a rotation beyond this (deg) between two supine CTs on one table is not patient motion
    # (repositioning turns a patient by a few degrees; the tests recover 3-5 deg).
    max_rotation_deg: float = 15.0
    # Registration made it worse: the similarity after below the similarity before by more than this (NCC
    # units): one patient's CT registered to itself stays within 1e-3 (measured on CRLM-1004, the worst of three).
    similarity_tolerance: float = 0.01
    # Landmark error after above the error at the identity by more than this (mm, about a voxel).
    tre_tolerance_mm: float = 0.5
    # Not the same anatomy: the NCC below this both at the identity and after. Measured on the ROIs
    # (test_margin_registration*.py): the same patient 0.94-1.00 after rigid registration (LIDC-0314, LUNG1-001,
    # CRLM-1004 under 5-10 mm / 3.5-3.8 deg motion and 10 HU noise, and LIDC-0314 under a B-spline motion with a
    # -150 HU zone); LUNG1-001's chest over LIDC-0314's 0.32 at the identity, -0.43 after.
    min_similarity: float = 0.5
    # Not the same anatomy: less than this share (%) of the tumour and zone boxes, grown by core_margin_mm (mm:
    # the tissue the margin is measured in), inside either CT (both CTs are in the scanner's patient frame).
    # The ROI itself may extend beyond a CT cropped around the lesion; it is cut to the CTs.
    min_core_inside_percent: float = 50.0
    core_margin_mm: float = 10.0


DEFAULT_PARAMETERS = RegistrationParameters()


@dataclass
class RegistrationResult:
    mode: str
    tumor_transform: sitk.Transform  # post (fixed) LPS -> pre (moving) LPS, rigid over the tumour
    full_transform: sitk.Transform  # the whole registration (deformable where asked)
    quality: dict = field(default_factory=dict)
    error_estimate_mm: float | None = None
    status: str = "not registered"  # "passed" | "accepted by user" (failed QC, override) | "not registered"
    override: bool = False
    qc_failures: list[str] = field(default_factory=list)
    similarity_before: float | None = None
    similarity_after: float | None = None
    translation_ras_mm: list[float] | None = None
    rotation_ras_deg: list[float] | None = None
    rotation_angle_deg: float | None = None
    roi: dict | None = None

    def to_dict(self) -> dict:
        """margin.json's ``registration`` object (units in the key names; vectors in RAS)."""
        out = {"mode": self.mode, "status": self.status, "method": _method_text(self.mode),
               "override": self.override, "qc_failures": list(self.qc_failures)}
        if self.mode != "none":
            out.update({
                "similarity_metric": SIMILARITY_METRIC,
                "similarity_before": _round(self.similarity_before, 4),
                "similarity_after": _round(self.similarity_after, 4),
                "transform": "post-treatment CT point -> pre-treatment CT point (RAS mm), rotation about the "
                             "tumour centroid",
                "translation_mm": [round(v, 3) for v in self.translation_ras_mm],
                "rotation_deg": [round(v, 3) for v in self.rotation_ras_deg],
                "rotation_convention": "angles about the R, A, S axes, composed as Rs * Rr * Ra (ITK Euler 3D)",
                "rotation_angle_deg": round(self.rotation_angle_deg, 3),
                "roi": self.roi,
            })
        out["tre_mm"] = _round(self.quality.get("tre_rms_mm"), 3)
        out.update(self.quality)  # the detailed figures (ncc_before/after, tre_rms_mm, landmark_count, ...)
        out["error_estimate_mm"] = self.error_estimate_mm
        return out


def registration_dict(result: RegistrationResult | None) -> dict:
    """margin.json's ``registration`` object, also when no registration was asked for."""
    if result is None:
        return {"mode": "none", "status": "not registered", "method": _method_text("none"), "override": False,
                "qc_failures": [], "tre_mm": None}
    return result.to_dict()


def _round(v, n):
    return None if v is None else round(float(v), n)


def _method_text(mode: str) -> str:
    if mode == "none":
        return "none: the masks are taken to share one physical frame"
    p = DEFAULT_PARAMETERS
    text = (f"rigid Euler 3D from the identity, Mattes mutual information ({p.histogram_bins} bins), "
            f"{len(p.rigid_levels_mm)} resolution levels, on the tumour/zone ROI (+{p.roi_margin_mm:g} mm)")
    if mode == "deformable":
        text += f"; then B-spline ({p.bspline_spacing_mm:g} mm control points), tumour kept rigid"
    return text


def _corners(lo, hi) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)


def mask_box_lps(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Physical (LPS mm) axis-aligned box of a mask's voxels (voxel extents included)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise ImagioError("A registration mask is empty", "Give non-empty tumour and ablation-zone segments")
    bb = stats.GetBoundingBox(1)  # i, j, k start, then sizes
    lo, hi = np.array(bb[:3], float) - 0.5, np.array(bb[:3], float) + np.array(bb[3:], float) - 0.5
    pts = np.array([mask.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in _corners(lo, hi)])
    return pts.min(axis=0), pts.max(axis=0)


def _inside_share(image: sitk.Image, lo, hi, n: int = 9) -> float:
    """Share of a physical box (an n^3 lattice of its points) that lies inside ``image``'s extent."""
    axes = [np.linspace(lo[d], hi[d], n) for d in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    m = np.array(image.GetDirection(), float).reshape(3, 3) * np.array(image.GetSpacing(), float)
    ijk = (pts - np.array(image.GetOrigin(), float)) @ np.linalg.inv(m).T
    size = np.array(image.GetSize(), float)
    return float(np.mean(np.all((ijk >= -0.5) & (ijk <= size - 0.5), axis=1)))


def crop_to_box(image: sitk.Image, lo, hi) -> sitk.Image | None:
    """The part of ``image`` (its own grid, a RegionOfInterest) that covers the physical box lo..hi (LPS mm)."""
    ijk = np.array([image.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in _corners(lo, hi)])
    size = np.array(image.GetSize())
    start = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, size - 1)
    stop = np.clip(np.ceil(ijk.max(axis=0)).astype(int), 0, size - 1)
    if np.any(stop <= start):
        return None
    return sitk.RegionOfInterest(image, [int(v) for v in stop - start + 1], [int(v) for v in start])


def _on_grid(mask: sitk.Image, full: sitk.Image, crop: sitk.Image) -> sitk.Image:
    """``mask`` (on ``full``'s grid or another) on the grid of ``crop`` (a region of ``full``)."""
    if same_grid(mask, full):
        start = full.TransformPhysicalPointToIndex(crop.GetOrigin())
        return sitk.RegionOfInterest(mask, crop.GetSize(), start)
    return resample_to(mask, crop)


def _ncc(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: np.ndarray) -> float:
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    a = sitk.GetArrayViewFromImage(fixed)[mask].astype(float)
    b = sitk.GetArrayViewFromImage(warped)[mask].astype(float)
    a -= a.mean()
    b -= b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _coarse(image: sitk.Image, level_mm: float) -> sitk.Image:
    """``image`` smoothed (Gaussian, sigma level_mm / 2) and resampled to voxels of at least ``level_mm`` per axis."""
    sp = np.array(image.GetSpacing(), float)
    size = np.array(image.GetSize(), float)
    new_sp = np.maximum(sp, level_mm)
    new_size = np.maximum(1, np.round(size * sp / new_sp)).astype(int)
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    # same physical extent: the first voxel's corner stays where it was
    origin = np.array(image.GetOrigin(), float) + direction @ ((new_sp - sp) / 2)
    smooth = sitk.SmoothingRecursiveGaussian(image, float(level_mm) / 2)
    return sitk.Resample(smooth, [int(v) for v in new_size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                         new_sp.tolist(), direction.ravel().tolist(), -1000.0, sitk.sitkFloat32)


def _method(mask: sitk.Image, seed: int, shrink, smooth, sampling,
            params: RegistrationParameters = DEFAULT_PARAMETERS) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    per_level = [float(sampling)] * len(shrink) if np.isscalar(sampling) else [float(v) for v in sampling]
    reg.SetMetricSamplingPercentagePerLevel(per_level, int(seed) % (2**31 - 1) + SAMPLING_SEED_OFFSET)
    reg.SetNumberOfThreads(REGISTRATION_THREADS)
    reg.SetNumberOfWorkUnits(REGISTRATION_THREADS)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def fit_rigid(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with dst ~ R @ src + t (Kabsch)."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, cd - r @ cs


def _points_of(mask: sitk.Image, max_points: int = 4000, seed: int = 0) -> np.ndarray:
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
    if len(idx) > max_points:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
    return np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in idx])


def register(pre_ct: sitk.Image, post_ct: sitk.Image, mode: str, tumor_pre: sitk.Image, zone_post: sitk.Image,
             landmarks_pre_ras=None, landmarks_post_ras=None, seed: int = 0, progress=None,
             organ_post: sitk.Image | None = None, accept: bool = False,
             params: RegistrationParameters = DEFAULT_PARAMETERS) -> RegistrationResult:
    """Register ``pre_ct`` (moving) to ``post_ct`` (fixed); see the module docstring.

    ``organ_post``: optional organ mask on the post-treatment CT (e.g. the liver); the metric then only
    looks inside the organ (grown by 5 mm), so that sliding neighbours (ribs, lung) do not drive it.
    ``accept``: use a registration that fails the quality control (recorded as an override) instead of
    refusing it.
    """
    progress = ensure(progress)
    if mode not in MODES:
        raise ImagioError(f"Unknown registration mode '{mode}'", f"Use one of: {', '.join(MODES)}")
    quality: dict = {}
    if mode == "none":
        tx = sitk.Transform(3, sitk.sitkIdentity)
        return RegistrationResult(mode, tx, tx, quality, _tre(tx, landmarks_pre_ras, landmarks_post_ras, quality))
    if pre_ct is None or post_ct is None:
        raise ImagioError(f"Registration '{mode}' needs the pre- and post-treatment CTs",
                          "Give --pre-ct and --post-ct, or use --register none for masks in one frame")
    failures: list[str] = []
    # the ROI: tumour (pre) and zone (post) boxes, both CTs in the patient frame, grown by the margin
    t_lo, t_hi = mask_box_lps(tumor_pre)
    z_lo, z_hi = mask_box_lps(zone_post)
    lo = np.minimum(t_lo, z_lo) - params.roi_margin_mm
    hi = np.maximum(t_hi, z_hi) + params.roi_margin_mm
    organ_box = None
    if organ_post is not None:
        o_lo, o_hi = mask_box_lps(organ_post)
        organ_box = (o_lo - params.organ_dilation_mm, o_hi + params.organ_dilation_mm)
        lo, hi = np.maximum(lo, organ_box[0]), np.minimum(hi, organ_box[1])
        if np.any(hi <= lo):
            raise ImagioError("The organ mask does not reach the region around the tumour and the ablation zone",
                              "Give the organ that contains the ablation zone, segmented on the post-treatment CT")
    core_lo = np.minimum(t_lo, z_lo) - params.core_margin_mm
    core_hi = np.maximum(t_hi, z_hi) + params.core_margin_mm
    roi = {"center_ras": [round(float(v), 2) for v in lps_to_ras((lo + hi) / 2)],
           "size_mm": [round(float(v), 1) for v in hi - lo], "margin_mm": params.roi_margin_mm,
           "inside_post_ct_percent": round(100.0 * _inside_share(post_ct, lo, hi), 1),
           "inside_pre_ct_percent": round(100.0 * _inside_share(pre_ct, lo, hi), 1),
           "organ_restricted": organ_post is not None}
    for image, which in ((post_ct, "post"), (pre_ct, "pre")):
        share = 100.0 * _inside_share(image, core_lo, core_hi)
        if share < params.min_core_inside_percent:
            failures.append(f"only {share:.0f} % of the tumour and ablation zone (with {params.core_margin_mm:g} mm "
                            f"around them) lies inside the {which}-treatment CT (at least "
                            f"{params.min_core_inside_percent:g} %): the CTs do not show the same body region")
    if failures and not accept:
        _refuse(failures)
    fixed = crop_to_box(post_ct, lo, hi)
    pad = params.max_translation_mm
    moving = crop_to_box(pre_ct, lo - pad, hi + pad)
    if fixed is None or moving is None:
        raise ImagioError("The pre- and post-treatment CTs do not overlap around the tumour",
                          "Check that both CTs show the same body region of the same patient")
    fixed_crop = fixed
    lo_hu, hi_hu = params.intensity_window_hu
    fixed = sitk.Clamp(sitk.Cast(fixed, sitk.sitkFloat32), sitk.sitkFloat32, lo_hu, hi_hu)
    moving = sitk.Clamp(sitk.Cast(moving, sitk.sitkFloat32), sitk.sitkFloat32, lo_hu, hi_hu)
    roi["voxels"] = [int(v) for v in fixed.GetSize()]
    zone_c = _on_grid(zone_post, post_ct, fixed_crop)
    zone_grown = dilate_mm(zone_c, params.zone_exclusion_mm)
    region = np.ones(sitk.GetArrayViewFromImage(fixed).shape, bool)
    if organ_post is not None:
        organ = _on_grid(sitk.Cast(organ_post > 0, sitk.sitkUInt8), post_ct, fixed_crop)
        organ = dilate_mm(organ, params.organ_dilation_mm)
        region = sitk.GetArrayFromImage(organ) > 0
        if np.count_nonzero(region) < params.min_organ_voxels:
            raise ImagioError("The organ mask hardly overlaps the region around the ablation zone",
                              "Give the organ that contains the ablation zone, segmented on the post-treatment CT")
        quality["organ_restricted"] = True
    metric_mask_arr = region & ~(sitk.GetArrayViewFromImage(zone_grown) > 0)
    if np.count_nonzero(metric_mask_arr) < params.min_metric_share * metric_mask_arr.size:
        metric_mask_arr = region  # the zone fills the region: use it all rather than almost nothing
    metric_mask = sitk.GetImageFromArray(metric_mask_arr.astype(np.uint8))
    metric_mask.CopyInformation(fixed)

    progress.update(0.05, "Rigid registration")
    identity = sitk.Transform(3, sitk.sitkIdentity)
    center = _centroid_lps(tumor_pre)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(center.tolist())  # identity start: both CTs are in the scanner's patient frame
    quality["ncc_before"] = _ncc(fixed, moving, identity, metric_mask_arr)
    tre_before = _tre(identity, landmarks_pre_ras, landmarks_post_ras, {})
    n_levels, n_it = len(params.rigid_levels_mm), params.rigid_iterations
    for level, (level_mm, sampling) in enumerate(zip(params.rigid_levels_mm, params.rigid_sampling, strict=True)):
        fixed_l, moving_l, mask_l = fixed, moving, metric_mask
        if level_mm > 0:
            fixed_l, moving_l = _coarse(fixed, level_mm), _coarse(moving, level_mm)
            mask_l = sitk.Resample(metric_mask, fixed_l, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        reg = _method(mask_l, seed, (1,), (0.0,), (sampling,), params)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=params.max_step_mm * (0.5 ** level),
                                                     minStep=params.min_step_mm,
                                                     numberOfIterations=params.rigid_iterations,
                                                     relaxationFactor=params.relaxation)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(rigid, inPlace=True)
        reg.AddCommand(sitk.sitkIterationEvent, lambda reg=reg, level=level: progress.update(
            0.05 + 0.4 * (level + min(reg.GetOptimizerIteration(), n_it) / n_it) / n_levels, "Rigid registration"))
        _execute(reg, fixed_l, moving_l, "Rigid registration")
    quality["rigid_metric"] = float(reg.GetMetricValue())
    full: sitk.Transform = rigid
    tumor_tx: sitk.Transform = rigid
    if mode == "deformable":
        progress.update(0.45, "Deformable (B-spline) registration")
        mesh = [max(2, int(round(sz * sp / params.bspline_spacing_mm)))
                for sz, sp in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True)]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        reg2 = _method(metric_mask, seed, params.deformable_shrink_factors, params.deformable_smoothing_mm,
                       params.deformable_sampling, params)
        n_it2 = params.deformable_iterations
        reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=params.lbfgs_tolerance, numberOfIterations=n_it2,
                                  maximumNumberOfCorrections=params.lbfgs_corrections,
                                  maximumNumberOfFunctionEvaluations=3 * n_it2)
        reg2.SetMovingInitialTransform(rigid)
        reg2.SetInitialTransform(bspline, inPlace=True)
        reg2.AddCommand(sitk.sitkIterationEvent, lambda: progress.update(
            0.45 + 0.45 * min(reg2.GetOptimizerIteration(), n_it2) / n_it2 / 2, "Deformable (B-spline) registration"))
        _execute(reg2, fixed, moving, "Deformable registration")
        quality["deformable_metric"] = float(reg2.GetMetricValue())
        full = sitk.CompositeTransform([rigid, bspline])
        # keep the tumour rigid: best rigid fit of the deformation over the tumour + 5 mm
        tumor_grown = dilate_mm(tumor_pre, params.tumor_rigid_shell_mm)
        pre_pts = _points_of(tumor_grown, seed=seed)
        inv = rigid.GetInverse()
        post_pts = np.array([inv.TransformPoint(p) for p in pre_pts])  # tumour region seen in the post frame
        mapped = np.array([full.TransformPoint(p) for p in post_pts])
        r, t = fit_rigid(post_pts, mapped)
        local = sitk.AffineTransform(3)
        local.SetMatrix(r.ravel().tolist())
        local.SetTranslation(t.tolist())
        residual = mapped - (post_pts @ r.T + t)
        quality["tumor_nonrigidity_rms_mm"] = float(np.sqrt((residual ** 2).sum(axis=1).mean()))
        quality["deformable_change_at_tumor_mm"] = float(np.linalg.norm(
            (mapped - np.array([rigid.TransformPoint(p) for p in post_pts])).mean(axis=0)))
        tumor_tx = local
    progress.update(0.95, "Registration quality")
    quality["ncc_after"] = _ncc(fixed, moving, full, metric_mask_arr)
    err = _tre(full, landmarks_pre_ras, landmarks_post_ras, quality)
    if tre_before is not None:
        quality["tre_before_mm"] = tre_before
    translation = lps_to_ras(np.array(rigid.GetTranslation(), float))  # displacement of the tumour centroid
    angles = np.rad2deg([rigid.GetAngleX(), rigid.GetAngleY(), rigid.GetAngleZ()])
    rotation_ras = [-float(angles[0]), -float(angles[1]), float(angles[2])]  # LPS -> RAS flips the L and P axes
    matrix = np.array(rigid.GetMatrix(), float).reshape(3, 3)
    angle = float(np.rad2deg(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))
    failures += check_quality(quality["ncc_before"], quality["ncc_after"], float(np.linalg.norm(translation)), angle,
                              tre_before, err, params)
    if failures and not accept:
        _refuse(failures)
    progress.update(1.0, "Registration done")
    return RegistrationResult(mode, tumor_tx, full, quality, err,
                              status="accepted by user" if failures else "passed", override=bool(failures),
                              qc_failures=failures, similarity_before=quality["ncc_before"],
                              similarity_after=quality["ncc_after"],
                              translation_ras_mm=[float(v) for v in translation], rotation_ras_deg=rotation_ras,
                              rotation_angle_deg=angle, roi=roi)


def check_quality(similarity_before: float, similarity_after: float, translation_mm: float, rotation_deg: float,
                  tre_before_mm: float | None, tre_after_mm: float | None,
                  params: RegistrationParameters = DEFAULT_PARAMETERS) -> list[str]:
    """The reasons (empty: none) to refuse a registration; see :class:`RegistrationParameters` for the bounds."""
    out = []
    if translation_mm > params.max_translation_mm:
        out.append(f"the registration diverged: it moves the tumour by {translation_mm:.1f} mm "
                   f"(more than {params.max_translation_mm:g} mm)")
    if rotation_deg > params.max_rotation_deg:
        out.append(f"the registration diverged: it rotates by {rotation_deg:.1f} deg "
                   f"(more than {params.max_rotation_deg:g} deg)")
    if similarity_after < similarity_before - params.similarity_tolerance:
        out.append(f"the registration made the similarity worse (normalised cross-correlation "
                   f"{similarity_before:.3f} before, {similarity_after:.3f} after)")
    if max(similarity_before, similarity_after) < params.min_similarity:
        out.append(f"the CTs do not show the same anatomy around the tumour (normalised cross-correlation "
                   f"{similarity_before:.3f} before, {similarity_after:.3f} after, below {params.min_similarity:g}): "
                   "another patient or another body region")
    if tre_before_mm is not None and tre_after_mm is not None and tre_after_mm > tre_before_mm + params.tre_tolerance_mm:
        out.append(f"the registration made the landmark error worse ({tre_before_mm:.2f} mm before, "
                   f"{tre_after_mm:.2f} mm after)")
    return out


def _refuse(failures: list[str]) -> None:
    raise ImagioError("Registration refused: " + "; ".join(failures),
                      "Check that both CTs show the same body region of the same patient (or give landmarks, or an "
                      f"organ mask); to use this registration anyway pass {OVERRIDE_FLAG} (recorded in the result)")


def _centroid_lps(mask: sitk.Image) -> np.ndarray:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask > 0)
    return np.array(stats.GetCentroid(1), float)


def _execute(reg: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, what: str) -> None:
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ImagioError(f"{what} failed ({last[:160]})",
                          "Check that both CTs show the same region of the same patient, or give masks already "
                          "registered with --register none") from e


def _tre(tx: sitk.Transform, pre_ras, post_ras, quality: dict) -> float | None:
    """RMS target registration error (mm) over landmark pairs, recorded in ``quality``."""
    if pre_ras is None and post_ras is None:
        return None
    pre = np.atleast_2d(np.asarray(pre_ras, float))
    post = np.atleast_2d(np.asarray(post_ras, float))
    if pre.shape != post.shape or pre.shape[1] != 3 or len(pre) == 0:
        raise ImagioError(f"Landmarks do not pair up ({len(pre)} pre, {len(post)} post)",
                          "Give the same number of landmarks, in the same order, on both CTs")
    mapped = np.array([tx.TransformPoint(p.tolist()) for p in ras_to_lps(post)])
    err = np.linalg.norm(mapped - ras_to_lps(pre), axis=1)
    quality["landmark_count"] = int(len(err))
    quality["tre_rms_mm"] = float(np.sqrt((err ** 2).mean()))
    quality["tre_max_mm"] = float(err.max())
    return quality["tre_rms_mm"]


def bring_tumor_to_zone(tumor: sitk.Image, zone: sitk.Image, result: RegistrationResult | None) -> sitk.Image:
    """The tumour mask on the zone's grid: through the registration, else by physical position (nearest)."""
    if result is None or result.mode == "none":
        if not bounds_overlap(tumor, zone):
            raise ImagioError(
                "The tumour and the ablation-zone masks do not overlap in space: they are in different frames",
                "Give --pre-ct and --post-ct with --register rigid or deformable, or masks already registered",
            )
        if same_grid(tumor, zone):
            out = sitk.Image(tumor)
            out.CopyInformation(zone)  # within tolerance: the zone's geometry exactly
            return out
        return resample_to(tumor, zone, nearest=True)
    return move_mask(tumor, zone, result.tumor_transform)


def move_mask(mask: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """``mask`` moved by ``transform`` (reference point -> mask point) onto ``reference``'s grid: the 0.5 level of
    the trilinearly interpolated mask (the surface convention of the margin metrics), not nearest neighbour,
    whose staircase shifts a rotated surface by up to half a voxel (a full voxel at the thinnest point)."""
    moved = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), reference, transform, sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    return sitk.Cast(moved >= 0.5, mask.GetPixelID())
