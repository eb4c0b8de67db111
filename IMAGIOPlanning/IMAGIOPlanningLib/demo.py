"""The planning step of `imagio demo`: the shipped ONNX model end to end, and a seeded segmentation.

On the phantom, the model's segments and the seeded lung nodule are compared
with the phantom's ground truth (Dice, volumes in ml). On a real case (--case)
the shipped model, trained on the phantom only, is not run: its output there
would be meaningless; the seeded method runs when the case has a lung nodule
segment (seeded at its centroid).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import centroid_ras, dice
from imagio.model_card import find_card_by_name

SHIPPED_MODEL = "phantom-lesions"
#: seeded-segmentation kind for the tumour's site (imagio.naming.lesion_site)
KIND_OF_SITE = {"lung": "lung-nodule", "liver": "liver-tumor", "soft_tissue": "soft-tissue"}


def demo_step(ctx) -> None:
    from imagio.mrml import segments_from_segmentation_node

    from .logic import PlanningLogic

    case = ctx.case
    ct_node = case["ct_node"]
    truth = case["segments"]
    logic = PlanningLogic(ctx.scene)
    summary: dict = {}
    metrics = []
    pictures = []  # (segments, seed, (truth mask, label), name): drawn by IMAGIOPlanningLib.report.demo_report
    case.results["planning"] = {"pictures": pictures}
    truth_key = {"Liver tumor": "liver_tumor", "Lung nodule": "lung_nodule"}
    if case.get("phantom") is not None:
        card = find_card_by_name(SHIPPED_MODEL)
        res = logic.segment_with_model_nodes(ct_node, card, largest_component=True, progress=ctx.progress.sub(0.0, 0.7))
        got = {s.name: s for s in segments_from_segmentation_node(res.node, ct_node)}
        model_rows = []
        for s in res.segments:
            row = dict(s)
            key = truth_key.get(s["name"])
            if key in truth:
                row["dice_vs_truth"] = round(dice(got[s["name"]].mask, truth[key].mask), 4)
                row["truth_volume_ml"] = round(truth[key].volume_ml(), 3)
                metrics.append((f"model: {s['name']} Dice vs phantom truth", row["dice_vs_truth"], ""))
            metrics.append((f"model: {s['name']} volume", s["volume_ml"], "ml"))
            model_rows.append(row)
        for name in res.empty_labels:
            metrics.append((f"model: {name}", "not found", ""))
        metrics += [("model run time", res.runtime_s, "s"), ("execution provider", res.execution_provider, "")]
        summary["model"] = {"name": card.name, "clinical_use": card.clinical_use, "segments": model_rows,
                            "empty_labels": res.empty_labels, "runtime_s": round(res.runtime_s, 3),
                            "execution_provider": res.execution_provider}
        if "Liver tumor" in got:
            pictures.append(([got["Liver tumor"]], None, (truth["liver_tumor"].mask, "liver_tumor (phantom truth)"),
                             "planning_model"))
    else:
        summary["model"] = {"skipped": f"the shipped '{SHIPPED_MODEL}' model is trained on the phantom only"}
    # the phantom's lung nodule (its liver tumour is the model's); on a real case its tumour, seeded as its site says
    nodule = case.lung_target if case.is_phantom else case.tumor
    kind = KIND_OF_SITE.get(case.tumor_site if nodule is case.tumor else "lung", "soft-tissue")
    if nodule is not None and np.any(sitk.GetArrayViewFromImage(nodule.mask)):
        seed = centroid_ras(nodule.mask)
        ctx.progress.update(0.75, f"planning: seeded {kind}")
        try:
            sres = logic.segment_from_seed_nodes(ct_node, seed, kind, progress=ctx.progress.sub(0.75, 0.95))
        except ImagioError as e:  # e.g. a lesion larger than the seeded method takes: said, not a failed demo
            summary["seeded"] = {"kind": kind, "segment": nodule.name, "refused": str(e)}
            metrics.append((f"seeded {kind} from the centre of '{nodule.name}'", f"refused: {e}", ""))
            sres = None
        if sres is not None:
            seeded = segments_from_segmentation_node(sres.node, ct_node)[0]
            d = dice(seeded.mask, nodule.mask)
            seg = sres.segments[0]
            ref = "phantom truth" if case.is_phantom else f"the case's '{nodule.name}'"
            summary["seeded"] = {"kind": kind, "segment": nodule.name, "seed_ras": [round(float(v), 2) for v in seed],
                                 "volume_ml": seg["volume_ml"], "truth_volume_ml": round(nodule.volume_ml(), 3),
                                 "dice_vs_truth": round(d, 4), "radius_mm": sres.details["radius_mm"],
                                 "runtime_s": round(sres.runtime_s, 3)}
            metrics += [(f"seeded {kind}: Dice vs {ref}", d, ""), (f"seeded {kind} volume", seg["volume_ml"], "ml"),
                        (f"{nodule.name} volume", nodule.volume_ml(), "ml"),
                        ("seeded estimated radius", sres.details["radius_mm"], "mm")]
            pictures.append(([seeded], seed, (nodule.mask, ref), "planning_seeded"))
    ctx.summary["planning"] = summary
    ctx.report.add_section(
        "Planning: lesion segmentation", metrics,
        text="ONNX Runtime model (the shipped phantom-lesions demonstration model, not for clinical use; on the "
             "phantom only) and seeded segmentation from one point. Green outline: the reference; colour: IMAGIO.")
