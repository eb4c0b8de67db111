"""`imagio ablation devices|zone|plan` (points RAS mm; outputs in physical space).

* ``devices [--json]``: the device library.
* ``zone --device ID --power W --time S --tip R,A,S --entry R,A,S [--tumor SEG] [--vessels SEG]
  [--model table|bioheat] --out DIR``: ``ablation.json``, ``zone.seg.nrrd``, ``ablation.mrb``.
* ``plan --tumor SEG --device ID [--margin-mm 5] [--avoid SEG ...] [--ct CT] --out DIR``:
  ``plan.json``, ``zone.seg.nrrd`` (union of the planned zones), ``plan.mrb``.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from imagio.errors import ImagioError

if TYPE_CHECKING:  # imported where used, so `imagio --help` stays quick
    import numpy as np
    import SimpleITK as sitk

TUMOR_WORDS = ("tumor", "tumour", "nodule", "lesion", "gtv", "target")
VESSEL_WORDS = ("vessel", "vein", "artery", "portal", "cava", "aorta")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("ablation", help="ablation zones from device tables or bioheat physics; probe plans")
    sub = p.add_subparsers(dest="ablation_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    d = sub.add_parser("devices", help="list the ablation device library")
    d.add_argument("--json", action="store_true", help="print the library as JSON")
    d.add_argument("--library", help="a device library JSON file (default: the bundled one)")
    d.set_defaults(func=_cmd_devices)

    z = sub.add_parser("zone", help="the ablation zone of one probe, with coverage and margins")
    z.add_argument("--device", required=True, help="device id (see `imagio ablation devices`)")
    z.add_argument("--power", required=True, type=float, help="power in W (0 for cryo)")
    z.add_argument("--time", required=True, type=float, help="ablation time in s")
    z.add_argument("--tip", required=True, help="probe tip R,A,S in mm")
    z.add_argument("--entry", required=True, help="probe entry (skin) point R,A,S in mm")
    z.add_argument("--tumor", help="tumour segmentation (its grid is the image unless --ct is given)")
    z.add_argument("--tumor-name", help="segment name in --tumor (default: the only one, or one named like a tumour)")
    z.add_argument("--vessels", help="vessel segmentation: fraction in the zone; heat sinks for --model bioheat")
    z.add_argument("--vessels-name", help="segment name(s) in --vessels, comma-separated (default: vessel-like names)")
    z.add_argument("--ct", help="CT whose grid the zone is rasterised on (optional)")
    z.add_argument("--model", choices=("table", "bioheat"), default="table", help="zone model (default: table)")
    z.add_argument("--margin-mm", type=float, default=5.0, help="margin for margin_coverage_percent (default 5 mm)")
    z.add_argument("--no-perfusion", action="store_true", help="bioheat: no blood perfusion (ex-vivo conditions)")
    z.add_argument("--criterion", choices=("isotherm", "cem43"), default="isotherm",
                   help="bioheat zone: max temperature >= 60 C (default) or thermal dose CEM43 >= 240 min")
    z.add_argument("--library", help="a device library JSON file (default: the bundled one)")
    z.add_argument("--out", required=True, help="output folder")
    z.set_defaults(func=_cmd_zone)

    pl = sub.add_parser("plan", help="fewest probes with clear paths covering tumour + margin")
    pl.add_argument("--tumor", required=True, help="tumour segmentation")
    pl.add_argument("--tumor-name", help="segment name in --tumor")
    pl.add_argument("--device", required=True, help="device id (see `imagio ablation devices`)")
    pl.add_argument("--margin-mm", type=float, default=5.0, help="margin around the tumour in mm (default 5)")
    pl.add_argument("--avoid", nargs="*", default=[], help="segmentation file(s) of structures the paths avoid")
    pl.add_argument("--avoid-names", help="only these segment names from the --avoid files (comma-separated)")
    pl.add_argument("--ct", help="CT: planning grid, and the skin (body outline) for the entry points")
    pl.add_argument("--clearance-mm", type=float, default=3.0, help="clearance of the paths from avoid structures (mm)")
    pl.add_argument("--coverage-percent", type=float, default=99.0, help="required coverage of tumour + margin (%%)")
    pl.add_argument("--max-probes", type=int, default=5, help="most probes allowed (default 5)")
    pl.add_argument("--max-tilt-deg", type=float, default=45.0,
                    help="largest angle of a path from the axial plane in degrees (default 45)")
    pl.add_argument("--verify-bioheat", action="store_true",
                    help="re-simulate the plan with the bioheat model (perfusion; avoid segments named like vessels "
                         "as heat sinks) and re-plan with smaller zones until it covers, or say why not")
    pl.add_argument("--library", help="a device library JSON file (default: the bundled one)")
    pl.add_argument("--out", required=True, help="output folder")
    pl.set_defaults(func=_cmd_plan)


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


def _cmd_devices(args) -> int:
    from .devices import load_library

    lib = load_library(args.library)
    if args.json:
        print(json.dumps([d.as_dict() for d in lib.values()], indent=2))
        return 0
    for d in lib.values():
        print(f"{d.id}: {d.name} [{d.modality}]" + (" (approximate values)" if d.approximate else ""))
        print(f"    source: {d.source}")
        for s in sorted(d.settings, key=lambda s: (s.power_w, s.time_s)):
            print(f"    {s.power_w:6.0f} W {s.time_s:6.0f} s: zone {s.zone_long_mm:g} x {s.zone_short_mm:g} mm "
                  f"(long x short), centre {s.tip_offset_mm:g} mm behind the tip")
    return 0


def _save_scene(logic, path, ct, ct_is_image, tumor_seg, zone_mask, zone_name, probes, table_rows, zone_model=None):
    import SimpleITK as sitk

    from imagio.bundle import save_mrb
    from imagio.io import Segment
    from imagio.mrml import add_line, add_model, add_table, segmentation_node_from_segments, volume_node_from_image

    from .logic import TUMOR_COLOR, ZONE_COLOR

    scene = logic.scene
    ref_node = volume_node_from_image(scene, ct, "CT") if ct_is_image else None
    if tumor_seg is not None:
        segmentation_node_from_segments(scene, [Segment(tumor_seg.name, tumor_seg.mask, TUMOR_COLOR)], "Tumour", ref_node)
    if zone_mask is not None and sitk.GetArrayViewFromImage(zone_mask).any():
        segmentation_node_from_segments(scene, [Segment(zone_name, zone_mask, ZONE_COLOR)], "Ablation zone", ref_node)
    if zone_model is not None:
        add_model(scene, "Ablation zone model", zone_model, color=ZONE_COLOR, opacity=0.4)
    for n, (tip, entry) in enumerate(probes):
        add_line(scene, f"Probe {n + 1}", entry, tip)
    add_table(scene, "Ablation results", table_rows)
    save_mrb(scene, path)


def _write_zone_seg(path, mask, name, reference):
    from imagio.io import Segment, write_segmentation

    from .logic import ZONE_COLOR

    write_segmentation(path, [Segment(name, mask, ZONE_COLOR)], reference)


# ---------------------------------------------------------------------------------------------- zone
def _cmd_zone(args) -> int:
    from imagio.cli_utils import parse_point, staged_output, write_json
    from imagio.io import read_segmentation

    from .logic import AblationZoneLogic, default_grid_around

    logic = AblationZoneLogic(library_path=args.library)
    dev, setting = logic.setting(args.device, args.power, args.time)  # fails early on a bad device/setting
    tip = parse_point(args.tip, "tip point")
    entry = parse_point(args.entry, "entry point")
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
        vessels, vnames = _pick_union(read_segmentation(args.vessels, reference=ct), args.vessels_name, VESSEL_WORDS,
                                      "vessel")
    others = {"vessels": vessels} if vessels is not None else {}
    ctx = logic.prepare(ct, tumor_seg.mask if tumor_seg else None, others, args.margin_mm)
    if args.model == "table":
        res = logic.table_zone(ctx, tip, entry, dev.id, args.power, args.time)
    else:
        res = logic.bioheat_zone(ctx, tip, entry, dev.id, args.power, args.time, vessels=vessels,
                                 perfusion=not args.no_perfusion, criterion=args.criterion)
    m = dict(res.metrics)
    m.setdefault("coverage_percent", None)
    m.setdefault("margin_coverage_percent", None)
    m.setdefault("minimal_margin_mm", None)
    if tumor_seg is None:
        m["note"] = "no --tumor given: coverage and margins are null"
    m["grid"] = "CT" if ct_is_image else ("tumour segmentation" if tumor_seg else "1 mm grid around the zone")
    mask = res.full_mask()
    inputs = [p for p in (args.tumor, args.vessels, args.ct, args.library) if p]
    with staged_output(args.out, inputs=inputs) as stage:
        write_json(stage / "ablation.json", m)
        _write_zone_seg(stage / "zone.seg.nrrd", mask, "ablation_zone", ct)
        rows = [{"quantity": k, "value": v} for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        model = res.zone.polydata_ras() if res.zone is not None else None
        _save_scene(logic, stage / "ablation.mrb", ct, ct_is_image, tumor_seg, mask, "ablation_zone", [(tip, entry)],
                    rows, model)
    cov = m.get("coverage_percent")
    print(f"{args.model} zone of {dev.id} at {setting.power_w:g} W / {setting.time_s:g} s: axes "
          + " x ".join(f"{a:.1f}" for a in m["zone_axes_mm"]) + " mm"
          + (f", tumour coverage {cov:.1f} %, tumour + {args.margin_mm:g} mm {m['margin_coverage_percent']:.1f} %, "
             f"minimal margin {m['minimal_margin_mm']:.1f} mm" if cov is not None else "")
          + (f" [{setting.note}]" if setting.interpolated else ""))
    print(f"wrote ablation.json, zone.seg.nrrd, ablation.mrb to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- plan
def body_from_ct(ct: sitk.Image, threshold_hu: float = -400.0) -> np.ndarray:
    """Body outline from a CT: above ``threshold_hu``, the largest component, holes filled slice by slice."""
    import numpy as np
    import SimpleITK as sitk

    m = sitk.Cast(sitk.Cast(ct, sitk.sitkFloat32) > float(threshold_hu), sitk.sitkUInt8)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(m), sortByObjectSize=True)
    arr = sitk.GetArrayFromImage(cc) == 1
    out = np.empty_like(arr)
    for k in range(arr.shape[0]):
        out[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(arr[k].astype(np.uint8)))) > 0
    return out


def _cmd_plan(args) -> int:
    import numpy as np
    import SimpleITK as sitk

    from imagio.cli_utils import staged_output, write_json
    from imagio.io import read_segmentation

    from .logic import AblationZoneLogic

    logic = AblationZoneLogic(library_path=args.library)
    dev = logic.device(args.device)
    if args.max_probes < 1 or args.max_probes > 10:
        raise ImagioError(f"--max-probes {args.max_probes} is out of range", "Give 1 to 10")
    if not 50.0 <= args.coverage_percent <= 100.0:
        raise ImagioError(f"--coverage-percent {args.coverage_percent} is out of range", "Give 50 to 100")
    ct, ct_is_image = _reference(args)
    tumor_seg = _pick_tumor(read_segmentation(args.tumor, reference=ct), args.tumor_name)
    grid = ct if ct is not None else tumor_seg.mask
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
    body = body_from_ct(ct) if ct_is_image else None
    sinks = None
    if args.verify_bioheat:
        vessel_masks = [m for name, m in avoid.items() if any(w in name.lower() for w in VESSEL_WORDS)]
        sinks = np.any(vessel_masks, axis=0) if vessel_masks else None
    plan, d = logic.plan(grid, tumor_seg.mask, dev.id, args.margin_mm, avoid, body, args.clearance_mm,
                         args.coverage_percent, args.max_probes, args.max_tilt_deg,
                         verify_bioheat=args.verify_bioheat, heat_sinks=sinks)
    if args.verify_bioheat:
        d["heat_sink_segments"] = [n for n in avoid if any(w in n.lower() for w in VESSEL_WORDS)]
    inputs = [p for p in (args.tumor, args.ct, args.library, *args.avoid) if p]
    with staged_output(args.out, inputs=inputs) as stage:
        write_json(stage / "plan.json", d)
        union = plan.union_mask if plan.union_mask is not None else sitk.Image(grid.GetSize(), sitk.sitkUInt8)
        if plan.union_mask is None:
            union.CopyInformation(grid)
        _write_zone_seg(stage / "zone.seg.nrrd", union, "planned_ablation_zone", grid)
        rows = [{"probe": n + 1, "power_w": p.setting.power_w, "time_s": p.setting.time_s,
                 "tip_ras": ",".join(f"{v:.1f}" for v in p.tip_ras),
                 "entry_ras": ",".join(f"{v:.1f}" for v in p.entry_ras),
                 "path_length_mm": round(float(np.linalg.norm(p.tip_ras - p.entry_ras)), 1)}
                for n, p in enumerate(plan.probes)] or [{"feasible": "no", "reason": plan.reason}]
        _save_scene(logic, stage / "plan.mrb", grid, ct_is_image, tumor_seg, union, "planned_ablation_zone",
                    [(p.tip_ras, p.entry_ras) for p in plan.probes], rows)
    feasible = bool(d["feasible"])
    state = "feasible" if feasible else "NOT feasible"
    print(f"plan {state}: {len(plan.probes)} probe(s) of {dev.id}, coverage of tumour + {args.margin_mm:g} mm "
          f"{plan.coverage_percent:.2f} % (tumour {plan.tumor_coverage_percent:.2f} %) in {plan.run_time_s:.1f} s")
    if "bioheat_coverage_percent" in d:
        print(f"bioheat check (perfusion, vessels as heat sinks): {d['bioheat_coverage_percent']:.2f} % of tumour + "
              f"{args.margin_mm:g} mm (vessel lumen excluded)")
    if not feasible:
        print(f"reason: {d['reason']}", file=sys.stderr)
    print(f"wrote plan.json, zone.seg.nrrd, plan.mrb to {args.out}")
    return 0 if feasible else 1
