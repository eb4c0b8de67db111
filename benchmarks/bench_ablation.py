"""Benchmark: IMAGIOAblationZone plans, live updates and the bioheat solver, each against a named peer in the same run.

    python benchmarks/bench_ablation.py [--out bench_ablation.json] [--quick] [--part PART ...]

--part (repeatable: validation, bioheat, live, plans, combined, replan; default all) runs only those parts; "combined"
needs the plans and runs them too.

Needs the real data (IMAGIO_DATA, default ../shared/data) and scipy (peer only).

1. Plans on the Med-MPD liver tumours (medmpd-liver-p1..p4, every nodule*) and the phantom's liver tumour and
   lung nodule: device Emprint, margin 5 mm, paths keeping 3 mm from the hepatic artery, hepatic vein and portal
   vein (no CT in Med-MPD, so the entry is where the path leaves the image; the phantom has a body outline).
   Feasible, coverage of tumour + 5 mm, tumour coverage, probes, the planner's minimal margin and an independent
   one (IMAGIOMargin's metric on the rasterised zones), run time, the planned ablation volume over the tumour +
   margin volume (over-treatment); the reason when infeasible. Then the planned probes re-simulated with the
   bioheat model, all heating together (perfused tissue; and with the vessels as heat sinks).
1b. Combined heating (all probes at once) against the union of single-probe bioheat zones: zone volume,
   coverage of tumour + 5 mm and minimal margin, on the 2- and 3-probe plans and on synthetic probe pairs and
   triples 10-20 mm apart; and on real 3-probe plans (the phantom's liver tumour and Med-MPD p3 nodule2 planned
   for a 7 mm margin: no 5 mm plan has 3 probes).
1c. Re-planning: the phantom's liver plan with each probe in turn moved 8 mm sideways: residual, proposal, margin
   after it by the re-planner and independently.
2. Live update on a clinical CT grid (medmpd-liver-p2, 512 x 512 x 87, 0.78 x 0.78 x 2.5 mm, with its tumour
   and vessels): a probe dragged over 40 positions; per update: table zone (bounding box only), coverage,
   margin, structure fractions, and the segment + model nodes. Peer: the same zone and metrics recomputed on
   the full volume (every voxel tested), as a naive implementation would. Ratio = full / live.
3. Bioheat: a 10-minute ablation (Emprint 100 W, calibrated source, perfused liver) on 100^3 voxels at 1 mm.
   Peer: a reference explicit scheme written the textbook way, float64 with scipy.ndimage.laplace for a
   homogeneous medium, the same time step, on the same grid; both results must agree. Ratio = peer / IMAGIO.
4. Validation figures: the solver against the analytic point source (transient with perfusion, and steady
   state), the calibrated source against the device table in vessel-free, non-perfused liver, and the
   heat-sink shrinkage next to a 6 mm vessel; the table-zone axes on oblique, anisotropic grids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "IMAGIOCommon"))
sys.path.insert(0, str(REPO / "IMAGIOAblationZone"))
sys.path.insert(0, str(REPO / "IMAGIOMargin"))

from imagio import geometry  # noqa: E402
from imagio.scene import new_scene  # noqa: E402
from imagio.testing import data_root, oblique_image  # noqa: E402
from IMAGIOAblationZoneLib import bioheat as bh  # noqa: E402
from IMAGIOAblationZoneLib.logic import AblationZoneLogic  # noqa: E402
from IMAGIOAblationZoneLib.zone import EllipsoidZone  # noqa: E402

VESSEL_WORDS = ("artery", "vein", "vessel")  # Med-MPD hepaticArtery/Vein, portalVein; the phantom hepatic_vessels


def _read_mask(path: Path, ref: sitk.Image | None = None) -> np.ndarray:
    m = sitk.ReadImage(str(path), sitk.sitkUInt8)
    if ref is not None and not geometry.same_grid(m, ref):
        m = geometry.resample_to(m, ref)
    return sitk.GetArrayFromImage(m) > 0


# ------------------------------------------------------------------------------------------------ 1. plans
def _independent_margin(ref: sitk.Image, tumor: np.ndarray, probes) -> float:
    """IMAGIOMargin's minimal margin (half-voxel lattice, another method) of the planned zones rasterised on the grid."""
    from IMAGIOAblationZoneLib.margins import zones_mask
    from IMAGIOMarginLib.metrics import compute_margin

    zone = zones_mask([p.zone() for p in probes], ref).astype(np.uint8)
    return round(compute_margin(geometry.copy_geometry(tumor.astype(np.uint8), ref),
                                geometry.copy_geometry(zone, ref)).minimal_margin_mm, 2)


def _cases(quick: bool):
    """(name, reference grid, tumour mask, avoid masks, body, tissue) of the planning cases."""
    out = []
    liver = ["medmpd-liver-p3", "medmpd-liver-p2"] if quick else [f"medmpd-liver-p{i}" for i in (1, 2, 3, 4)]
    for case in liver:
        base = data_root() / case
        if not base.is_dir():
            out.append((case, None, None, None, None, None))
            continue
        for nod in sorted(base.glob("nodule*.nii.gz")):
            ref = sitk.ReadImage(str(nod), sitk.sitkUInt8)
            avoid = {f.name.split(".")[0]: _read_mask(f, ref) for f in sorted(base.glob("*.nii.gz"))
                     if any(w in f.name.lower() for w in VESSEL_WORDS)}
            out.append((f"{case}/{nod.name}", ref, sitk.GetArrayFromImage(ref) > 0, avoid, None, "liver"))
    from imagio.phantom import make_phantom

    ph = make_phantom(0)
    out.append(("phantom/liver_tumor (CT body outline as skin)", ph.ct, ph.segments["liver_tumor"].array(),
                {n: ph.segments[n].array() for n in ("hepatic_vessels", "ribs", "lungs")}, ph.segments["body"].array(),
                "liver"))
    if not quick:
        out.append(("phantom/lung_nodule (lung)", ph.ct, ph.segments["lung_nodule"].array(),
                    {n: ph.segments[n].array() for n in ("ribs", "airway_lumen", "airway_wall")},
                    ph.segments["body"].array(), "lung"))
        lidc = data_root() / "chest-lidc0314"
        if lidc.is_dir():  # a real lung nodule on its thin-slice CT: the CT's body outline is the skin
            from imagio.io import read_image, read_segmentation
            from IMAGIOAblationZoneLib.logic import body_from_ct

            ct = read_image(lidc / "ct.nrrd")
            nod = read_segmentation(lidc / "nodule_consensus50.seg.nrrd", reference=ct)[0]
            out.append(("chest-lidc0314/nodule_consensus50 (lung, CT)", ct, nod.array(), {}, body_from_ct(ct), "lung"))
    return out


_PLANS: dict = {}  # case -> (grid, tumour, plan, tissue), for the combined-heating comparison


def bench_plans(quick: bool, verify: bool = False) -> list[dict]:
    rows = []
    for name, ref, tumor, avoid, body, tissue in _cases(quick):
        if ref is None:
            rows.append({"case": name, "error": "data not found"})
            continue
        logic = AblationZoneLogic(new_scene())
        t0 = time.perf_counter()
        plan = logic.plan(ref, tumor, "emprint", 5.0, avoid, body, clearance_mm=3.0, tissue=tissue)
        wall = time.perf_counter() - t0
        _PLANS[name] = (ref, tumor, plan, tissue)
        d = plan.to_dict()
        physics = _bioheat_check(logic, ref, tumor, avoid, plan, tissue) if plan.probes else {}
        if verify:
            vessels = np.any([m for k, m in avoid.items() if any(w in k.lower() for w in VESSEL_WORDS)], axis=0)
            t0 = time.perf_counter()
            dv = logic.plan(ref, tumor, "emprint", 5.0, avoid, body, clearance_mm=3.0, verify_bioheat=True,
                            heat_sinks=vessels, tissue=tissue).to_dict()
            physics.update({"verified_feasible": dv["feasible"], "verified_probes": dv["probe_count"],
                            "verified_bioheat_coverage_percent": dv.get("bioheat_coverage_percent"),
                            "verified_run_time_s": round(time.perf_counter() - t0, 1),
                            "verified_reason": dv["reason"]})
        rows.append({
            "case": name, "tissue": tissue, "tumor_ml": d["tumor_volume_ml"], "target_ml": d["target_volume_ml"],
            "feasible": d["feasible"], "probes": d["probe_count"],
            "settings": [f"{p['power_w']:g} W/{p['time_s']:g} s" for p in d["probes"]],
            "coverage_percent": d["coverage_percent"], "tumor_coverage_percent": d["tumor_coverage_percent"],
            "minimal_margin_mm": d["minimal_margin_mm"],
            "independent_margin_mm": _independent_margin(ref, tumor, plan.probes) if plan.probes else None,
            "half_largest_spacing_mm": round(max(ref.GetSpacing()) / 2, 3),
            "min_path_clearance_mm": _finite_or_none(min((p.get("min_clearance_mm", np.inf) for p in d["probes"]),
                                                         default=None)),  # None: no avoid structure (was Infinity)
            "ablated_over_target_ratio": round(d["zone_volume_ml"] / d["target_volume_ml"], 2),
            "run_time_s": round(wall, 2), "reason": d["reason"], **physics})
        print(f"plan {rows[-1]['case']}: {rows[-1]}", flush=True)
    return rows


def _finite_or_none(v):
    """JSON has no Infinity: a clearance with nothing to avoid is written as null."""
    return None if v is None or not np.isfinite(v) else v


def _bioheat_check(logic, ref, tumor, avoid, plan, tissue) -> dict:
    """The planned probes re-simulated with the Pennes model (perfused, all probes heating together), without
    and with the vessels as heat sinks: how much of tumour + 5 mm the table-based plan still covers."""
    vessels = np.zeros(tumor.shape, bool)
    for k, m in avoid.items():
        if any(w in k.lower() for w in VESSEL_WORDS):
            vessels |= m
    vessels &= ~tumor
    ctx = logic.prepare(ref, tumor, margin_mm=5.0, tissue=tissue)
    out = {}
    for label, sink in (("perfusion_only", None), ("perfusion_and_vessels", vessels if vessels.any() else None)):
        if sink is None and label != "perfusion_only":
            continue
        t0 = time.perf_counter()
        r = logic.bioheat_zones(ctx, plan.probes, plan.device, vessels=sink, perfusion=True)
        union = np.zeros(tumor.shape, bool)
        union[tuple(slice(a, b) for a, b in zip(r.box[::2], r.box[1::2], strict=True))] = r.mask_box.astype(bool)
        target = ctx.target & ~vessels  # blood in large vessels is never ablated: lumen left out, as in the planner
        out[f"bioheat_{label}_coverage_percent"] = round(100.0 * float((union & target).sum()) / float(target.sum()), 2)
        out[f"bioheat_{label}_tumor_coverage_percent"] = round(100.0 * float((union & tumor).sum()) / ctx.tumor_count, 2)
        out[f"bioheat_{label}_minimal_margin_mm"] = r.metrics["minimal_margin_mm"]
        out[f"bioheat_{label}_time_s"] = round(time.perf_counter() - t0, 2)
    return out


def bench_combined_heating(quick: bool) -> list[dict]:
    """Combined heating (all probes' sources at once) against the union of single-probe zones, on the 2- and
    3-probe plans (perfused tissue, no heat-sink vessels, so only the probes' interaction differs), and on
    synthetic parallel pairs/triples at set spacings in homogeneous liver."""
    from IMAGIOAblationZoneLib.logic import Probe

    rows = []
    logic = AblationZoneLogic(new_scene())
    for name, (ref, tumor, plan, tissue) in _PLANS.items():
        if len(plan.probes) < 2:
            continue
        rows.append({"case": name, **_combined_vs_union(logic, ref, tumor, plan.probes, plan.device, tissue)})
        print(f"combined {rows[-1]}", flush=True)
    # a real 3-probe plan: no 5 mm plan above has 3 probes, the phantom's liver tumour planned for 7 mm has
    if not quick:
        from imagio.phantom import make_phantom

        ph = make_phantom(0)
        tumor = ph.segments["liver_tumor"].array()
        avoid = {n: ph.segments[n].array() for n in ("hepatic_vessels", "ribs", "lungs")}
        plan = logic.plan(ph.ct, tumor, "emprint", 7.0, avoid, ph.segments["body"].array(), clearance_mm=3.0,
                          tissue="liver")
        d = plan.to_dict()
        rows.append({"case": "phantom/liver_tumor planned for a 7 mm margin (CT body outline as skin)",
                     "plan_feasible": d["feasible"], "plan_minimal_margin_mm": d["minimal_margin_mm"],
                     **_combined_vs_union(logic, ph.ct, tumor, plan.probes, plan.device, "liver", margin_mm=7.0)})
        print(f"combined {rows[-1]}", flush=True)
        base = data_root() / "medmpd-liver-p3"
        if base.is_dir():  # and Med-MPD p3 nodule2 (2 probes for 5 mm) planned for 7 mm: 3 probes
            ref = sitk.ReadImage(str(base / "nodule2.nii.gz"), sitk.sitkUInt8)
            tumor = sitk.GetArrayFromImage(ref) > 0
            avoid = {f.name.split(".")[0]: _read_mask(f, ref) for f in sorted(base.glob("*.nii.gz"))
                     if any(w in f.name.lower() for w in VESSEL_WORDS)}
            plan = logic.plan(ref, tumor, "emprint", 7.0, avoid, clearance_mm=3.0, tissue="liver")
            d = plan.to_dict()
            rows.append({"case": "medmpd-liver-p3/nodule2 planned for a 7 mm margin",
                         "plan_feasible": d["feasible"], "plan_minimal_margin_mm": d["minimal_margin_mm"],
                         **_combined_vs_union(logic, ref, tumor, plan.probes, plan.device, "liver", margin_mm=7.0)})
            print(f"combined {rows[-1]}", flush=True)
    # synthetic: 2 and 3 parallel Emprint 100 W / 10 min probes, 10-20 mm apart, in perfused liver
    grid = geometry.make_image([120, 120, 90], [1.0, 1.0, 1.0], origin_ras=[59.5, 59.5, -44.5],
                               direction_ras=geometry.CT_AXES_RAS)
    dev = logic.device("emprint")
    s = dev.setting(100, 600)
    u = np.array([0.0, 0.0, 1.0])
    for n in (2, 3):
        for spacing in ((15.0,) if quick else (10.0, 15.0, 20.0)):
            ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
            radius = spacing / (2 * np.sin(np.pi / n))  # probes on a circle, neighbours ``spacing`` apart
            centres = [np.array([radius * np.cos(a), radius * np.sin(a), 0.0]) for a in ang]
            probes = [Probe(c + s.tip_offset_mm * u, c - 90 * u, s) for c in centres]
            tumor = np.zeros(grid.GetSize()[::-1], bool)
            kji = np.argwhere(np.ones(tumor.shape, bool))
            pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
            tumor = (np.linalg.norm(pts, axis=1) <= radius + 4.0).reshape(tumor.shape)  # a tumour they share
            rows.append({"case": f"synthetic {n} probes {spacing:g} mm apart, {s.label}",
                         **_combined_vs_union(logic, grid, tumor, probes, dev, "liver")})
            print(f"combined {rows[-1]}", flush=True)
    return rows


def _combined_vs_union(logic, ref, tumor, probes, dev, tissue, margin_mm: float = 5.0) -> dict:
    """Coverage of tumour + ``margin_mm`` (the plan's margin) and the minimal margin, combined vs union."""
    ctx = logic.prepare(ref, tumor, margin_mm=margin_mm, tissue=tissue)
    t0 = time.perf_counter()
    both = logic.bioheat_zones(ctx, probes, dev, perfusion=True)
    t_both = time.perf_counter() - t0
    full = np.zeros(tumor.shape, bool)
    full[tuple(slice(a, b) for a, b in zip(both.box[::2], both.box[1::2], strict=True))] = both.mask_box.astype(bool)
    union = np.zeros(tumor.shape, bool)
    t0 = time.perf_counter()
    for p in probes:
        r = logic.bioheat_zones(ctx, [p], dev, perfusion=True)
        union[tuple(slice(a, b) for a, b in zip(r.box[::2], r.box[1::2], strict=True))] |= r.mask_box.astype(bool)
    t_single = time.perf_counter() - t0
    from IMAGIOAblationZoneLib.margins import mask_margin

    vox = geometry.voxel_volume_ml(ref)
    cov = {}
    for label, z in (("combined", full), ("union", union)):
        cov[f"{label}_zone_ml"] = round(float(z.sum()) * vox, 2)
        cov[f"{label}_coverage_percent"] = round(100.0 * float((z & ctx.target).sum()) / ctx.target_count, 2)
        cov[f"{label}_tumor_coverage_percent"] = round(100.0 * float((z & ctx.tumor).sum()) / ctx.tumor_count, 2)
        cov[f"{label}_minimal_margin_mm"] = round(mask_margin(z, ref, ctx.tumor_surface).minimal_margin_mm, 2)
    return {"probes": len(probes), "settings": [p.setting.label for p in probes], "margin_mm": margin_mm, **cov,
            "union_inside_combined": bool(not (union & ~full).any()),
            "combined_over_union_volume": round(cov["combined_zone_ml"] / max(cov["union_zone_ml"], 1e-9), 3),
            "combined_s": round(t_both, 1), "singles_s": round(t_single, 1)}


# ------------------------------------------------------------------------------------------------ 1c. re-planning
def bench_replan() -> dict:
    """The phantom's liver tumour planned for 5 mm, then each planned probe in turn moved 8 mm sideways (tip and
    entry, perpendicular to the probe and to S): the residual tumour + 5 mm as placed, the proposal, and the
    margin after it, by the re-planner and independently (IMAGIOMargin's metric of the rasterised zones)."""
    from imagio.phantom import make_phantom
    from IMAGIOMarginLib.metrics import compute_margin

    ph = make_phantom(0)
    tumor = ph.segments["liver_tumor"].mask
    avoid = {n: ph.segments[n].mask for n in ("hepatic_vessels", "ribs", "lungs")}
    body = ph.segments["body"].array()
    logic = AblationZoneLogic(new_scene())
    plan = logic.plan(ph.ct, tumor, "emprint", 5.0, avoid, body, tissue="liver")
    out = {"plan_probes": len(plan.probes), "plan_minimal_margin_mm": round(plan.minimal_margin_mm, 2),
           "half_largest_spacing_mm": round(max(ph.ct.GetSpacing()) / 2, 3), "cases": []}
    for i, p0 in enumerate(plan.probes):
        u = (p0.tip_ras - p0.entry_ras) / np.linalg.norm(p0.tip_ras - p0.entry_ras)
        side = np.cross(u, [0.0, 0.0, 1.0])
        side /= np.linalg.norm(side)
        placed = [(p.tip_ras + 8.0 * side, p.entry_ras + 8.0 * side) if j == i else (p.tip_ras, p.entry_ras)
                  for j, p in enumerate(plan.probes)]
        t0 = time.perf_counter()
        res = logic.replan(ph.ct, tumor, placed, "emprint", p0.setting.power_w, p0.setting.time_s, 5.0, avoid, body,
                           tissue="liver")
        wall = time.perf_counter() - t0
        d = res.to_dict()
        after = d.get("after_proposal") or {}
        indep = (round(compute_margin(tumor, res.proposal_zone.full_mask()).minimal_margin_mm, 2)
                 if res.proposal_zone is not None else None)
        prop = d["proposal"] or {}
        out["cases"].append({
            "moved_probe": i + 1, "moved_mm": 8.0, "margin_as_placed_mm": d["minimal_margin_mm"],
            "tumor_coverage_as_placed_percent": d["coverage_percent"],
            "target_coverage_as_placed_percent": d["margin_coverage_percent"],
            "residual_target_ml": d["residual_target_ml"], "residual_tumor_ml": d["residual_tumor_ml"],
            "proposal_kind": prop.get("kind"), "proposal": prop,
            "after_residual_target_ml": after.get("residual_target_ml"),
            "after_minimal_margin_mm": after.get("minimal_margin_mm"), "after_independent_margin_mm": indep,
            "reason": d["reason"], "run_time_s": round(wall, 1)})
        print(f"replan {out['cases'][-1]}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ 2. live update
def _full_volume_update(grid, pts_cache, tumor, target, others, tip, entry, setting):
    """Peer: the zone and its metrics on every voxel of the volume."""
    zone = EllipsoidZone.from_probe(tip, entry, setting)
    if "pts" not in pts_cache:
        m = geometry.ijk_to_ras_matrix(grid)
        ni, nj, nk = grid.GetSize()
        kk, jj, ii = np.meshgrid(np.arange(nk, dtype=np.float32), np.arange(nj, dtype=np.float32),
                                 np.arange(ni, dtype=np.float32), indexing="ij")
        pts_cache["pts"] = [(m[r, 0] * ii + m[r, 1] * jj + m[r, 2] * kk + m[r, 3]).astype(np.float32) for r in range(3)]
    x, y, z = pts_cache["pts"]
    c, u = zone.centre_ras, zone.axis_ras
    dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    ax = dx * np.float32(u[0]) + dy * np.float32(u[1]) + dz * np.float32(u[2])
    r2 = dx * dx + dy * dy + dz * dz - ax * ax
    inside = ax * ax / np.float32(zone.semi_long_mm ** 2) + r2 / np.float32(zone.semi_short_mm ** 2) <= 1
    cov = float((inside & tumor).sum()) / tumor.sum()
    cov_m = float((inside & target).sum()) / target.sum()
    fr = {k: float((inside & v).sum()) / max(v.sum(), 1) for k, v in others.items()}
    return inside, cov, cov_m, fr


def bench_live(quick: bool) -> dict:
    base = data_root() / "medmpd-liver-p2"
    ref = sitk.ReadImage(str(base / "nodule2.nii.gz"), sitk.sitkUInt8)
    tumor = sitk.GetArrayFromImage(ref) > 0
    others = {f.name.split(".")[0]: _read_mask(f, ref) for f in sorted(base.glob("*.nii.gz"))
              if any(w in f.name.lower() for w in VESSEL_WORDS) or f.name.startswith("liver")}
    logic = AblationZoneLogic(new_scene())
    t0 = time.perf_counter()
    ctx = logic.prepare(ref, tumor, others, 5.0)
    prepare_s = time.perf_counter() - t0
    c = geometry.centroid_ras(ref)
    setting = logic.device("emprint").setting(100, 600)
    n = 10 if quick else 40
    rng = np.random.default_rng(0)
    path = [c + np.array([3.0 * np.sin(i / 5), 2.0 * np.cos(i / 7), 0.5 * i / n]) for i in range(n)]
    entry0 = c + np.array([110.0, 30.0, 20.0])
    live, nodes, full = [], [], []
    seg = model = None
    for i, tip in enumerate(path):
        entry = entry0 + rng.normal(0, 1.0, 3)
        t0 = time.perf_counter()
        r = logic.table_zone(ctx, tip, entry, "emprint", 100, 600)
        t1 = time.perf_counter()
        seg, model = logic.update_zone_nodes(r, seg, model)
        t2 = time.perf_counter()
        if i > 0:  # the first update creates the nodes
            live.append(t1 - t0)
            nodes.append(t2 - t0)
    cache: dict = {}
    for tip in path[: max(3, n // 8)]:
        t0 = time.perf_counter()
        inside, cov, _, _ = _full_volume_update(ref, cache, tumor, ctx.target, others, tip, entry0, setting)
        full.append(time.perf_counter() - t0)
    # agreement of the peer with the live result at the last position
    r = logic.table_zone(ctx, path[-1], entry0, "emprint", 100, 600)
    inside, cov, cov_m, _ = _full_volume_update(ref, cache, tumor, ctx.target, others, path[-1], entry0, setting)
    agree = abs(100 * cov - r.metrics["coverage_percent"]) < 0.5 and abs(100 * cov_m - r.metrics["margin_coverage_percent"]) < 0.5
    med_live = float(np.median(live))
    med_nodes = float(np.median(nodes))
    med_full = float(np.median(full[1:] if len(full) > 1 else full))
    return {"grid": geometry.describe_grid(ref), "updates": len(live), "prepare_once_s": round(prepare_s, 3),
            "zone_and_metrics_ms_median": round(1000 * med_live, 2),
            "zone_metrics_and_nodes_ms_median": round(1000 * med_nodes, 2),
            "zone_metrics_and_nodes_ms_p95": round(1000 * float(np.percentile(nodes, 95)), 2),
            "peer": "full-volume recomputation (every voxel, float32 numpy)",
            "peer_ms_median": round(1000 * med_full, 1),
            "ratio_full_over_live": round(med_full / med_live, 1),
            "peer_agrees_with_live_coverage": bool(agree)}


# ------------------------------------------------------------------------------------------------ 3. bioheat speed
def _reference_solver(theta0, k, rc, wcb, q, dt, steps, spacing_m):
    """Peer: textbook explicit Pennes step with scipy.ndimage.laplace (homogeneous, float64, isotropic spacing)."""
    from scipy import ndimage

    theta = theta0.astype(np.float64).copy()
    alpha_dt = k * dt / rc / spacing_m ** 2
    for _ in range(steps):
        lap = ndimage.laplace(theta, mode="constant", cval=0.0)
        theta = theta + alpha_dt * lap + dt / rc * (q - wcb * theta)
        theta[0, :, :] = theta[-1, :, :] = 0.0
        theta[:, 0, :] = theta[:, -1, :] = 0.0
        theta[:, :, 0] = theta[:, :, -1] = 0.0
    return theta


def bench_bioheat(quick: bool) -> dict:
    n = 100
    grid = geometry.make_image([n, n, n], [1.0, 1.0, 1.0], origin_ras=[49.5, 49.5, -49.5],
                               direction_ras=geometry.CT_AXES_RAS)
    logic = AblationZoneLogic(new_scene())
    dev = logic.device("emprint")
    s = dev.setting(100, 600)
    bh._CALIBRATION_CACHE.clear()  # time the calibration itself, not the cache
    t0 = time.perf_counter()
    src = bh.calibrate_source(dev, s)
    calib_s = time.perf_counter() - t0
    liver = bh.TISSUES["liver"]
    shape = (n, n, n)
    k = np.full(shape, liver.k_w_per_m_k, np.float32)
    rc = np.full(shape, liver.rho_c_j_per_m3_k, np.float32)
    w = np.full(shape, liver.perfusion_per_s, np.float32)
    tip = np.array([0.0, 0.0, s.tip_offset_mm])
    entry = tip - np.array([0.0, 0.0, 100.0])
    q = src.density(grid, tip, entry, s.power_w)
    steps = None
    imagio_times, peer_times = [], []
    for _rep in range(2):  # alternate the two solvers and keep each one's best time (the machine may be shared)
        t0 = time.perf_counter()
        res = bh.simulate(grid, k, rc, w, q, 600.0, perfusion_shutdown_c=None)
        imagio_times.append(time.perf_counter() - t0)
        steps = res.steps if not quick else max(res.steps // 10, 1)
        t0 = time.perf_counter()
        theta = _reference_solver(np.zeros(shape), liver.k_w_per_m_k, liver.rho_c_j_per_m3_k,
                                  liver.perfusion_per_s * bh.BLOOD_RHO_C, q.astype(np.float64), res.dt_s, steps, 1e-3)
        peer_times.append((time.perf_counter() - t0) * res.steps / steps)
    imagio_s, peer_s = min(imagio_times), min(peer_times)
    out = {"grid": "100^3 voxels at 1 mm", "simulated_s": 600.0, "steps": res.steps, "dt_s": round(res.dt_s, 4),
           "source_calibration_s": round(calib_s, 2), "imagio_solver_s": round(imagio_s, 2),
           "imagio_solver_runs_s": [round(t, 2) for t in imagio_times],
           "zone_axes_mm": [round(v, 1) for v in bh.zone_extent_mm(res.zone, grid, tip, entry).values()][:2],
           "target_s": 30.0}
    if steps != res.steps:
        res_cmp = bh.simulate(grid, k, rc, w, q, res.dt_s * steps, perfusion_shutdown_c=None, dt_s=res.dt_s)
        ref_theta = res_cmp.t_final_c - 37.0
    else:
        ref_theta = res.t_final_c - 37.0
    out.update({"peer": "textbook explicit scheme, float64, scipy.ndimage.laplace", "peer_s": round(peer_s, 2),
                "peer_runs_s": [round(t, 2) for t in peer_times],
                "peer_extrapolated_from_steps": steps, "ratio_peer_over_imagio": round(peer_s / imagio_s, 2),
                "max_abs_difference_to_peer_K": round(float(np.max(np.abs(ref_theta - theta))), 4),
                "max_temperature_rise_K": round(float(theta.max()), 1)})
    return out


# ------------------------------------------------------------------------------------------------ 4. validation
def _profile_svg(series, xlabel: str, ylabel: str, width: int = 760, height: int = 320) -> str:
    """A log-y line/point plot: series = [(label, x, y, colour, 'line'|'points')]."""
    ml, mb, mr, mt = 60, 42, 330, 12
    pw, ph = width - ml - mr, height - mt - mb
    xs = np.concatenate([np.asarray(x, float) for _, x, _, _, _ in series])
    ys = np.concatenate([np.asarray(y, float) for _, _, y, _, _ in series])
    ys = ys[ys > 0]
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = np.log10(ys.min()), np.log10(ys.max())

    def sx(v):
        return ml + (v - x0) / (x1 - x0) * pw

    def sy(v):
        return mt + ph - (np.log10(max(v, 10 ** y0)) - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
           f'font-family="sans-serif"><rect width="{width}" height="{height}" fill="white"/>']
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="black"/>'
               f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>')
    for t in np.linspace(x0, x1, 6):
        out.append(f'<text x="{sx(t):.1f}" y="{mt + ph + 14}" text-anchor="middle">{t:.0f}</text>')
    for e in range(int(np.floor(y0)), int(np.ceil(y1)) + 1):
        if y0 <= e <= y1:
            out.append(f'<text x="{ml - 4}" y="{sy(10.0 ** e) + 4:.1f}" text-anchor="end">{10.0 ** e:g}</text>')
    for n, (label, x, y, col, kind) in enumerate(series):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if kind == "line":
            pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(x, y, strict=True) if b > 0)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="1.5"/>')
        else:
            out += [f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.5" fill="{col}"/>' for a, b in zip(x, y, strict=True)
                    if b > 0]
        out.append(f'<text x="{ml + pw + 8}" y="{mt + 14 + 16 * n}" fill="{col}">{label}</text>')
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="14" y="{mt + ph / 2:.1f}" transform="rotate(-90 14 {mt + ph / 2:.1f})" '
               f'text-anchor="middle">{ylabel}</text></svg>')
    return "".join(out)


def bench_validation(figures: Path | None = None) -> dict:
    liver = bh.TISSUES["liver"]
    grid = oblique_image(size=(61, 61, 49), spacing=(1.0, 1.0, 1.25), origin_ras=(-30.0, -30.0, -30.0))
    shape = grid.GetSize()[::-1]
    c = geometry.ijk_to_ras(grid, [30, 30, 24])
    kji = np.argwhere(np.ones(shape, bool))
    r = np.linalg.norm(geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float)) - c, axis=1)
    val = {}
    for label, wb, dur in (("transient_300s_liver_perfusion", liver.perfusion_per_s, 300.0),
                           ("steady_state_strong_perfusion", 6e-3, 1500.0),
                           ("no_perfusion_300s_erfc", 0.0, 300.0)):
        res = bh.simulate(grid, np.full(shape, liver.k_w_per_m_k, np.float32),
                          np.full(shape, liver.rho_c_j_per_m3_k, np.float32), np.full(shape, wb, np.float32),
                          bh.point_source(grid, c, 2.0), dur, perfusion_shutdown_c=None)
        rise = (res.t_final_c - 37.0).ravel()
        t_an = float("inf") if label.startswith("steady") else dur
        row = {}
        for lo, hi in ((4.0, 16.0), (6.0, 16.0)):
            sel = (r >= lo) & (r <= hi)
            exact = bh.analytic_point_source(r[sel], t_an, 2.0, liver.k_w_per_m_k, liver.rho_c_j_per_m3_k, wb)
            rel = np.abs(rise[sel] - exact) / exact
            row[f"r_{lo:g}_{hi:g}_mm"] = {"median_rel_error_percent": round(100 * float(np.median(rel)), 2),
                                          "max_rel_error_percent": round(100 * float(rel.max()), 2)}
        val[label] = row
        if figures is not None and not label.startswith("no_perf"):
            edges = np.arange(2.5, 20.6, 1.0)
            mid = 0.5 * (edges[:-1] + edges[1:])
            binned = [float(rise[(r >= a) & (r < b)].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
            rr = np.linspace(2.0, 20.5, 200)
            exact = bh.analytic_point_source(rr, t_an, 2.0, liver.k_w_per_m_k, liver.rho_c_j_per_m3_k, wb)
            title = "300 s, liver perfusion" if label.startswith("transient") else "steady state, w = 6e-3 1/s"
            colour = "#d62728" if label.startswith("transient") else "#1f77b4"
            val.setdefault("_series", []).extend([(f"analytic, {title}", rr, exact, colour, "line"),
                                                  (f"solver (mean per mm), {title}", mid, binned, colour, "points")])
    series = val.pop("_series", None)
    if figures is not None and series:
        (figures / "bioheat_vs_analytic.svg").write_text(_profile_svg(
            series, "distance from a 2 W point source (mm)", "temperature rise (K)"))
    # calibration vs table, vessel-free; heat sink next to a 6 mm vessel
    grid = oblique_image(size=(80, 80, 60), spacing=(1.0, 1.0, 1.25), origin_ras=(-40.0, -40.0, -40.0))
    c = geometry.ijk_to_ras(grid, [40, 40, 30])
    u = np.array([0.2, 0.3, 0.93])
    u /= np.linalg.norm(u)
    logic = AblationZoneLogic(new_scene())
    table = []
    for dev_id, p, t in (("emprint", 100, 600), ("emprint", 75, 300), ("emprint", 150, 600), ("neuwave-pr", 65, 600),
                         ("amica", 60, 600), ("cool-tip-3cm", 200, 720)):
        s = logic.device(dev_id).setting(p, t)
        tip = c + s.tip_offset_mm * u
        _tissue, perfused, why = bh.calibration_conditions(s)
        res = logic.bioheat_zone(logic.prepare(grid, tissue=s.organ or "liver"), tip, tip - 100 * u, dev_id, p, t,
                                 perfusion=perfused)
        m = res.metrics
        table.append({"device": dev_id, "setting": f"{p} W/{t} s", "conditions": why, "perfused": perfused,
                      "table_axes_mm": m["table_zone_axes_mm"][:2], "bioheat_axes_mm": m["zone_axes_mm"][:2],
                      "short_error_mm": round(m["zone_axes_mm"][1] - s.zone_short_mm, 2),
                      "long_error_mm": round(m["zone_axes_mm"][0] - s.zone_long_mm, 2)})
    val["bioheat_vs_table_vessel_free_in_the_tables_conditions"] = table
    s = logic.device("emprint").setting(100, 600)
    tip = c + s.tip_offset_mm * u
    side = np.cross(u, [1.0, 0, 0])
    side /= np.linalg.norm(side)
    kji = np.argwhere(np.ones(grid.GetSize()[::-1], bool))
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    sinks = []
    for dist in (8.0, 10.0, 12.0):
        q = pts - (c + dist * side)
        vessel = (np.linalg.norm(q - np.outer(q @ u, u), axis=1) <= 3.0).reshape(grid.GetSize()[::-1])
        ctx = logic.prepare(grid)
        free = logic.bioheat_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600, perfusion=True)
        sink = logic.bioheat_zone(ctx, tip, tip - 100 * u, "emprint", 100, 600, perfusion=True, vessels=vessel)
        g = free.bioheat.grid
        box = tuple(slice(a, b) for a, b in zip(free.box[::2], free.box[1::2], strict=True))
        lumen = int((free.mask_box.astype(bool) & vessel[box]).sum())
        vox = geometry.voxel_volume_ml(grid)
        if figures is not None and dist == 10.0:
            from imagio.report import slice_png

            def full(res):
                arr = np.zeros(grid.GetSize()[::-1], np.uint8)
                arr[tuple(slice(a, b) for a, b in zip(res.box[::2], res.box[1::2], strict=True))] = res.mask_box
                return geometry.copy_geometry(arr, grid)

            blank = sitk.Cast(geometry.copy_geometry(np.zeros(grid.GetSize()[::-1], np.uint8), grid), sitk.sitkFloat32)
            slice_png(figures / "heat_sink_axial.png", blank, [
                (full(free), (1.0, 0.65, 0.0)), (full(sink), (0.9, 0.1, 0.6)),
                (geometry.copy_geometry(vessel.astype(np.uint8), grid), (0.1, 0.3, 1.0))], c, "axial",
                window=(0.0, 400.0))
        sinks.append({
            "vessel_axis_from_probe_mm": dist, "vessel_diameter_mm": 6.0,
            "radius_towards_vessel_no_vessel_mm": round(bh.ray_extent_mm(free.mask_box, g, c, side), 1),
            "radius_towards_vessel_with_vessel_mm": round(bh.ray_extent_mm(sink.mask_box, g, c, side), 1),
            "shrinkage_towards_vessel_mm": round(bh.ray_extent_mm(free.mask_box, g, c, side)
                                                 - bh.ray_extent_mm(sink.mask_box, g, c, side), 1),
            "change_opposite_side_mm": round(bh.ray_extent_mm(free.mask_box, g, c, -side)
                                             - bh.ray_extent_mm(sink.mask_box, g, c, -side), 1),
            "zone_ml_no_vessel": free.metrics["zone_volume_ml"], "zone_ml_with_vessel": sink.metrics["zone_volume_ml"],
            "tissue_spared_ml_excluding_lumen": round((int(free.mask_box.sum()) - int(sink.mask_box.sum()) - lumen) * vox, 2)})
    val["heat_sink_emprint_100W_600s_perfused"] = sinks
    # table-zone axes on oblique, anisotropic grids
    errs = []
    for spacing, axis, ang in (((0.8, 0.7, 2.5), (1, 2, 3), 23.0), ((1.1, 0.6, 1.4), (-2, 0.5, 1), 61.0)):
        g = oblique_image(size=(110, 120, 70), spacing=spacing, origin_ras=(-40.0, -35.0, -50.0), axis=axis,
                          angle_deg=ang)
        for d in ((1, 0.3, -0.2), (-0.3, 0.8, 0.5), (0.1, -0.2, 1.0)):
            u2 = np.asarray(d, float) / np.linalg.norm(d)
            s = logic.device("emprint").setting(100, 600)
            centre = geometry.ijk_to_ras(g, (np.array(g.GetSize()) - 1) / 2.0) + [0.37, -0.21, 0.53]
            tip2 = centre + s.tip_offset_mm * u2
            mask = EllipsoidZone.from_probe(tip2, tip2 - 90 * u2, s).rasterise(g)
            arr = sitk.GetArrayFromImage(mask)
            p = geometry.ijk_to_ras(g, np.argwhere(arr)[:, ::-1].astype(float)) - centre
            z = p @ u2
            r2 = np.einsum("ij,ij->i", p, p) - z * z
            errs.append(max(abs(2 * np.sqrt(5 * np.mean(z * z)) - s.zone_long_mm),
                            abs(2 * np.sqrt(5 * np.mean(r2) / 2) - s.zone_short_mm)) / max(spacing))
    val["table_axes_error_in_voxels_max"] = round(float(max(errs)), 3)
    return val


PARTS = ("validation", "bioheat", "live", "plans", "combined", "replan")


def _plans_summary(plans: list[dict]) -> dict:
    ok = [r for r in plans if "coverage_percent" in r]
    feas = [r for r in ok if r["feasible"]]
    return {
        "cases": len(ok), "feasible": len(feas),
        "every_feasible_plan_keeps_the_margin": all(r["minimal_margin_mm"] >= 5.0 for r in feas),
        "every_feasible_plan_keeps_it_independently": all(
            r["independent_margin_mm"] >= 5.0 - r["half_largest_spacing_mm"] for r in feas),
        "max_planner_vs_independent_margin_mm": max((abs(r["minimal_margin_mm"] - r["independent_margin_mm"])
                                                     for r in ok if r["independent_margin_mm"] is not None),
                                                    default=None),
        "max_run_time_s": max((r["run_time_s"] for r in ok), default=None),
        "infeasible": [{"case": r["case"], "reason": r["reason"]} for r in ok if not r["feasible"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_ablation.json")
    ap.add_argument("--quick", action="store_true", help="fewer cases and updates (a smoke run)")
    ap.add_argument("--verify-bioheat", action="store_true",
                    help="also plan with the bioheat check and re-planning (slow: about a minute per tumour)")
    ap.add_argument("--figures", help="folder for the figures (bioheat_vs_analytic.svg, heat_sink_axial.png)")
    ap.add_argument("--part", action="append", choices=PARTS,
                    help="run only this part (repeatable; default: all; 'combined' runs the plans too)")
    args = ap.parse_args()
    parts = set(args.part or PARTS)
    if "combined" in parts:
        parts.add("plans")  # the combined-heating comparison re-simulates the 2- and 3-probe plans
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()
    result = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "platform": platform.platform()},
              "parts": [p for p in PARTS if p in parts], "quick": bool(args.quick)}
    t0 = time.perf_counter()
    figures = Path(args.figures) if args.figures else None
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
    if "validation" in parts:
        result["validation"] = bench_validation(figures)
        print(json.dumps(result["validation"], indent=1), flush=True)
    if "bioheat" in parts:
        result["bioheat_speed"] = bench_bioheat(args.quick)
        print(json.dumps(result["bioheat_speed"], indent=1), flush=True)
    if "live" in parts:
        result["live_update"] = bench_live(args.quick)
        print(json.dumps(result["live_update"], indent=1), flush=True)
    if "plans" in parts:
        result["plans"] = bench_plans(args.quick, args.verify_bioheat)
        result["plans_summary"] = _plans_summary(result["plans"])
        print(json.dumps(result["plans_summary"], indent=1), flush=True)
    if "combined" in parts:
        result["combined_heating_vs_union"] = bench_combined_heating(args.quick)
    if "replan" in parts:
        result["replan_probe_moved_8_mm"] = bench_replan()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} in {result['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
