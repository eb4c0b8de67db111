"""`imagio lungnav`: a bronchoscopic route from a chest CT or an airway segmentation.

    imagio lungnav (--ct CT | --airway SEG) (--target R,A,S | --lesion SEG)
                   [--scope-diameter-mm 4.2] --out DIR

writes DIR/route.json (exactly the keys of :data:`route.ROUTE_KEYS`),
DIR/airway.seg.nrrd when the airway was segmented from the CT, DIR/route.mrb
(airway model, centerline model, route curve, target) and DIR/details.json
(branches, leak check, scope stop point; units in the keys).
"""

from __future__ import annotations

import math
from pathlib import Path

from imagio.cli_utils import number, parse_point, staged_output, write_json
from imagio.errors import ImagioError
from imagio.progress import Progress, terminal_progress


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("lungnav", help="bronchoscopic route: airway tree, centerlines and the path from the "
                              "trachea to a peripheral lung target (points in RAS mm)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="chest CT in HU (DICOM folder, NRRD, NIfTI, MHA): the airway is segmented")
    src.add_argument("--airway", help="airway segmentation (.seg.nrrd, label NRRD/NIfTI)")
    p.add_argument("--airway-segment", help="segment name in --airway (default: the first)")
    tgt = p.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--target", help="target point R,A,S in mm")
    tgt.add_argument("--lesion", help="lesion segmentation (.seg.nrrd, label NRRD/NIfTI)")
    p.add_argument("--lesion-segment", help="segment name in --lesion (default: the first)")
    p.add_argument("--scope-diameter-mm", type=float, default=4.2,
                   help="outer diameter of the bronchoscope in mm (default 4.2)")
    p.add_argument("--start", help="optional start point R,A,S in mm (default: the top of the trachea)")
    p.add_argument("--max-gap-mm", type=number(min=0, max=500, unit="mm", min_inclusive=False), default=60.0,
                   help="refuse targets farther than this from any airway, in mm (default 60)")
    p.add_argument("--airway-model", help="optional model card (.json) of an ONNX airway model that refines the "
                   "segmentation of --ct (IMAGIOPlanning's engine; its additions pass the same leak control)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from imagio.bundle import save_mrb
    from imagio.io import Segment, find_segment, read_image, read_segmentation, write_segmentation

    from .logic import AIRWAY_COLOR, LungNavLogic

    if not math.isfinite(args.scope_diameter_mm) or args.scope_diameter_mm <= 0:
        raise ImagioError(f"--scope-diameter-mm must be a positive number of mm, got {args.scope_diameter_mm}",
                          "Give the scope's outer diameter, e.g. 4.2")
    target = parse_point(args.target, "target point") if args.target else None
    start = parse_point(args.start, "start point") if args.start else None
    ct = read_image(args.ct) if args.ct else None
    airway = None
    if args.airway:
        segs = read_segmentation(args.airway)
        airway = find_segment(segs, args.airway_segment).mask
    lesion = None
    if args.lesion:
        segs = read_segmentation(Path(args.lesion), reference=ct) if ct is not None else read_segmentation(args.lesion)
        lesion = find_segment(segs, args.lesion_segment).mask
    if args.airway_model and not args.ct:
        raise ImagioError("--airway-model refines a segmentation of --ct", "Give --ct with --airway-model")
    inputs = [p for p in (args.ct, args.airway, args.lesion) if p]
    logic = LungNavLogic()
    result = logic.compute(ct=ct, airway=airway, target_ras=target, lesion=lesion,
                           scope_diameter_mm=args.scope_diameter_mm, start_ras=start,
                           max_gap_mm=args.max_gap_mm, airway_model=args.airway_model,
                           progress=Progress(terminal_progress()))
    with staged_output(args.out, inputs=inputs) as stage:
        if ct is not None:
            from imagio.mrml import volume_node_from_image
            ct_node = volume_node_from_image(logic.scene, ct, "CT")
            write_segmentation(stage / "airway.seg.nrrd", [Segment("airway", result.airway_mask, AIRWAY_COLOR, 1)], ct)
        else:
            ct_node = None
        logic.add_nodes(result, reference_node=ct_node)
        write_json(stage / "route.json", result.route.contract_dict())
        write_json(stage / "details.json", result.to_dict())
        save_mrb(logic.scene, stage / "route.mrb")
        from .report import write_report  # report.html, report.pdf, metrics.csv (imagio.report)
        write_report(stage, result, ct, lesion, args.scope_diameter_mm,
                     {"ct": args.ct, "airway": args.airway, "lesion": args.lesion, "target": args.target})
    r = result.route
    print(f"route: {r.path_length_mm:.1f} mm to generation {r.generation}, gap to target {r.gap_to_target_mm:.1f} mm, "
          f"narrowest lumen {r.min_lumen_diameter_mm:.1f} mm, scope {args.scope_diameter_mm:.1f} mm "
          f"{'fits' if r.reachable else 'does not fit'} all the way; written to {args.out}")
    return 0
