"""The ablation step of `imagio demo`: plan the case's liver tumour, then a bioheat zone of the first probe."""

from __future__ import annotations

import time

import numpy as np

from imagio.errors import ImagioError

DEVICE = "emprint"
MARGIN_MM = 5.0
AVOID = ("hepatic_vessels", "ribs", "lungs", "airway_lumen")


def _find(segments: dict, *words):
    for name, s in segments.items():
        if any(w in name.lower() for w in words):
            return name, s
    return None, None


def demo_step(ctx) -> None:
    from imagio.io import Segment
    from imagio.mrml import add_line, add_model, add_table, segmentation_node_from_segments
    from imagio.report import slice_png

    from .logic import ZONE_COLOR, AblationZoneLogic, Probe

    t0 = time.perf_counter()
    progress = ctx.progress
    case = ctx.case
    ct = case["ct"]
    segs = case["segments"]
    tname, tumor = ("liver_tumor", segs["liver_tumor"]) if "liver_tumor" in segs else _find(segs, "tumor", "tumour")
    if tumor is None:
        raise ImagioError("The case has no liver tumour segment", "Add a segment named like 'liver_tumor'")
    avoid = {n: segs[n].mask for n in AVOID if n in segs}
    vessels = segs.get("hepatic_vessels")
    body = segs["body"].array() if "body" in segs else None
    logic = AblationZoneLogic(ctx.scene)
    progress.update(0.05, "ablation: planning probes")
    plan = logic.plan(ct, tumor.mask, DEVICE, MARGIN_MM, avoid, body, tissue="liver", progress=progress.sub(0.05, 0.5))
    plan_d = plan.to_dict()
    summary = {"device": DEVICE, "feasible": plan.feasible, "probe_count": len(plan.probes),
               "coverage_percent": round(plan.coverage_percent, 2),
               "tumor_coverage_percent": round(plan.tumor_coverage_percent, 2),
               "minimal_margin_mm": plan_d.get("minimal_margin_mm"), "plan_time_s": round(plan.run_time_s, 2),
               "reason": plan.reason, "probes": plan_d["probes"], "warnings": plan.warnings}
    metrics = [("device", DEVICE, ""), ("probes", len(plan.probes), ""),
               ("coverage of tumour + 5 mm", plan.coverage_percent, "%"),
               ("coverage of tumour", plan.tumor_coverage_percent, "%"),
               ("minimal margin", plan_d.get("minimal_margin_mm"), "mm"),
               ("planning time", plan.run_time_s, "s")]
    images = []
    overlays = [(tumor.mask, tumor.color)]
    if plan.union_mask is not None and plan.probes:
        segmentation_node_from_segments(ctx.scene, [Segment("planned_ablation_zone", plan.union_mask, ZONE_COLOR)],
                                        "Planned ablation zone", case.get("ct_node"))
        for n, p in enumerate(plan.probes):
            add_line(ctx.scene, f"Ablation probe {n + 1}", p.entry_ras, p.tip_ras)
            add_model(ctx.scene, f"Ablation zone {n + 1} model", p.zone().polydata_ras(), color=ZONE_COLOR, opacity=0.35)
        add_table(ctx.scene, "Ablation plan", [{"probe": n + 1, "power_w": p.setting.power_w, "time_s": p.setting.time_s,
                                                 "path_length_mm": round(float(np.linalg.norm(p.tip_ras - p.entry_ras)), 1)}
                                                for n, p in enumerate(plan.probes)])
        overlays.append((plan.union_mask, ZONE_COLOR))
        # bioheat zone of all planned probes heating together, with the hepatic vessels as heat sinks
        progress.update(0.55, "ablation: bioheat zone of the planned probes")
        others = {"hepatic_vessels": vessels.mask} if vessels is not None else {}
        zctx = logic.prepare(ct, tumor.mask, others, MARGIN_MM, tissue="liver")
        tissues = {}
        if "liver" in segs:  # tissue properties per segment: liver inside the liver, soft tissue elsewhere
            tissues["soft-tissue"] = ~segs["liver"].array()
        res = logic.bioheat_zones(zctx, [Probe(p.tip_ras, p.entry_ras, p.setting) for p in plan.probes],
                                  logic.device(DEVICE), vessels=vessels.mask if vessels is not None else None,
                                  tissue_labels=tissues, progress=progress.sub(0.55, 0.95))
        bm = res.metrics
        summary["bioheat_probe1"] = {k: bm[k] for k in ("zone_axes_mm", "table_zone_axes_mm", "coverage_percent",
                                                         "margin_coverage_percent", "minimal_margin_mm", "zone_volume_ml",
                                                         "solver_time_s", "criterion", "combined_heating") if k in bm}
        metrics += [("bioheat zone of the planned probes (in vivo, vessels as heat sinks)", bm["zone_volume_ml"], "ml"),
                    ("planned (table) zone", round(plan.zone_volume_ml, 2), "ml"),
                    ("bioheat coverage of tumour", bm.get("coverage_percent"), "%"),
                    ("bioheat minimal margin", bm.get("minimal_margin_mm"), "mm"),
                    ("bioheat solver time", bm["solver_time_s"], "s")]
        achieved = res.full_mask()
        overlays.append((achieved, (1.0, 0.2, 0.6)))
        # hand the zone on to the margin step, as if this were the post-treatment segmentation
        case["ablation_zone"] = Segment("simulated ablation zone (bioheat, vessels as heat sinks)", achieved,
                                        (1.0, 0.2, 0.6))
        markers = [p.tip_ras for p in plan.probes]
        images.append(slice_png(ctx.image_path("ablation_axial.png"), ct, overlays, plan.probes[0].tip_ras, "axial",
                                markers_ras=markers))
        images.append(slice_png(ctx.image_path("ablation_coronal.png"), ct, overlays, plan.probes[0].tip_ras, "coronal",
                                markers_ras=markers))
    text = (f"{plan.reason}. Device zones: {logic.device(DEVICE).name}, each setting with its source (see the module "
            "README); orange: planned table zones, pink: Pennes bioheat zone of all planned probes heating together, "
            "with perfusion and the hepatic vessels as 37 C heat sinks (source calibrated to the table). "
            + " ".join(f"Warning: {w}." for w in plan.warnings))
    ctx.report.add_section("Ablation zone and probe plan", metrics, images, text=text)
    summary["runtime_s"] = round(time.perf_counter() - t0, 2)
    ctx.summary["ablation"] = summary
    progress.update(1.0, "ablation: done")
