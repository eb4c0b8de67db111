"""AblationZoneLogic: device zones, bioheat zones and probe plans on a vtkMRMLScene (no Qt, no global scene).

Masks are SimpleITK images (LPS) on one reference grid; every point in or out
is RAS mm. A probe is (tip_ras, entry_ras); in a markups line, control
point 0 is the entry (skin) and control point 1 the tip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import vtk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.progress import Progress, ensure
from imagio.scene import get_scene

from . import bioheat as bh
from .devices import Device, ZoneSetting, get_device, load_library
from .planner import Plan, grow_mask, plan_ablation
from .zone import EllipsoidZone, crop, mask_box, sub_grid, union_box

TUMOR_COLOR = (0.9, 0.2, 0.2)
ZONE_COLOR = (1.0, 0.65, 0.0)


@dataclass
class ZoneContext:
    """What a live update needs, computed once per tumour / structures / grid."""

    grid: sitk.Image
    margin_mm: float = 5.0
    tumor: np.ndarray | None = None  # bool [k, j, i]
    tumor_count: int = 0
    tumor_box: tuple | None = None
    tumor_edge_ras: np.ndarray | None = None  # centres of the tumour's boundary voxels
    tumor_edge_kji: np.ndarray | None = None
    target: np.ndarray | None = None  # tumour + margin
    target_count: int = 0
    others: dict[str, np.ndarray] = field(default_factory=dict)
    other_counts: dict[str, int] = field(default_factory=dict)

    def inside(self, point_ras) -> bool:
        ijk = geometry.ras_to_ijk(self.grid, point_ras)
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.array(self.grid.GetSize()) - 0.5))


@dataclass
class ZoneResult:
    metrics: dict
    zone: EllipsoidZone | None
    box: tuple | None
    mask_box: np.ndarray  # uint8 mask of ``box`` (table) or of the whole grid (bioheat)
    grid: sitk.Image
    bioheat: bh.BioheatResult | None = None

    def full_mask(self) -> sitk.Image:
        arr = np.zeros(self.grid.GetSize()[::-1], np.uint8)
        if self.box is not None:
            crop(arr, self.box)[...] = self.mask_box
        return geometry.copy_geometry(arr, self.grid)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the mask's edge)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1, 1:-1].copy()
    for ax in range(3):
        for sh in (-1, 1):
            inner &= np.roll(m, sh, axis=ax)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


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


class AblationZoneLogic:
    """Scene-level logic of IMAGIOAblationZone."""

    def __init__(self, scene=None, library_path=None):
        self.scene = get_scene(scene)
        self.library = load_library(library_path)

    # ------------------------------------------------------------------ devices
    def device(self, device_id: str) -> Device:
        return get_device(device_id, self.library)

    def setting(self, device_id: str, power_w: float, time_s: float) -> tuple[Device, ZoneSetting]:
        dev = self.device(device_id)
        return dev, dev.setting(power_w, time_s)

    # ------------------------------------------------------------------ context
    def prepare(self, grid: sitk.Image, tumor: sitk.Image | np.ndarray | None = None,
                others: dict[str, sitk.Image | np.ndarray] | None = None, margin_mm: float = 5.0) -> ZoneContext:
        """Cache the tumour, tumour + margin and other structures on ``grid`` for fast zone updates."""
        if margin_mm < 0 or margin_mm > 30:
            raise ImagioError(f"Margin {margin_mm} mm is out of range", "Give a margin between 0 and 30 mm")
        ctx = ZoneContext(grid=grid, margin_mm=float(margin_mm))
        if tumor is not None:
            t = _as_array(tumor, grid, "tumour")
            if not t.any():
                raise ImagioError("The tumour segment is empty", "Choose the segment that contains the tumour")
            ctx.tumor = t
            ctx.tumor_count = int(t.sum())
            ctx.tumor_box = mask_box(t)
            edge = np.argwhere(_boundary(t))
            ctx.tumor_edge_kji = edge
            ctx.tumor_edge_ras = geometry.ijk_to_ras(grid, edge[:, ::-1].astype(float))
            ctx.target = grow_mask(t, grid, margin_mm)
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
            else:
                z = sub.astype(bool)
                cov = 100.0 * float((crop(ctx.tumor, box) & z).sum()) / ctx.tumor_count
                cov_m = 100.0 * float((crop(ctx.target, box) & z).sum()) / ctx.target_count
            out.update({"coverage_percent": round(cov, 3), "margin_coverage_percent": round(cov_m, 3),
                        "minimal_margin_mm": round(float(margin_fn()), 2), "margin_mm": ctx.margin_mm,
                        "tumor_volume_ml": round(ctx.tumor_count * vox_ml, 3)})
        fr = {}
        for name, arr in ctx.others.items():
            n = ctx.other_counts[name]
            inside = 0 if box is None or n == 0 else int((crop(arr, box) & sub.astype(bool)).sum())
            fr[name] = round(100.0 * inside / n, 3) if n else 0.0
        out["structures_in_zone_percent"] = fr
        return out

    def _mask_margin(self, ctx: ZoneContext, box, sub: np.ndarray) -> float:
        """Minimal margin (mm) from a zone mask: signed distance to the zone surface at the tumour's edge voxels."""
        if box is None or not sub.any():
            return float("-inf")
        big = union_box([box, ctx.tumor_box])
        pad = 3
        size = ctx.grid.GetSize()[::-1]
        big = tuple(max(big[2 * a] - pad, 0) if e % 2 == 0 else min(big[2 * a + 1] + pad, size[a])
                    for a in range(3) for e in (0, 1))
        arr = np.zeros([big[1] - big[0], big[3] - big[2], big[5] - big[4]], np.uint8)
        k0, k1, j0, j1, i0, i1 = box
        arr[k0 - big[0]:k1 - big[0], j0 - big[2]:j1 - big[2], i0 - big[4]:i1 - big[4]] = sub
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(ctx.grid.GetSpacing())
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=True, squaredDistance=False,
                                                                   useImageSpacing=True))
        e = ctx.tumor_edge_kji - np.array([big[0], big[2], big[4]])
        return float(dist[e[:, 0], e[:, 1], e[:, 2]].min())

    # ------------------------------------------------------------------ zones
    def _check_probe(self, ctx: ZoneContext, tip_ras, entry_ras):
        tip = np.asarray(tip_ras, float)
        entry = np.asarray(entry_ras, float)
        if tip.shape != (3,) or entry.shape != (3,) or not (np.all(np.isfinite(tip)) and np.all(np.isfinite(entry))):
            raise ImagioError("The probe needs a tip and an entry point (R, A, S in mm)", "Place both points")
        if not ctx.inside(tip):
            lo, hi = geometry.physical_bounds_ras(ctx.grid)
            raise ImagioError(
                f"The probe tip ({tip[0]:.1f}, {tip[1]:.1f}, {tip[2]:.1f}) RAS mm lies outside the image "
                f"(R {lo[0]:.0f}..{hi[0]:.0f}, A {lo[1]:.0f}..{hi[1]:.0f}, S {lo[2]:.0f}..{hi[2]:.0f} mm)",
                "Place the tip inside the image, in the target")
        return tip, entry

    def table_zone(self, ctx: ZoneContext, tip_ras, entry_ras, device_id: str, power_w: float, time_s: float) -> ZoneResult:
        """The device-table ellipsoid for this probe, with coverage and margins. Only its bounding box is rasterised."""
        tip, entry = self._check_probe(ctx, tip_ras, entry_ras)
        dev, s = self.setting(device_id, power_w, time_s)
        zone = EllipsoidZone.from_probe(tip, entry, s)
        box, sub = zone.rasterise_box(ctx.grid)

        def margin():
            return float(zone.signed_distance(ctx.tumor_edge_ras).min())

        m = self._metrics(ctx, box, sub, margin)
        m.update(self._describe(dev, s, tip, entry, "table"))
        m["zone_axes_mm"] = zone.axes_mm
        m["zone_centre_ras"] = [round(float(v), 3) for v in zone.centre_ras]
        return ZoneResult(m, zone, box, sub, ctx.grid)

    @staticmethod
    def _describe(dev: Device, s: ZoneSetting, tip, entry, model: str) -> dict:
        return {"model": model, "device": dev.id, "device_name": dev.name, "modality": dev.modality,
                "power_w": s.power_w, "time_s": s.time_s, "interpolated": s.interpolated,
                "setting_note": s.note or "table setting", "device_source": dev.source,
                "tip_ras": [round(float(v), 3) for v in tip], "entry_ras": [round(float(v), 3) for v in entry]}

    def bioheat_zone(self, ctx: ZoneContext, tip_ras, entry_ras, device_id: str, power_w: float, time_s: float,
                     vessels: sitk.Image | np.ndarray | None = None, perfusion: bool = True, criterion: str = "isotherm",
                     tissue_labels: dict[str, sitk.Image | np.ndarray] | None = None, pad_mm: float = 15.0,
                     progress: Progress | None = None) -> ZoneResult:
        """Pennes bioheat zone for this probe; the source is calibrated to the device table (see bioheat)."""
        progress = ensure(progress)
        tip, entry = self._check_probe(ctx, tip_ras, entry_ras)
        dev, s = self.setting(device_id, power_w, time_s)
        src = bh.calibrate_source(dev, s, progress=progress.sub(0.0, 0.15))
        table = EllipsoidZone.from_probe(tip, entry, s)
        grow = EllipsoidZone(table.centre_ras, table.axis_ras, table.semi_long_mm + pad_mm, table.semi_short_mm + pad_mm)
        box = grow.index_box(ctx.grid, pad=1)
        sub = sub_grid(ctx.grid, box)
        shape = sub.GetSize()[::-1]
        labels = np.full(shape, 1, np.uint8)  # liver by default (the calibration tissue)
        tissue_of_label = {0: bh.TISSUES["soft_tissue"], 1: bh.TISSUES["liver"], 2: bh.TISSUES["tumor"],
                           3: bh.TISSUES["blood"]}
        for name, m in (tissue_labels or {}).items():
            if name not in bh.TISSUES:
                raise ImagioError(f"Unknown tissue '{name}'", f"Use one of {', '.join(bh.TISSUES)}")
            labels[crop(_as_array(m, ctx.grid, name), box)] = {"soft_tissue": 0, "liver": 1, "tumor": 2, "blood": 3}[name]
        if ctx.tumor is not None:
            labels[crop(ctx.tumor, box)] = 2
        vessel_arr = None
        if vessels is not None:
            vessel_arr = crop(_as_array(vessels, ctx.grid, "vessels"), box).copy()
            labels[vessel_arr] = 3
        k, rc, w = bh.tissue_maps(labels, tissue_of_label, perfusion_scale=1.0 if perfusion else 0.0)
        q = src.density(sub, tip, entry, s.power_w)
        t0 = time.perf_counter()
        res = bh.simulate(sub, k, rc, w, q, s.time_s, dirichlet=vessel_arr, criterion=criterion,
                          perfusion_shutdown_c=60.0 if perfusion else None,
                          record_points_ras=[tip - src.centre_back_mm * table.axis_ras, table.centre_ras],
                          progress=progress.sub(0.15, 1.0))
        run_s = time.perf_counter() - t0
        zone_sub = res.zone
        ext = bh.zone_extent_mm(zone_sub, sub, tip, entry)

        def margin():
            return self._mask_margin(ctx, box, zone_sub)

        m = self._metrics(ctx, box, zone_sub, margin)
        m.update(self._describe(dev, s, tip, entry, "bioheat"))
        m.update({
            "zone_axes_mm": [round(ext["zone_long_mm"], 2), round(ext["zone_short_mm"], 2), round(ext["zone_short_mm"], 2)],
            "table_zone_axes_mm": table.axes_mm,
            "criterion": "max temperature >= 60 C" if criterion == "isotherm" else "CEM43 >= 240 min",
            "max_temperature_c": round(float(res.t_max_c.max()), 2),
            "model_limitations": ("no water vaporisation, charring or temperature-dependent tissue properties: the "
                                  "peak temperature next to the antenna is not physical; the zone boundary is what "
                                  "the source calibration fits (to ex-vivo table zones)"),
            "perfusion": bool(perfusion),
            "heat_sink_vessels": vessels is not None,
            "calibration": src.note,
            "solver": f"Pennes, explicit FD, dt {res.dt_s:.3f} s, {res.steps} steps on {'x'.join(map(str, sub.GetSize()))} voxels",
            "solver_time_s": round(run_s, 2),
            "tissue_properties_source": bh.SOURCE,
            "temperature_history": {"time_s": res.history["time_s"],
                                    "heating_centre_c": [round(v[0], 2) for v in res.history["points_c"]],
                                    "zone_centre_c": [round(v[1], 2) for v in res.history["points_c"]]},
        })
        return ZoneResult(m, None, box, zone_sub, ctx.grid, res)

    # ------------------------------------------------------------------ planning
    def plan(self, grid: sitk.Image, tumor: sitk.Image | np.ndarray, device_id: str, margin_mm: float = 5.0,
             avoid: dict[str, sitk.Image | np.ndarray] | None = None, body: np.ndarray | None = None,
             clearance_mm: float = 3.0, required_percent: float = 99.0, max_probes: int = 5,
             max_tilt_deg: float = 45.0, verify_bioheat: bool = False,
             heat_sinks: sitk.Image | np.ndarray | None = None, progress: Progress | None = None) -> tuple[Plan, dict]:
        """Plan probes; returns the plan and its JSON-ready dict (with minimal margin).

        With ``verify_bioheat`` the planned probes are re-simulated with the Pennes model (perfused liver,
        ``heat_sinks`` held at 37 C); while that coverage of tumour + margin falls short, the plan is redone
        with the table zones shrunk for planning (x0.9, 0.8, 0.7), i.e. more or larger overlapping probes.
        """
        progress = ensure(progress)
        dev = self.device(device_id)
        t = _as_array(tumor, grid, "tumour")
        av = {k: _as_array(v, grid, k) for k, v in (avoid or {}).items()}
        if not 0.0 <= max_tilt_deg <= 90.0:
            raise ImagioError(f"Tilt {max_tilt_deg} deg is out of range", "Give 0 to 90 degrees from the axial plane")
        if verify_bioheat and dev.modality == "cryo":
            raise ImagioError(f"The bioheat check heats; device '{dev.id}' is a cryoprobe", "Plan cryoablation without it")
        sinks = None if heat_sinks is None else (_as_array(heat_sinks, grid, "heat sinks") & ~t)
        scales = (1.0, 0.9, 0.8, 0.7) if verify_bioheat else (1.0,)
        checks = []
        stopped = ""
        best = None  # (bioheat coverage, plan)
        for n, scale in enumerate(scales):
            sub = progress.sub(n / len(scales), (n + 1) / len(scales))
            plan_dev = dev if scale == 1.0 else _scaled_device(dev, scale)
            plan = plan_ablation(grid, t, plan_dev, margin_mm, av, body, clearance_mm, required_percent, max_probes,
                                 max_tilt_deg=max_tilt_deg, progress=sub.sub(0.0, 0.6))
            if scale != 1.0 and plan.probes:
                plan = _restore_settings(plan, dev, grid, t, margin_mm)
            if not verify_bioheat or not plan.feasible:
                if best is None:
                    best = (None, plan)
                elif verify_bioheat:
                    stopped = f"; with zones shrunk to x{scale:g} no plan was found ({plan.reason})"
                break
            ctx = self.prepare(grid, t, margin_mm=margin_mm)
            union = np.zeros(t.shape, bool)
            for p in plan.probes:
                r = self.bioheat_zone(ctx, p.tip_ras, p.entry_ras, dev.id, p.setting.power_w, p.setting.time_s,
                                      vessels=sinks, perfusion=True, progress=sub.sub(0.6, 1.0))
                crop(union, r.box)[...] |= r.mask_box.astype(bool)
            # blood inside large vessels is never ablated (it is the heat sink): it is left out of the target
            target = ctx.target if sinks is None else (ctx.target & ~sinks)
            cov = 100.0 * float((union & target).sum()) / max(float(target.sum()), 1.0)
            checks.append({"planning_zone_scale": scale, "probes": len(plan.probes),
                           "table_coverage_percent": round(plan.coverage_percent, 2),
                           "bioheat_coverage_percent": round(cov, 2),
                           "bioheat_tumor_coverage_percent": round(100.0 * float((union & t).sum()) / ctx.tumor_count, 2)})
            if best is None or best[0] is None or cov > best[0]:
                best = (cov, plan)
            if cov >= required_percent:
                break
        plan = best[1]
        d = plan.as_dict()
        if verify_bioheat and best[0] is not None:
            d["bioheat_checks"] = checks
            d["bioheat_coverage_percent"] = round(best[0], 2)
            d["bioheat_verified"] = bool(best[0] >= required_percent)
            if not d["bioheat_verified"]:
                d["feasible"] = False
                d["reason"] = (f"The table plan covers tumour + {margin_mm:g} mm, but with perfusion and the vessels as heat "
                               f"sinks the simulated zones cover at best {best[0]:.1f} % of it (vessel lumen excluded; "
                               f"needed {required_percent:g} %), with table zones shrunk down to "
                               f"x{checks[-1]['planning_zone_scale']:g} for planning and at most {max_probes} probes"
                               + stopped)
            else:
                d["reason"] += f"; bioheat check (perfusion, vessels as heat sinks): {best[0]:.2f} %"
        elif verify_bioheat:
            d["bioheat_verified"] = False
        if plan.union_mask is not None and plan.probes:
            ctx = self.prepare(grid, t, margin_mm=margin_mm)
            arr = sitk.GetArrayFromImage(plan.union_mask)
            box = mask_box(arr)
            d["minimal_margin_mm"] = round(self._mask_margin(ctx, box, crop(arr, box)), 2) if box else None
            d["zone_volume_ml"] = round(float(arr.sum()) * geometry.voxel_volume_ml(grid), 3)
        return plan, d

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
        import slicer

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


def _scaled_device(dev: Device, scale: float) -> Device:
    """A copy of ``dev`` whose zones are ``scale`` times smaller around the same centres (planning only)."""
    settings = [replace(s, zone_long_mm=s.zone_long_mm * scale, zone_short_mm=s.zone_short_mm * scale)
                for s in dev.settings]
    return replace(dev, settings=settings)


def _restore_settings(plan: Plan, dev: Device, grid: sitk.Image, tumor: np.ndarray, margin_mm: float) -> Plan:
    """The plan with the device's real table settings (same power, time and tips) and its coverage recomputed."""
    from .planner import PlannedProbe, _union

    probes = [PlannedProbe(p.tip_ras, p.entry_ras, dev.setting(p.setting.power_w, p.setting.time_s), p.min_clearance_mm)
              for p in plan.probes]
    union = _union(grid, [p.zone() for p in probes], tumor.shape)
    target = grow_mask(tumor, grid, margin_mm)
    return replace(plan, probes=probes,
                   coverage_percent=100.0 * float((union & target).sum()) / float(target.sum()),
                   tumor_coverage_percent=100.0 * float((union & tumor).sum()) / float(tumor.sum()),
                   union_mask=geometry.copy_geometry(union.astype(np.uint8), grid))


def _oriented_box(grid: sitk.Image, box, sub: np.ndarray):
    """vtkOrientedImageData of a box of ``grid`` (extent in the grid's index space)."""
    import slicer
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
