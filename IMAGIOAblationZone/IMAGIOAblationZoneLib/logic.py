"""AblationZoneLogic: device zones, bioheat zones, probe plans and re-plans on a vtkMRMLScene (no Qt, no global
scene).

Masks are SimpleITK images (LPS) on one reference grid; every point in or out is RAS mm. A probe is
(tip_ras, entry_ras); in a markups line, control point 0 is the entry (skin) and control point 1 the tip.
Each operation returns one typed result (``results``): ``table_zone`` / ``bioheat_zone`` / ``bioheat_zones``
-> ZoneResult, ``plan`` -> PlanResult, ``replan`` -> ReplanResult; ``*_nodes`` variants take MRML nodes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.jobs import Job
from imagio.progress import Progress, ensure

from . import bioheat as bh
from .devices import TISSUE_CHOICES, Device, ZoneSetting, get_device, load_library, scaled, setting_warnings
from .margins import Surface, mask_margin, mask_surface, table_margin, target_mask, zones_mask
from .planner import PathChecker, _enclosing_centre, _frame, candidate_directions, place_probes, plan_ablation
from .results import TUMOR_COLOR, ZONE_COLOR, PlanResult, Probe, ReplanResult, ZoneResult
from .zone import EllipsoidZone, crop, mask_box, probe_axis, sub_grid, union_box

__all__ = ["AblationZoneLogic", "ZoneImageLogic", "ZoneContext", "ZoneResult", "PlanResult", "ReplanResult", "Probe", "TUMOR_COLOR",
           "ZONE_COLOR", "resolve_tissue", "body_from_ct", "check_number", "segmentation_stamp", "write_zone_segment", "ModuleSession", "run_replan"]

#: The job functions the Slicer widget runs in a background process (imagio.jobs; IMAGIOAblationZoneLib.jobs).
PLAN_JOB = "IMAGIOAblationZoneLib.jobs.plan"
BIOHEAT_JOB = "IMAGIOAblationZoneLib.jobs.bioheat_zone"
REPLAN_JOB = "IMAGIOAblationZoneLib.jobs.replan"

TISSUE_WORDS = {"liver": ("liver", "hepat"), "lung": ("lung", "pulmon", "bronch"), "kidney": ("kidney", "renal"),
                "bone": ("bone", "osse", "vertebr", "skelet"), "soft-tissue": ("soft tissue", "soft-tissue", "sarcoma",
                                                                               "muscle")}


# ---------------------------------------------------------------------------------------------- input checks
def check_number(value, name: str, unit: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> float:
    """``value`` as a finite float within [lo, hi] (or (lo, hi] with ``lo_open``), else ImagioError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ImagioError(f"{name} '{value}' is not a number", f"Give {name} in {unit}") from None
    if not math.isfinite(v):
        raise ImagioError(f"{name} {value} is not a finite number", f"Give a finite {name} in {unit}")
    if lo is not None and (v < lo or (lo_open and v <= lo)) or hi is not None and v > hi:
        rng = f"{'more than' if lo_open else 'at least'} {lo:g} {unit}" if hi is None else (
            f"{'more than ' if lo_open else ''}{lo:g} to {hi:g} {unit}")
        raise ImagioError(f"{name} {v:g} {unit} is out of range", f"Give {name} {rng}")
    return v


def resolve_tissue(tissue: str | None, segment_name: str = "", terminology: str = "") -> tuple[str, str, list[str]]:
    """(tissue, how it was chosen, warnings): the given one, else from the segment's terminology or name, else
    liver with a warning."""
    if tissue:
        t = str(tissue).strip().lower()
        if t not in TISSUE_CHOICES:
            raise ImagioError(f"Unknown tissue '{tissue}'", f"Use one of {', '.join(TISSUE_CHOICES)}")
        return t, "given", []
    for text, how in ((terminology, "the tumour segment's terminology"), (segment_name, "the tumour segment's name")):
        low = (text or "").lower()
        hits = [t for t, words in TISSUE_WORDS.items() if any(w in low for w in words)]
        if len(hits) == 1:
            return hits[0], f"{how} ('{text[:60]}')", []
    return "liver", "assumed", ["no tissue given and none found in the tumour segment's name or terminology: liver "
                                "assumed (device tables and bioheat properties of liver); give --tissue"]


def body_from_ct(ct: sitk.Image, threshold_hu: float = -400.0) -> np.ndarray:
    """Body outline from a CT: above ``threshold_hu``, the largest component, holes filled slice by slice."""
    m = sitk.Cast(sitk.Cast(ct, sitk.sitkFloat32) > float(threshold_hu), sitk.sitkUInt8)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(m), sortByObjectSize=True)
    arr = sitk.GetArrayFromImage(cc) == 1
    out = np.empty_like(arr)
    for k in range(arr.shape[0]):
        out[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(arr[k].astype(np.uint8)))) > 0
    return out


@dataclass
class ZoneContext:
    """What a live update needs, computed once per tumour / structures / grid."""

    grid: sitk.Image
    margin_mm: float = 5.0
    tissue: str = "liver"
    tissue_how: str = "assumed"
    tissue_warnings: list[str] = field(default_factory=list)
    tumor: np.ndarray | None = None  # bool [k, j, i]
    tumor_count: int = 0
    tumor_surface: Surface | None = None
    target: np.ndarray | None = None  # tumour + margin
    target_count: int = 0
    others: dict[str, np.ndarray] = field(default_factory=dict)
    other_counts: dict[str, int] = field(default_factory=dict)

    def inside(self, point_ras) -> bool:
        ijk = geometry.ras_to_ijk(self.grid, point_ras)
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.array(self.grid.GetSize()) - 0.5))


def _as_array(mask: sitk.Image | np.ndarray, grid: sitk.Image, what: str) -> np.ndarray:
    if isinstance(mask, sitk.Image):
        geometry.require_same_grid(mask, grid, what, "reference image")
        return sitk.GetArrayFromImage(mask) > 0
    arr = np.asarray(mask, bool)
    if arr.shape != grid.GetSize()[::-1]:
        raise ImagioError(f"The {what} mask has shape {arr.shape}, the grid {grid.GetSize()[::-1]}",
                          "Give masks on the reference grid")
    return arr


def default_grid_around(tip_ras, entry_ras, setting: ZoneSetting, spacing_mm: float = 1.0, pad_mm: float = 20.0):
    """Axis-aligned grid around a zone, for zones without a CT or segmentation."""
    z = EllipsoidZone.from_probe(tip_ras, entry_ras, setting)
    r = max(z.semi_long_mm, z.semi_short_mm) + pad_mm
    lo = z.centre_ras - r
    n = int(np.ceil(2 * r / spacing_mm)) + 1
    # LPS-aligned like a CT series
    return geometry.make_image([n, n, n], [spacing_mm] * 3, origin_ras=[lo[0] + 2 * r, lo[1] + 2 * r, lo[2]],
                               direction_ras=geometry.CT_AXES_RAS)


class ZoneImageLogic:
    """The image-level operations of IMAGIOAblationZone (no scene, no Slicer, no VTK): what a background job runs."""

    def __init__(self, library_path=None):
        self.library_path = library_path
        self.library = load_library(library_path)

    # ------------------------------------------------------------------ devices
    def device(self, device_id: str) -> Device:
        return get_device(device_id, self.library)

    def setting(self, device_id: str, power_w: float, time_s: float,
                allow_unsourced: bool = False) -> tuple[Device, ZoneSetting]:
        dev = self.device(device_id)
        check_number(power_w, "Power", "W", 0.0, 1000.0)
        check_number(time_s, "Time", "s", 0.0, 7200.0, lo_open=True)
        return dev, dev.setting(power_w, time_s, allow_unsourced)

    # ------------------------------------------------------------------ context
    def prepare(self, grid: sitk.Image, tumor: sitk.Image | np.ndarray | None = None,
                others: dict[str, sitk.Image | np.ndarray] | None = None, margin_mm: float = 5.0,
                tissue: str | None = None, tumor_name: str = "", terminology: str = "") -> ZoneContext:
        """Cache the tumour, its surface, tumour + margin and other structures on ``grid`` for fast zone updates."""
        margin_mm = check_number(margin_mm, "Margin", "mm", 0.0, 30.0)
        t_name, how, warns = resolve_tissue(tissue, tumor_name, terminology)
        ctx = ZoneContext(grid=grid, margin_mm=float(margin_mm), tissue=t_name, tissue_how=how, tissue_warnings=warns)
        if tumor is not None:
            t = _as_array(tumor, grid, "tumour")
            if not t.any():
                raise ImagioError("The tumour segment is empty", "Choose the segment that contains the tumour")
            ctx.tumor = t
            ctx.tumor_count = int(t.sum())
            if t[0].any() or t[-1].any() or t[:, 0].any() or t[:, -1].any() or t[:, :, 0].any() or t[:, :, -1].any():
                ctx.tissue_warnings.append("the tumour touches the image edge: what lies beyond (tumour, structures "
                                           "to avoid, the margin there) is not seen")
            ctx.tumor_surface = mask_surface(t, grid)
            ctx.target = target_mask(t, grid, margin_mm)
            ctx.target_count = int(ctx.target.sum())
        for name, m in (others or {}).items():
            arr = _as_array(m, grid, name)
            ctx.others[name] = arr
            ctx.other_counts[name] = int(arr.sum())
        return ctx

    # ------------------------------------------------------------------ metrics
    def _metrics(self, ctx: ZoneContext, box, sub: np.ndarray, margin_fn) -> dict:
        vox_ml = geometry.voxel_volume_ml(ctx.grid)
        out = {"zone_volume_ml": round(float(sub.sum()) * vox_ml, 3)}
        if ctx.tumor is not None:
            if box is None:
                cov = cov_m = 0.0
                inside_t = 0
            else:
                z = sub.astype(bool)
                cov = 100.0 * float((crop(ctx.tumor, box) & z).sum()) / ctx.tumor_count
                inside_t = int((crop(ctx.target, box) & z).sum())
                cov_m = 100.0 * inside_t / ctx.target_count
            margin = margin_fn()
            out.update({"coverage_percent": round(cov, 3), "margin_coverage_percent": round(cov_m, 3),
                        **margin.as_dict(), "margin_mm": ctx.margin_mm,
                        "tumor_volume_ml": round(ctx.tumor_count * vox_ml, 3),
                        "residual_target_ml": round((ctx.target_count - inside_t) * vox_ml, 3)})
        fr = {}
        for name, arr in ctx.others.items():
            n = ctx.other_counts[name]
            inside = 0 if box is None or n == 0 else int((crop(arr, box) & sub.astype(bool)).sum())
            fr[name] = round(100.0 * inside / n, 3) if n else 0.0
        out["structures_in_zone_percent"] = fr
        out["tissue"] = ctx.tissue
        out["tissue_from"] = ctx.tissue_how
        return out

    # ------------------------------------------------------------------ zones
    def _check_probe(self, ctx: ZoneContext, tip_ras, entry_ras):
        tip = np.asarray(tip_ras, float)
        entry = np.asarray(entry_ras, float)
        if tip.shape != (3,) or entry.shape != (3,) or not (np.all(np.isfinite(tip)) and np.all(np.isfinite(entry))):
            raise ImagioError("The probe needs a tip and an entry point (R, A, S in mm)", "Place both points")
        probe_axis(tip, entry)  # refuses coincident points
        if not ctx.inside(tip):
            lo, hi = geometry.physical_bounds_ras(ctx.grid)
            raise ImagioError(
                f"The probe tip ({tip[0]:.1f}, {tip[1]:.1f}, {tip[2]:.1f}) RAS mm lies outside the image "
                f"(R {lo[0]:.0f}..{hi[0]:.0f}, A {lo[1]:.0f}..{hi[1]:.0f}, S {lo[2]:.0f}..{hi[2]:.0f} mm)",
                "Place the tip inside the image, in the target")
        return tip, entry

    def _setting_warnings(self, dev: Device, settings: list[ZoneSetting], ctx: ZoneContext) -> list[str]:
        w = list(ctx.tissue_warnings)
        seen = set()
        for s in settings:
            if s.label in seen:
                continue
            seen.add(s.label)
            w += setting_warnings(dev, s, ctx.tissue)
            if s.interpolated:
                w.append(s.note)
        return w

    def table_zone(self, ctx: ZoneContext, tip_ras, entry_ras, device_id: str, power_w: float, time_s: float,
                   allow_unsourced: bool = False) -> ZoneResult:
        """The device-table ellipsoid for this probe, with coverage and margins. Only its bounding box is rasterised."""
        tip, entry = self._check_probe(ctx, tip_ras, entry_ras)
        dev, s = self.setting(device_id, power_w, time_s, allow_unsourced)
        return self.table_zones(ctx, [Probe(tip, entry, s)], dev)

    def table_zones(self, ctx: ZoneContext, probes: list[Probe], dev: Device) -> ZoneResult:
        """The union of the table ellipsoids of ``probes`` (each with its own setting), coverage and margins."""
        if not probes:
            raise ImagioError("No probe given", "Place at least one probe")
        for p in probes:
            self._check_probe(ctx, p.tip_ras, p.entry_ras)
        zones = [p.zone() for p in probes]
        parts = [z.rasterise_box(ctx.grid) for z in zones]
        box = union_box([b for b, _ in parts])
        sub = np.zeros((0, 0, 0), np.uint8)
        if box is not None:
            sub = np.zeros((box[1] - box[0], box[3] - box[2], box[5] - box[4]), np.uint8)
            for b, m in parts:
                if b is not None:
                    sub[b[0] - box[0]:b[1] - box[0], b[2] - box[2]:b[3] - box[2], b[4] - box[4]:b[5] - box[4]] |= m
        margin = {"m": None}

        def margin_fn():
            margin["m"] = table_margin(zones, ctx.tumor_surface)
            return margin["m"]

        m = self._metrics(ctx, box, sub, margin_fn)
        m.update(self._describe(dev, probes, "table"))
        if len(zones) == 1:
            m["zone_axes_mm"] = zones[0].axes_mm
            m["zone_centre_ras"] = [round(float(v), 3) for v in zones[0].centre_ras]
        warns = self._setting_warnings(dev, [p.setting for p in probes], ctx)
        return ZoneResult("table", dev, probes, ctx.grid, box, sub, m, warns, zones, None, margin["m"])

    @staticmethod
    def _describe(dev: Device, probes: list[Probe], model: str) -> dict:
        out = {"model": model, "device": dev.id, "device_name": dev.name, "modality": dev.modality,
               "tip_reference": dev.tip_reference, "probe_count": len(probes),
               "probes": [p.as_dict() for p in probes],
               "settings_provenance": {p.setting.label: p.setting.provenance() for p in probes}}
        if len(probes) == 1:
            p = probes[0]
            s = p.setting
            out.update({"power_w": s.power_w, "time_s": s.time_s, "interpolated": s.interpolated,
                        "setting_note": s.note or "table setting",
                        "tip_ras": [round(float(v), 3) for v in p.tip_ras],
                        "entry_ras": [round(float(v), 3) for v in p.entry_ras]})
        return out

    def bioheat_zone(self, ctx: ZoneContext, tip_ras, entry_ras, device_id: str, power_w: float, time_s: float,
                     vessels: sitk.Image | np.ndarray | None = None, perfusion: bool = True, criterion: str = "isotherm",
                     tissue_labels: dict[str, sitk.Image | np.ndarray] | None = None, pad_mm: float = 15.0,
                     allow_unsourced: bool = False, progress: Progress | None = None) -> ZoneResult:
        """Pennes bioheat zone for one probe; the source is calibrated to the device table (see bioheat)."""
        tip, entry = self._check_probe(ctx, tip_ras, entry_ras)
        dev, s = self.setting(device_id, power_w, time_s, allow_unsourced)
        return self.bioheat_zones(ctx, [Probe(tip, entry, s)], dev, vessels, perfusion, criterion, tissue_labels,
                                  pad_mm, progress)

    def bioheat_zones(self, ctx: ZoneContext, probes: list[Probe], dev: Device,
                      vessels: sitk.Image | np.ndarray | None = None, perfusion: bool = True,
                      criterion: str = "isotherm", tissue_labels: dict[str, sitk.Image | np.ndarray] | None = None,
                      pad_mm: float = 15.0, progress: Progress | None = None) -> ZoneResult:
        """Pennes bioheat zone of all ``probes`` at once: their heat sources add up (combined heating), each
        switched off after its own time, on one grid holding every zone."""
        progress = ensure(progress)
        if not probes:
            raise ImagioError("No probe given", "Place at least one probe")
        if dev.modality == "cryo":
            raise ImagioError(f"The bioheat model heats; device '{dev.id}' is a cryoprobe",
                              "Use --model table for cryoablation")
        for p in probes:
            self._check_probe(ctx, p.tip_ras, p.entry_ras)
        sources = [bh.calibrate_source(dev, p.setting, progress=progress.sub(0.0, 0.15)) for p in probes]
        tables = [p.zone() for p in probes]
        boxes = [EllipsoidZone(t.centre_ras, t.axis_ras, t.semi_long_mm + pad_mm, t.semi_short_mm + pad_mm)
                 .index_box(ctx.grid, pad=1) for t in tables]
        box = union_box(boxes)
        sub = sub_grid(ctx.grid, box)
        shape = sub.GetSize()[::-1]
        host = ctx.tissue
        names = list(dict.fromkeys([host, "soft-tissue", "liver", "lung", "kidney", "bone", "blood"]))
        label_of = {n: i for i, n in enumerate(names)}
        tissue_of_label = {i: bh.TISSUES[n] for n, i in label_of.items()}
        tissue_of_label[len(names)] = bh.tumour_tissue(host)
        labels = np.full(shape, label_of[host], np.uint8)
        for name, m in (tissue_labels or {}).items():
            if name not in bh.TISSUES:
                raise ImagioError(f"Unknown tissue '{name}'", f"Use one of {', '.join(bh.TISSUES)}")
            labels[crop(_as_array(m, ctx.grid, name), box)] = label_of[name]
        if ctx.tumor is not None:
            labels[crop(ctx.tumor, box)] = len(names)
        vessel_arr = None
        if vessels is not None:
            vessel_arr = crop(_as_array(vessels, ctx.grid, "vessels"), box).copy()
            labels[vessel_arr] = label_of["blood"]
        k, rc, w = bh.tissue_maps(labels, tissue_of_label, perfusion_scale=1.0 if perfusion else 0.0)
        q = [(src.density(sub, p.tip_ras, p.entry_ras, p.setting.power_w), p.setting.time_s)
             for src, p in zip(sources, probes, strict=True)]
        duration = max(p.setting.time_s for p in probes)
        t0 = time.perf_counter()
        heat_centre = [p.tip_ras - src.centre_back_mm * t.axis_ras for p, src, t in zip(probes, sources, tables, strict=True)]
        res = bh.simulate(sub, k, rc, w, q, duration, dirichlet=vessel_arr, criterion=criterion,
                          perfusion_shutdown_c=bh.LETHAL_ISOTHERM_C if perfusion else None,
                          record_points_ras=[heat_centre[0], tables[0].centre_ras], progress=progress.sub(0.15, 1.0))
        run_s = time.perf_counter() - t0
        zone_sub = res.zone
        margin = {"m": None}

        def margin_fn():
            full = np.zeros(ctx.grid.GetSize()[::-1], bool)
            crop(full, box)[...] = zone_sub.astype(bool)
            margin["m"] = mask_margin(full, ctx.grid, ctx.tumor_surface)
            return margin["m"]

        m = self._metrics(ctx, box, zone_sub, margin_fn)
        m.update(self._describe(dev, probes, "bioheat"))
        if len(probes) == 1:
            ext = bh.zone_extent_mm(zone_sub, sub, probes[0].tip_ras, probes[0].entry_ras)
            m["zone_axes_mm"] = [round(ext["zone_long_mm"], 2), round(ext["zone_short_mm"], 2),
                                 round(ext["zone_short_mm"], 2)]
            m["table_zone_axes_mm"] = tables[0].axes_mm
        m.update({
            "criterion": (f"max temperature >= {bh.LETHAL_ISOTHERM_C:g} C" if criterion == "isotherm"
                          else f"CEM43 >= {bh.CEM43_LETHAL_MIN:g} min"),
            "combined_heating": len(probes) > 1,
            "max_temperature_c": round(float(res.t_max_c.max()), 2),
            "model_limitations": ("no water vaporisation, charring or temperature-dependent tissue properties: the "
                                  "peak temperature next to the antenna is not physical; the zone boundary is what "
                                  "the source calibration fits (to the device table in its measurement conditions)"),
            "perfusion": bool(perfusion),
            "heat_sink_vessels": vessels is not None,
            "calibration": [src.note for src in sources] if len(sources) > 1 else sources[0].note,
            "solver": (f"Pennes, explicit FD, dt {res.dt_s:.3f} s, {res.steps} steps on "
                       f"{'x'.join(map(str, sub.GetSize()))} voxels"),
            "solver_time_s": round(run_s, 2),
            "tissue_properties": {n: bh.TISSUES[n].as_dict() for n in dict.fromkeys([host, "blood"])},
            "tissue_properties_source": bh.SOURCE,
            "temperature_history": {"time_s": res.history["time_s"],
                                    "heating_centre_c": [round(v[0], 2) for v in res.history["points_c"]],
                                    "zone_centre_c": [round(v[1], 2) for v in res.history["points_c"]]},
        })
        warns = self._setting_warnings(dev, [p.setting for p in probes], ctx)
        warns.append(f"bioheat tissue properties ({bh.TISSUES[host].source}) were not re-read here (verified: false)")
        for src in dict.fromkeys(sources):
            if "assumed" in src.conditions:
                warns.append(f"bioheat calibration: {src.conditions}")
            if src.calibration_tissue != host:
                warns.append(f"the source was calibrated in {src.calibration_tissue} and is used in {host}: how the "
                             f"device deposits its power in {host} is not modelled (only the thermal properties "
                             "change)")
        return ZoneResult("bioheat", dev, probes, ctx.grid, box, zone_sub, m, list(dict.fromkeys(warns)), [], res,
                          margin["m"])

    # ------------------------------------------------------------------ planning
    def plan(self, grid: sitk.Image, tumor: sitk.Image | np.ndarray, device_id: str, margin_mm: float = 5.0,
             avoid: dict[str, sitk.Image | np.ndarray] | None = None, body: np.ndarray | None = None,
             clearance_mm: float = 3.0, required_percent: float = 99.0, max_probes: int = 5,
             max_tilt_deg: float = 45.0, verify_bioheat: bool = False,
             heat_sinks: sitk.Image | np.ndarray | None = None, tissue: str | None = None, tumor_name: str = "",
             terminology: str = "", allow_unsourced: bool = False, progress: Progress | None = None) -> PlanResult:
        """Plan probes that keep ``margin_mm`` around the tumour (see ``planner``); one typed result.

        With ``verify_bioheat`` the planned probes are re-simulated all at once with the Pennes model (perfusion,
        ``heat_sinks`` held at 37 C); while that coverage of tumour + margin falls short, the plan is redone with
        the table zones shrunk for planning (x0.9, 0.8, 0.7), i.e. more or larger overlapping probes.
        """
        progress = ensure(progress)
        dev = self.device(device_id)
        margin_mm = check_number(margin_mm, "Margin", "mm", 0.0, 30.0)
        clearance_mm = check_number(clearance_mm, "Clearance", "mm", 0.0, 50.0)
        required_percent = check_number(required_percent, "Required coverage", "%", 50.0, 100.0)
        max_tilt_deg = check_number(max_tilt_deg, "Tilt", "deg", 0.0, 90.0)
        if int(max_probes) != max_probes or not 1 <= max_probes <= 10:
            raise ImagioError(f"Most probes {max_probes} is out of range", "Give 1 to 10 probes")
        t = _as_array(tumor, grid, "tumour")
        if not t.any():
            raise ImagioError("The tumour segment is empty", "Choose a segment that contains the tumour")
        av = {k: _as_array(v, grid, k) for k, v in (avoid or {}).items()}
        if verify_bioheat and dev.modality == "cryo":
            raise ImagioError(f"The bioheat check heats; device '{dev.id}' is a cryoprobe", "Plan cryoablation without it")
        dev.by_volume(allow_unsourced)  # refuses a device without offered settings early
        ctx = self.prepare(grid, t, margin_mm=margin_mm, tissue=tissue, tumor_name=tumor_name, terminology=terminology)
        sinks = None if heat_sinks is None else (_as_array(heat_sinks, grid, "heat sinks") & ~t)
        scales = (1.0, 0.9, 0.8, 0.7) if verify_bioheat else (1.0,)
        checks, stopped, best = [], "", None  # best: (bioheat coverage or None, outcome, plan device)
        for n, scale in enumerate(scales):
            sub = progress.sub(n / len(scales), (n + 1) / len(scales))
            plan_dev = dev if scale == 1.0 else scaled(dev, scale)
            out = plan_ablation(grid, t, plan_dev, margin_mm, av, body, clearance_mm, required_percent, int(max_probes),
                                max_tilt_deg=max_tilt_deg, allow_unsourced=allow_unsourced, progress=sub.sub(0.0, 0.6))
            if scale != 1.0 and out.probes:
                out.probes = [replace(p, setting=dev.setting(p.setting.power_w, p.setting.time_s, allow_unsourced))
                              for p in out.probes]
            if not verify_bioheat or not out.feasible:
                if best is None:
                    best = (None, out)
                elif verify_bioheat:
                    stopped = f"; with zones shrunk to x{scale:g} no plan kept the margin ({out.reason})"
                break
            probes = out.probes
            r = self.bioheat_zones(ctx, probes, dev, vessels=sinks, perfusion=True, progress=sub.sub(0.6, 1.0))
            union = np.zeros(t.shape, bool)
            crop(union, r.box)[...] = r.mask_box.astype(bool)
            # blood inside large vessels is never ablated (it is the heat sink): it is left out of the target
            target = ctx.target if sinks is None else (ctx.target & ~sinks)
            cov = 100.0 * float((union & target).sum()) / max(float(target.sum()), 1.0)
            checks.append({"planning_zone_scale": scale, "probes": len(probes),
                           "table_coverage_percent": round(out.check.coverage_percent, 2),
                           "table_minimal_margin_mm": round(out.check.margin.minimal_margin_mm, 2),
                           "bioheat_coverage_percent": round(cov, 2),
                           "bioheat_tumor_coverage_percent": round(100.0 * float((union & t).sum()) / ctx.tumor_count, 2),
                           "bioheat_minimal_margin_mm": round(r.margin.minimal_margin_mm, 2),
                           "combined_heating": len(probes) > 1})
            if best is None or best[0] is None or cov > best[0]:
                best = (cov, out)
            if cov >= required_percent:
                break
        bio_cov, out = best
        probes = out.probes
        feasible, reason = out.feasible, out.reason
        bio = None
        if verify_bioheat and bio_cov is not None:
            bio = {"bioheat_checks": checks, "bioheat_coverage_percent": round(bio_cov, 2),
                   "bioheat_verified": bool(bio_cov >= required_percent)}
            if not bio["bioheat_verified"]:
                feasible = False
                reason = (f"The table plan keeps tumour + {margin_mm:g} mm, but with perfusion and the vessels as heat "
                          f"sinks the simulated zones (all probes heating together) cover at best {bio_cov:.1f} % of "
                          f"it (vessel lumen excluded; needed {required_percent:g} %), with table zones shrunk down to "
                          f"x{checks[-1]['planning_zone_scale']:g} for planning and at most {max_probes} probes"
                          + stopped)
            else:
                reason += f"; bioheat check (all probes together, perfusion, vessels as heat sinks): {bio_cov:.2f} %"
        elif verify_bioheat:
            bio = {"bioheat_verified": False}
        union_mask = None
        zone_ml = 0.0
        if probes:
            arr = zones_mask([p.zone() for p in probes], grid)
            zone_ml = float(arr.sum()) * geometry.voxel_volume_ml(grid)
            union_mask = geometry.copy_geometry(arr.astype(np.uint8), grid)
        warns = self._setting_warnings(dev, [p.setting for p in probes] or dev.by_volume(allow_unsourced)[-1:], ctx)
        if body is None:
            warns.append("no skin surface (no --ct or --body): entry points are where the paths leave the image, "
                         "unchecked against the skin")
        chk = out.check
        return PlanResult(
            feasible=bool(feasible), probes=probes, device=dev, tissue=ctx.tissue, margin_mm=margin_mm,
            required_percent=required_percent, coverage_percent=chk.coverage_percent if chk else 0.0,
            tumor_coverage_percent=chk.tumor_coverage_percent if chk else 0.0, margin=chk.margin if chk else None,
            reason=reason, target_volume_ml=out.target.target_ml, tumor_volume_ml=out.target.tumor_ml,
            zone_volume_ml=zone_ml, run_time_s=out.run_time_s, grid=grid, union_mask=union_mask,
            warnings=list(dict.fromkeys(warns)),
            details={**out.details, "tissue_from": ctx.tissue_how, "allow_unsourced": bool(allow_unsourced)},
            bioheat=bio)

    # ------------------------------------------------------------------ re-planning
    def replan(self, grid: sitk.Image, tumor: sitk.Image | np.ndarray, placed: list[tuple], device_id: str,
               power_w: float, time_s: float, margin_mm: float = 5.0,
               avoid: dict[str, sitk.Image | np.ndarray] | None = None, body: np.ndarray | None = None,
               clearance_mm: float = 3.0, tissue: str | None = None, tumor_name: str = "", terminology: str = "",
               allow_unsourced: bool = False, progress: Progress | None = None) -> ReplanResult:
        """The zone of the probes as placed (``placed``: [(tip_ras, entry_ras), ...], all at ``power_w`` /
        ``time_s``), the residual tumour + margin, and one change that covers it: a changed setting of the placed
        probes (same positions) if one does, else one added probe (from the planner, with a clear path), else why
        neither can."""
        progress = ensure(progress)
        dev, s = self.setting(device_id, power_w, time_s, allow_unsourced)
        margin_mm = check_number(margin_mm, "Margin", "mm", 0.0, 30.0)
        clearance_mm = check_number(clearance_mm, "Clearance", "mm", 0.0, 50.0)
        if not placed:
            raise ImagioError("No placed probe given", "Give each probe as --probe TIP:ENTRY (R,A,S mm each)")
        t = _as_array(tumor, grid, "tumour")
        ctx = self.prepare(grid, t, margin_mm=margin_mm, tissue=tissue, tumor_name=tumor_name, terminology=terminology)
        probes = [Probe(*self._check_probe(ctx, tip, entry), s) for tip, entry in placed]
        progress.update(0.05, "zone of the probes as placed")
        now = self.table_zones(ctx, probes, dev)
        warns = list(now.warnings)
        if body is None:
            warns.append("no skin surface (no --ct or --body): the added probe's entry point is where its path "
                         "leaves the image, unchecked against the skin")
        residual = ctx.target.copy()
        if now.box is not None:
            crop(residual, now.box)[...] &= ~now.mask_box.astype(bool)
        vox = geometry.voxel_volume_ml(grid)
        res_ml = float(residual.sum()) * vox
        res_tumor_ml = float((residual & t).sum()) * vox
        residual_img = geometry.copy_geometry(residual.astype(np.uint8), grid)
        kept = now.margin.minimal_margin_mm >= margin_mm - 1e-6
        if kept:
            return ReplanResult(now, res_ml, res_tumor_ml, residual_img, None, None,
                                f"The probes as placed keep the margin (minimal margin "
                                f"{now.margin.minimal_margin_mm:.2f} mm >= {margin_mm:g} mm): nothing to add",
                                margin_mm, warns)
        # 1. a changed setting of the placed probes (same positions, tips and entries unchanged)
        progress.update(0.2, "larger settings of the probes as placed")
        for cand in dev.by_volume(allow_unsourced):
            if cand.volume_ml <= s.volume_ml:
                continue
            trial = [Probe(p.tip_ras, p.entry_ras, cand) for p in probes]
            z = self.table_zones(ctx, trial, dev)
            if z.margin.minimal_margin_mm >= margin_mm - 1e-6:
                return ReplanResult(now, res_ml, res_tumor_ml, residual_img,
                                    {"kind": "changed setting", "power_w": cand.power_w, "time_s": cand.time_s,
                                     "zone_axes_mm": cand.axes_mm, "applies_to": "every placed probe"}, z,
                                    f"Running the placed probe(s) at {cand.label} instead of {s.label} keeps "
                                    f"{margin_mm:g} mm (minimal margin {z.margin.minimal_margin_mm:.2f} mm)",
                                    margin_mm, warns + [w for w in z.warnings if w not in warns])
        # 2. one added probe covering what the placed ones leave: the planner on the residual, one probe
        progress.update(0.4, "one added probe for the residual")
        added = self._added_probe(ctx, grid, probes, dev, residual, margin_mm, avoid, body, clearance_mm,
                                  allow_unsourced, progress.sub(0.4, 1.0))
        if isinstance(added, str):
            return ReplanResult(now, res_ml, res_tumor_ml, residual_img, None, None, added, margin_mm, warns)
        z, p_new = added
        return ReplanResult(now, res_ml, res_tumor_ml, residual_img,
                            {"kind": "added probe", "probe": p_new.as_dict()}, z,
                            f"One added probe at {p_new.setting.label} keeps {margin_mm:g} mm with the placed ones "
                            f"(minimal margin {z.margin.minimal_margin_mm:.2f} mm; residual tumour + margin "
                            f"{res_ml:.2f} ml covered)", margin_mm, warns + [w for w in z.warnings if w not in warns])

    def _added_probe(self, ctx, grid, probes, dev, residual, margin_mm, avoid, body, clearance_mm, allow_unsourced,
                     progress):
        """(zone with the added probe, the probe), or the reason why no single added probe keeps the margin."""
        av = {k: _as_array(v, grid, k) for k, v in (avoid or {}).items()}
        avoid_union = None
        if av:
            avoid_union = np.any(list(av.values()), axis=0) & ~ctx.tumor
        checker = PathChecker(grid, avoid_union, body)
        # directions: clear paths from the residual's centre, then from the tumour's centre (a residual crescent
        # next to a rib or the lung can have no clear path from its own centre while the added zone's tip, which
        # lies towards the tumour, has one; every placed path is checked again from its own tip)
        kji = np.argwhere(residual)
        pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
        centre = pts.mean(axis=0)
        tumour_centre = geometry.ijk_to_ras(grid, np.argwhere(ctx.tumor)[:, ::-1].astype(float)).mean(axis=0)
        scored, tried = [], 0
        for origin in (centre, tumour_centre):
            found, n = candidate_directions(type("T", (), {"centroid_ras": origin})(), checker, clearance_mm, 45.0)
            scored += found[:12]
            tried += n
        if not scored:
            return (f"The probes as placed leave {float(residual.sum()) * geometry.voxel_volume_ml(grid):.2f} ml of "
                    f"tumour + {margin_mm:g} mm, and no straight path from its centre or the tumour's keeps "
                    f"{clearance_mm:g} mm from the avoid structures (tried {tried} directions): re-position a probe")
        best = None
        for cand in dev.by_volume(allow_unsourced)[::-1][:3]:  # the largest settings first
            for _length, u, _clear in scored:
                progress.check()
                # the zone centre that best holds the residual: its smallest enclosing ellipsoid centre (frame)
                fr = _frame(u, cand.zone_long_mm / 2, cand.zone_short_mm / 2)
                q = (pts - centre) @ fr
                c = _enclosing_centre(q, q.mean(axis=0), 40) @ np.linalg.inv(fr) + centre
                placed = place_probes(np.array([c]), u, cand, checker, clearance_mm, [])
                if placed is None:
                    continue
                new = placed[0]
                z = self.table_zones(ctx, probes + [new], dev)
                key = z.margin.minimal_margin_mm
                if best is None or key > best[0]:
                    best = (key, z, new)
                if key >= margin_mm - 1e-6:
                    return self._lower_added(ctx, probes, dev, new, z, checker, clearance_mm, margin_mm,
                                             allow_unsourced)
        if best is None:
            return "No added probe with a clear path could be placed at the residual: re-position a probe"
        return (f"No single added probe keeps {margin_mm:g} mm with the placed ones: the best found ("
                f"{best[2].setting.label}) reaches a minimal margin of {best[0]:.2f} mm; re-position a probe or plan "
                "again (imagio ablation plan)")

    def _lower_added(self, ctx, probes, dev, new, z, checker, clearance_mm, margin_mm, allow_unsourced):
        """The added probe's setting lowered (same zone centre and direction) while the margin is kept."""
        u = probe_axis(new.tip_ras, new.entry_ras)
        centre = new.tip_ras - new.setting.tip_offset_mm * u
        for s in dev.by_volume(allow_unsourced):
            if s.volume_ml >= new.setting.volume_ml:
                break
            tip = centre + s.tip_offset_mm * u
            entry, clear = checker.trace(tip, u)
            if clear < clearance_mm:
                continue
            trial = Probe(tip, entry, s, clear)
            zt = self.table_zones(ctx, probes + [trial], dev)
            if zt.margin.minimal_margin_mm >= margin_mm - 1e-6:
                return zt, trial
        return z, new


class AblationZoneLogic(ZoneImageLogic):
    """Scene-level logic of IMAGIOAblationZone: the image-level operations plus MRML nodes in and out."""

    def __init__(self, scene=None, library_path=None):
        from imagio.scene import get_scene  # MRML (Slicer): only for the scene-level class

        super().__init__(library_path)
        self.scene = get_scene(scene)

    def plan_nodes(self, reference_node, segmentation_node, tumor_segment: str, device_id: str,
                   avoid_segments=(), heat_sink_segments=(), **options) -> PlanResult:
        """``plan`` from MRML nodes: the tumour and avoid structures are segments of ``segmentation_node`` (IDs or
        names), on ``reference_node``'s grid (the CT, whose body outline gives the skin) or the tumour's."""
        return self.plan(**self.plan_inputs_nodes(reference_node, segmentation_node, tumor_segment, device_id,
                                                  avoid_segments, heat_sink_segments), **options)

    def plan_inputs_nodes(self, reference_node, segmentation_node, tumor_segment: str, device_id: str,
                          avoid_segments=(), heat_sink_segments=()) -> dict:
        """The image-level arguments of :meth:`plan` read from the nodes (also what a background job gets)."""
        import slicer

        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node

        temp = None
        if reference_node is None:  # no CT: the grid holding every segment, through a temporary labelmap node
            temp = slicer.vtkMRMLLabelMapVolumeNode()
            segmentation_node.GetScene().AddNode(temp)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(segmentation_node, temp):
                segmentation_node.GetScene().RemoveNode(temp)
                raise ImagioError("The segmentation could not be exported", "Give a reference volume (the CT)")
        ref = reference_node if reference_node is not None else temp
        try:
            seg = segments_from_segmentation_node(segmentation_node, ref, [tumor_segment])[0]
            grid = image_from_volume_node(reference_node) if reference_node is not None else seg.mask
            avoid = {s.name: s.mask for s in segments_from_segmentation_node(segmentation_node, ref, list(avoid_segments))
                     } if avoid_segments else {}
            sinks = None
            if heat_sink_segments:
                ms = segments_from_segmentation_node(segmentation_node, ref, list(heat_sink_segments))
                sinks = np.any([s.array() for s in ms], axis=0)
        finally:
            if temp is not None:
                segmentation_node.GetScene().RemoveNode(temp)
        body = body_from_ct(grid) if reference_node is not None else None
        terminology = _segment_terminology(segmentation_node, tumor_segment)
        return {"grid": grid, "tumor": seg.mask, "device_id": device_id, "avoid": avoid, "body": body,
                "heat_sinks": sinks, "tumor_name": seg.name, "terminology": terminology}

    # ------------------------------------------------------------------ scene
    def probe_from_line(self, line_node) -> tuple[np.ndarray, np.ndarray]:
        """(tip, entry) RAS from a markups line: point 0 = entry, point 1 = tip."""
        if line_node is None or line_node.GetNumberOfControlPoints() < 2:
            raise ImagioError("The probe line needs two points", "Place the entry (first) and the tip (second)")
        p0, p1 = [0.0] * 3, [0.0] * 3
        line_node.GetNthControlPointPositionWorld(0, p0)
        line_node.GetNthControlPointPositionWorld(1, p1)
        return np.array(p1), np.array(p0)

    def update_zone_nodes(self, result: ZoneResult, segmentation_node=None, model_node=None, name: str = "Ablation zone"):
        """Show ``result`` as a segment and a model; reuse the given nodes (live update) or make new ones."""
        import slicer  # MRML and VTK only in the node-side code: image-level jobs run without them
        import vtk

        from imagio.mrml import add_model, mask_to_surface_ras
        from imagio.scene import ensure_converters

        ensure_converters()
        if segmentation_node is None:
            segmentation_node = slicer.vtkMRMLSegmentationNode()
            segmentation_node.SetName(self.scene.GenerateUniqueName(name))
            self.scene.AddNode(segmentation_node)
            segmentation_node.CreateDefaultDisplayNodes()
        seg = segmentation_node.GetSegmentation()
        sid = seg.GetSegmentIdBySegmentName("ablation_zone")
        if not sid:  # never overwrite another segment of a node the user chose
            sid = seg.AddEmptySegment("", "ablation_zone", list(ZONE_COLOR))
        oi = _oriented_box(result.grid, result.box, result.mask_box)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                oi, segmentation_node, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
            raise ImagioError("Could not store the ablation zone segment")
        if result.zone is not None:
            poly = result.zone.polydata_ras()
        elif result.mask_box.any():
            poly = mask_to_surface_ras(result.full_mask())
        else:
            poly = vtk.vtkPolyData()
        if model_node is None:
            model_node = add_model(self.scene, name + " model", poly, color=ZONE_COLOR, opacity=0.4)
        else:
            model_node.SetAndObservePolyData(poly)
        return segmentation_node, model_node


class ModuleSession:
    """What the Slicer module's Logic does with its parameter node, on a given scene (no Qt, no global scene).

    Reads the module's parameter node (any object with its fields: referenceVolume, segmentation,
    tumorSegmentID, vesselSegmentIDs, avoidSegmentIDs, probeLine, tissue, deviceId, powerW, timeS, model,
    marginMm, clearanceMm, verifyBioheat, allowUnsourced, zoneSegmentation, resultsTable) and calls
    ``AblationZoneLogic``. It keeps the tumour/structure context cached on the segments' *content*
    (``segmentation_stamp``: a Segment Editor edit changes a segment's labelmap, not the segmentation node's
    MTime); the IDs of the table nodes it made (only those are replaced: a table the user chose is never
    deleted); and writes zones into the zone segmentation the user chose (their own segment only), else a new node.
    """
    def __init__(self, scene, library_path=None):
        self.logic = AblationZoneLogic(scene, library_path)
        self.scene = self.logic.scene
        self._context = None
        self._context_key = None
        self._vessels: list[str] = []
        self._own_tables: set[str] = set()
        self.last_summary = ""
        self.last_warnings: list[str] = []

    # ------------------------------------------------------------------ state
    def forget_scene(self) -> None:
        """Drop everything that refers to nodes of a closing scene."""
        self._context = self._context_key = None
        self._own_tables = set()

    @staticmethod
    def _tissue(p):
        return None if p.tissue in (None, "", "auto") else str(p.tissue)

    def describe_setting(self, device_id: str, power_w: float, time_s: float, allow_unsourced: bool = False) -> str:
        try:
            _dev, s = self.logic.setting(device_id, power_w, time_s, allow_unsourced)
        except ImagioError as e:
            return str(e)
        text = f"zone {s.zone_long_mm:.1f} x {s.zone_short_mm:.1f} mm, centre {s.tip_offset_mm:.1f} mm behind the tip"
        source = "; ".join(f"{src.citation.split('.')[0]} ({src.locator.split(' (')[0]})" for src in s.sources)
        return (text + (f" ({s.note})" if s.interpolated else " (table setting)")
                + (f"; source: {source}" if source else "; NO SOURCE") + f"; measured in {s.tissue}")

    @staticmethod
    def _ids(p, ids, role: str) -> list[str]:
        """The chosen segment IDs of ``p.segmentation`` (segments are chosen by ID, never guessed from names)."""
        ids = [i for i in (ids or []) if i]
        if ids and not p.segmentation:
            raise ImagioError(f"No segmentation for the {role}", "Choose the segmentation first")
        seg = p.segmentation.GetSegmentation() if p.segmentation else None
        gone = [i for i in ids if seg.GetSegment(i) is None]
        if gone:
            raise ImagioError(f"The {role} segment(s) {', '.join(gone)} are not in '{p.segmentation.GetName()}'",
                              f"Choose the {role} again")
        return ids

    def _tumor_id(self, p) -> str:
        if not p.segmentation:
            raise ImagioError("No segmentation", "Choose the segmentation with the tumour")
        ids = self._ids(p, [p.tumorSegmentID], "tumour")
        if not ids:
            raise ImagioError("No tumour segment chosen", "Choose the tumour segment")
        return ids[0]

    def _segments(self, p, ids) -> dict:
        from imagio.mrml import segments_from_segmentation_node

        ids = self._ids(p, ids, "structures to avoid")
        if not ids:
            return {}
        return {s.name: s.mask for s in segments_from_segmentation_node(p.segmentation, p.referenceVolume, ids)}

    def context(self, p):
        """The tumour/structure context; rebuilt when the inputs or the segments' content change."""
        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node

        key = (p.referenceVolume.GetID() if p.referenceVolume else None, segmentation_stamp(p.segmentation),
               p.tumorSegmentID, tuple(p.vesselSegmentIDs or ()), p.marginMm, p.tissue)
        if key == self._context_key:
            return self._context
        tumor, others, terminology, tumor_name, vessel_names = None, {}, "", "", set()
        if p.segmentation:
            tumor_id = self._tumor_id(p)
            vessel_ids = set(self._ids(p, p.vesselSegmentIDs, "vessel"))
            seg = p.segmentation.GetSegmentation()
            all_ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
            for sid, s in zip(all_ids, segments_from_segmentation_node(p.segmentation, p.referenceVolume, all_ids),
                              strict=True):
                if sid == tumor_id:
                    tumor, tumor_name = s.mask, s.name
                else:
                    others[s.name] = s.mask  # every other segment: its fraction inside the zone is reported
                    if sid in vessel_ids:
                        vessel_names.add(s.name)
            terminology = _segment_terminology(p.segmentation, tumor_id)
        if p.referenceVolume:
            grid = image_from_volume_node(p.referenceVolume)
        elif tumor is not None:
            grid = tumor
        else:
            raise ImagioError("No reference volume or segmentation", "Choose the CT or a segmentation")
        self._context = self.logic.prepare(grid, tumor, others, p.marginMm, self._tissue(p), tumor_name, terminology)
        self._vessels = [name for name in others if name in vessel_names]
        self._context_key = key
        return self._context

    def _table(self, p, node):
        """Make ``node`` the results table; the session's own previous table goes, a user's table stays."""
        old = p.resultsTable
        if old is not None and old.GetID() in self._own_tables:
            self._own_tables.discard(old.GetID())
            self.scene.RemoveNode(old)
        self._own_tables.add(node.GetID())
        p.resultsTable = node
        return node

    def _output_segmentation(self, p):
        if p.zoneSegmentation is not None and p.zoneSegmentation is p.segmentation:
            raise ImagioError("The zone segmentation is the input segmentation", "Choose or create another node")
        return p.zoneSegmentation

    def _done(self, result, summary: str) -> None:
        self.last_summary = summary
        self.last_warnings = list(result.warnings)

    # ------------------------------------------------------------------ operations
    def compute_zone(self, p, model_node=None, live: bool = False):
        """Zone of the probe line with the chosen model; writes the zone segment, model and results table."""
        if p.model == "bioheat" and not live:
            result = self.logic.bioheat_zone(**self.bioheat_request(p))
        else:
            self._output_segmentation(p)
            ctx = self.context(p)
            tip, entry = self.logic.probe_from_line(p.probeLine)
            result = self.logic.table_zone(ctx, tip, entry, p.deviceId, p.powerW, p.timeS, p.allowUnsourced)
        return self.apply_zone(p, result, model_node, live)

    def bioheat_request(self, p) -> dict:
        """The image-level arguments of ``bioheat_zone`` for the parameter node (the probe line, the context)."""
        self._output_segmentation(p)
        ctx = self.context(p)
        tip, entry = self.logic.probe_from_line(p.probeLine)
        vessels = np.any([ctx.others[n] for n in self._vessels], axis=0) if self._vessels else None
        return {"ctx": ctx, "tip_ras": tip, "entry_ras": entry, "device_id": p.deviceId, "power_w": p.powerW,
                "time_s": p.timeS, "vessels": vessels, "allow_unsourced": p.allowUnsourced}

    def start_bioheat(self, p, python: str | None = None):
        """The bioheat zone as a background job (imagio.jobs); give its result to :meth:`apply_zone`."""
        return Job(BIOHEAT_JOB, {"library_path": self.logic.library_path, **self.bioheat_request(p)}, python=python,
                   prefix="imagio-ablation-bioheat-")

    def apply_zone(self, p, result, model_node=None, live: bool = False):
        """The zone's outputs: the zone segment and model, and (not live) a results table."""
        from imagio.mrml import add_table

        target = self._output_segmentation(p)
        seg, model = self.logic.update_zone_nodes(result, target, model_node)
        if not p.zoneSegmentation:
            p.zoneSegmentation = seg
        self._done(result, result.summary_text().split("\n")[0])
        if not live:
            self._table(p, add_table(self.scene, "Ablation zone results", result.table_rows()))
        return model

    def plan_probes(self, p):
        """Plan probes; the planned zone into the chosen zone segmentation (or a new one), lines, a table."""
        return self.apply_plan(p, self.logic.plan(**self.plan_request(p)))

    def plan_request(self, p) -> dict:
        """The image-level arguments of ``plan`` for the parameter node (checked here, before any job starts)."""
        if not p.segmentation:
            raise ImagioError("No segmentation", "Choose the segmentation with the tumour")
        self._output_segmentation(p)
        avoid = self._ids(p, p.avoidSegmentIDs, "structures to avoid")
        sinks = self._ids(p, p.vesselSegmentIDs, "vessel") if p.verifyBioheat else []
        inputs = self.logic.plan_inputs_nodes(p.referenceVolume, p.segmentation, self._tumor_id(p), p.deviceId,
                                              avoid_segments=avoid, heat_sink_segments=sinks)
        return {**inputs, "margin_mm": p.marginMm, "clearance_mm": p.clearanceMm, "verify_bioheat": p.verifyBioheat,
                "tissue": self._tissue(p), "allow_unsourced": p.allowUnsourced}

    def start_plan(self, p, python: str | None = None):
        """:meth:`plan_probes` as a background job (imagio.jobs); give its result to :meth:`apply_plan`."""
        return Job(PLAN_JOB, {"library_path": self.logic.library_path, **self.plan_request(p)}, python=python,
                   prefix="imagio-ablation-plan-")

    def apply_plan(self, p, plan):
        """The plan's outputs: the planned zone (chosen zone segmentation or a new one), probe lines, a table."""
        from imagio.mrml import add_line, add_table

        target = self._output_segmentation(p)
        if plan.union_mask is not None and plan.probes:
            p.zoneSegmentation = write_zone_segment(self.scene, plan.union_mask, target, "planned_ablation_zone",
                                                    "Planned ablation zone")
            for n, probe in enumerate(plan.probes):
                add_line(self.scene, f"Planned probe {n + 1}", probe.entry_ras, probe.tip_ras)
        self._table(p, add_table(self.scene, "Ablation plan", plan.table_rows()))
        self._done(plan, plan.summary_text().split("\n")[0] + " " + plan.reason)
        return plan

    def replan_request(self, p, line_nodes) -> dict:
        """The image-level arguments of :func:`run_replan` for the parameter node and the placed probes' lines
        (point 0 entry, point 1 tip; read now, before any job starts)."""
        from imagio.mrml import image_from_volume_node, segments_from_segmentation_node

        if not p.segmentation:
            raise ImagioError("No segmentation", "Choose the segmentation with the tumour")
        if not line_nodes:
            raise ImagioError("No placed probe", "Check the markups lines of the probes as placed")
        placed = [self.logic.probe_from_line(n) for n in line_nodes]
        tumor_id = self._tumor_id(p)
        tumor = segments_from_segmentation_node(p.segmentation, p.referenceVolume, [tumor_id])[0]
        grid = image_from_volume_node(p.referenceVolume) if p.referenceVolume else tumor.mask
        return {"grid": grid, "tumor": tumor.mask, "placed": placed, "device_id": p.deviceId, "power_w": p.powerW,
                "time_s": p.timeS, "margin_mm": p.marginMm, "avoid": self._segments(p, p.avoidSegmentIDs),
                "body_from_grid": bool(p.referenceVolume), "clearance_mm": p.clearanceMm, "tissue": self._tissue(p),
                "tumor_name": tumor.name, "terminology": _segment_terminology(p.segmentation, tumor_id),
                "allow_unsourced": p.allowUnsourced}

    def replan_from_lines(self, p, line_nodes):
        """Re-plan from the probes as placed (markups lines) at the chosen setting, in this process."""
        return self.apply_replan(p, run_replan(self.logic, **self.replan_request(p, line_nodes)))

    def start_replan(self, p, line_nodes, python: str | None = None):
        """:meth:`replan_from_lines` as a background job (imagio.jobs); give its result to :meth:`apply_replan`."""
        return Job(REPLAN_JOB, {"library_path": self.logic.library_path, **self.replan_request(p, line_nodes)},
                   python=python, prefix="imagio-ablation-replan-")

    def apply_replan(self, p, res):
        """The re-plan's outputs: zones (as placed, residual, with the proposal), lines, a results table."""
        nodes = res.add_to_scene(self.scene, p.referenceVolume, "Re-plan")
        self._table(p, nodes["table"])
        self._done(res, res.summary_text().split("\n")[0] + " " + res.reason)
        return res


def run_replan(logic: ZoneImageLogic, body_from_grid: bool = False, progress: Progress | None = None,
               **kwargs) -> ReplanResult:
    """``logic.replan(**kwargs)``; with ``body_from_grid`` the skin is the body outline of ``kwargs["grid"]`` (the
    CT; computed here, so in the background job too)."""
    body = body_from_ct(kwargs["grid"]) if body_from_grid else None
    return logic.replan(**kwargs, body=body, progress=progress)


def segmentation_stamp(segmentation_node) -> tuple:
    """What changes whenever a segmentation's content changes: per segment its ID, name and the modification time
    of each of its representations (editing a segment modifies its labelmap, not the node's own MTime)."""
    if segmentation_node is None:
        return ()
    seg = segmentation_node.GetSegmentation()
    out = [segmentation_node.GetID()]
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        s = seg.GetSegment(sid)
        names = []
        s.GetContainedRepresentationNames(names)
        reps = tuple((r, s.GetRepresentation(r).GetMTime()) for r in names if s.GetRepresentation(r) is not None)
        out.append((sid, s.GetName(), s.GetMTime(), reps))
    return tuple(out)


def write_zone_segment(scene, mask: sitk.Image, segmentation_node=None, segment_name: str = "ablation_zone",
                       name: str = "Ablation zone", color=ZONE_COLOR):
    """Put ``mask`` into the segment ``segment_name`` of ``segmentation_node`` (the user's choice: its other
    segments are never touched), or of a new segmentation node; returns the node."""
    import slicer

    from imagio.scene import ensure_converters

    ensure_converters()
    if segmentation_node is None:
        segmentation_node = slicer.vtkMRMLSegmentationNode()
        segmentation_node.SetName(scene.GenerateUniqueName(name))
        scene.AddNode(segmentation_node)
        segmentation_node.CreateDefaultDisplayNodes()
    seg = segmentation_node.GetSegmentation()
    sid = seg.GetSegmentIdBySegmentName(segment_name)
    if not sid:
        sid = seg.AddEmptySegment("", segment_name, list(color))
    arr = sitk.GetArrayFromImage(mask).astype(np.uint8)
    box = mask_box(arr) or (0, 1, 0, 1, 0, 1)
    oi = _oriented_box(mask, box, crop(arr, box))
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oi, segmentation_node, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
        raise ImagioError("Could not store the ablation zone segment")
    return segmentation_node


def _segment_terminology(segmentation_node, segment) -> str:
    """The terminology tag of a segment (ID or name), '' when it has none."""
    seg = segmentation_node.GetSegmentation()
    sid = segment if seg.GetSegment(segment) is not None else seg.GetSegmentIdBySegmentName(segment)
    s = seg.GetSegment(sid) if sid else None
    if s is None:
        return ""
    import vtk  # node-side only

    tag = vtk.reference("")
    return str(tag) if s.GetTag("TerminologyEntry", tag) else ""


def _oriented_box(grid: sitk.Image, box, sub: np.ndarray):
    """vtkOrientedImageData of a box of ``grid`` (extent in the grid's index space)."""
    import slicer  # node-side only
    import vtk
    from vtk.util import numpy_support

    oi = slicer.vtkOrientedImageData()
    if box is None:
        box = (0, 1, 0, 1, 0, 1)
        sub = np.zeros((1, 1, 1), np.uint8)
    k0, k1, j0, j1, i0, i1 = box
    oi.SetExtent(i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
    arr = np.ascontiguousarray(sub, dtype=np.uint8)
    oi.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    m = geometry.ijk_to_ras_matrix(grid)
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r, c]))
    oi.SetImageToWorldMatrix(vm)
    return oi
