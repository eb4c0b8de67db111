"""MarginLogic: post-ablation margin assessment on a vtkMRMLScene (no Qt, no global scene).

``MarginLogic(scene).assess(tumor, zone, ...)`` registers (optionally), computes
the margin metrics (:mod:`.metrics`), their uncertainty (:mod:`.uncertainty`)
and a verdict; ``add_to_scene(result)`` makes the MRML outputs: the tumour
surface model with a per-point ``margin_mm`` scalar and a colour map, a
markup at the thinnest point, a table with every metric and a histogram plot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import bounds_overlap, describe_grid, same_grid
from imagio.io import Segment
from imagio.progress import ensure

from .metrics import MarginMetrics, check_binary, compute_margin
from .plan_vs_achieved import compare_plan
from .policy import VERDICT, VerdictPolicy
from .registration import MODES, RegistrationResult, bring_tumor_to_zone, register, registration_dict
from .uncertainty import (
    DEFAULT_SIGMA_MM,
    SEGMENTATION_SIGMA_MM,
    SEGMENTATION_SOURCE,
    TRE_SOURCE,
    MarginUncertainty,
    margin_uncertainty,
    sigma_from_tre_rms,
)

CONVENTION = ("Surfaces are sub-voxel surfaces fitted to the binary masks: each mask smoothed by a Gaussian of the same "
              "width in mm along every axis (2 voxels of the finest axis, at most sqrt(R h) on a mask of equivalent radius R "
              "only a few voxels h, at least 1 voxel of each), the surface refined "
              "until its own smoothed partial-volume image matches the smoothed mask (inside voxel centres it would leave "
              "more than half a voxel outside, detail one or two voxels wide, held inside), its 0.5 level set as a "
              "triangle mesh. "
              "Margins are distances (mm) from the tumour surface to the zone surface, positive inside the zone, read at "
              "the smoothing's scale (area-weighted mean within 1.25 voxels). Coverage and residual tumour: volumes of the "
              "same solids. Shell r mm: voxel centres within r mm of the tumour solid (tumour included). The minimal margin "
              "is the margin map's minimum plus a grid-phase correction: the measured minimum minus the mean minimum over "
              "4-8 replicates on sub-voxel-shifted grids, with its standard error (not applied, with a note, where larger "
              "than half the coarsest spacing).")


@dataclass
class MarginResult:
    metrics: MarginMetrics
    uncertainty: MarginUncertainty
    registration: RegistrationResult | None
    threshold_mm: float
    sigma_source: str
    verdict: str
    verdict_text: str
    verdict_confident: bool
    registration_flag: bool
    tumor_on_zone: sitk.Image
    zone: sitk.Image
    runtime_s: float
    notes: list[str] = field(default_factory=list)
    rotation_source: str = "none"
    segmentation_source: str = SEGMENTATION_SOURCE
    plan_vs_achieved: object | None = None  # PlanVsAchieved when a planned zone was given

    def to_dict(self) -> dict:
        """Every metric, JSON-ready, units in the key names (the contract of margin.json)."""
        m, u = self.metrics, self.uncertainty
        reg = registration_dict(self.registration)  # status, method, similarity, rigid parameters, QC, ROI
        return {
            "minimal_margin_mm": round(m.minimal_margin_mm, 3),
            # the MAM is the margin map's minimum plus its grid-phase correction (metrics, step 5b)
            "minimal_margin_uncorrected_mm": round(float(m.minimal_margin_uncorrected_mm), 3)
            if m.minimal_margin_uncorrected_mm is not None else None,
            "grid_correction_mm": round(m.grid_correction_mm, 3),
            "grid_correction_se_mm": round(m.grid_correction_se_mm, 3),
            "grid_correction_replicates": m.grid_replicates,
            "coverage_percent": round(m.coverage_percent, 3),
            "shell_coverage_percent": {k: round(v, 3) for k, v in m.shell_coverage_percent.items()},
            "residual_tumor_ml": round(m.residual_tumor_ml, 4),
            "thinnest_point_ras": [round(float(v), 3) for v in m.thinnest_point_ras],
            "margin_ci_mm": [round(u.margin_ci_mm[0], 3), round(u.margin_ci_mm[1], 3)],
            "margin_ci_level_percent": 95,
            "p_margin_ge_threshold": round(u.p_margin_ge_threshold, 4),
            "verdict": self.verdict,
            "verdict_text": self.verdict_text,
            "verdict_confident": self.verdict_confident,
            "threshold_mm": self.threshold_mm,
            "sigma_mm": u.sigma_mm,
            "sigma_source": self.sigma_source,
            "uncertainty": {
                "registration_sigma_mm": u.sigma_mm, "registration_sigma_source": self.sigma_source,
                "rotation_sigma_deg": u.rotation_sigma_deg, "rotation_source": self.rotation_source,
                "tumor_boundary_sigma_mm": u.tumor_boundary_sigma_mm,
                "zone_boundary_sigma_mm": u.zone_boundary_sigma_mm, "segmentation_source": self.segmentation_source,
                "central_interval_mm": [round(u.central_ci_mm[0], 3), round(u.central_ci_mm[1], 3)],
                "interval_widened_to_contain_measurement": u.widened,
                "model": "seeded Monte-Carlo: random rigid misregistration (shift per axis, rotation about the "
                         "tumour centroid) and random offsets of the tumour and zone boundaries along their normals",
            },
            "uncertainty_samples": u.n_samples,
            "uncertainty_seed": u.seed,
            "registration_error_comparable_to_margin": self.registration_flag,
            "registration": reg,
            "tumor_volume_ml": round(m.tumor_volume_ml, 4),
            "ablation_zone_volume_ml": round(m.zone_volume_ml, 4),
            "mean_margin_mm": round(m.mean_margin_mm, 3),
            "median_margin_mm": round(m.median_margin_mm, 3),
            "surface_below_threshold_percent": round(m.surface_margin_below_threshold_percent, 3),
            "histogram": {"edges_mm": [round(float(v), 3) for v in m.histogram_edges_mm],
                          "surface_area_percent": [round(float(v), 4) for v in m.histogram_area_percent]},
            "distance_cap_mm": m.cap_mm,
            "margin_exact_within_cap": m.exact,
            "grid": describe_grid(self.zone),
            "convention": CONVENTION,
            "notes": self.notes + m.notes,
            "runtime_s": round(self.runtime_s, 3),
            **({"plan_vs_achieved": self.plan_vs_achieved.to_dict()} if self.plan_vs_achieved is not None else {}),
        }

    @property
    def warnings(self) -> list[str]:
        """What a user must read with the numbers (imagio.result.StepResult)."""
        return self.notes + self.metrics.notes

    def summary_text(self) -> str:
        """The verdict, then the headline figures with their units (terminal and Slicer panel)."""
        m, u = self.metrics, self.uncertainty
        ci = u.margin_ci_mm
        lines = [self.verdict_text,
                 f"minimal margin {m.minimal_margin_mm:.2f} mm (95% interval {ci[0]:.2f} to {ci[1]:.2f} mm, "
                 f"sigma {u.sigma_mm:g} mm: {self.sigma_source}); "
                 f"P(margin >= {self.threshold_mm:g} mm) = {100 * u.p_margin_ge_threshold:.1f} %",
                 f"coverage {m.coverage_percent:.2f} %, residual tumour {m.residual_tumor_ml:.3f} ml"]
        correction = self.grid_correction_text()
        if correction:
            lines.insert(2, correction)
        lines += [f"note: {n}" for n in self.warnings]
        return "\n".join(lines)

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict:
        """The MRML outputs (new nodes), by role (imagio.result.StepResult)."""
        nodes = make_nodes(scene, self, name or "Margin")
        return {k: getattr(nodes, k) for k in MarginNodes.__dataclass_fields__}

    def grid_correction_text(self) -> str:
        """How the MAM was read: the margin map's minimum plus its grid-phase correction ("" where none was made)."""
        m = self.metrics
        if m.minimal_margin_uncorrected_mm is None:
            return ""
        return (f"Minimal margin {m.minimal_margin_mm:.2f} mm = uncorrected {m.minimal_margin_uncorrected_mm:.2f} mm, "
                f"grid correction {m.grid_correction_mm:+.2f} \u00b1 {m.grid_correction_se_mm:.2f} mm (SE, "
                f"{m.grid_replicates} grid-phase replicates)")

    def table_rows(self) -> list[dict]:
        """(metric, value, unit) rows for a table node or a report."""
        m, u = self.metrics, self.uncertainty
        rows = [
            ("Minimal ablative margin", m.minimal_margin_mm, "mm"),
        ]
        if m.minimal_margin_uncorrected_mm is not None:
            rows += [("Minimal margin, uncorrected (margin map minimum)", m.minimal_margin_uncorrected_mm, "mm"),
                     ("Grid-phase correction", m.grid_correction_mm, "mm"),
                     ("Grid-phase correction SE", m.grid_correction_se_mm, "mm")]
        rows += [
            ("Margin 95% interval low", u.margin_ci_mm[0], "mm"),
            ("Margin 95% interval high", u.margin_ci_mm[1], "mm"),
            (f"P(margin >= {self.threshold_mm:g} mm)", 100.0 * u.p_margin_ge_threshold, "%"),
            ("Tumour coverage", m.coverage_percent, "%"),
        ]
        rows += [(f"Coverage of tumour + {k} mm shell", v, "%") for k, v in m.shell_coverage_percent.items()]
        rows += [
            ("Residual tumour", m.residual_tumor_ml, "ml"),
            ("Tumour volume", m.tumor_volume_ml, "ml"),
            ("Ablation zone volume", m.zone_volume_ml, "ml"),
            ("Mean surface margin", m.mean_margin_mm, "mm"),
            ("Median surface margin", m.median_margin_mm, "mm"),
            (f"Tumour surface with margin < {self.threshold_mm:g} mm", m.surface_margin_below_threshold_percent, "%"),
            ("Threshold", self.threshold_mm, "mm"),
            ("Registration sigma (per axis)", u.sigma_mm, "mm"),
            ("Registration rotation sigma (per axis)", u.rotation_sigma_deg, "deg"),
            ("Tumour boundary sigma", u.tumor_boundary_sigma_mm, "mm"),
            ("Zone boundary sigma", u.zone_boundary_sigma_mm, "mm"),
        ]
        for name, v in zip(("Thinnest point R", "Thinnest point A", "Thinnest point S"), m.thinnest_point_ras,
                           strict=True):
            rows.append((name, float(v), "mm"))
        out = [{"metric": n, "value": f"{float(v):.2f}", "unit": unit} for n, v, unit in rows]
        out.append({"metric": "Verdict", "value": self.verdict, "unit": self.verdict_text})
        return out


@dataclass
class MarginNodes:
    model: object
    color: object
    thinnest: object
    table: object
    histogram_table: object
    plot_chart: object
    segmentation: object | None = None
    plan_table: object | None = None


def _mask_of(x, role: str) -> sitk.Image:
    if isinstance(x, Segment):
        x = x.mask
    if not isinstance(x, sitk.Image):
        raise ImagioError(f"The {role} is not a mask image", "Give a segment or a binary SimpleITK image")
    check_binary(x, role)
    return x if x.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(x, sitk.sitkUInt8)


def _as_mask(x, role: str) -> sitk.Image:
    """The mask image of a Segment or image (checked later by compute_margin)."""
    if isinstance(x, Segment):
        x = x.mask
    if not isinstance(x, sitk.Image):
        raise ImagioError(f"The {role} is not a mask image", "Give a segment or a binary SimpleITK image")
    return x


def _verdict(mam: float, threshold: float, residual_ml: float, ci,
             policy: VerdictPolicy = VERDICT) -> tuple[str, str, bool]:
    if mam < policy.incomplete_below_mm:
        verdict = "incomplete"
        text = (f"Incomplete ablation: {residual_ml:.2f} ml of tumour outside the zone, "
                f"tumour up to {-mam:.1f} mm beyond the zone surface (minimal margin {mam:.1f} mm)")
    elif mam < threshold:
        verdict = "insufficient"
        text = f"Insufficient margin: minimal margin {mam:.1f} mm < {threshold:g} mm"
    else:
        verdict = "sufficient"
        text = f"Sufficient margin: minimal margin {mam:.1f} mm >= {threshold:g} mm"
    confident = bool(ci[0] >= threshold or ci[1] < threshold)
    if not confident:
        text += f"; uncertain: the 95% interval {ci[0]:.1f} to {ci[1]:.1f} mm contains {threshold:g} mm"
    return verdict, text, confident


@dataclass
class MarginInputs:
    """The checked inputs of one assessment (step 1 of :meth:`MarginLogic.assess`)."""

    tumor: sitk.Image  # uint8 0/1, pre-treatment grid
    zone: sitk.Image  # uint8 0/1, post-treatment grid
    pre_ct: sitk.Image | None
    post_ct: sitk.Image | None
    register_mode: str
    threshold_mm: float
    sigma_mm: float | None
    n_samples: int
    seed: int
    organ: sitk.Image | None = None


def check_inputs(tumor, zone, pre_ct, post_ct, register_mode: str, threshold_mm: float, sigma_mm: float | None,
                 n_samples: int, seed: int, organ=None) -> MarginInputs:
    """Step 1: options and masks checked (binary, non-empty; CTs present where a registration needs them)."""
    if register_mode not in MODES:
        raise ImagioError(f"Unknown registration mode '{register_mode}'", f"Use one of: {', '.join(MODES)}")
    if threshold_mm is None or not np.isfinite(threshold_mm) or threshold_mm < 0:
        raise ImagioError(f"Margin threshold {threshold_mm} mm is not valid", "Give a threshold of 0 mm or more")
    if sigma_mm is not None and (not np.isfinite(sigma_mm) or sigma_mm < 0):
        raise ImagioError(f"Sigma {sigma_mm} mm is not valid", "Give a registration uncertainty of 0 mm or more")
    if n_samples < 20:
        raise ImagioError(f"{n_samples} uncertainty samples are too few", "Use at least 20 (default 400)")
    if register_mode == "none":  # compute_margin checks the masks (binary, non-empty) on the common grid
        tumor_m, zone_m = _as_mask(tumor, "tumour"), _as_mask(zone, "ablation zone")
        if tumor_m.GetPixelID() != zone_m.GetPixelID() or tumor_m.GetPixelID() != sitk.sitkUInt8:
            tumor_m, zone_m = _mask_of(tumor_m, "tumour"), _mask_of(zone_m, "ablation zone")
        if pre_ct is not None and post_ct is not None and not bounds_overlap(pre_ct, post_ct):
            raise ImagioError("The pre- and post-treatment CTs do not overlap in space: they are in different "
                              "frames", "Use --register rigid or deformable")
        organ_m = None
    else:
        tumor_m, zone_m = _mask_of(tumor, "tumour"), _mask_of(zone, "ablation zone")
        if pre_ct is None or post_ct is None:
            raise ImagioError(f"Registration '{register_mode}' needs the pre- and post-treatment CTs",
                              "Give both CTs, or use registration 'none' for masks already in one frame")
        if not same_grid(tumor_m, pre_ct) and not bounds_overlap(tumor_m, pre_ct):
            raise ImagioError("The tumour mask lies outside the pre-treatment CT",
                              "Give the tumour segmented on the pre-treatment CT")
        if not same_grid(zone_m, post_ct) and not bounds_overlap(zone_m, post_ct):
            raise ImagioError("The ablation-zone mask lies outside the post-treatment CT",
                              "Give the zone segmented on the post-treatment CT")
        organ_m = _mask_of(organ, "organ") if organ is not None else None
    return MarginInputs(tumor_m, zone_m, pre_ct, post_ct, register_mode, float(threshold_mm),
                        None if sigma_mm is None else float(sigma_mm), int(n_samples), int(seed), organ_m)


def register_step(inp: MarginInputs, landmarks_pre_ras=None, landmarks_post_ras=None,
                  progress=None, accept_registration: bool = False) -> RegistrationResult | None:
    """Step 2: the pre- to post-treatment registration (None for mode "none").

    A registration failing its quality control is refused (ImagioError) unless ``accept_registration``.
    """
    if inp.register_mode == "none":
        return None
    return register(inp.pre_ct, inp.post_ct, inp.register_mode, inp.tumor, inp.zone, landmarks_pre_ras,
                    landmarks_post_ras, seed=inp.seed, progress=progress, organ_post=inp.organ,
                    accept=accept_registration)


def align_tumor(inp: MarginInputs, reg: RegistrationResult | None) -> tuple[sitk.Image, list[str]]:
    """Step 3: the tumour on the zone's grid (moved by the registration); refuses a tumour the zone image misses."""
    notes: list[str] = []
    tumor_m, zone_m = inp.tumor, inp.zone
    tumor_z = bring_tumor_to_zone(tumor_m, zone_m, reg)
    if reg is not None or not same_grid(tumor_m, zone_m):
        before = float(np.count_nonzero(sitk.GetArrayViewFromImage(tumor_m))) * float(np.prod(tumor_m.GetSpacing()))
        after = float(np.count_nonzero(sitk.GetArrayViewFromImage(tumor_z))) * float(np.prod(tumor_z.GetSpacing()))
        if before == 0:
            raise ImagioError("The tumour segmentation is empty", "Choose a tumour segment that contains voxels")
        if after == 0:
            raise ImagioError("The tumour falls outside the ablation-zone image after alignment",
                              "Check that the masks belong to the same patient and the registration")
        if after < 0.9 * before:
            raise ImagioError(f"Only {100 * after / before:.0f} % of the tumour volume lies inside the "
                              "ablation-zone image",
                              "Give an ablation-zone segmentation whose image covers the whole tumour")
        if abs(after - before) > 0.05 * before:
            notes.append(f"Resampling the tumour onto the zone grid changed its volume by "
                         f"{100 * (after - before) / before:+.1f} %")
    return tumor_z, notes


def measure(tumor_z: sitk.Image, zone: sitk.Image, threshold_mm: float, progress=None) -> tuple[MarginMetrics,
                                                                                             list[str]]:
    """Step 4: the margin metrics (:func:`.metrics.compute_margin`) and what a user must know about them."""
    metrics = compute_margin(tumor_z, zone, threshold_mm, progress=progress)
    notes = []
    if metrics.coverage_percent == 0.0:
        notes.append("The ablation zone does not touch the tumour: check the registration and the segments")
    return metrics, notes


def choose_sigma(sigma_mm: float | None, reg: RegistrationResult | None) -> tuple[float, str]:
    """Step 5a: the registration uncertainty (mm per axis) and where it comes from."""
    if sigma_mm is not None:
        return float(sigma_mm), "given by the user"
    if reg is not None and reg.error_estimate_mm is not None:
        return sigma_from_tre_rms(reg.error_estimate_mm), (
            f"landmark registration error: RMS TRE {reg.error_estimate_mm:.2f} mm / sqrt(3) per axis")
    return DEFAULT_SIGMA_MM, (f"default: published mean TRE 1.62 mm as a 3D Gaussian error ({DEFAULT_SIGMA_MM:g} mm "
                              f"per axis); {TRE_SOURCE}")


def estimate_uncertainty(metrics: MarginMetrics, threshold_mm: float, sigma: float, n_samples: int,
                         seed: int, rotation_sigma_deg: float = 0.0,
                         tumor_boundary_sigma_mm: float = SEGMENTATION_SIGMA_MM,
                         zone_boundary_sigma_mm: float = SEGMENTATION_SIGMA_MM) -> tuple[MarginUncertainty, list[str]]:
    """Step 5b: interval of the margin (always containing it) and P(margin >= threshold) (:mod:`.uncertainty`)."""
    unc = margin_uncertainty(metrics, threshold_mm, sigma, n_samples=n_samples, seed=seed,
                             rotation_sigma_deg=rotation_sigma_deg, tumor_boundary_sigma_mm=tumor_boundary_sigma_mm,
                             zone_boundary_sigma_mm=zone_boundary_sigma_mm)
    notes = []
    if unc.widened:
        side = "above" if metrics.minimal_margin_mm > unc.central_ci_mm[1] else "below"
        notes.append(f"The measured margin lies {side} the central 95% range of the samples "
                     f"({unc.central_ci_mm[0]:.2f} to {unc.central_ci_mm[1]:.2f} mm): a misregistration in any "
                     "direction thins a well-centred zone's thinnest side, so the measurement is the best case; the "
                     "interval is widened to contain it")
    return unc, notes


def decide(metrics: MarginMetrics, unc: MarginUncertainty, threshold_mm: float, sigma: float,
           reg: RegistrationResult | None, policy: VerdictPolicy = VERDICT) -> tuple[str, str, bool, bool, list[str]]:
    """Step 6: verdict, its text, whether the interval is clear of the threshold, the registration flag."""
    verdict, text, confident = _verdict(metrics.minimal_margin_mm, threshold_mm, metrics.residual_tumor_ml,
                                        unc.margin_ci_mm, policy)
    reg_err = reg.error_estimate_mm if (reg is not None and reg.error_estimate_mm is not None) else sigma
    flag = bool(reg_err >= policy.registration_flag_ratio * abs(metrics.minimal_margin_mm))
    notes = []
    if flag:
        notes.append(f"Registration error ({reg_err:.1f} mm) is comparable to the margin "
                     f"({metrics.minimal_margin_mm:.1f} mm): read the margin with its interval")
    return verdict, text, confident, flag, notes


def compare_with_plan(metrics: MarginMetrics, tumor_z: sitk.Image, zone: sitk.Image, planned: sitk.Image,
                      reg: RegistrationResult | None, threshold_mm: float):
    """Step 7 (optional): the planned zone (pre-treatment frame, moved like the tumour) against the achieved zone."""
    planned_z = bring_tumor_to_zone(planned, zone, reg)
    if not np.any(sitk.GetArrayViewFromImage(planned_z)):
        raise ImagioError("The planned zone falls outside the ablation-zone image",
                          "Give the planned zone made on the pre-treatment CT of this patient")
    return compare_plan(metrics, tumor_z, zone, planned_z, threshold_mm)


def assess(tumor, zone, pre_ct: sitk.Image | None = None, post_ct: sitk.Image | None = None,
           register_mode: str = "none", threshold_mm: float = VERDICT.threshold_mm, sigma_mm: float | None = None,
           landmarks_pre_ras=None, landmarks_post_ras=None, n_samples: int = 400, seed: int = 0,
           progress=None, organ=None, rotation_sigma_deg: float | None = None,
           tumor_boundary_sigma_mm: float | None = None, zone_boundary_sigma_mm: float | None = None,
           planned_zone=None, accept_registration: bool = False) -> MarginResult:
    """Assess the margin of ``tumor`` (on the pre-treatment grid) by ``zone`` (post-treatment grid).

    ``tumor``/``zone``: :class:`imagio.io.Segment` or binary SimpleITK images.
    ``register_mode``: "none" (masks share a frame), "rigid" or "deformable" (needs both CTs).
    ``organ``: optional organ segment/mask on the post-treatment CT that restricts the registration.
    ``accept_registration``: use a registration that fails its quality control (similarity worse,
    diverged, not the same anatomy) instead of refusing it; recorded in ``registration.override``.
    ``planned_zone``: optional planned ablation zone on the pre-treatment CT (IMAGIOAblationZone): adds
    ``plan_vs_achieved`` (:mod:`.plan_vs_achieved`).
    Uncertainty: ``sigma_mm`` (registration, per axis; default landmark TRE or the published TRE),
    ``rotation_sigma_deg`` (default 0), ``tumor_boundary_sigma_mm``/``zone_boundary_sigma_mm`` (default the
    value measured on the LIDC-0314 readers).

    The named steps, each a module-level function: :func:`check_inputs`, :func:`register_step`,
    :func:`align_tumor`, :func:`measure`, :func:`choose_sigma`, :func:`estimate_uncertainty`, :func:`decide`,
    :func:`compare_with_plan`.
    """
    t0 = time.perf_counter()
    progress = ensure(progress)
    for name, v in (("Rotation sigma", rotation_sigma_deg), ("Tumour boundary sigma", tumor_boundary_sigma_mm),
                    ("Zone boundary sigma", zone_boundary_sigma_mm)):
        if v is not None and (not np.isfinite(v) or v < 0):
            raise ImagioError(f"{name} {v} is not valid", "Give 0 or more")
    inp = check_inputs(tumor, zone, pre_ct, post_ct, register_mode, threshold_mm, sigma_mm, n_samples, seed,
                       organ)
    planned_m = _mask_of(planned_zone, "planned zone") if planned_zone is not None else None
    reg = register_step(inp, landmarks_pre_ras, landmarks_post_ras, progress=progress.sub(0.0, 0.6),
                        accept_registration=accept_registration)
    tumor_z, notes = align_tumor(inp, reg)
    metrics, more = measure(tumor_z, inp.zone, inp.threshold_mm, progress=progress.sub(0.6, 0.85))
    notes += more
    sigma, source = choose_sigma(inp.sigma_mm, reg)
    if rotation_sigma_deg is not None:
        rot, rot_source = float(rotation_sigma_deg), "given by the user"
    else:
        rot, rot_source = 0.0, ("0: not modelled without landmarks or a given value (the published TRE is "
                                "measured at the target and holds the rotation's effect there)")
    seg_t = SEGMENTATION_SIGMA_MM if tumor_boundary_sigma_mm is None else float(tumor_boundary_sigma_mm)
    seg_z = SEGMENTATION_SIGMA_MM if zone_boundary_sigma_mm is None else float(zone_boundary_sigma_mm)
    seg_source = SEGMENTATION_SOURCE if (tumor_boundary_sigma_mm is None and zone_boundary_sigma_mm is None) \
        else "given by the user" + ("" if tumor_boundary_sigma_mm is not None and zone_boundary_sigma_mm is not None
                                    else f" (the other: {SEGMENTATION_SOURCE})")
    progress.update(0.88, "Uncertainty")
    unc, more = estimate_uncertainty(metrics, inp.threshold_mm, sigma, inp.n_samples, inp.seed, rot, seg_t, seg_z)
    notes += more
    verdict, text, confident, flag, more = decide(metrics, unc, inp.threshold_mm, sigma, reg)
    notes += more
    pva = None
    if planned_m is not None:
        progress.update(0.94, "Plan versus achieved")
        pva = compare_with_plan(metrics, tumor_z, inp.zone, planned_m, reg, inp.threshold_mm)
    progress.update(1.0, "Margin assessment done")
    return MarginResult(metrics, unc, reg, inp.threshold_mm, source, verdict, text, confident, flag,
                        tumor_z, inp.zone, time.perf_counter() - t0, notes, rot_source, seg_source, pva)


def panel_text(result: MarginResult) -> str:
    """The panel text: verdict, figures with units, the uncertainty's sources, registration and plan lines."""
    d = result.to_dict()
    u = d["uncertainty"]
    lines = [result.summary_text(),
             f"Uncertainty: registration {u['registration_sigma_mm']:g} mm per axis ({u['registration_sigma_source']}); "
             f"rotation {u['rotation_sigma_deg']:g} deg ({u['rotation_source']}); boundaries tumour "
             f"{u['tumor_boundary_sigma_mm']:g} mm, zone {u['zone_boundary_sigma_mm']:g} mm "
             f"({u['segmentation_source']})"]
    reg = d.get("registration", {})
    if reg.get("mode", "none") != "none":
        lines.append(f"Registration ({reg['mode']}): {reg.get('status', '')}; similarity "
                     f"{reg.get('similarity_before', float('nan')):.3f} before, "
                     f"{reg.get('similarity_after', float('nan')):.3f} after"
                     + "".join(f"; accepted although {f}" for f in reg.get("qc_failures", [])))
    if "plan_vs_achieved" in d:
        pva = d["plan_vs_achieved"]
        lines.append(f"Plan versus achieved: {pva['planned_not_ablated_ml']:.2f} ml planned but not ablated; "
                     f"{pva['surface_short_of_plan_percent']:.1f} % of the tumour surface short of the plan by "
                     f"more than {pva['shortfall_tolerance_mm']:g} mm")
    return "\n".join(lines)


class MarginLogic:
    """Margin assessment working on ``scene`` (a vtkMRMLScene)."""

    def __init__(self, scene=None):
        from imagio.scene import get_scene

        self.scene = get_scene(scene)

    def assess(self, tumor, zone, pre_ct: sitk.Image | None = None, post_ct: sitk.Image | None = None,
               **kwargs) -> MarginResult:
        """:func:`assess` (image level; this Logic's scene is only used by :meth:`add_to_scene`)."""
        return assess(tumor, zone, pre_ct, post_ct, **kwargs)

    def assess_nodes(self, tumor_segmentation_node, tumor_segment_id: str, zone_segmentation_node,
                     zone_segment_id: str, pre_ct_node=None, post_ct_node=None, **kwargs) -> MarginResult:
        """``assess`` on MRML nodes (what the Slicer module calls)."""
        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node

        def pick(node, sid, ref, role):
            if node is None:
                raise ImagioError(f"No {role} segmentation chosen", f"Choose the {role} segmentation")
            if not sid:
                raise ImagioError(f"No {role} segment chosen in '{node.GetName()}'", f"Choose the {role} segment")
            if node.GetSegmentation().GetSegment(sid) is None:  # by ID only: never another segment instead
                raise ImagioError(f"The {role} segment '{sid}' is not in '{node.GetName()}'",
                                  f"Choose the {role} segment again")
            return segments_from_segmentation_node(node, ref, segment_ids=[sid])[0]

        planned_node = kwargs.pop("planned_zone_node", None)
        planned_id = kwargs.pop("planned_zone_segment_id", None)
        if planned_node is not None:
            kwargs["planned_zone"] = pick(planned_node, planned_id, pre_ct_node, "planned zone")
        pre = image_from_volume_node(pre_ct_node) if pre_ct_node is not None else None
        post = image_from_volume_node(post_ct_node) if post_ct_node is not None else None
        tumor = pick(tumor_segmentation_node, tumor_segment_id, pre_ct_node, "tumour")
        zone = pick(zone_segmentation_node, zone_segment_id, post_ct_node, "ablation zone")
        return self.assess(tumor, zone, pre, post, **kwargs)

    def add_to_scene(self, result: MarginResult, name: str = "Margin") -> MarginNodes:
        """New MRML nodes for ``result`` in this Logic's scene (never modifies existing nodes)."""
        return make_nodes(self.scene, result, name)


def make_nodes(scene, result: MarginResult, name: str = "Margin") -> MarginNodes:
    """New MRML nodes for ``result`` in ``scene`` (never modifies existing nodes)."""
    import slicer

    from imagio.mrml import add_color_map, add_fiducials, add_model, add_table, segmentation_node_from_segments

    m = result.metrics
    thr = result.threshold_mm
    poly = tumour_surface_polydata(result)
    top = max(2.0 * thr, 10.0)
    color = add_color_map(scene, f"{name} colour map (mm)", [
        (-top, 0.5, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.5 * thr, 1.0, 0.55, 0.0), (thr, 1.0, 1.0, 0.0),
        (1.5 * thr, 0.4, 0.85, 0.2), (top, 0.0, 0.6, 0.2)])
    model = add_model(scene, f"{name} tumour surface (margin mm)", poly, scalars="margin_mm", color_node=color,
                      scalar_range=(-top, top))
    thinnest = add_fiducials(scene, f"{name} thinnest point", [m.thinnest_point_ras],
                             labels=[f"MAM {m.minimal_margin_mm:.1f} mm"])
    table = add_table(scene, f"{name} metrics", result.table_rows())
    centers = 0.5 * (m.histogram_edges_mm[:-1] + m.histogram_edges_mm[1:])
    hist_table = add_table(scene, f"{name} margin histogram",
                           [{"margin_mm": float(c), "surface_area_percent": float(v)}
                            for c, v in zip(centers, m.histogram_area_percent, strict=True)])
    series = slicer.vtkMRMLPlotSeriesNode()
    series.SetName(scene.GenerateUniqueName(f"{name} margin histogram"))
    scene.AddNode(series)
    series.SetAndObserveTableNodeID(hist_table.GetID())
    series.SetXColumnName("margin_mm")
    series.SetYColumnName("surface_area_percent")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    chart = slicer.vtkMRMLPlotChartNode()
    chart.SetName(scene.GenerateUniqueName(f"{name} margin histogram chart"))
    scene.AddNode(chart)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Tumour surface margin")
    chart.SetXAxisTitle("signed margin (mm)")
    chart.SetYAxisTitle("tumour surface (%)")
    seg_node = segmentation_node_from_segments(scene, [
        Segment("tumour (on zone grid)", result.tumor_on_zone, (0.9, 0.2, 0.2), 1),
        Segment("ablation zone", result.zone, (0.2, 0.6, 0.9), 2)], f"{name} masks")
    plan_table = None
    if result.plan_vs_achieved is not None:
        plan_table = add_table(scene, f"{name} plan vs achieved (mm, mm2, %)", result.plan_vs_achieved.table_rows())
    return MarginNodes(model, color, thinnest, table, hist_table, chart, seg_node, plan_table)


def tumour_surface_polydata(result: MarginResult):
    """The tumour surface mesh the margins were measured on (RAS mm) with ``margin_mm`` per point and, with a
    plan, ``achieved_minus_planned_mm`` and ``planned_margin_mm``."""
    import vtk
    from vtk.util import numpy_support

    m = result.metrics
    poly = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    pts.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(m.surface_ras(result.zone), float), deep=True))
    poly.SetPoints(pts)
    cells = vtk.vtkCellArray()
    tris = np.ascontiguousarray(m.surface_triangles, np.int64)
    offsets = np.arange(0, 3 * len(tris) + 1, 3, dtype=np.int64)
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_support.numpy_to_vtkIdTypeArray(tris.ravel(), deep=True))
    poly.SetPolys(cells)
    arrays = {"margin_mm": m.surface_margin_mm}
    if result.plan_vs_achieved is not None:
        arrays["achieved_minus_planned_mm"] = result.plan_vs_achieved.achieved_minus_planned_mm
        arrays["planned_margin_mm"] = result.plan_vs_achieved.planned_margin_mm
    for key, values in arrays.items():
        arr = numpy_support.numpy_to_vtk(np.asarray(values, np.float32), deep=True)
        arr.SetName(key)
        poly.GetPointData().AddArray(arr)
    poly.GetPointData().SetActiveScalars("margin_mm")
    normals = vtk.vtkPolyDataNormals()  # the mesh's own vertices (and their values) are kept: no splitting
    normals.SetInputData(poly)
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.Update()
    return normals.GetOutput()
