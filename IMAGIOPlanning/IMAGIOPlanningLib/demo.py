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

SHIPPED_MODEL = "phantom-lesions"


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    s = int(x.sum() + y.sum())
    return float("nan") if s == 0 else 2.0 * int((x & y).sum()) / s


def demo_step(ctx) -> None:
    from imagio.geometry import centroid_ras
    from imagio.model_card import find_card_by_name
    from imagio.mrml import segments_from_segmentation_node
    from imagio.report import slice_png

    from .logic import PlanningLogic

    case = ctx.case
    ct_node = case["ct_node"]
    truth = case["segments"]
    logic = PlanningLogic(ctx.scene)
    summary: dict = {}
    metrics, images = [], []
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
                row["dice_vs_truth"] = round(_dice(got[s["name"]].mask, truth[key].mask), 4)
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
            images.append(slice_png(ctx.image_path("planning_model_liver.png"), case["ct"],
                                    [(truth["liver_tumor"].mask, (0.2, 0.8, 0.2)),
                                     (got["Liver tumor"].mask, (1.0, 0.5, 0.1))],
                                    centroid_ras(truth["liver_tumor"].mask)))
    else:
        summary["model"] = {"skipped": f"the shipped '{SHIPPED_MODEL}' model is trained on the phantom only"}
    nodule = truth.get("lung_nodule") or next((s for n, s in truth.items() if "nodule" in n.lower()), None)
    if nodule is not None and np.any(sitk.GetArrayViewFromImage(nodule.mask)):
        seed = centroid_ras(nodule.mask)
        ctx.progress.update(0.75, "planning: seeded lung nodule")
        sres = logic.segment_from_seed_nodes(ct_node, seed, "lung-nodule", progress=ctx.progress.sub(0.75, 0.95))
        mask = segments_from_segmentation_node(sres.node, ct_node)[0].mask
        d = _dice(mask, nodule.mask)
        seg = sres.segments[0]
        summary["seeded"] = {"kind": "lung-nodule", "seed_ras": [round(float(v), 2) for v in seed],
                             "volume_ml": seg["volume_ml"], "truth_volume_ml": round(nodule.volume_ml(), 3),
                             "dice_vs_truth": round(d, 4), "radius_mm": sres.details["radius_mm"],
                             "runtime_s": round(sres.runtime_s, 3)}
        metrics += [("seeded lung nodule: Dice vs truth", d, ""), ("seeded lung nodule volume", seg["volume_ml"], "ml"),
                    ("lung nodule truth volume", nodule.volume_ml(), "ml"),
                    ("seeded estimated radius", sres.details["radius_mm"], "mm")]
        images.append(slice_png(ctx.image_path("planning_seeded_nodule.png"), case["ct"],
                                [(nodule.mask, (0.2, 0.8, 0.2)), (mask, (1.0, 0.3, 0.3))], seed, window=(-400, 1500),
                                markers_ras=[seed]))
    ctx.summary["planning"] = summary
    ctx.report.add_section(
        "Planning: lesion segmentation", metrics, images,
        text="ONNX Runtime model (the shipped phantom-lesions demonstration model, not for clinical use) and "
             "seeded segmentation from one point. Green: ground truth; orange/red: IMAGIO.")
