"""Ablation device library: devices, their published zone sizes, and setting look-up.

The library is data (``devices.json`` beside this file, or any JSON file with
the same layout). A zone is an ellipsoid of revolution along the probe axis:
``zone_long_mm`` along the shaft, ``zone_short_mm`` across it, its centre
``tip_offset_mm`` back from the tip towards the entry.

Settings between table entries are interpolated linearly in time at each
tabulated power, then linearly in power; the result says so
(``ZoneSetting.interpolated`` and ``ZoneSetting.note``). Settings outside
the table raise :class:`~imagio.errors.ImagioError`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagio.errors import ImagioError

DEFAULT_LIBRARY = Path(__file__).with_name("devices.json")
MODALITIES = ("microwave", "radiofrequency", "cryo")
_SETTING_KEYS = ("power_w", "time_s", "zone_long_mm", "zone_short_mm", "tip_offset_mm")


@dataclass(frozen=True)
class ZoneSetting:
    """One device setting and the zone it makes (mm, W, s)."""

    power_w: float
    time_s: float
    zone_long_mm: float
    zone_short_mm: float
    tip_offset_mm: float
    interpolated: bool = False
    note: str = ""

    @property
    def axes_mm(self) -> list[float]:
        """Full axes [long, short, short] in mm."""
        return [self.zone_long_mm, self.zone_short_mm, self.zone_short_mm]

    @property
    def volume_ml(self) -> float:
        import math

        return 4.0 / 3.0 * math.pi * (self.zone_long_mm / 2) * (self.zone_short_mm / 2) ** 2 / 1000.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Device:
    id: str
    name: str
    modality: str
    settings: list[ZoneSetting]
    source: str
    active_length_mm: float = 10.0
    approximate: bool = True
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The public JSON form (``imagio ablation devices --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "modality": self.modality,
            "source": self.source,
            "approximate": self.approximate,
            "active_length_mm": self.active_length_mm,
            "settings": [{k: getattr(s, k) for k in _SETTING_KEYS} for s in self.settings],
        }

    @property
    def powers_w(self) -> list[float]:
        return sorted({s.power_w for s in self.settings})

    def largest(self) -> ZoneSetting:
        return max(self.settings, key=lambda s: (s.volume_ml, -s.time_s))

    def by_volume(self) -> list[ZoneSetting]:
        """Table settings from the smallest zone to the largest."""
        return sorted(self.settings, key=lambda s: (s.volume_ml, s.power_w * s.time_s))

    def table_text(self) -> str:
        rows = ", ".join(f"{s.power_w:g} W/{s.time_s:g} s" for s in sorted(self.settings, key=lambda s: (s.power_w, s.time_s)))
        return rows

    def setting(self, power_w: float, time_s: float) -> ZoneSetting:
        """The zone for ``power_w`` and ``time_s``: a table entry, or interpolated inside the table."""
        p, t = float(power_w), float(time_s)
        for s in self.settings:
            if abs(s.power_w - p) < 1e-6 and abs(s.time_s - t) < 1e-6:
                return s
        powers = self.powers_w
        if p < powers[0] - 1e-6 or p > powers[-1] + 1e-6:
            raise ImagioError(
                f"Power {p:g} W is outside the table of device '{self.id}' ({powers[0]:g}-{powers[-1]:g} W)",
                f"Choose a power within the table; settings: {self.table_text()}",
            )
        lo = max(q for q in powers if q <= p + 1e-6)
        hi = min(q for q in powers if q >= p - 1e-6)
        rows = [self._interp_time(q, t) for q in ((lo,) if lo == hi else (lo, hi))]
        if len(rows) == 1:
            vals = rows[0]
        else:
            w = (p - lo) / (hi - lo)
            vals = [(1 - w) * a + w * b for a, b in zip(rows[0], rows[1], strict=True)]
        where = f"at {lo:g} W, between table times" if lo == hi else f"between {lo:g} and {hi:g} W"
        note = (f"interpolated linearly between table settings of device '{self.id}' ({where}, {p:g} W / {t:g} s); "
                "not a tabulated value")
        return ZoneSetting(p, t, *[round(v, 3) for v in vals], interpolated=True, note=note)

    def _interp_time(self, power: float, t: float) -> tuple[float, float, float]:
        rows = sorted((s for s in self.settings if abs(s.power_w - power) < 1e-6), key=lambda s: s.time_s)
        times = [s.time_s for s in rows]
        if t < times[0] - 1e-6 or t > times[-1] + 1e-6:
            raise ImagioError(
                f"Time {t:g} s is outside the table of device '{self.id}' at {power:g} W ({times[0]:g}-{times[-1]:g} s)",
                f"Choose a time within the table; settings: {self.table_text()}",
            )
        for a, b in zip(rows, rows[1:], strict=False):
            if a.time_s - 1e-6 <= t <= b.time_s + 1e-6:
                w = (t - a.time_s) / (b.time_s - a.time_s)
                return tuple((1 - w) * getattr(a, k) + w * getattr(b, k) for k in _SETTING_KEYS[2:])
        s = rows[0]
        return (s.zone_long_mm, s.zone_short_mm, s.tip_offset_mm)


def _parse_device(obj: dict, where: str) -> Device:
    try:
        did = str(obj["id"])
        modality = str(obj["modality"])
        settings = [ZoneSetting(**{k: float(s[k]) for k in _SETTING_KEYS}) for s in obj["settings"]]
        source = str(obj["source"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ImagioError(f"Device entry {obj.get('id', '?')!r} in {where} is incomplete ({exc})",
                          "Each device needs id, name, modality, source and settings with "
                          + ", ".join(_SETTING_KEYS)) from exc
    if modality not in MODALITIES:
        raise ImagioError(f"Device '{did}' in {where} has modality '{modality}'", f"Use one of {', '.join(MODALITIES)}")
    if not settings:
        raise ImagioError(f"Device '{did}' in {where} has no settings", "Add at least one setting")
    for s in settings:
        if s.zone_long_mm <= 0 or s.zone_short_mm <= 0 or s.zone_short_mm > s.zone_long_mm * 1.5:
            raise ImagioError(f"Device '{did}' in {where} has an implausible zone {s.zone_long_mm} x {s.zone_short_mm} mm",
                              "Give zone_long_mm and zone_short_mm as positive full axes in mm")
    extra = {k: v for k, v in obj.items() if k not in ("id", "name", "modality", "settings", "source",
                                                           "active_length_mm", "approximate")}
    return Device(did, str(obj.get("name", did)), modality, settings, source,
                  float(obj.get("active_length_mm", 10.0)), bool(obj.get("approximate", True)), extra)


def load_library(path: str | Path | None = None) -> dict[str, Device]:
    """Devices by id from ``path`` (default: the bundled ``devices.json``)."""
    p = Path(path) if path is not None else DEFAULT_LIBRARY
    if not p.is_file():
        raise ImagioError(f"Device library {p} does not exist", "Give the path of a devices JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImagioError(f"Device library {p} is not valid JSON ({exc})", "Fix the file or use the bundled library") from exc
    entries = data.get("devices") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ImagioError(f"Device library {p} has no 'devices' list", "See the bundled devices.json for the layout")
    devices: dict[str, Device] = {}
    for obj in entries:
        dev = _parse_device(obj, str(p))
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
                      f"Known devices: {', '.join(sorted(lib))} (see `imagio ablation devices`)")
