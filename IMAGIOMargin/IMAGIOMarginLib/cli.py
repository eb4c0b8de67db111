"""`imagio margin`: post-ablation margin assessment from the command line.

    imagio margin --tumor SEG --ablation SEG [--pre-ct CT --post-ct CT --register none|rigid|deformable]
                  [--threshold-mm 5] [--sigma-mm S] [--planned-zone SEG] --out DIR

writes DIR/margin.json (metrics, units in the key names) and DIR/margin.mrb.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imagio.cli_utils import staged_output, write_json
from imagio.errors import ImagioError
from imagio.progress import Progress, terminal_progress

from .policy import VERDICT


def _pick(path, name, reference, role):
    from imagio.io import find_segment, read_segmentation

    segments = read_segmentation(path, reference=reference)
    if name is None and len(segments) > 1:
        raise ImagioError(
            f"The {role} file {path} holds {len(segments)} segments (not a single binary mask)",
            f"Choose one with --{ {'tumour': 'tumor', 'organ': 'organ', 'planned zone': 'planned-zone'}.get(role, 'ablation')}-segment NAME; segments: "
            + ", ".join(s.name for s in segments[:12]) + (" ..." if len(segments) > 12 else ""))
    return find_segment(segments, name)


def _landmarks(path):
    import numpy as np

    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImagioError(f"Landmark file {p} does not exist", "Give a text file with one R,A,S point (mm) per line")
    try:
        pts = np.loadtxt(p, delimiter=",", ndmin=2)
    except ValueError as e:
        raise ImagioError(f"{p} is not a list of R,A,S points", "One landmark per line: R,A,S in mm") from e
    if pts.shape[1] != 3:
        raise ImagioError(f"{p} has {pts.shape[1]} columns", "One landmark per line: R,A,S in mm")
    return pts


def run(args) -> int:
    from imagio.bundle import save_mrb
    from imagio.io import read_image
    from imagio.mrml import volume_node_from_image
    from imagio.scene import new_scene

    from .logic import MarginLogic

    if (args.pre_ct is None) != (args.post_ct is None):
        raise ImagioError("Only one of --pre-ct and --post-ct was given", "Give both CTs, or neither")
    if args.register != "none" and args.pre_ct is None:
        raise ImagioError(f"--register {args.register} needs --pre-ct and --post-ct",
                          "Give both CTs, or use --register none for masks already in one frame")
    pre = read_image(args.pre_ct) if args.pre_ct else None
    post = read_image(args.post_ct) if args.post_ct else None
    if args.accept_registration and args.register == "none":
        raise ImagioError("--accept-registration only applies to a registration",
                          "Use it with --register rigid or deformable")
    if args.organ and args.register == "none":
        raise ImagioError("--organ only restricts a registration", "Use it with --register rigid or deformable")
    organ = _pick(args.organ, args.organ_segment, post, "organ") if args.organ else None
    tumor = _pick(args.tumor, args.tumor_segment, pre, "tumour")
    zone = _pick(args.ablation, args.ablation_segment, post, "ablation zone")
    planned = _pick(args.planned_zone, args.planned_zone_segment, pre, "planned zone") if args.planned_zone else None
    scene = new_scene()
    logic = MarginLogic(scene)
    result = logic.assess(tumor, zone, pre, post, register_mode=args.register, threshold_mm=args.threshold_mm,
                          sigma_mm=args.sigma_mm, landmarks_pre_ras=_landmarks(args.landmarks_pre),
                          landmarks_post_ras=_landmarks(args.landmarks_post), n_samples=args.samples,
                          seed=args.seed, progress=Progress(terminal_progress()), organ=organ,
                          accept_registration=args.accept_registration,
                          rotation_sigma_deg=args.rotation_sigma_deg,
                          tumor_boundary_sigma_mm=args.tumor_boundary_sigma_mm,
                          zone_boundary_sigma_mm=args.zone_boundary_sigma_mm, planned_zone=planned)
    if post is not None:
        volume_node_from_image(scene, post, "post-treatment CT")
    logic.add_to_scene(result)
    inputs = [p for p in (args.tumor, args.ablation, args.pre_ct, args.post_ct, args.landmarks_pre,
                          args.landmarks_post, args.organ, args.planned_zone) if p]
    data = result.to_dict()
    data["inputs"] = {"tumor": str(args.tumor), "tumor_segment": tumor.name, "ablation": str(args.ablation),
                      "ablation_segment": zone.name, "pre_ct": args.pre_ct, "post_ct": args.post_ct}
    with staged_output(args.out, inputs=inputs) as stage:
        write_json(stage / "margin.json", data)
        save_mrb(scene, stage / "margin.mrb")
        from .report import write_report  # report.html, report.pdf, metrics.csv (imagio.report)
        write_report(stage, result, data, post if post is not None else pre, data["inputs"])
    ci = data["margin_ci_mm"]
    print(f"minimal margin {data['minimal_margin_mm']:.2f} mm (95% interval {ci[0]:.2f} to {ci[1]:.2f} mm, "
          f"sigma {data['sigma_mm']:g} mm), coverage {data['coverage_percent']:.2f} %, "
          f"residual tumour {data['residual_tumor_ml']:.3f} ml, "
          f"P(margin >= {data['threshold_mm']:g} mm) = {100 * data['p_margin_ge_threshold']:.1f} %")
    reg = data["registration"]
    if reg["mode"] != "none":
        t, r = reg["translation_mm"], reg["rotation_deg"]
        print(f"registration ({reg['mode']}): {reg['status']}, similarity (normalised cross-correlation) "
              f"{reg['similarity_before']:.3f} before, {reg['similarity_after']:.3f} after; translation "
              f"{t[0]:.2f}, {t[1]:.2f}, {t[2]:.2f} mm (R, A, S), rotation {r[0]:.2f}, {r[1]:.2f}, {r[2]:.2f} deg"
              + (f"; landmark error {reg['tre_mm']:.2f} mm" if reg.get("tre_mm") is not None else ""))
        for failure in reg["qc_failures"]:
            print(f"warning: registration accepted by the user although {failure}")
    print(f"verdict: {data['verdict_text']}")
    if "plan_vs_achieved" in data:
        pva = data["plan_vs_achieved"]
        print(f"plan vs achieved: {pva['planned_not_ablated_ml']:.2f} ml planned but not ablated; "
              f"{pva['surface_short_of_plan_percent']:.1f} % of the tumour surface short of the plan by more than "
              f"{pva['shortfall_tolerance_mm']:g} mm")
    for note in data["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.out}/margin.json and {args.out}/margin.mrb")
    return 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "margin", help="post-ablation margin: minimal ablative margin (mm), coverage, uncertainty, verdict",
        description="Margin of a tumour (segmented on the pre-treatment CT) by an ablation zone (segmented on the "
                    "post-treatment CT). Points in RAS mm. Writes OUT/margin.json and OUT/margin.mrb.")
    p.add_argument("--tumor", required=True, help="tumour segmentation (.seg.nrrd, label/binary NRRD/NIfTI, "
                   "RTSTRUCT (needs --pre-ct), DICOM SEG)")
    p.add_argument("--ablation", required=True, help="ablation-zone segmentation (same formats; RTSTRUCT needs --post-ct)")
    p.add_argument("--tumor-segment", help="segment name in the tumour file (needed when it holds several)")
    p.add_argument("--ablation-segment", help="segment name in the ablation file (needed when it holds several)")
    p.add_argument("--pre-ct", help="pre-treatment CT (DICOM folder or image file)")
    p.add_argument("--post-ct", help="post-treatment CT (DICOM folder or image file)")
    p.add_argument("--register", choices=("none", "rigid", "deformable"), default="none",
                   help="registration of the pre- to the post-treatment CT (default none: masks share a frame)")
    p.add_argument("--organ", help="organ segmentation on the post-treatment CT (e.g. the liver): the registration "
                   "only looks inside it")
    p.add_argument("--organ-segment", help="segment name in the organ file (needed when it holds several)")
    p.add_argument("--accept-registration", action="store_true",
                   help="use a registration that fails its quality control (similarity worse than none, diverged, "
                   "or CTs not showing the same anatomy), which is otherwise refused (exit 2); recorded in "
                   "margin.json as registration.override")
    p.add_argument("--threshold-mm", type=float, default=VERDICT.threshold_mm,
                   help=f"margin threshold for the verdict (mm, default {VERDICT.threshold_mm:g})")
    p.add_argument("--sigma-mm", type=float, default=None,
                   help="registration uncertainty per axis (mm; default: landmark RMS TRE / sqrt(3), else 1.02 from "
                        "the published mean TRE 1.62 mm)")
    p.add_argument("--rotation-sigma-deg", type=float, default=None,
                   help="registration rotation uncertainty per axis (degrees; default 0: see the README)")
    p.add_argument("--tumor-boundary-sigma-mm", type=float, default=None,
                   help="tumour segmentation boundary uncertainty (mm; default 0.35, measured on 4 LIDC readers)")
    p.add_argument("--zone-boundary-sigma-mm", type=float, default=None,
                   help="zone segmentation boundary uncertainty (mm; default 0.35)")
    p.add_argument("--planned-zone", help="planned ablation zone (IMAGIOAblationZone, on the pre-treatment CT): "
                   "adds plan_vs_achieved to margin.json")
    p.add_argument("--planned-zone-segment", help="segment name in the planned-zone file (needed when it holds several)")
    p.add_argument("--landmarks-pre", help="text file of R,A,S landmarks (mm) on the pre-treatment CT")
    p.add_argument("--landmarks-post", help="the same landmarks, same order, on the post-treatment CT")
    p.add_argument("--samples", type=int, default=400, help="Monte-Carlo samples for the uncertainty (default 400)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder (margin.json, margin.mrb)")
    p.set_defaults(func=run)
    return p
