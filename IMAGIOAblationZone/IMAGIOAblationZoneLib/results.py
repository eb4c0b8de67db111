"""The typed results of IMAGIOAblationZone (each implements ``imagio.result.StepResult``).

* ``ZoneResult``: the ablation zone of one or several probes (device table or bioheat), coverage and margins.
* ``PlanResult``: a probe plan, feasible only when it keeps the requested margin, with the reason otherwise.
* ``ReplanResult``: the zone of the probes as placed, the residual tumour + margin, and the one added probe or
  changed setting that covers it (or why none can).

``to_dict()`` is the CLI's JSON (``ablation.json``, ``plan.json``, ``replan.json``); ``warnings`` are printed,
shown in Slicer and in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.io import Segment
from imagio.result import rows

from .devices import Device, ZoneSetting
from .margins import Margin
from .zone import EllipsoidZone, crop

TUMOR_COLOR = (0.9, 0.2, 0.2)
ZONE_COLOR = (1.0, 0.65, 0.0)
RESIDUAL_COLOR = (0.6, 0.1, 0.9)


@dataclass
class Probe:
    """A probe as placed or planned: tip and entry (RAS mm) and the setting it runs at."""

    tip_ras: np.ndarray
    entry_ras: np.ndarray
    setting: ZoneSetting
    min_clearance_mm: float = float("nan")

    def zone(self) -> EllipsoidZone:
        return EllipsoidZone.from_probe(self.tip_ras, self.entry_ras, self.setting)

    def as_dict(self) -> dict:
        d = {"tip_ras": [round(float(v), 3) for v in self.tip_ras],
             "entry_ras": [round(float(v), 3) for v in self.entry_ras],
             "power_w": self.setting.power_w, "time_s": self.setting.time_s, "zone_axes_mm": self.setting.axes_mm,
             "path_length_mm": round(float(np.linalg.norm(np.asarray(self.tip_ras) - self.entry_ras)), 2)}
        if np.isfinite(self.min_clearance_mm):
            d["min_clearance_mm"] = round(float(self.min_clearance_mm), 2)
        if self.setting.interpolated:
            d["setting_note"] = self.setting.note
        return d


def _fmt(v, unit: str = "", nd: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}{(' ' + unit) if unit else ''}"


def _lines_to_scene(scene, probes, name):
    from imagio.mrml import add_line

    return [add_line(scene, f"{name} probe {n + 1}", p.entry_ras, p.tip_ras) for n, p in enumerate(probes)]


@dataclass
class ZoneResult:
    """The ablation zone of one or several probes and its measures (``metrics``, the JSON content)."""

    model: str  # "table" | "bioheat"
    device: Device
    probes: list[Probe]
    grid: sitk.Image
    box: tuple | None
    mask_box: np.ndarray  # uint8 mask of ``box``
    metrics: dict
    warnings: list[str] = field(default_factory=list)
    zones: list[EllipsoidZone] = field(default_factory=list)  # the table ellipsoids (table model)
    bioheat: object | None = None  # bioheat.BioheatResult
    margin: Margin | None = None

    @property
    def zone(self) -> EllipsoidZone | None:
        """The table ellipsoid of a single probe (None for bioheat or several probes)."""
        return self.zones[0] if len(self.zones) == 1 else None

    def full_mask(self) -> sitk.Image:
        arr = np.zeros(self.grid.GetSize()[::-1], np.uint8)
        if self.box is not None:
            crop(arr, self.box)[...] = self.mask_box
        return geometry.copy_geometry(arr, self.grid)

    def to_dict(self) -> dict:
        return {**self.metrics, "warnings": list(self.warnings)}

    def table_rows(self) -> list[dict]:
        m = self.metrics
        items = [("model", m.get("model"), ""), ("device", self.device.id, ""), ("probes", len(self.probes), ""),
                 ("zone volume", m.get("zone_volume_ml"), "ml")]
        if len(self.probes) == 1:
            items.insert(2, ("setting", self.probes[0].setting.label, ""))
            items.append(("zone axes (long x short)", " x ".join(f"{a:.1f}" for a in m["zone_axes_mm"][:2]), "mm"))
        for key, label, unit in (("coverage_percent", "tumour coverage", "%"),
                                 ("margin_coverage_percent", f"coverage of tumour + {m.get('margin_mm', 0):g} mm", "%"),
                                 ("minimal_margin_mm", "minimal margin", "mm"),
                                 ("residual_target_ml", "tumour + margin outside the zone", "ml")):
            if m.get(key) is not None:
                items.append((label, m[key], unit))
        items += [(f"{name} in zone", v, "%") for name, v in m.get("structures_in_zone_percent", {}).items()]
        items += [("warning", w, "") for w in self.warnings]
        return rows(items)

    def summary_text(self) -> str:
        m = self.metrics
        head = (f"{self.model} zone of {self.device.id}, {len(self.probes)} probe(s): "
                + (" x ".join(f"{a:.1f}" for a in m["zone_axes_mm"]) + " mm, " if m.get("zone_axes_mm") else "")
                + f"{m['zone_volume_ml']:.1f} ml")
        if m.get("coverage_percent") is not None:
            head += (f"; tumour {m['coverage_percent']:.1f} %, tumour + {m['margin_mm']:g} mm "
                     f"{m['margin_coverage_percent']:.1f} %, minimal margin {m['minimal_margin_mm']:.1f} mm")
        return "\n".join([head] + [f"warning: {w}" for w in self.warnings])

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict:
        from imagio.mrml import add_model, add_table, mask_to_surface_ras, segmentation_node_from_segments

        name = name or "Ablation zone"
        mask = self.full_mask()
        out = {"segmentation": segmentation_node_from_segments(
            scene, [Segment("ablation_zone", mask, ZONE_COLOR)], name, reference_node)}
        poly = self.zones[0].polydata_ras() if len(self.zones) == 1 else (
            mask_to_surface_ras(mask) if self.mask_box.any() else None)
        if poly is not None:
            out["model"] = add_model(scene, name + " model", poly, color=ZONE_COLOR, opacity=0.4)
        out["lines"] = _lines_to_scene(scene, self.probes, name)
        out["table"] = add_table(scene, name + " results", self.table_rows())
        return out


@dataclass
class PlanResult:
    """A probe plan. ``feasible`` only when coverage is reached and the minimal margin keeps the requested one."""

    feasible: bool
    probes: list[Probe]
    device: Device
    tissue: str
    margin_mm: float
    required_percent: float
    coverage_percent: float
    tumor_coverage_percent: float
    margin: Margin | None
    reason: str
    target_volume_ml: float
    tumor_volume_ml: float
    zone_volume_ml: float
    run_time_s: float
    grid: sitk.Image
    union_mask: sitk.Image | None
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    bioheat: dict | None = None

    @property
    def minimal_margin_mm(self) -> float | None:
        return None if self.margin is None else float(self.margin.minimal_margin_mm)

    def to_dict(self) -> dict:
        d = {"feasible": bool(self.feasible),
             "coverage_percent": round(self.coverage_percent, 3),
             "tumor_coverage_percent": round(self.tumor_coverage_percent, 3),
             "required_coverage_percent": self.required_percent,
             "margin_mm": self.margin_mm,
             "minimal_margin_mm": None if self.margin is None else round(self.margin.minimal_margin_mm, 2),
             "margin_kept": bool(self.margin is not None and self.margin.minimal_margin_mm >= self.margin_mm - 1e-6),
             **({} if self.margin is None else {k: v for k, v in self.margin.as_dict().items()
                                                if k != "minimal_margin_mm"}),
             "target_volume_ml": round(self.target_volume_ml, 3),
             "tumor_volume_ml": round(self.tumor_volume_ml, 3),
             "zone_volume_ml": round(self.zone_volume_ml, 3),
             "probe_count": len(self.probes),
             "probes": [p.as_dict() for p in self.probes],
             "reason": self.reason,
             "device": self.device.id,
             "tissue": self.tissue,
             "run_time_s": round(self.run_time_s, 3),
             **self.details}
        if self.bioheat is not None:
            d.update(self.bioheat)
        d["warnings"] = list(self.warnings)
        return d

    def table_rows(self) -> list[dict]:
        items = [("feasible", "yes" if self.feasible else "no", ""), ("device", self.device.id, ""),
                 ("tissue", self.tissue, ""), ("probes", len(self.probes), ""),
                 (f"coverage of tumour + {self.margin_mm:g} mm", round(self.coverage_percent, 2), "%"),
                 ("tumour coverage", round(self.tumor_coverage_percent, 2), "%"),
                 ("minimal margin", None if self.margin is None else round(self.margin.minimal_margin_mm, 2), "mm"),
                 ("requested margin", self.margin_mm, "mm"), ("planned zone volume", round(self.zone_volume_ml, 2), "ml")]
        for n, p in enumerate(self.probes):
            items.append((f"probe {n + 1} setting", p.setting.label, ""))
            items.append((f"probe {n + 1} tip (R, A, S)", ", ".join(f"{v:.1f}" for v in p.tip_ras), "mm"))
            items.append((f"probe {n + 1} entry (R, A, S)", ", ".join(f"{v:.1f}" for v in p.entry_ras), "mm"))
        items.append(("reason", self.reason, ""))
        items += [("warning", w, "") for w in self.warnings]
        return rows(items)

    def summary_text(self) -> str:
        head = (f"plan {'feasible' if self.feasible else 'NOT feasible'}: {len(self.probes)} probe(s) of "
                f"{self.device.id} in {self.tissue}, coverage of tumour + {self.margin_mm:g} mm "
                f"{self.coverage_percent:.2f} % (tumour {self.tumor_coverage_percent:.2f} %), minimal margin "
                f"{_fmt(self.minimal_margin_mm, 'mm', 2)} (requested {self.margin_mm:g} mm)")
        return "\n".join([head, f"reason: {self.reason}"] + [f"warning: {w}" for w in self.warnings])

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict:
        from imagio.mrml import add_model, add_table, segmentation_node_from_segments

        name = name or "Planned ablation"
        out = {}
        if self.union_mask is not None and self.probes:
            out["segmentation"] = segmentation_node_from_segments(
                scene, [Segment("planned_ablation_zone", self.union_mask, ZONE_COLOR)], name + " zone", reference_node)
            out["models"] = [add_model(scene, f"{name} zone {n + 1} model", p.zone().polydata_ras(), color=ZONE_COLOR,
                                       opacity=0.35) for n, p in enumerate(self.probes)]
        out["lines"] = _lines_to_scene(scene, self.probes, name)
        out["table"] = add_table(scene, name + " plan", self.table_rows())
        return out


@dataclass
class ReplanResult:
    """The probes as placed, what they leave untreated, and the one change that covers it (or why none can)."""

    placed: ZoneResult
    residual_target_ml: float
    residual_tumor_ml: float
    residual_mask: sitk.Image
    proposal: dict | None  # {"kind": "added probe"|"changed setting", ...}
    proposal_zone: ZoneResult | None
    reason: str
    margin_mm: float
    warnings: list[str] = field(default_factory=list)

    @property
    def covered_after(self) -> bool:
        return self.proposal is not None

    def to_dict(self) -> dict:
        pm = self.placed.metrics
        d = {"placed_probes": [p.as_dict() for p in self.placed.probes],
             "device": self.placed.device.id,
             "tissue": pm.get("tissue"),
             "zone_volume_ml": pm.get("zone_volume_ml"),
             "coverage_percent": pm.get("coverage_percent"),
             "margin_coverage_percent": pm.get("margin_coverage_percent"),
             "minimal_margin_mm": pm.get("minimal_margin_mm"),
             "margin_mm": self.margin_mm,
             "margin_kept": bool(pm.get("minimal_margin_mm") is not None
                                 and pm["minimal_margin_mm"] >= self.margin_mm - 1e-6),
             "residual_target_ml": round(self.residual_target_ml, 3),
             "residual_tumor_ml": round(self.residual_tumor_ml, 3),
             "proposal": self.proposal,
             "reason": self.reason,
             "placed_zone": {k: v for k, v in pm.items() if k not in ("warnings",)}}
        if self.proposal_zone is not None:
            q = self.proposal_zone.metrics
            d["after_proposal"] = {k: q.get(k) for k in ("coverage_percent", "margin_coverage_percent",
                                                         "minimal_margin_mm", "zone_volume_ml", "residual_target_ml")}
        d["warnings"] = list(self.warnings)
        return d

    def table_rows(self) -> list[dict]:
        pm = self.placed.metrics
        items = [("probes placed", len(self.placed.probes), ""), ("device", self.placed.device.id, ""),
                 ("tumour coverage (as placed)", pm.get("coverage_percent"), "%"),
                 (f"coverage of tumour + {self.margin_mm:g} mm (as placed)", pm.get("margin_coverage_percent"), "%"),
                 ("minimal margin (as placed)", pm.get("minimal_margin_mm"), "mm"),
                 ("residual tumour + margin", round(self.residual_target_ml, 3), "ml"),
                 ("residual tumour", round(self.residual_tumor_ml, 3), "ml")]
        if self.proposal is not None:
            items.append(("proposal", self.proposal["kind"], ""))
            if self.proposal_zone is not None:
                q = self.proposal_zone.metrics
                items += [("minimal margin after the proposal", q.get("minimal_margin_mm"), "mm"),
                          ("residual tumour + margin after the proposal", q.get("residual_target_ml"), "ml")]
        items.append(("reason", self.reason, ""))
        items += [("warning", w, "") for w in self.warnings]
        return rows(items)

    def summary_text(self) -> str:
        pm = self.placed.metrics
        head = (f"as placed: {len(self.placed.probes)} probe(s), tumour {_fmt(pm.get('coverage_percent'), '%')}, "
                f"tumour + {self.margin_mm:g} mm {_fmt(pm.get('margin_coverage_percent'), '%')}, minimal margin "
                f"{_fmt(pm.get('minimal_margin_mm'), 'mm')}; residual tumour + margin {self.residual_target_ml:.2f} ml")
        return "\n".join([head, self.reason] + [f"warning: {w}" for w in self.warnings])

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict:
        from imagio.mrml import add_line, add_table, segmentation_node_from_segments

        name = name or "Re-plan"
        segs = [Segment("zone_as_placed", self.placed.full_mask(), ZONE_COLOR)]
        if sitk.GetArrayViewFromImage(self.residual_mask).any():
            segs.append(Segment("residual_tumor_and_margin", self.residual_mask, RESIDUAL_COLOR))
        if self.proposal_zone is not None:
            segs.append(Segment("zone_with_proposal", self.proposal_zone.full_mask(), (0.2, 0.8, 0.3)))
        out = {"segmentation": segmentation_node_from_segments(scene, segs, name + " zones", reference_node)}
        out["lines"] = _lines_to_scene(scene, self.placed.probes, name + " placed")
        if self.proposal is not None and self.proposal.get("kind") == "added probe":
            p = self.proposal["probe"]
            out["proposed_line"] = add_line(scene, name + " proposed probe", p["entry_ras"], p["tip_ras"])
        out["table"] = add_table(scene, name + " results", self.table_rows())
        return out
