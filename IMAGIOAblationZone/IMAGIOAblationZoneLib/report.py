"""Ablation reports (``imagio ablation zone``, ``imagio ablation plan`` and the demo's step).

Built on :mod:`imagio.report`: the verdict (zone size and coverage; plan feasible or not and why),
slices through the probe tip with the tumour, the zone(s), the structures to avoid and the probe
paths, a 3D picture of tumour, zone and probes, and the probe table (also as CSV).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from imagio import report as rp
from imagio.geometry import centroid_ras, copy_geometry
from imagio.report import Table, step_report, write_step_report

TUMOUR_COLOR = (0.95, 0.85, 0.15)
ZONE_COLOR = (1.0, 0.55, 0.0)
PROBE_COLOR = (0.1, 0.9, 0.2)
AVOID_COLORS = [(0.55, 0.2, 0.95), (0.2, 0.45, 1.0), (0.85, 0.85, 0.85), (0.3, 0.8, 0.8)]


def _f(v, fmt=".1f", unit=""):
    try:
        return f"{float(v):{fmt}}{unit}"
    except (TypeError, ValueError):
        return "n/a"


def plan_verdict(d: dict, device: str = "") -> tuple[str, str]:
    """(text, level) of a plan.json."""
    n = int(d.get("probe_count", len(d.get("probes", []))))
    margin = d.get("margin_mm")
    cover = (f"cover {_f(d.get('coverage_percent'), '.2f', ' %')} of tumour + {_f(margin, 'g', ' mm')} "
             f"(tumour {_f(d.get('tumor_coverage_percent'), '.2f', ' %')})")
    mam = f", minimal margin {_f(d.get('minimal_margin_mm'), '.1f', ' mm')}" if d.get("minimal_margin_mm") is not None else ""
    dev = f" of {device}" if device else ""
    if d.get("feasible"):
        text = f"Plan feasible: {n} probe(s){dev} {cover}{mam}"
        if d.get("bioheat_verified") is False:
            return text + f"; the bioheat check covers only {_f(d.get('bioheat_coverage_percent'), '.1f', ' %')}", "warn"
        return text, "ok"
    reason = str(d.get("reason") or "no reason given")
    best = "" if "best" in reason.lower() else f" (best found: {n} probe(s){dev} {cover}{mam})"
    return f"Plan NOT feasible: {reason}{best}", "bad"


def zone_verdict(m: dict, margin_mm: float | None = None) -> tuple[str, str]:
    """(text, level) of an ablation.json."""
    axes = " x ".join(_f(a) for a in m.get("zone_axes_mm", []))
    text = f"Ablation zone {axes} mm"
    if m.get("coverage_percent") is None:
        return text + " (no tumour given: no coverage)", "info"
    mm = f" + {margin_mm:g} mm" if margin_mm is not None else " + margin"
    text += (f"; it covers {_f(m.get('coverage_percent'), '.1f', ' %')} of the tumour and "
             f"{_f(m.get('margin_coverage_percent'), '.1f', ' %')} of tumour{mm}; minimal margin "
             f"{_f(m.get('minimal_margin_mm'), '.1f', ' mm')}")
    cov = float(m.get("coverage_percent") or 0.0)
    mcov = float(m.get("margin_coverage_percent") or 0.0)
    return text, "ok" if mcov >= 99.0 else ("warn" if cov >= 99.0 else "bad")


def figures(ct, tumor=None, zones=(), probes=(), avoid=None, name_prefix: str = "ablation", point_ras=None) -> list:
    """Axial and coronal slices through the (first) tip and a 3D picture.

    ``zones``: (mask, label, colour) tuples; ``probes``: (tip_ras, entry_ras) pairs; ``avoid``: name -> mask.
    """
    zones = [z for z in zones if z[0] is not None and np.any(_arr(z[0]))]
    ref_mask = tumor if tumor is not None else (zones[0][0] if zones else None)
    grid = ct if ct is not None else ref_mask
    avoid = {k: _as_image(v, grid) for k, v in (avoid or {}).items() if v is not None}
    image = ct if ct is not None else (rp.blank_like(ref_mask) if ref_mask is not None else None)
    if image is None:
        return []
    win = rp.WINDOWS["soft tissue"] if ct is not None else (0.0, 1000.0)
    unit = "HU" if ct is not None else None
    overlays = []
    if tumor is not None:
        overlays.append(rp.Overlay(tumor, TUMOUR_COLOR, "tumour"))
    overlays += [rp.Overlay(mask, color, label) for mask, label, color in zones]
    for n, (name, mask) in enumerate((avoid or {}).items()):
        overlays.append(rp.Overlay(mask, AVOID_COLORS[n % len(AVOID_COLORS)], f"{name} (avoided)", fill_opacity=0.15))
    lines = [rp.Polyline(np.vstack([np.asarray(e, float), np.asarray(t, float)]), f"probe {n + 1}", PROBE_COLOR, 2.0)
             for n, (t, e) in enumerate(probes)]
    markers = [rp.Marker(np.asarray(t, float), f"tip {n + 1}", PROBE_COLOR) for n, (t, _) in enumerate(probes)]
    if point_ras is None:
        point_ras = np.asarray(probes[0][0], float) if probes else centroid_ras(ref_mask)
    roi = ([tumor] if tumor is not None else []) + [z[0] for z in zones]
    background = "" if ct is not None else " (no CT given: masks on a grey background)"
    out = []
    for axis in ("axial", "coronal"):
        out.append(rp.slice_figure(
            image, overlays, point_ras, axis, win, markers=markers, polylines=lines, roi=roi, pad_mm=12.0, unit=unit,
            caption=f"{axis.capitalize()} slice through the probe tip{background}: tumour, ablation zone(s) and the "
                    "probe path (green; solid within the slice, dashed where projected).",
            name=f"{name_prefix}_{axis}"))
    surfaces = []
    if tumor is not None:
        surfaces.append(rp.surface_of(tumor, TUMOUR_COLOR, 1.0, "tumour"))
    surfaces += [rp.surface_of(mask, color, 0.3, label) for mask, label, color in zones]
    focus = None  # frame the tumour and the zones, not the (large) structures around them
    for srf in surfaces:
        if srf is not None:
            b = np.array(srf.polydata.GetBounds(), float)
            focus = b if focus is None else rp._merge_bounds(focus, b)
    for t, e in probes:  # and the probe paths
        pts = np.vstack([np.asarray(t, float), np.asarray(e, float)])
        b = np.array([pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max(), pts[:, 2].min(),
                      pts[:, 2].max()])
        focus = b if focus is None else rp._merge_bounds(focus, b)
    for n, (name, mask) in enumerate((avoid or {}).items()):
        surfaces.append(rp.surface_of(_crop_near(mask, roi), AVOID_COLORS[n % len(AVOID_COLORS)], 0.5, name))
    out.append(rp.render_3d(surfaces, polylines=[rp.Polyline(ln.points_ras, ln.label, PROBE_COLOR, 1.0) for ln in lines],
                            view="anterior", focus=focus,
                            caption="Tumour, ablation zone(s) (translucent) and probes, seen from the front (patient "
                                    "right on the left).", name=f"{name_prefix}_3d"))
    return out


def _as_image(x, grid):
    """A mask image from an image or a boolean array on ``grid``."""
    if isinstance(x, sitk.Image):
        return x
    return copy_geometry(np.asarray(x).astype(np.uint8), grid)


def _arr(img):
    return sitk.GetArrayViewFromImage(img)


def _crop_near(mask, roi, pad_mm: float = 40.0):
    """The part of a (large) structure within ``pad_mm`` of the region of interest's box, for the 3D picture."""
    if not roi:
        return mask
    box = None
    for m in roi:
        kji = np.argwhere(_arr(m) > 0)
        if len(kji):
            lo, hi = kji.min(axis=0), kji.max(axis=0)
            box = (lo, hi) if box is None else (np.minimum(box[0], lo), np.maximum(box[1], hi))
    if box is None:
        return mask
    pad = np.ceil(pad_mm / np.array(mask.GetSpacing())[::-1]).astype(int)
    lo = np.maximum(box[0] - pad, 0)
    hi = np.minimum(box[1] + pad + 1, np.array(_arr(mask).shape))
    arr = np.zeros(_arr(mask).shape, np.uint8)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    arr[sl] = _arr(mask)[sl] > 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(mask)
    return out


def probe_table(probes_dicts: list[dict]):
    rows = []
    for n, p in enumerate(probes_dicts):
        rows.append({"probe": n + 1, "power_w": p.get("power_w"), "time_s": p.get("time_s"),
                     "tip_ras_mm": " ".join(f"{v:.1f}" for v in p.get("tip_ras", [])),
                     "entry_ras_mm": " ".join(f"{v:.1f}" for v in p.get("entry_ras", [])),
                     "path_length_mm": p.get("path_length_mm"), "min_clearance_mm": p.get("min_clearance_mm"),
                     "zone_axes_mm": " x ".join(f"{v:g}" for v in p.get("zone_axes_mm", []))})
    return Table("probes", rows, "Planned probes (tip and entry in RAS mm)")


def plan_metrics(d: dict, device: str = "") -> list[tuple]:
    rows = [("device", device or d.get("device", ""), ""), ("feasible", bool(d.get("feasible")), ""),
            ("probes", d.get("probe_count"), ""), ("requested margin", d.get("margin_mm"), "mm"),
            ("coverage of tumour + margin", d.get("coverage_percent"), "%"),
            ("required coverage", d.get("required_coverage_percent"), "%"),
            ("coverage of tumour", d.get("tumor_coverage_percent"), "%"),
            ("minimal margin", d.get("minimal_margin_mm"), "mm"), ("tumour + margin volume", d.get("target_volume_ml"), "ml"),
            ("planning time", d.get("run_time_s"), "s")]
    if "bioheat_coverage_percent" in d:
        rows.append(("bioheat coverage of tumour + margin", d.get("bioheat_coverage_percent"), "%"))
    return [r for r in rows if r[1] is not None]


def zone_metrics(m: dict, margin_mm: float | None = None) -> list[tuple]:
    axes = m.get("zone_axes_mm") or []
    rows = [(f"zone axis {n + 1}", a, "mm") for n, a in enumerate(axes)]
    rows += [("zone volume", m.get("zone_volume_ml"), "ml"), ("coverage of tumour", m.get("coverage_percent"), "%"),
             (f"coverage of tumour + {margin_mm:g} mm" if margin_mm is not None else "coverage of tumour + margin",
              m.get("margin_coverage_percent"), "%"), ("minimal margin", m.get("minimal_margin_mm"), "mm")]
    for k, v in m.items():
        if k not in ("zone_axes_mm", "zone_volume_ml", "coverage_percent", "margin_coverage_percent",
                     "minimal_margin_mm") and isinstance(v, (int, float)) and not isinstance(v, bool):
            name, unit = _name_unit(k)
            rows.append((name, v, unit))
    return [r for r in rows if r[1] is not None]


def _name_unit(key: str) -> tuple[str, str]:
    """('tumor volume', 'ml') from 'tumor_volume_ml': the unit a JSON key ends with, and the name without it."""
    for suffix, unit in (("_mm", "mm"), ("_ml", "ml"), ("_percent", "%"), ("_s", "s"), ("_w", "W"), ("_deg", "deg"),
                         ("_c", "°C"), ("_min", "min")):
        if key.endswith(suffix):
            return key[: -len(suffix)].replace("_", " "), unit
    return key.replace("_", " "), ""


def write_plan_report(out_dir, d: dict, ct=None, tumor=None, union=None, probes=(), avoid=None, device: str = "",
                      inputs: dict | None = None) -> list:
    zones = [(union, "planned ablation zones", ZONE_COLOR)] if union is not None else []
    rep = step_report("IMAGIO ablation plan", plan_verdict(d, device), plan_metrics(d, device),
                      figures(ct, tumor, zones, probes, avoid, "plan"), [probe_table(d.get("probes", []))],
                      inputs=inputs, warnings=d.get("warnings", []), text=str(d.get("reason", "")),
                      subtitle="Fewest probes with clear paths whose zones cover the tumour + safety margin")
    return write_step_report(out_dir, rep)


def write_zone_report(out_dir, m: dict, ct=None, tumor=None, zone=None, tip=None, entry=None, vessels=None,
                      margin_mm: float | None = None, inputs: dict | None = None) -> list:
    probes = [(tip, entry)] if tip is not None and entry is not None else []
    avoid = {"vessels": vessels} if vessels is not None else None
    rep = step_report("IMAGIO ablation zone", zone_verdict(m, margin_mm), zone_metrics(m, margin_mm),
                      figures(ct, tumor, [(zone, "ablation zone", ZONE_COLOR)], probes, avoid, "zone"),
                      inputs=inputs, warnings=m.get("warnings", []), text=str(m.get("note", "")),
                      subtitle="The ablation zone of one probe, its coverage of the tumour and the margin")
    return write_step_report(out_dir, rep)


def demo_report(ctx) -> None:
    s = ctx.summary.get("ablation", {})
    res = ctx.case.results.get("ablation")
    device = s.get("device", "")
    d = {"feasible": s.get("feasible"), "probe_count": s.get("probe_count"), "coverage_percent": s.get("coverage_percent"),
         "tumor_coverage_percent": s.get("tumor_coverage_percent"), "minimal_margin_mm": s.get("minimal_margin_mm"),
         "margin_mm": s.get("margin_mm", 5.0), "reason": s.get("reason"), "probes": s.get("probes", [])}
    text, level = plan_verdict(d, device)
    ctx.report.add_verdict(f"Ablation: {text}", level)
    if not isinstance(res, dict):
        return
    section = ctx.step_section("ablation")
    zones = [(z, label, color) for z, label, color in res.get("zones", [])]
    section.figures += [f for f in figures(ctx.case.ct, ctx.case.tumor.mask if ctx.case.tumor else None, zones,
                                           res.get("probes", []), res.get("avoid"), "ablation") if f is not None]
    section.tables.append(probe_table(d["probes"]))
