"""`imagio ablation devices|zone|plan|replan` (points RAS mm; outputs in physical space).

* ``devices [--all] [--json]``: the device library, each setting with its sources (``--all``: also the unsourced
  settings, marked; ``--json``: everything, with provenance).
* ``zone --device ID --power W --time S --tip R,A,S --entry R,A,S [--tumor SEG] [--tissue T] [--vessels SEG]
  [--model table|bioheat] --out DIR``: ``ablation.json``, ``zone.seg.nrrd``, ``ablation.mrb``.
* ``plan --tumor SEG --device ID [--margin-mm 5] [--tissue T] [--avoid SEG ...] [--ct CT | --body SEG] --out DIR``:
  ``plan.json``, ``zone.seg.nrrd`` (union of the planned zones), ``plan.mrb``.
* ``replan --tumor SEG --probe TIP:ENTRY [--probe ...] --device ID --power W --time S [--margin-mm 5]
  [--avoid SEG ...] --out DIR``: ``replan.json``, ``zone.seg.nrrd``, ``replan.mrb``.

Warnings (provenance of the device values, tissue, unchecked entry points) go to stderr and into the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from imagio.cli_utils import number, parse_point, point, staged_output, write_json
from imagio.errors import ImagioError

from .devices import load_library

TUMOR_WORDS = ("tumor", "tumour", "nodule", "lesion", "gtv", "target")
VESSEL_WORDS = ("vessel", "vein", "artery", "portal", "cava", "aorta")
TISSUES = ("liver", "lung", "kidney", "soft-tissue", "bone")  # devices.TISSUE_CHOICES (kept import-free here)



def probe_pair(text):
    """argparse type for a placed probe "TIP:ENTRY", each R,A,S in mm -> (tip, entry) arrays."""
    parts = str(text).split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"'{text}' is not TIP:ENTRY: write the tip and the entry point as "
                                         "R,A,S:R,A,S in mm, e.g. -41.5,12,-30:-80,40,-22")
    try:
        return parse_point(parts[0], "probe tip"), parse_point(parts[1], "probe entry point")
    except ImagioError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


probe_pair.__name__ = "probe"


def _numbers(p, margin=True):
    if margin:
        p.add_argument("--margin-mm", type=number(min=0, max=30, unit="mm"), default=5.0,
                       help="margin around the tumour in mm (default 5)")
    p.add_argument("--tissue", choices=TISSUES,
                   help="tissue of the tumour (default: from the tumour segment's name or terminology, else liver "
                        "with a warning): device settings measured elsewhere give a warning; bioheat properties")
    p.add_argument("--allow-unsourced", action="store_true",
                   help="also use device settings without a source (each use carries a warning)")
    p.add_argument("--library", help="a device library JSON file (default: the bundled one)")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("ablation", help="ablation zones from device tables or bioheat physics; probe plans")
    sub = p.add_subparsers(dest="ablation_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    d = sub.add_parser("devices", help="list the ablation device library with the source of every setting")
    d.add_argument("--json", action="store_true", help="print the whole library (every setting, its provenance) as JSON")
    d.add_argument("--all", action="store_true", help="also list the settings without a source (marked unsourced)")
    d.add_argument("--library", help="a device library JSON file (default: the bundled one)")
    d.set_defaults(func=_cmd_devices)

    z = sub.add_parser("zone", help="the ablation zone of one probe, with coverage and margins")
    z.add_argument("--device", required=True, help="device id (see `imagio ablation devices`)")
    z.add_argument("--power", required=True, type=number(min=0, max=1000, unit="W"), help="power in W (0 for cryo)")
    z.add_argument("--time", required=True, type=number(min=0, max=7200, unit="s", min_inclusive=False),
                   help="ablation time in s")
    z.add_argument("--tip", required=True, type=point, help="probe tip R,A,S in mm")
    z.add_argument("--entry", required=True, type=point, help="probe entry (skin) point R,A,S in mm")
    z.add_argument("--tumor", help="tumour segmentation (its grid is the image unless --ct is given)")
    z.add_argument("--tumor-name", help="segment name in --tumor (default: the only one, or one named like a tumour)")
    z.add_argument("--vessels", help="vessel segmentation: fraction in the zone; heat sinks for --model bioheat")
    z.add_argument("--vessels-name", help="segment name(s) in --vessels, comma-separated (default: vessel-like names)")
    z.add_argument("--ct", help="CT whose grid the zone is rasterised on (optional)")
    z.add_argument("--model", choices=("table", "bioheat"), default="table", help="zone model (default: table)")
    z.add_argument("--no-perfusion", action="store_true", help="bioheat: no blood perfusion (ex-vivo conditions)")
    z.add_argument("--criterion", choices=("isotherm", "cem43"), default="isotherm",
                   help="bioheat zone: max temperature at the lethal isotherm (default) or thermal dose CEM43 >= 240 min")
    _numbers(z)
    z.add_argument("--out", required=True, help="output folder")
    z.set_defaults(func=_cmd_zone)

    pl = sub.add_parser("plan", help="fewest probes with clear paths keeping the margin around the tumour")
    pl.add_argument("--tumor", required=True, help="tumour segmentation")
    pl.add_argument("--tumor-name", help="segment name in --tumor")
    pl.add_argument("--device", required=True, help="device id (see `imagio ablation devices`)")
    _avoid_and_skin(pl)
    pl.add_argument("--coverage-percent", type=number(min=50, max=100, unit="%"), default=99.0,
                    help="required coverage of tumour + margin (%%, default 99); the margin must be kept as well")
    pl.add_argument("--max-probes", type=number(min=1, max=10, integer=True), default=5,
                    help="most probes allowed (default 5)")
    pl.add_argument("--max-tilt-deg", type=number(min=0, max=90, unit="deg"), default=45.0,
                    help="largest angle of a path from the axial plane in degrees (default 45)")
    pl.add_argument("--verify-bioheat", action="store_true",
                    help="re-simulate the plan with the bioheat model (all probes heating together; perfusion; avoid "
                         "segments named like vessels as heat sinks) and re-plan with smaller zones until it covers, "
                         "or say why not")
    _numbers(pl)
    pl.add_argument("--out", required=True, help="output folder")
    pl.set_defaults(func=_cmd_plan)

    rp = sub.add_parser("replan", help="the zone of the probes as placed, the residual tumour + margin, and the one "
                                       "added probe or changed setting that covers it")
    rp.add_argument("--tumor", required=True, help="tumour segmentation (on the intra-procedural CT's grid)")
    rp.add_argument("--tumor-name", help="segment name in --tumor")
    rp.add_argument("--probe", required=True, action="append", type=probe_pair, metavar="TIP:ENTRY",
                    help="a probe as placed: tip and entry point, each R,A,S in mm (e.g. -41.5,12,-30:-80,40,-22); "
                         "repeat for each probe")
    rp.add_argument("--device", required=True, help="device id (see `imagio ablation devices`)")
    rp.add_argument("--power", required=True, type=number(min=0, max=1000, unit="W"), help="power in W of the probes")
    rp.add_argument("--time", required=True, type=number(min=0, max=7200, unit="s", min_inclusive=False),
                    help="ablation time in s of the probes")
    _avoid_and_skin(rp)
    _numbers(rp)
    rp.add_argument("--out", required=True, help="output folder")
    rp.set_defaults(func=_cmd_replan)


def _avoid_and_skin(p):
    p.add_argument("--avoid", nargs="*", default=[], help="segmentation file(s) of structures the paths avoid")
    p.add_argument("--avoid-names", help="only these segment names from the --avoid files (comma-separated)")
    p.add_argument("--ct", help="CT: the grid, and the skin (body outline) for the entry points")
    p.add_argument("--body", help="body mask (segmentation) whose surface is the skin for the entry points, "
                                  "when there is no --ct")
    p.add_argument("--clearance-mm", type=number(min=0, max=50, unit="mm"), default=3.0,
                   help="clearance of the paths from avoid structures (mm, default 3)")


# ---------------------------------------------------------------------------------------------- helpers
def _pick_tumor(segments, name):
    from imagio.io import find_segment, require_nonempty

    if name is None and len(segments) > 1:
        named = [s for s in segments if any(w in s.name.lower() for w in TUMOR_WORDS)]
        if len(named) != 1:
            raise ImagioError(f"The tumour segmentation has {len(segments)} segments",
                              "Name the tumour with --tumor-name; segments: " + ", ".join(s.name for s in segments))
        seg = named[0]
    else:
        seg = find_segment(segments, name)
    require_nonempty(seg, "tumour")
    return seg


def _pick_union(segments, names, words, what):
    import SimpleITK as sitk

    from imagio.io import find_segment

    if names:
        chosen = [find_segment(segments, n.strip()) for n in names.split(",") if n.strip()]
    elif len(segments) == 1 or words is None:
        chosen = list(segments)
    else:
        chosen = [s for s in segments if any(w in s.name.lower() for w in words)]
        if not chosen:
            raise ImagioError(f"No {what} segment found by name",
                              "Name them with --vessels-name; segments: " + ", ".join(s.name for s in segments))
    union = None
    for s in chosen:
        a = sitk.GetArrayFromImage(s.mask) > 0
        union = a if union is None else (union | a)
    return union, [s.name for s in chosen]


def _reference(args):
    from imagio.io import read_image

    if getattr(args, "ct", None):
        return read_image(args.ct), True
    return None, False


def _warn(warnings) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _cmd_devices(args) -> int:
    lib = load_library(args.library)
    if args.json:
        out = []
        for d in lib.values():
            dd = d.as_dict(include_unsourced=True)
            for s in dd["settings"]:
                s["offered_by_default"] = bool(s["sourced"])
            out.append(dd)
        print(json.dumps(out, indent=2))
        return 0
    hidden = 0
    for d in lib.values():
        rows = sorted(d.settings if args.all else d.offered(), key=lambda s: (s.power_w, s.time_s))
        hidden += len(d.settings) - len(d.offered())
        if not rows:
            continue
        print(f"{d.id}: {d.name} [{d.modality}]")
        print(f"    tip reference: {d.tip_reference}")
        for s in rows:
            mark = "" if s.sourced else "  UNSOURCED (needs --allow-unsourced)"
            iso = f", isotherm {s.isotherm_c:g} C" if s.isotherm_c is not None else (
                ", isotherm unknown" if d.modality == "cryo" else "")
            print(f"    {s.power_w:6.0f} W {s.time_s:6.0f} s: zone {s.zone_long_mm:g} x {s.zone_short_mm:g} mm "
                  f"(long x short), centre {s.tip_offset_mm:g} mm behind the tip{iso}; {s.tissue}; "
                  f"{'verified' if s.verified else 'not verified'}{mark}")
            for src in s.sources:
                ident = ", ".join(f"{k} {v}" for k, v in src.identifiers.items() if k != "identifier_note")
                print(f"        source: {src.citation} [{ident}] {src.locator}")
            if not s.sourced and s.note:
                print(f"        note: {s.note}")
    if hidden and not args.all:
        print(f"({hidden} setting(s) without a source are not offered; `imagio ablation devices --all` lists them)")
    return 0


def _save_scene(logic, path, ct, ct_is_image, tumor_seg, result):
    from imagio.bundle import save_mrb
    from imagio.io import Segment
    from imagio.mrml import segmentation_node_from_segments, volume_node_from_image

    from .results import TUMOR_COLOR

    scene = logic.scene
    ref_node = volume_node_from_image(scene, ct, "CT") if ct_is_image else None
    if tumor_seg is not None:
        segmentation_node_from_segments(scene, [Segment(tumor_seg.name, tumor_seg.mask, TUMOR_COLOR)], "Tumour", ref_node)
    result.add_to_scene(scene, ref_node)
    save_mrb(scene, path)


def _write_seg(path, segments, reference):
    from imagio.io import write_segmentation

    write_segmentation(path, segments, reference)


def _tumor_tags(seg) -> dict:
    return {"tumor_name": seg.name, "terminology": (getattr(seg, "tags", None) or {}).get("terminology", "")}


def _avoid_masks(args, grid, tumor_seg) -> dict:
    import SimpleITK as sitk

    from imagio.io import read_segmentation

    avoid = {}
    names = args.avoid_names
    for path in args.avoid:
        segs = read_segmentation(path, reference=grid)
        if names:
            wanted = {n.strip().lower() for n in names.split(",")}
            segs = [s for s in segs if s.name.lower() in wanted]
        for s in segs:
            if s.name.lower() == tumor_seg.name.lower():
                continue
            avoid[s.name] = sitk.GetArrayFromImage(s.mask) > 0
    if args.avoid and not avoid:
        raise ImagioError("None of the --avoid segments was selected", "Check --avoid-names against the segment names")
    return avoid


def _body(args, grid, ct_is_image):
    """The body (skin) mask: from --body, else the CT's outline, else None (entry points unchecked)."""
    import numpy as np
    import SimpleITK as sitk

    from imagio.io import read_segmentation

    from .logic import body_from_ct

    if getattr(args, "body", None):
        segs = read_segmentation(args.body, reference=grid)
        body = np.any([sitk.GetArrayFromImage(s.mask) > 0 for s in segs], axis=0)
        if not body.any():
            raise ImagioError(f"The body mask {args.body} is empty", "Give the body (skin) segmentation")
        return body
    return body_from_ct(grid) if ct_is_image else None


# ---------------------------------------------------------------------------------------------- zone
def _cmd_zone(args) -> int:
    from imagio.io import Segment, read_segmentation

    from .logic import AblationZoneLogic, default_grid_around
    from .results import ZONE_COLOR

    logic = AblationZoneLogic(library_path=args.library)
    dev, setting = logic.setting(args.device, args.power, args.time, args.allow_unsourced)  # fails early
    tip, entry = args.tip, args.entry
    ct, ct_is_image = _reference(args)
    tumor_seg = None
    if args.tumor:
        segs = read_segmentation(args.tumor, reference=ct)
        tumor_seg = _pick_tumor(segs, args.tumor_name)
        if ct is None:
            ct = tumor_seg.mask
    if ct is None:
        ct = default_grid_around(tip, entry, setting)
    vessels = None
    if args.vessels:
        vessels, _vnames = _pick_union(read_segmentation(args.vessels, reference=ct), args.vessels_name, VESSEL_WORDS,
                                       "vessel")
    others = {"vessels": vessels} if vessels is not None else {}
    tags = _tumor_tags(tumor_seg) if tumor_seg is not None else {}
    ctx = logic.prepare(ct, tumor_seg.mask if tumor_seg else None, others, args.margin_mm, args.tissue, **tags)
    if args.model == "table":
        res = logic.table_zone(ctx, tip, entry, dev.id, args.power, args.time, args.allow_unsourced)
    else:
        res = logic.bioheat_zone(ctx, tip, entry, dev.id, args.power, args.time, vessels=vessels,
                                 perfusion=not args.no_perfusion, criterion=args.criterion,
                                 allow_unsourced=args.allow_unsourced)
    m = res.to_dict()
    for key in ("coverage_percent", "margin_coverage_percent", "minimal_margin_mm"):
        m.setdefault(key, None)
    if tumor_seg is None:
        m["note"] = "no --tumor given: coverage and margins are null"
    m["grid"] = "CT" if ct_is_image else ("tumour segmentation" if tumor_seg else "1 mm grid around the zone")
    inputs = [p for p in (args.tumor, args.vessels, args.ct, args.library) if p]
    with staged_output(args.out, inputs=inputs) as stage:
        write_json(stage / "ablation.json", m)
        _write_seg(stage / "zone.seg.nrrd", [Segment("ablation_zone", res.full_mask(), ZONE_COLOR)], ct)
        _save_scene(logic, stage / "ablation.mrb", ct, ct_is_image, tumor_seg, res)
        from .report import write_zone_report  # report.html, report.pdf, metrics.csv (imagio.report)
        write_zone_report(stage, m, ct if ct_is_image else None, tumor_seg.mask if tumor_seg else None,
                          res.full_mask(), tip, entry, vessels, args.margin_mm,
                          {"device": dev.id, "tumor": args.tumor, "ct": args.ct})
    cov = m.get("coverage_percent")
    print(f"{args.model} zone of {dev.id} at {setting.label}: axes "
          + " x ".join(f"{a:.1f}" for a in m["zone_axes_mm"]) + " mm"
          + (f", tumour coverage {cov:.1f} %, tumour + {args.margin_mm:g} mm {m['margin_coverage_percent']:.1f} %, "
             f"minimal margin {m['minimal_margin_mm']:.1f} mm" if cov is not None else ""))
    _warn(res.warnings)
    print(f"wrote ablation.json, zone.seg.nrrd, ablation.mrb to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- plan
def _cmd_plan(args) -> int:
    import numpy as np
    import SimpleITK as sitk

    from imagio.io import Segment, read_segmentation

    from .logic import AblationZoneLogic
    from .results import ZONE_COLOR

    logic = AblationZoneLogic(library_path=args.library)
    dev = logic.device(args.device)
    ct, ct_is_image = _reference(args)
    tumor_seg = _pick_tumor(read_segmentation(args.tumor, reference=ct), args.tumor_name)
    grid = ct if ct is not None else tumor_seg.mask
    avoid = _avoid_masks(args, grid, tumor_seg)
    body = _body(args, grid, ct_is_image)
    sinks = None
    if args.verify_bioheat:
        vessel_masks = [m for name, m in avoid.items() if any(w in name.lower() for w in VESSEL_WORDS)]
        sinks = np.any(vessel_masks, axis=0) if vessel_masks else None
    plan = logic.plan(grid, tumor_seg.mask, dev.id, args.margin_mm, avoid, body, args.clearance_mm,
                      args.coverage_percent, args.max_probes, args.max_tilt_deg, verify_bioheat=args.verify_bioheat,
                      heat_sinks=sinks, tissue=args.tissue, allow_unsourced=args.allow_unsourced, **_tumor_tags(tumor_seg))
    d = plan.to_dict()
    if args.verify_bioheat:
        d["heat_sink_segments"] = [n for n in avoid if any(w in n.lower() for w in VESSEL_WORDS)]
    inputs = [p for p in (args.tumor, args.ct, args.body, args.library, *args.avoid) if p]
    with staged_output(args.out, inputs=inputs) as stage:
        write_json(stage / "plan.json", d)
        union = plan.union_mask
        if union is None:
            union = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
            union.CopyInformation(grid)
        _write_seg(stage / "zone.seg.nrrd", [Segment("planned_ablation_zone", union, ZONE_COLOR)], grid)
        _save_scene(logic, stage / "plan.mrb", grid, ct_is_image, tumor_seg, plan)
        from .report import write_plan_report  # report.html, report.pdf, metrics.csv, probes.csv (imagio.report)
        write_plan_report(stage, d, ct if ct_is_image else None, tumor_seg.mask, plan.union_mask,
                          [(p.tip_ras, p.entry_ras) for p in plan.probes], avoid, dev.id,
                          {"tumor": args.tumor, "ct": args.ct, "avoid": ", ".join(args.avoid)})
    print(plan.summary_text().split("\n")[0] + f" in {plan.run_time_s:.1f} s")
    if "bioheat_coverage_percent" in d:
        print(f"bioheat check (all probes together, perfusion, vessels as heat sinks): "
              f"{d['bioheat_coverage_percent']:.2f} % of tumour + {args.margin_mm:g} mm (vessel lumen excluded)")
    if not plan.feasible:
        print(f"reason: {plan.reason}", file=sys.stderr)
    _warn(plan.warnings)
    print(f"wrote plan.json, zone.seg.nrrd, plan.mrb to {args.out}")
    return 0 if plan.feasible else 1


# ---------------------------------------------------------------------------------------------- replan
def _cmd_replan(args) -> int:
    from imagio.io import Segment, read_segmentation

    from .logic import AblationZoneLogic
    from .results import RESIDUAL_COLOR, ZONE_COLOR

    logic = AblationZoneLogic(library_path=args.library)
    logic.setting(args.device, args.power, args.time, args.allow_unsourced)  # fails early on a bad device/setting
    ct, ct_is_image = _reference(args)
    tumor_seg = _pick_tumor(read_segmentation(args.tumor, reference=ct), args.tumor_name)
    grid = ct if ct is not None else tumor_seg.mask
    avoid = _avoid_masks(args, grid, tumor_seg)
    body = _body(args, grid, ct_is_image)
    res = logic.replan(grid, tumor_seg.mask, args.probe, args.device, args.power, args.time, args.margin_mm, avoid,
                       body, args.clearance_mm, args.tissue, allow_unsourced=args.allow_unsourced,
                       **_tumor_tags(tumor_seg))
    inputs = [p for p in (args.tumor, args.ct, args.body, args.library, *args.avoid) if p]
    with staged_output(args.out, inputs=inputs) as stage:
        write_json(stage / "replan.json", res.to_dict())
        segs = [Segment("zone_as_placed", res.placed.full_mask(), ZONE_COLOR),
                Segment("residual_tumor_and_margin", res.residual_mask, RESIDUAL_COLOR)]
        if res.proposal_zone is not None:
            segs.append(Segment("zone_with_proposal", res.proposal_zone.full_mask(), (0.2, 0.8, 0.3)))
        _write_seg(stage / "zone.seg.nrrd", segs, grid)
        _save_scene(logic, stage / "replan.mrb", grid, ct_is_image, tumor_seg, res)
    print(res.summary_text().split("\n")[0])
    print(res.reason)
    _warn(res.warnings)
    print(f"wrote replan.json, zone.seg.nrrd, replan.mrb to {args.out}")
    ok = res.proposal is not None or res.placed.metrics["minimal_margin_mm"] >= args.margin_mm - 1e-6
    return 0 if ok else 1
