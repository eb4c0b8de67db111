"""Airway segmentation from a chest CT (HU) with SimpleITK.

1. Lungs: air (< -500 HU) that is not outside air, on a half-resolution
   grid (air touching the image sides is outside air when it averages
   below -920 HU; lungs cut by the field of view average well above).
2. Trachea: a dark, round blob near the lungs' left-right middle that runs
   straight for >= 15 mm from the top slices down, part of the same air
   space as >= 400 ml of lung.
3. Region growing from the trachea with an adaptively raised upper HU
   threshold; each step is checked for an explosion (volume jump), the
   step before the first explosion is kept.
4. Peripheral refinement with leak control: the voxels added by a higher
   threshold are split into connected pieces, and only small pieces (a
   branch, not a leak into the parenchyma) are accepted.
5. Optional refinement by a model (``refine``: a callable taking the CT
   region and the mask and returning a proposed airway mask; see
   :func:`onnx_refiner` for an ONNX model run by IMAGIOPlanning's engine).
   The proposal only adds pieces that touch the tree and are small enough
   to be a branch (the same leak control as step 4); what it adds and what
   it was refused are reported.

Everything works on SimpleITK images (LPS); only :mod:`imagio.geometry`
converts to RAS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.engine import OnnxSegmenter
from imagio.errors import ImagioError
from imagio.progress import Progress, ensure


@dataclass(frozen=True)
class AirwayParameters:
    """Every tuning constant of the airway segmentation, with its unit and where it comes from (one line each)."""

    # --- lungs (step 1)
    air_below_hu: float = -500.0         # HU; air vs soft tissue: halfway between air (-1000) and water (0)
    outside_air_mean_hu: float = -920.0  # HU; air touching the sides averaging below this is outside air
    #                                      (measured: outside air -950..-990, aerated lung -790..-850, chest CTs here)
    min_lung_piece_ml: float = 30.0      # ml; smaller air pieces (bowel gas, noise) are not lung: chosen here
    # --- trachea (step 2)
    trachea_area_mm2: tuple[float, float] = (40.0, 900.0)  # mm^2; adult tracheal lumen ~7-30 mm wide: chosen here
    trachea_min_roundness: float = 0.45  # area / area of the circle of its largest extent: chosen here (round blob)
    trachea_max_off_midline_mm: float = 40.0  # mm from the lungs' left-right middle: chosen here
    trachea_min_run_mm: float = 15.0     # mm of straight run from the top slices down: chosen here
    trachea_max_step_mm: float = 6.0     # mm its centre may move between slices of the run: chosen here
    trachea_min_lung_ml: float = 400.0   # ml of lung its air space must hold (below: not a trachea): chosen here
    seed_radius_mm: float = 3.0          # mm around the seed searched for dark voxels: chosen here
    # --- region growing (step 3)
    roi_pad_mm: float = 10.0             # mm added around the lungs' box: chosen here
    roi_above_seed_mm: float = 15.0      # mm above the trachea seed kept in the region: chosen here
    start_hu: float = -960.0             # HU; first upper threshold (lumen air): chosen here
    stop_hu: float = -750.0              # HU; last upper threshold (below aerated lung, -790..-850 measured above)
    step_hu: float = 10.0                # HU per step: chosen here
    explosion_ratio: float = 1.35        # a step growing the volume by more than this factor (+ slack) leaked
    explosion_slack_ml: float = 2.0      # ml added to the ratio test (small trees grow in jumps): chosen here
    max_airway_ml: float = 300.0         # ml; a larger growth is a leak (adult airway lumen ~100-200 ml)
    # --- peripheral refinement (step 4) and the model's proposal (step 5)
    refine_hu: float = 120.0             # HU the threshold is raised by in the refinement: chosen here
    refine_steps: int = 4                # steps of that raise: chosen here
    max_piece_ml: float = 0.3            # ml; a new piece larger than this is a leak, not a branch tip: chosen here
    refine_max_piece_ml: float = 2.0     # ml; the same for a model's proposed piece: chosen here
    min_airway_ml: float = 5.0           # ml; a smaller result is no airway (refused): chosen here
    # --- leak check shown with the result
    leak_suspected_ml: float = 250.0     # ml; airway volume above this is flagged: chosen here (see max_airway_ml)
    leak_suspected_percent: float = 6.0  # % of the lung volume above which it is flagged: chosen here


#: The parameters :func:`segment_airway` uses unless given others.
AIRWAY = AirwayParameters()


@dataclass
class AirwaySegmentation:
    mask: sitk.Image                 # uint8 0/1 on the CT grid
    lungs: sitk.Image                # uint8 0/1 on the CT grid (air-filled lungs, airway included)
    trachea_seed_ras: np.ndarray
    threshold_hu: float              # upper HU threshold of the accepted growth
    explosion_hu: float | None       # first threshold whose growth exploded (leak), if any
    volume_ml: float
    lung_volume_ml: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (threshold HU, volume ml)
    refined_pieces: int = 0          # accepted peripheral pieces
    rejected_pieces: int = 0         # rejected (leaking) peripheral pieces
    model_added_ml: float = 0.0      # volume the refinement model added
    model_refused_ml: float = 0.0    # volume it proposed that was refused (too big: a leak; or detached)

    def leak_check(self) -> dict:
        """Figures of the leak check (all with units in the key)."""
        frac = 100.0 * self.volume_ml / self.lung_volume_ml if self.lung_volume_ml > 0 else float("nan")
        return {
            "airway_volume_ml": round(self.volume_ml, 2),
            "lung_volume_ml": round(self.lung_volume_ml, 1),
            "airway_to_lung_percent": round(frac, 2),
            "threshold_hu": self.threshold_hu,
            "explosion_threshold_hu": self.explosion_hu,
            "refined_pieces": self.refined_pieces,
            "rejected_leak_pieces": self.rejected_pieces,
            "model_added_ml": round(self.model_added_ml, 3),
            "model_refused_ml": round(self.model_refused_ml, 3),
            "leak_suspected": bool(self.volume_ml > AIRWAY.leak_suspected_ml or frac > AIRWAY.leak_suspected_percent),
        }


def _s_axis(ct: sitk.Image) -> tuple[int, float]:
    """(numpy axis of the slices, +1/-1: whether increasing index goes superior)."""
    d = np.array(ct.GetDirection()).reshape(3, 3)  # columns: i, j, k in LPS
    s_comp = d[2, :]                               # S component of each index axis (LPS z = S)
    ax = int(np.argmax(np.abs(s_comp)))
    if abs(s_comp[ax]) < 0.7:
        raise ImagioError("The CT is not an axial series (no index axis runs head-foot)",
                          "Give an axial chest CT, or an airway segmentation with --airway")
    return 2 - ax, float(np.sign(s_comp[ax]))


def _lungs_coarse(ct: sitk.Image, progress: Progress, prm: AirwayParameters = AIRWAY) -> tuple[sitk.Image, np.ndarray]:
    """Air inside the body on a grid shrunk 2x in-plane; returns (mask image, component labels)."""
    small = sitk.Shrink(ct, [2, 2, 1]) if min(ct.GetSize()[:2]) >= 128 else ct
    air = sitk.Cast(small < prm.air_below_hu, sitk.sitkUInt8)
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(air, False))
    progress.update(0.05, "Finding the lungs")
    k_ax, _ = _s_axis(ct)
    # components that touch the sides of the field of view are outside air
    faces = []
    for ax in range(3):
        if ax == k_ax:
            continue
        faces += [np.take(cc, 0, axis=ax).ravel(), np.take(cc, cc.shape[ax] - 1, axis=ax).ravel()]
    touching = np.unique(np.concatenate(faces))
    sizes = np.bincount(cc.ravel())
    # air that touches the sides is outside air, unless it looks like lung parenchyma (a field of view
    # cropped through the lungs): outside air averages below -920 HU (measured -950..-990 on the chest
    # CTs here), aerated lung well above (-790..-850)
    hu = sitk.GetArrayViewFromImage(small).astype(np.float64)
    mean_hu = np.bincount(cc.ravel(), weights=hu.ravel()) / np.maximum(sizes, 1)
    outside = touching[mean_hu[touching] < prm.outside_air_mean_hu]
    vox_ml = geometry.voxel_volume_ml(small)
    keep = np.zeros(len(sizes), bool)
    keep[1:] = sizes[1:] * vox_ml >= prm.min_lung_piece_ml
    keep[outside] = False
    keep[0] = False
    lungs = keep[cc]
    img = sitk.GetImageFromArray(lungs.astype(np.uint8))
    img.CopyInformation(small)
    lab = np.where(lungs, cc, 0)
    return img, lab


def find_trachea(ct: sitk.Image, lungs_small: sitk.Image, labels: np.ndarray,
                 prm: AirwayParameters = AIRWAY) -> np.ndarray:
    """RAS point in the trachea lumen, or ImagioError when there is none."""
    k_ax, sgn = _s_axis(ct)
    arr = np.moveaxis(labels, k_ax, 0)
    n = arr.shape[0]
    order = range(n - 1, -1, -1) if sgn > 0 else range(n)  # from the top (superior) down
    sp = np.array(lungs_small.GetSpacing())
    axes_ijk = [a for a in range(3) if a != 2 - k_ax]
    pix_mm2 = float(sp[axes_ijk[0]] * sp[axes_ijk[1]])
    slice_mm = float(sp[2 - k_ax])
    # body centre (left-right) from all lung voxels
    lung_kji = np.argwhere(labels > 0)
    if len(lung_kji) == 0:
        raise ImagioError("No air-filled lungs found in this CT: no airway to segment",
                          "Give a chest CT (lungs and trachea in the field of view) or an airway segmentation")
    lung_ras = geometry.ijk_to_ras(lungs_small, lung_kji[::50, ::-1].astype(float))
    mid_r = float(np.mean(np.percentile(lung_ras[:, 0], [1, 99])))  # middle between the lungs' sides
    need = max(3, int(np.ceil(prm.trachea_min_run_mm / slice_mm)))
    run: list[tuple[int, np.ndarray, int]] = []
    for idx in order:
        sl = arr[idx]
        found = None
        if np.any(sl):
            comp2 = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray((sl > 0).astype(np.uint8))))
            for c in range(1, int(comp2.max()) + 1):
                pix = np.argwhere(comp2 == c)
                area = len(pix) * pix_mm2
                if not prm.trachea_area_mm2[0] <= area <= prm.trachea_area_mm2[1]:
                    continue
                ext = (pix.max(axis=0) - pix.min(axis=0) + 1) * np.sqrt(pix_mm2)
                if area / (np.pi * (ext.max() / 2.0) ** 2) < prm.trachea_min_roundness:
                    continue
                full = np.zeros(3, int)
                full[k_ax] = idx
                cen2 = pix.mean(axis=0)
                rest = [a for a in range(3) if a != k_ax]
                kji = np.zeros(3)
                kji[k_ax] = idx
                kji[rest[0]], kji[rest[1]] = cen2
                ras = geometry.ijk_to_ras(lungs_small, kji[::-1])
                if abs(ras[0] - mid_r) > prm.trachea_max_off_midline_mm:
                    continue
                lab = int(sl[tuple(np.round(cen2).astype(int))]) or int(sl[tuple(pix[0])])
                found = (idx, ras, lab)
                break
        if found is not None and (not run or np.linalg.norm(found[1][:2] - run[-1][1][:2]) < prm.trachea_max_step_mm):
            run.append(found)
            if len(run) >= need:
                break
        else:
            run = [found] if found is not None else []
    if len(run) < need:
        raise ImagioError("No trachea found in this CT: it does not look like a chest CT with the airway in view",
                          "Give a chest CT that includes the trachea, or an airway segmentation with --airway")
    lab = run[need // 2][2]
    lung_ml = float(np.count_nonzero(labels == lab)) * geometry.voxel_volume_ml(lungs_small)
    if lung_ml < prm.trachea_min_lung_ml:
        raise ImagioError(f"The air-filled structure found ({lung_ml:.0f} ml) is not a trachea leading into lungs",
                          "Give a chest CT that includes the trachea and both lungs, or an airway segmentation")
    return run[need // 2][1]


def _seed_voxels(ct: sitk.Image, seed_ras: np.ndarray, hu_max: float,
                 radius_mm: float = AIRWAY.seed_radius_mm) -> list[tuple[int, int, int]]:
    """Dark voxels (<= hu_max) within ``radius_mm`` of the seed, as SimpleITK indices."""
    ijk = np.round(geometry.ras_to_ijk(ct, seed_ras)).astype(int)
    sp = np.array(ct.GetSpacing())
    r = np.maximum(np.ceil(radius_mm / sp).astype(int), 1)
    lo = np.maximum(ijk - r, 0)
    hi = np.minimum(ijk + r + 1, np.array(ct.GetSize()))
    sub = sitk.GetArrayViewFromImage(ct)[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    pts = np.argwhere(sub <= hu_max)
    if len(pts) == 0:
        raise ImagioError("The trachea seed is not in air", "Check the CT (HU units) or give an airway segmentation")
    return [tuple(int(v) for v in (p[::-1] + lo)) for p in pts]


def segment_airway(ct: sitk.Image, progress: Progress | None = None, seed_ras=None,
                   start_hu: float = AIRWAY.start_hu, stop_hu: float = AIRWAY.stop_hu, step_hu: float = AIRWAY.step_hu,
                   explosion_ratio: float = AIRWAY.explosion_ratio, refine_hu: float = AIRWAY.refine_hu,
                   max_piece_ml: float = AIRWAY.max_piece_ml,
                   refine: Callable[[sitk.Image, sitk.Image], sitk.Image] | None = None,
                   refine_max_piece_ml: float = AIRWAY.refine_max_piece_ml,
                   parameters: AirwayParameters = AIRWAY) -> AirwaySegmentation:
    """Segment the airway lumen of a chest CT in HU. Raises ImagioError when there is none. The keyword
    thresholds override their ``parameters`` field (:class:`AirwayParameters`)."""
    progress = ensure(progress)
    prm = parameters
    if ct.GetDimension() != 3:
        raise ImagioError("The CT must be a 3D image", "Give a 3D chest CT")
    ct = sitk.Cast(ct, sitk.sitkInt16) if ct.GetPixelID() != sitk.sitkInt16 else ct
    arr = sitk.GetArrayViewFromImage(ct)
    if float(np.percentile(arr[::4, ::8, ::8], 1)) > prm.air_below_hu:
        raise ImagioError("The image has no air (HU < -500): it is not a CT in Hounsfield units or shows no lungs",
                          "Give a chest CT in HU")
    progress.update(0.0, "Finding the lungs and the trachea")
    lungs_small, labels = _lungs_coarse(ct, progress, prm)
    if seed_ras is None:
        seed_ras = find_trachea(ct, lungs_small, labels, prm)
    seed_ras = np.asarray(seed_ras, float)
    progress.update(0.15, "Growing the airway")
    # region of interest: the lungs' box (+10 mm), up to 15 mm above the seed
    lung_kji = np.argwhere(labels > 0)
    box_ras = geometry.ijk_to_ras(lungs_small, np.array([lung_kji.min(axis=0), lung_kji.max(axis=0)])[:, ::-1].astype(float))
    box_ras = np.vstack([box_ras, seed_ras])
    top_s = seed_ras[2] + prm.roi_above_seed_mm
    corners = np.array([[x, y, z] for x in box_ras[:, 0] for y in box_ras[:, 1]
                        for z in (box_ras[:, 2].min(), top_s)])
    ijk = geometry.ras_to_ijk(ct, corners)
    sp = np.array(ct.GetSpacing())
    lo = np.maximum(np.floor(ijk.min(axis=0) - prm.roi_pad_mm / sp), 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(axis=0) + prm.roi_pad_mm / sp) + 1, np.array(ct.GetSize())).astype(int)
    roi = sitk.RegionOfInterest(ct, [int(v) for v in hi - lo], [int(v) for v in lo])
    seeds = _seed_voxels(roi, seed_ras, start_hu, prm.seed_radius_mm)
    vox_ml = geometry.voxel_volume_ml(ct)
    curve = []
    accepted = None
    accepted_t = start_hu
    explosion = None
    prev_v = None
    thresholds = np.arange(start_hu, stop_hu + 0.5 * step_hu, step_hu)
    for n, t in enumerate(thresholds):
        progress.update(0.15 + 0.45 * n / len(thresholds), f"Growing the airway below {t:.0f} HU")
        grown = sitk.ConnectedThreshold(roi, seedList=seeds, lower=-3000, upper=float(t))
        v = float(np.count_nonzero(sitk.GetArrayViewFromImage(grown))) * vox_ml
        curve.append((float(t), round(v, 3)))
        if prev_v is not None and (v > explosion_ratio * prev_v + prm.explosion_slack_ml or v > prm.max_airway_ml):
            explosion = float(t)
            break
        accepted, accepted_t, prev_v = grown, float(t), v
    if accepted is None:
        raise ImagioError("The airway region leaked at the first threshold", "Check the CT or give a trachea seed")
    progress.update(0.6, "Adding peripheral branches with leak control")
    mask, n_ok, n_bad = _refine_periphery(roi, accepted, accepted_t, refine_hu, max_piece_ml, vox_ml,
                                          prm.refine_steps)
    mask = _close_in_box(mask)
    # keep the piece connected to the trachea
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask, True), sortByObjectSize=True)
    mask = sitk.Cast(cc == 1, sitk.sitkUInt8)
    added_ml = refused_ml = 0.0
    if refine is not None:
        progress.update(0.8, "Refining with the model")
        proposal = refine(roi, mask)
        mask, added_ml, refused_ml = merge_proposal(mask, proposal, refine_max_piece_ml)
    # back onto the whole CT grid
    full = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    full.CopyInformation(ct)
    full = sitk.Paste(full, mask, mask.GetSize(), [0, 0, 0], [int(v) for v in lo])
    lungs_full = sitk.Resample(lungs_small, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    vol = geometry.mask_volume_ml(full)
    lung_ml = geometry.mask_volume_ml(lungs_full)
    if vol < prm.min_airway_ml:
        raise ImagioError(f"The airway found is only {vol:.1f} ml", "Check the CT or give an airway segmentation")
    progress.update(1.0, f"Airway {vol:.1f} ml")
    return AirwaySegmentation(mask=full, lungs=lungs_full, trachea_seed_ras=seed_ras, threshold_hu=accepted_t,
                              explosion_hu=explosion, volume_ml=vol, lung_volume_ml=lung_ml, curve=curve,
                              refined_pieces=n_ok, rejected_pieces=n_bad, model_added_ml=added_ml,
                              model_refused_ml=refused_ml)


def merge_proposal(mask: sitk.Image, proposal: sitk.Image, max_piece_ml: float) -> tuple[sitk.Image, float, float]:
    """Add the pieces of ``proposal`` that touch ``mask`` and hold at most ``max_piece_ml`` each.

    Returns (new mask, added ml, refused ml). A piece larger than that is a leak into the
    parenchyma; a piece that does not touch the tree cannot be reached through it.
    """
    if not geometry.same_grid(proposal, mask):
        proposal = geometry.resample_to(proposal, mask, nearest=True)
    prop = sitk.Cast(proposal > 0, sitk.sitkUInt8)
    new = sitk.And(prop, sitk.Not(mask))
    relabel = sitk.RelabelComponentImageFilter()
    lab = sitk.GetArrayFromImage(relabel.Execute(sitk.ConnectedComponent(new, True)))
    sizes = np.bincount(lab.ravel())
    vox_ml = geometry.voxel_volume_ml(mask)
    ring = sitk.GetArrayFromImage(sitk.BinaryDilate(mask, [1, 1, 1])) > 0
    touching = np.zeros(len(sizes), bool)
    touching[np.unique(lab[ring & (lab > 0)])] = True
    ok = touching & (sizes * vox_ml <= max_piece_ml)
    ok[0] = False
    add = ok[lab]
    out = sitk.GetArrayFromImage(mask).astype(bool) | add
    img = sitk.GetImageFromArray(out.astype(np.uint8))
    img.CopyInformation(mask)
    added = float(sizes[ok].sum()) * vox_ml
    refused = float(sizes[1:].sum()) * vox_ml - added
    return img, added, refused


def onnx_refiner(card_path, label: str = "airway") -> Callable[[sitk.Image, sitk.Image], sitk.Image]:
    """A ``refine`` callable that runs an ONNX model (IMAGIOPlanning's model card and engine) on the CT region
    and proposes its label whose name contains ``label`` (or label 1 when none does)."""
    segmenter = OnnxSegmenter(card_path)
    names = {lab.value: lab.name for lab in segmenter.card.labels}
    value = next((v for v, n in names.items() if label.lower() in n.lower()), 1)

    def refine(ct_roi: sitk.Image, mask: sitk.Image) -> sitk.Image:
        result = segmenter.predict(ct_roi)
        return sitk.Cast(result.labels == value, sitk.sitkUInt8)

    return refine


def _refine_periphery(roi: sitk.Image, base: sitk.Image, t: float, extra_hu: float, max_piece_ml: float,
                      vox_ml: float, steps: int = AIRWAY.refine_steps) -> tuple[sitk.Image, int, int]:
    """Raise the threshold in ``steps``; accept the new pieces of at most ``max_piece_ml`` (a branch
    tip), reject the larger ones (a leak into the parenchyma)."""
    mask = base
    ok_total = bad_total = 0
    max_vox = max(1, int(max_piece_ml / vox_ml))
    for s in range(1, steps + 1):
        thr = t + extra_hu * s / steps
        cand = sitk.ConnectedThreshold(roi, seedList=_seeds_of(mask), lower=-3000, upper=float(thr))
        new = sitk.And(cand, sitk.Not(mask))
        relabel = sitk.RelabelComponentImageFilter()
        relabel.SortByObjectSizeOn()
        lab = relabel.Execute(sitk.ConnectedComponent(new, True))
        sizes = np.asarray(relabel.GetSizeOfObjectsInPixels())
        if len(sizes) == 0:
            continue
        n_big = int(np.count_nonzero(sizes > max_vox))  # labels 1..n_big are too big: leaks
        bad_total += n_big
        ok_total += len(sizes) - n_big
        mask = sitk.Or(mask, sitk.Cast(lab > n_big, sitk.sitkUInt8))
    return mask, ok_total, bad_total


def _close_in_box(mask: sitk.Image) -> sitk.Image:
    """Closing (1 voxel) and hole filling, computed on the mask's bounding box only."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
    lo = np.maximum(np.array([x, y, z]) - 2, 0)
    hi = np.minimum(np.array([x + sx, y + sy, z + sz]) + 2, np.array(mask.GetSize()))
    sub = sitk.RegionOfInterest(mask, [int(v) for v in hi - lo], [int(v) for v in lo])
    sub = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(sub, [1, 1, 1]))
    return sitk.Paste(mask, sub, sub.GetSize(), [0, 0, 0], [int(v) for v in lo])


def _seeds_of(mask: sitk.Image, n: int = 200) -> list[tuple[int, int, int]]:
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    sel = kji[np.linspace(0, len(kji) - 1, min(n, len(kji))).astype(int)]
    return [tuple(int(v) for v in p[::-1]) for p in sel]
