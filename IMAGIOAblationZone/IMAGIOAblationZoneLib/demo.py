"""The ablation step of `imagio demo`: plan the case's tumour, then the bioheat zone of the planned probes."""

from __future__ import annotations

import time

import numpy as np

from imagio.errors import ImagioError
from imagio.io import Segment

from .logic import ZONE_COLOR, AblationZoneLogic, Probe, body_from_ct

DEVICE = "emprint"
MARGIN_MM = 5.0
#: roles (imagio.naming) of the structures the probe paths avoid; the lungs too unless the tumour is in them
AVOID_ROLES = ("vessel", "bone", "airway", "airway_wall", "spinal_cord", "heart")
#: this module's tissue for the demo case's tumour site (imagio.demo.DemoCase.tumor_site)
TISSUE_OF_SITE = {"liver": "liver", "lung": "lung", "soft_tissue": "soft-tissue"}


def demo_step(ctx) -> None:
    from imagio.mrml import add_line, add_model, add_table, segmentation_node_from_segments

    t0 = time.perf_counter()
    progress = ctx.progress
    case = ctx.case
    ct = case.ct
    tumor = case.tumor  # chosen once by imagio.demo (terminology, common names or --tumor-segment)
    if tumor is None:
        raise ImagioError("The case has no tumour segment", "Name it with --tumor-segment")
    tissue = TISSUE_OF_SITE.get(case.tumor_site or "", "liver")
    roles = AVOID_ROLES + (() if case.tumor_site == "lung" else ("lung",))
    avoid = {s.name: s.mask for s in case.structures(*roles)}
    vessel_union = case.union("vessel")
    vessels = Segment("vessels", vessel_union) if vessel_union is not None else None
    bodies = case.structures("body")
    body = bodies[0].array() if bodies else body_from_ct(ct)
    logic = AblationZoneLogic(ctx.scene)
    progress.update(0.05, "ablation: planning probes")
    plan = logic.plan(ct, tumor.mask, DEVICE, MARGIN_MM, avoid, body, tissue=tissue, progress=progress.sub(0.05, 0.5))
    plan_d = plan.to_dict()
    summary = {"device": DEVICE, "tumor": tumor.name, "tissue": tissue, "margin_mm": MARGIN_MM, "feasible": plan.feasible, "probe_count": len(plan.probes),
               "coverage_percent": round(plan.coverage_percent, 2),
               "tumor_coverage_percent": round(plan.tumor_coverage_percent, 2),
               "minimal_margin_mm": plan_d.get("minimal_margin_mm"), "plan_time_s": round(plan.run_time_s, 2),
               "reason": plan.reason, "probes": plan_d["probes"], "warnings": plan.warnings}
    metrics = [("device", DEVICE, ""), ("probes", len(plan.probes), ""),
               ("coverage of tumour + 5 mm", plan.coverage_percent, "%"),
               ("coverage of tumour", plan.tumor_coverage_percent, "%"),
               ("minimal margin", plan_d.get("minimal_margin_mm"), "mm"),
               ("planning time", plan.run_time_s, "s")]
    pictures = {"zones": [], "probes": [(p.tip_ras, p.entry_ras) for p in plan.probes], "avoid": avoid}
    case.results["ablation"] = pictures  # drawn by IMAGIOAblationZoneLib.report.demo_report
    if plan.union_mask is not None and plan.probes:
        segmentation_node_from_segments(ctx.scene, [Segment("planned_ablation_zone", plan.union_mask, ZONE_COLOR)],
                                        "Planned ablation zone", case.get("ct_node"))
        for n, p in enumerate(plan.probes):
            add_line(ctx.scene, f"Ablation probe {n + 1}", p.entry_ras, p.tip_ras)
            add_model(ctx.scene, f"Ablation zone {n + 1} model", p.zone().polydata_ras(), color=ZONE_COLOR, opacity=0.35)
        add_table(ctx.scene, "Ablation plan", [{"probe": n + 1, "power_w": p.setting.power_w, "time_s": p.setting.time_s,
                                                 "path_length_mm": round(float(np.linalg.norm(p.tip_ras - p.entry_ras)), 1)}
                                                for n, p in enumerate(plan.probes)])
        pictures["zones"].append((plan.union_mask, "planned zones (device table)", ZONE_COLOR))
        # bioheat zone of all planned probes heating together, with the hepatic vessels as heat sinks
        progress.update(0.55, "ablation: bioheat zone of the planned probes")
        others = {"hepatic_vessels": vessels.mask} if vessels is not None else {}
        zctx = logic.prepare(ct, tumor.mask, others, MARGIN_MM, tissue=tissue)
        tissues = {}
        livers = case.structures("liver")
        if livers and tissue == "liver":  # tissue properties per segment: liver inside the liver, soft tissue elsewhere
            tissues["soft-tissue"] = ~livers[0].array()
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
        pictures["zones"].append((achieved, "bioheat zone of the probes", (1.0, 0.2, 0.6)))
        # hand the zone on to the margin step, as if this were the post-treatment segmentation
        case.ablation_zone = Segment("simulated ablation zone (bioheat, vessels as heat sinks)", achieved,
                                     (1.0, 0.2, 0.6))
    text = (f"{plan.reason}. Device zones: {logic.device(DEVICE).name}, each setting with its source (see the module "
            "README); orange: planned table zones, pink: Pennes bioheat zone of all planned probes heating together, "
            "with perfusion and the hepatic vessels as 37 C heat sinks (source calibrated to the table). "
            + " ".join(f"Warning: {w}." for w in plan.warnings))
    ctx.report.add_section(f"Ablation zone and probe plan ({tumor.name}, {tissue})", metrics, text=text)
    summary["runtime_s"] = round(time.perf_counter() - t0, 2)
    ctx.summary["ablation"] = summary
    progress.update(1.0, "ablation: done")
