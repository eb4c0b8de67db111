"""Ablation device library: devices, their zone sizes with provenance per setting, and setting look-up.

The library is data (``devices.json`` beside this file, or any JSON file with
the same layout). A zone is an ellipsoid of revolution along the probe axis:
``zone_long_mm`` along the shaft, ``zone_short_mm`` across it, its centre
``tip_offset_mm`` back from the device's tip reference point towards the entry.

Every setting says where its values come from: ``sources`` (documents, by id
from the file's ``references``, with the table, figure or file), the
``tissue`` it was measured in, ``verified`` (true only where the values were
read in the cited document), what was ``derived`` or ``assumed`` rather than
read, and the ``previous`` values where they changed. Settings without a
source are not offered unless ``allow_unsourced`` is given (and then carry a
warning).

Settings between table entries are interpolated linearly in time at each
tabulated power, then linearly in power, among the offered settings; the
result says so (``ZoneSetting.interpolated``, ``ZoneSetting.note``) and
carries the provenance of the entries it came from. Settings outside the
table raise :class:`~imagio.errors.ImagioError`.

The file is read bounded (:func:`imagio.schema.load_json`) and checked against the declarative tables
(``SETTING_SCHEMA`` and friends below: types, ranges, finite numbers, allowed values) through
:mod:`imagio.schema`, the validator model cards use, before use.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from imagio import schema as S
from imagio.errors import ImagioError

DEFAULT_LIBRARY = Path(__file__).with_name("devices.json")
#: A device library is a table of settings (the bundled one is ~21 kB); a larger file is not read.
MAX_LIBRARY_BYTES = 1 << 20
MODALITIES = ("microwave", "radiofrequency", "cryo")
#: Tissues a zone can be planned in (``--tissue``); also the ``organ`` a setting was measured in.
TISSUE_CHOICES = ("liver", "lung", "kidney", "soft-tissue", "bone")
_SIZE_KEYS = ("zone_long_mm", "zone_short_mm", "tip_offset_mm")
_SETTING_KEYS = ("power_w", "time_s", *_SIZE_KEYS)

# ---------------------------------------------------------------------------------------------- schema
# Declarative description of the file, checked through imagio.schema (see _rule):
# name -> (type, required, constraints). Types: "number" (finite), "string", "bool", "list", "object",
# "null-or-number", "null-or-string". Constraints: min, max (inclusive), gt (exclusive), choices.
REFERENCE_SCHEMA = {
    "citation": ("string", True, {}),
    "kind": ("string", True, {"choices": ("peer-reviewed", "ifu", "repository")}),
    "doi": ("string", False, {}), "pmid": ("string", False, {}), "pmc": ("string", False, {}),
    "url": ("string", False, {}), "repository": ("string", False, {}), "commit": ("string", False, {}),
    "ifu_document": ("string", False, {}), "ifu_revision": ("string", False, {}),
    "identifier_note": ("string", False, {}), "note": ("string", False, {}),
}
SOURCE_SCHEMA = {"ref": ("string", True, {}), "locator": ("string", True, {})}
SETTING_SCHEMA = {
    "power_w": ("number", True, {"min": 0.0, "max": 1000.0}),
    "time_s": ("number", True, {"gt": 0.0, "max": 7200.0}),
    "zone_long_mm": ("number", True, {"gt": 0.0, "max": 150.0}),
    "zone_short_mm": ("number", True, {"gt": 0.0, "max": 150.0}),
    "tip_offset_mm": ("number", True, {"min": -50.0, "max": 100.0}),
    "tissue": ("string", True, {}),
    "organ": ("null-or-string", True, {"choices": TISSUE_CHOICES}),
    "sources": ("list", True, {}),
    "verified": ("bool", True, {}),
    "read_by": ("string", False, {}),
    "isotherm_c": ("null-or-number", False, {"min": -200.0, "max": 0.0}),
    "n": ("number", False, {"min": 1.0}),
    "sd_mm": ("object", False, {}),
    "derived": ("object", False, {}),
    "assumed": ("object", False, {}),
    "comparators": ("list", False, {}),
    "previous": ("object", False, {}),
    "note": ("string", False, {}),
}
DEVICE_SCHEMA = {
    "id": ("string", True, {}),
    "name": ("string", True, {}),
    "modality": ("string", True, {"choices": MODALITIES}),
    "active_length_mm": ("number", False, {"gt": 0.0, "max": 100.0}),
    "tip_reference": ("string", True, {}),
    "power_note": ("string", False, {}),
    "settings": ("list", True, {}),
}


def _rule(kind: str, rule: dict) -> S.Rule:
    """One field of the tables above as an :mod:`imagio.schema` rule (the validator model cards use too)."""
    base = kind.removeprefix("null-or-")
    if "choices" in rule:
        r = S.Enum(*rule["choices"])
    elif base == "number":
        lo = rule.get("gt", rule.get("min"))
        r = S.Num(min=lo, max=rule.get("max"), min_inclusive="gt" not in rule)
    else:
        r = {"string": S.Str(), "bool": S.Bool(), "list": S.List(), "object": S.Obj({})}[base]
    return S.Optional(r) if kind.startswith("null-or-") else r


@functools.cache
def _schema(name: str) -> S.Obj:
    table = {"reference": REFERENCE_SCHEMA, "source": SOURCE_SCHEMA, "setting": SETTING_SCHEMA,
             "device": DEVICE_SCHEMA}[name]
    return S.Obj({k: _rule(kind, rule) for k, (kind, _, rule) in table.items()},
                 required=[k for k, (_, req, _) in table.items() if req], extra="forbid")


def _check(obj, schema: str, where: str) -> None:
    """``obj`` checked against the ``schema`` table (imagio.schema); the one-line ImagioError naming the key."""
    S.validate(_schema(schema), obj, source=where, hint="See the bundled devices.json for the layout")


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Source:
    """One document a setting's values were read in: citation, identifiers, where in it."""

    ref: str
    citation: str
    kind: str  # peer-reviewed | ifu | repository
    identifiers: dict  # doi, pmid, pmc, url, repository, commit, ifu_document, ifu_revision (those known)
    locator: str  # table, figure, file
    note: str = ""

    def as_dict(self) -> dict:
        return {"ref": self.ref, "citation": self.citation, "kind": self.kind, **self.identifiers,
                "locator": self.locator, **({"note": self.note} if self.note else {})}


@dataclass(frozen=True)
class ZoneSetting:
    """One device setting, the zone it makes (mm, W, s) and where those values come from."""

    power_w: float
    time_s: float
    zone_long_mm: float
    zone_short_mm: float
    tip_offset_mm: float
    interpolated: bool = False
    note: str = ""
    tissue: str = "not stated"
    organ: str | None = None
    isotherm_c: float | None = None
    sources: tuple = ()
    verified: bool = False
    read_by: str = ""
    derived: dict = field(default_factory=dict)
    assumed: dict = field(default_factory=dict)
    comparators: tuple = ()
    previous: dict = field(default_factory=dict)
    n: int | None = None
    sd_mm: dict = field(default_factory=dict)

    @property
    def sourced(self) -> bool:
        return bool(self.sources)

    @property
    def axes_mm(self) -> list[float]:
        """Full axes [long, short, short] in mm."""
        return [self.zone_long_mm, self.zone_short_mm, self.zone_short_mm]

    @property
    def volume_ml(self) -> float:
        return 4.0 / 3.0 * math.pi * (self.zone_long_mm / 2) * (self.zone_short_mm / 2) ** 2 / 1000.0

    @property
    def label(self) -> str:
        return f"{self.power_w:g} W / {self.time_s:g} s"

    def provenance(self) -> dict:
        """The public JSON form of where this setting's values come from."""
        out = {"tissue": self.tissue, "organ": self.organ, "sourced": self.sourced,
               "sources": [s.as_dict() for s in self.sources], "verified": self.verified}
        for key in ("read_by", "derived", "assumed", "previous", "sd_mm", "n"):
            v = getattr(self, key)
            if v:
                out[key] = v
        if self.comparators:
            out["comparators"] = list(self.comparators)
        if self.isotherm_c is not None or self.previous.get("isotherm_c") is not None:
            out["isotherm_c"] = self.isotherm_c
        return out

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in _SETTING_KEYS}, **self.provenance(),
                **({"note": self.note} if self.note else {}), "interpolated": self.interpolated}


@dataclass
class Device:
    id: str
    name: str
    modality: str
    settings: list[ZoneSetting]
    tip_reference: str = ""
    active_length_mm: float = 10.0
    power_note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self, include_unsourced: bool = True) -> dict:
        """The public JSON form (``imagio ablation devices --json``): every setting with its provenance."""
        rows = self.settings if include_unsourced else self.offered()
        return {"id": self.id, "name": self.name, "modality": self.modality,
                "active_length_mm": self.active_length_mm, "tip_reference": self.tip_reference,
                **({"power_note": self.power_note} if self.power_note else {}),
                "settings": [s.as_dict() for s in sorted(rows, key=lambda s: (s.power_w, s.time_s))]}

    def offered(self, allow_unsourced: bool = False) -> list[ZoneSetting]:
        """Settings that may be used: those with a source, or all with ``allow_unsourced``."""
        return [s for s in self.settings if allow_unsourced or s.sourced]

    @property
    def source(self) -> str:
        """The distinct citations of the sourced settings (one line)."""
        cites = []
        for s in self.settings:
            for src in s.sources:
                if src.citation not in cites:
                    cites.append(src.citation)
        return "; ".join(cites) if cites else "no source"

    def powers_w(self, allow_unsourced: bool = False) -> list[float]:
        return sorted({s.power_w for s in self.offered(allow_unsourced)})

    def largest(self, allow_unsourced: bool = False) -> ZoneSetting:
        return max(self._need(allow_unsourced), key=lambda s: (s.volume_ml, -s.time_s))

    def by_volume(self, allow_unsourced: bool = False) -> list[ZoneSetting]:
        """Offered settings from the smallest zone to the largest."""
        return sorted(self._need(allow_unsourced), key=lambda s: (s.volume_ml, s.power_w * s.time_s))

    def table_text(self, allow_unsourced: bool = False) -> str:
        rows = sorted(self.offered(allow_unsourced), key=lambda s: (s.power_w, s.time_s))
        return ", ".join(s.label for s in rows) or "none"

    def _need(self, allow_unsourced: bool) -> list[ZoneSetting]:
        rows = self.offered(allow_unsourced)
        if not rows:
            raise ImagioError(f"Device '{self.id}' has no setting with a source",
                              f"Its settings ({self.table_text(True)}) are unsourced: give --allow-unsourced to use "
                              "them anyway (with a warning), or add a sourced setting to the library")
        return rows

    def setting(self, power_w: float, time_s: float, allow_unsourced: bool = False) -> ZoneSetting:
        """The zone for ``power_w`` and ``time_s``: a table entry, or interpolated inside the table."""
        p, t = float(power_w), float(time_s)
        if not (math.isfinite(p) and math.isfinite(t)):
            raise ImagioError(f"Power {power_w} W / time {time_s} s is not a finite setting",
                              "Give a power in W and a time in s as finite numbers")
        if p < 0 or t <= 0:
            raise ImagioError(f"Power {p:g} W / time {t:g} s is not a valid setting",
                              "Give a power >= 0 W and a time > 0 s")
        for s in self.settings:
            if abs(s.power_w - p) < 1e-6 and abs(s.time_s - t) < 1e-6:
                if s.sourced or allow_unsourced:
                    return s
                raise ImagioError(
                    f"Setting {s.label} of device '{self.id}' has no source ({s.note or 'unsourced'})",
                    "It is not offered by default: choose a sourced setting (" + self.table_text()
                    + ") or give --allow-unsourced to use it anyway, with a warning")
        rows_all = self._need(allow_unsourced)
        powers = sorted({s.power_w for s in rows_all})
        hint = f"Choose a setting within the table; offered settings: {self.table_text(allow_unsourced)}" + (
            "" if allow_unsourced or len(self.offered()) == len(self.settings)
            else f" (unsourced, with --allow-unsourced: {', '.join(s.label for s in self.settings if not s.sourced)})")
        if p < powers[0] - 1e-6 or p > powers[-1] + 1e-6:
            raise ImagioError(
                f"Power {p:g} W is outside the table of device '{self.id}' ({powers[0]:g}-{powers[-1]:g} W)", hint)
        lo = max(q for q in powers if q <= p + 1e-6)
        hi = min(q for q in powers if q >= p - 1e-6)
        pieces = [self._interp_time(q, t, rows_all, hint) for q in ((lo,) if lo == hi else (lo, hi))]
        if len(pieces) == 1:
            vals, used = pieces[0]
        else:
            w = (p - lo) / (hi - lo)
            vals = [(1 - w) * a + w * b for a, b in zip(pieces[0][0], pieces[1][0], strict=True)]
            used = pieces[0][1] + pieces[1][1]
        where = f"at {lo:g} W, between table times" if lo == hi else f"between {lo:g} and {hi:g} W"
        note = (f"interpolated linearly between table settings of device '{self.id}' ({where}, {p:g} W / {t:g} s: "
                + ", ".join(s.label for s in used) + "); not a tabulated value")
        return _merged(used, p, t, [round(v, 3) for v in vals], note)

    def _interp_time(self, power: float, t: float, rows_all, hint: str):
        rows = sorted((s for s in rows_all if abs(s.power_w - power) < 1e-6), key=lambda s: s.time_s)
        times = [s.time_s for s in rows]
        if t < times[0] - 1e-6 or t > times[-1] + 1e-6:
            raise ImagioError(
                f"Time {t:g} s is outside the table of device '{self.id}' at {power:g} W "
                f"({times[0]:g}-{times[-1]:g} s)", hint)
        for a, b in zip(rows, rows[1:], strict=False):
            if a.time_s - 1e-6 <= t <= b.time_s + 1e-6:
                w = (t - a.time_s) / (b.time_s - a.time_s)
                return tuple((1 - w) * getattr(a, k) + w * getattr(b, k) for k in _SIZE_KEYS), [a, b]
        s = rows[0]
        return tuple(getattr(s, k) for k in _SIZE_KEYS), [s]


def _merged(used: list[ZoneSetting], p: float, t: float, vals: list[float], note: str) -> ZoneSetting:
    """An interpolated setting: its provenance is that of every table entry it came from."""
    sources, seen = [], set()
    for s in used:
        for src in s.sources:
            if (src.ref, src.locator) not in seen:
                seen.add((src.ref, src.locator))
                sources.append(src)
    tissues = sorted({s.tissue for s in used})
    organs = {s.organ for s in used}
    derived, assumed = {}, {}
    for s in used:
        for k, v in s.derived.items():
            derived.setdefault(k, f"{s.label}: {v}")
        for k, v in s.assumed.items():
            assumed.setdefault(k, f"{s.label}: {v}")
    return ZoneSetting(p, t, *vals, interpolated=True, note=note,
                       tissue=tissues[0] if len(tissues) == 1 else "mixed: " + "; ".join(tissues),
                       organ=organs.pop() if len(organs) == 1 else None,
                       isotherm_c=used[0].isotherm_c if len({s.isotherm_c for s in used}) == 1 else None,
                       sources=tuple(sources) if all(s.sourced for s in used) else (),
                       verified=all(s.verified for s in used), derived=derived, assumed=assumed)


def setting_warnings(device: Device, setting: ZoneSetting, tissue: str | None = None) -> list[str]:
    """What a user must know about the provenance of ``setting`` when it is used in ``tissue``."""
    w = []
    name = f"{device.id} {setting.label}"
    if not setting.sourced:
        w.append(f"{name} has no source (entered from recollection; {setting.note or 'not checked'}): used only "
                 "because unsourced settings were allowed")
    elif not setting.verified:
        w.append(f"{name}: its values were not read in the cited source (verified: false)")
    if setting.sourced and all(s.kind == "repository" for s in setting.sources):
        w.append(f"{name}: the only source is a public repository profile whose own origin (vendor chart, tissue, "
                 "conditions) is undocumented")
    if tissue is not None:
        if setting.organ is None:
            w.append(f"{name}: the tissue this zone was measured in is not stated by its source "
                     f"({setting.tissue}); it is used for {tissue}")
        elif setting.organ != tissue:
            w.append(f"{name} was measured in {setting.tissue}, not in {tissue}: the zone in {tissue} may differ")
    for k, v in setting.derived.items():
        w.append(f"{name}: {k} is derived, not read ({v})")
    for k, v in setting.assumed.items():
        w.append(f"{name}: {k} is assumed ({v})")
    if device.modality == "cryo" and setting.isotherm_c is None:
        w.append(f"{name}: the isotherm of this ice zone is unknown (it may be the visible ice, not the lethal "
                 "isotherm)")
    return w


# ---------------------------------------------------------------------------------------------- loading
def _parse_device(obj: dict, refs: dict, where: str) -> Device:
    _check(obj, "device", f"Device entry {obj.get('id', '?')!r} in {where}" if isinstance(obj, dict) else where)
    did = obj["id"]
    if not obj["settings"]:
        raise ImagioError(f"Device '{did}' in {where} has no settings", "Add at least one setting")
    settings, keys = [], set()
    for n, s in enumerate(obj["settings"]):
        here = f"Setting {n + 1} of device '{did}' in {where}"
        _check(s, "setting", here)
        if s["zone_short_mm"] > s["zone_long_mm"] * 1.5:
            raise ImagioError(f"{here} has an implausible zone {s['zone_long_mm']} x {s['zone_short_mm']} mm",
                              "Give zone_long_mm and zone_short_mm as full axes in mm")
        if abs(s["tip_offset_mm"]) >= s["zone_long_mm"] / 2:
            raise ImagioError(f"{here}: the zone centre ({s['tip_offset_mm']:g} mm) lies beyond the zone's half "
                              f"length ({s['zone_long_mm'] / 2:g} mm), so the zone would not reach the tip",
                              "Give tip_offset_mm as the distance from the tip back to the zone centre")
        key = (float(s["power_w"]), float(s["time_s"]))
        if key in keys:
            raise ImagioError(f"{here} repeats {key[0]:g} W / {key[1]:g} s", "Give each setting once")
        keys.add(key)
        if obj["modality"] == "cryo" and s["power_w"] != 0:
            raise ImagioError(f"{here}: a cryoprobe has no power", "Give power_w 0 for cryo settings")
        if s["verified"] and not s["sources"]:
            raise ImagioError(f"{here} is marked verified but has no source", "Cite its source or set verified false")
        srcs = []
        for m, src in enumerate(s["sources"]):
            _check(src, "source", f"{here}, source {m + 1}")
            if src["ref"] not in refs:
                raise ImagioError(f"{here} cites unknown reference '{src['ref']}'",
                                  "Add it to 'references': " + (", ".join(refs) or "none defined"))
            r = refs[src["ref"]]
            ids = {k: r[k] for k in ("doi", "pmid", "pmc", "url", "repository", "commit", "ifu_document",
                                     "ifu_revision", "identifier_note") if k in r}
            srcs.append(Source(src["ref"], r["citation"], r["kind"], ids, src["locator"], r.get("note", "")))
        settings.append(ZoneSetting(
            float(s["power_w"]), float(s["time_s"]), float(s["zone_long_mm"]), float(s["zone_short_mm"]),
            float(s["tip_offset_mm"]), note=s.get("note", ""), tissue=s["tissue"], organ=s["organ"],
            isotherm_c=s.get("isotherm_c"), sources=tuple(srcs), verified=s["verified"], read_by=s.get("read_by", ""),
            derived=dict(s.get("derived", {})), assumed=dict(s.get("assumed", {})),
            comparators=tuple(s.get("comparators", ())), previous=dict(s.get("previous", {})),
            n=int(s["n"]) if "n" in s else None, sd_mm=dict(s.get("sd_mm", {}))))
    return Device(did, obj["name"], obj["modality"], settings, obj["tip_reference"],
                  float(obj.get("active_length_mm", 10.0)), obj.get("power_note", ""))


def load_library(path: str | Path | None = None) -> dict[str, Device]:
    """Devices by id from ``path`` (default: the bundled ``devices.json``), checked against the schema."""
    p = Path(path) if path is not None else DEFAULT_LIBRARY
    if not p.exists():
        raise ImagioError(f"Device library {p} does not exist", "Give the path of a devices JSON file")
    data = S.load_json(p, MAX_LIBRARY_BYTES, what="Device library")  # bounded, strict (no NaN), regular file
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise ImagioError(f"Device library {p} has no 'devices' list", "See the bundled devices.json for the layout")
    refs = data.get("references", {})
    if not isinstance(refs, dict):
        raise ImagioError(f"'references' in {p} is not an object", "Give references as {id: {...}}")
    for rid, r in refs.items():
        _check(r, "reference", f"Reference '{rid}' in {p}")
        if r["kind"] != "repository" and not any(k in r for k in ("doi", "pmid", "pmc", "ifu_document", "url")):
            raise ImagioError(f"Reference '{rid}' in {p} has no identifier",
                              "Give a DOI, PMID/PMC, IFU document number and revision, or the URL it was read at")
        if r["kind"] == "repository" and not ("repository" in r and "commit" in r):
            raise ImagioError(f"Reference '{rid}' in {p} names no repository and commit", "Give both")
    devices: dict[str, Device] = {}
    for obj in data["devices"]:
        dev = _parse_device(obj, refs, str(p))
        if dev.id in devices:
            raise ImagioError(f"Device id '{dev.id}' appears twice in {p}", "Give each device a unique id")
        devices[dev.id] = dev
    return devices


def get_device(device_id: str, library: dict[str, Device] | None = None) -> Device:
    """The device ``device_id`` (case-insensitive), or ImagioError listing the known ids."""
    lib = library if library is not None else load_library()
    key = str(device_id).strip().lower()
    for did, dev in lib.items():
        if did.lower() == key:
            return dev
    raise ImagioError(f"Unknown ablation device '{device_id}'",
                      f"Known devices: {', '.join(sorted(lib))} (see `imagio ablation devices --all`)")


def scaled(device: Device, scale: float) -> Device:
    """A copy of ``device`` whose zones are ``scale`` times smaller around the same centres (planning only)."""
    return replace(device, settings=[replace(s, zone_long_mm=s.zone_long_mm * scale,
                                             zone_short_mm=s.zone_short_mm * scale) for s in device.settings])
