"""Command line: ``imagio segment``, ``imagio models``, ``imagio export-onnx``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from imagio.cli_utils import parse_point, staged_output, write_json
from imagio.errors import ImagioError
from imagio.progress import Progress, end_live_lines, terminal_progress

KIND_CHOICES = ("lung-nodule", "liver-tumor", "soft-tissue")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment lesions in a CT with an ONNX model (--model) or from a "
                              "click (--seed R,A,S); writes segmentation.seg.nrrd, segment.json, segment.mrb")
    p.add_argument("--ct", required=True, help="CT: DICOM series folder or image file (NRRD, NIfTI, MHA)")
    p.add_argument("--series-uid", help="series to read when the DICOM folder holds several")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="model card (.json), its folder, its .onnx, or a name listed by `imagio models`")
    g.add_argument("--seed", help="seed point R,A,S in mm (RAS, as Slicer shows it) inside the lesion")
    p.add_argument("--kind", choices=KIND_CHOICES, default="lung-nodule", help="lesion kind for --seed "
                   "(default lung-nodule)")
    p.add_argument("--radius", type=float, help="approximate lesion radius in mm for --seed (estimated if left out)")
    p.add_argument("--mirroring", choices=("card", "on", "off"), default="card",
                   help="test-time mirroring for --model (default: as the card says)")
    p.add_argument("--largest-component", action="store_true", help="keep each label's largest connected component")
    p.add_argument("--force", action="store_true", help="run --model even on a CT outside the card's intended use "
                   "(spacing, field of view, intensity, modality); the result is marked with a warning")
    p.add_argument("--accept-large", action="store_true", help="keep a --seed region that reaches the search "
                   "border or is far larger than the kind's expected size; the result is marked with a warning")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress on the terminal")
    p.set_defaults(func=cmd_segment)

    p = subparsers.add_parser("models", help="list the model cards found (shipped, and folders on $IMAGIO_MODELS)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("export-onnx", help="convert an nnU-Net v2 trained-model folder to .onnx + model card "
                              "(needs the optional 'export' extra: torch, nnunetv2)")
    p.add_argument("--model-dir", required=True, help="nnU-Net v2 trained-model folder (plans.json, dataset.json, "
                   "fold_X/checkpoint_*.pth)")
    p.add_argument("--folds", "--fold", nargs="+", dest="folds", metavar="FOLD",
                   help="folds to export into one card, e.g. 0 1 2 3 4, or all for fold_all (default: every numbered "
                        "fold_* folder with the checkpoint, else fold_all); the engine averages them as "
                        "nnUNetv2_predict -f does")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--configuration", default="3d_fullres", help="plans configuration (default 3d_fullres)")
    p.add_argument("--name", help="model name (default: the dataset name)")
    p.add_argument("--intended-use", default="", help="one sentence for the card: what the model is for")
    p.add_argument("--body-region", action="append", default=[], help="body region the model is for (repeatable)")
    p.add_argument("--out", required=True, help="output folder for <name>.onnx and <name>.json")
    p.set_defaults(func=cmd_export)


def cmd_segment(args) -> int:
    from imagio.bundle import save_mrb
    from imagio.engine import Mirroring
    from imagio.io import read_image, write_segmentation
    from imagio.mrml import segments_from_segmentation_node, volume_node_from_image
    from imagio.scene import new_scene

    from .logic import PlanningLogic, resolve_card

    t0 = time.perf_counter()
    progress = Progress(None if args.quiet else terminal_progress())
    seed = parse_point(args.seed, "seed point") if args.seed else None
    if seed is None and args.radius is not None:
        raise ImagioError("--radius applies to --seed only", "Leave --radius out with --model")
    if seed is None and args.accept_large:
        raise ImagioError("--accept-large applies to --seed only", "Use --force with --model")
    if seed is not None and args.force:
        raise ImagioError("--force applies to --model only", "Use --accept-large with --seed")
    card = resolve_card(args.model) if args.model else None
    ct_path = Path(args.ct)
    ct = read_image(ct_path, args.series_uid)
    scene = new_scene()
    ct_node = volume_node_from_image(scene, ct, "CT")
    logic = PlanningLogic(scene)
    try:
        with staged_output(args.out, inputs=[ct_path] + ([card.path, card.onnx_path] if card else [])) as stage:
            if card is not None:
                res = logic.segment_with_model_nodes(ct_node, card, mirroring=Mirroring.coerce(args.mirroring),
                                                     largest_component=args.largest_component, force=args.force,
                                                     progress=progress)
            else:
                res = logic.segment_from_seed_nodes(ct_node, seed, args.kind, args.radius,
                                                    accept_large=args.accept_large, progress=progress)
            segments = segments_from_segmentation_node(res.node, ct_node)
            write_segmentation(stage / "segmentation.seg.nrrd", segments, ct)
            save_mrb(scene, stage / "segment.mrb")
            summary = {"ct": str(ct_path), **res.to_dict(), "total_runtime_s": round(time.perf_counter() - t0, 3),
                       "files": ["segmentation.seg.nrrd", "segment.json", "segment.mrb"]}
            write_json(stage / "segment.json", summary)
            from .report import write_report  # report.html, report.pdf, metrics.csv (imagio.report)
            write_report(stage, res, segments, ct, seed, {"ct": str(ct_path), "model": args.model, "seed": args.seed})
    finally:
        if not args.quiet:
            end_live_lines()
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(res.summary_text() + f"; wrote {Path(args.out) / 'segmentation.seg.nrrd'}")
    return 0


def cmd_models(args) -> int:
    from imagio.model_card import find_cards, model_dirs

    cards = find_cards()
    if args.json:
        print(json.dumps({"searched": [str(d) for d in model_dirs()], "models": [c.summary() for c in cards]},
                         indent=2))
        return 0
    if not cards:
        print("No model cards found in: " + ", ".join(str(d) for d in model_dirs()))
        return 0
    for c in cards:
        sp = "x".join(f"{s:g}" for s in c.target_spacing_kji_mm)
        use = "research only, not for clinical use" if not c.clinical_use else "clinical use per its card"
        folds = f", folds {' '.join(f.name for f in c.folds)}" if len(c.folds) > 1 else ""
        kind = ", region-based" if c.regions_class_order else ""
        print(f"{c.name}  [{', '.join(lab.name for lab in c.labels[1:])}]  {', '.join(c.modality)}, model spacing "
              f"{sp} mm (k,j,i){folds}{kind}, {use}")
        lines = c.intended.lines() or ["(the card states no intended use: nothing is checked)"]
        print("    intended use: " + "\n                  ".join(lines))
        print(f"    {c.path}")
    return 0


def cmd_export(args) -> int:
    from .export import export_nnunet

    model_dir = Path(args.model_dir)
    with staged_output(args.out, inputs=[model_dir]) as stage:
        card = export_nnunet(model_dir, stage, folds=args.folds, checkpoint=args.checkpoint,
                             configuration=args.configuration, name=args.name, intended_use=args.intended_use,
                             body_region=args.body_region)
        written = sorted(p.name for p in stage.iterdir())
    from imagio.model_card import load_card

    c = load_card(Path(args.out) / card.name)
    print(f"wrote {Path(args.out) / card.name} (folds {', '.join(f.name for f in c.folds)}) and "
          f"{', '.join(w for w in written if w.endswith('.onnx'))}")
    return 0
