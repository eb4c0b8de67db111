"""Pennes bioheat solver on an image grid (numpy, explicit finite differences).

    rho c dT/dt = div(k grad T) - w_b rho_b c_b (T - T_a) + Q

* k, rho c and perfusion w_b per voxel from tissue labels (``TISSUES``);
  conductance between voxels is the harmonic mean of the two sides.
* Large vessels are Dirichlet voxels held at blood temperature (heat sinks);
  the outer faces of the domain are held at body temperature.
* Q is the device power times an efficiency, spread as a Gaussian
  (``sigma_mm``) around the active segment of the probe at the tip; the
  sources of several probes add up (combined heating), each switched off
  after its own time.
* Explicit time stepping at 90 % of the stability limit of the grid, so the
  scheme is stable on anisotropic grids; oblique grids need nothing special
  (the direction matrix is orthonormal, the Laplacian is the same).
* The zone is the lethal isotherm (``LETHAL_ISOTHERM_C``) of the maximum
  temperature (default) or a thermal dose CEM43 >= 240 min, both computed.

Units inside: SI (m, s, W, K); in and out: mm, s, W, degrees C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.progress import Progress, ensure

from .zone import crop, mask_box

BODY_C = 37.0
#: The lethal isotherm (degrees C): the zone boundary of the bioheat model, where perfusion stops, and what the
#: source calibration fits. Written once here; everything else refers to it.
LETHAL_ISOTHERM_C = 60.0
#: Thermal dose criterion (CEM43, minutes) of the alternative zone definition.
CEM43_LETHAL_MIN = 240.0

ITIS_DATABASE = ("IT'IS Foundation, Tissue Properties Database, version 4.1 "
                 "(https://itis.swiss/virtual-population/tissue-properties/database/)")


@dataclass(frozen=True)
class Tissue:
    """Thermal properties of one tissue (SI units) and where they come from."""

    name: str
    k_w_per_m_k: float
    rho_c_j_per_m3_k: float
    perfusion_per_s: float  # volumetric blood perfusion w_b (m^3 blood / m^3 tissue / s)
    density_kg_m3: float = 0.0
    heat_capacity_j_kg_k: float = 0.0
    perfusion_ml_min_kg: float = 0.0
    source: str = ITIS_DATABASE
    verified: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "thermal_conductivity_w_per_m_k": self.k_w_per_m_k,
                "density_kg_per_m3": self.density_kg_m3, "heat_capacity_j_per_kg_k": self.heat_capacity_j_kg_k,
                "perfusion_ml_per_min_per_kg": self.perfusion_ml_min_kg,
                "perfusion_per_s": round(self.perfusion_per_s, 6), "source": self.source,
                "verified": self.verified, "note": self.note}


def _itis(name, density, heat_capacity, k, perfusion_ml_min_kg, note="", itis_name=""):
    """A tissue from IT'IS values: perfusion in ml/min/kg becomes a volumetric rate in 1/s."""
    w = perfusion_ml_min_kg * 1e-6 * density / 60.0
    return Tissue(name, k, density * heat_capacity, w, density, heat_capacity, perfusion_ml_min_kg,
                  f"{ITIS_DATABASE}, tissue '{itis_name or name}'", False,
                  ("density as on the database's density page (also in a public transcription of that page); "
                   "heat capacity, conductivity and perfusion (heat transfer rate) as recalled from the database, "
                   "not re-read here (verified: false). " + note).strip())


#: Tissue properties per tissue (``--tissue`` and the tissue labels of a bioheat run). Perfusion is the
#: IT'IS heat transfer rate; it is the least certain value (the database gives wide ranges) and dominates
#: the in vivo zone size, see README.
TISSUES: dict[str, Tissue] = {
    "liver": _itis("liver", 1079.0, 3540.0, 0.52, 860.0, itis_name="Liver"),
    "lung": _itis("lung", 394.0, 3886.0, 0.39, 401.0, itis_name="Lung (Inflated)",
                  note="Inflated lung: the low density is its air content; per volume it holds less heat and "
                       "carries less blood than solid organs."),
    "kidney": _itis("kidney", 1066.0, 3763.0, 0.53, 3795.0, itis_name="Kidney"),
    "soft-tissue": _itis("soft-tissue", 1090.0, 3421.0, 0.49, 37.0, itis_name="Muscle"),
    "bone": _itis("bone", 1908.0, 1313.0, 0.32, 10.0, itis_name="Bone (Cortical)"),
    "blood": Tissue("blood", 0.52, 1050.0 * 3617.0, 0.0, 1050.0, 3617.0, 0.0, f"{ITIS_DATABASE}, tissue 'Blood'",
                    False, "no perfusion term: large vessels are held at body temperature (heat sinks)"),
}
BLOOD_RHO_C = TISSUES["blood"].rho_c_j_per_m3_k  # J/(m^3 K)
SOURCE = ITIS_DATABASE


def tumour_tissue(host: str) -> Tissue:
    """Properties used for tumour voxels in ``host``: the host's, except a solid nodule in aerated lung, which is
    modelled as soft tissue (no tumour-specific values with a source are in the library)."""
    t = TISSUES["soft-tissue"] if host == "lung" else TISSUES[host]
    return replace(t, name=f"tumour in {host}", note=(t.note + " Used for the tumour: "
                   + ("a solid nodule is not aerated lung, so soft-tissue (IT'IS muscle) values are used."
                      if host == "lung" else f"the tumour is given the {host} values.")).strip())


@dataclass
class BioheatResult:
    """Fields on the simulated grid ([k, j, i] arrays on ``grid``) and the zone."""

    grid: sitk.Image
    t_final_c: np.ndarray
    t_max_c: np.ndarray
    cem43_min: np.ndarray
    zone: np.ndarray  # uint8
    criterion: str
    duration_s: float
    dt_s: float
    steps: int
    history: dict = field(default_factory=dict)  # {"time_s": [...], "points_c": [[...], ...]}


def stable_dt(spacing_m, k_max, rho_c_min, wcb_max=0.0, safety=0.9) -> float:
    s = sum(1.0 / (h * h) for h in spacing_m)
    return safety / (2.0 * k_max / rho_c_min * s + wcb_max / rho_c_min)


def _face_conductance(k: np.ndarray, axis: int) -> np.ndarray:
    a = np.take(k, range(0, k.shape[axis] - 1), axis=axis)
    b = np.take(k, range(1, k.shape[axis]), axis=axis)
    return (2.0 * a * b / np.maximum(a + b, 1e-12)).astype(k.dtype)


def simulate(grid: sitk.Image, k: np.ndarray, rho_c: np.ndarray, perfusion: np.ndarray, source_w_m3,
             duration_s: float, dirichlet: np.ndarray | None = None, body_c: float = BODY_C,
             threshold_c: float = LETHAL_ISOTHERM_C, cem43_threshold_min: float = CEM43_LETHAL_MIN,
             criterion: str = "isotherm", perfusion_shutdown_c: float | None = LETHAL_ISOTHERM_C,
             record_points_ras=None, record_every_s: float = 10.0, dt_s: float | None = None,
             progress: Progress | None = None) -> BioheatResult:
    """Integrate Pennes' equation for ``duration_s``.

    ``k``, ``rho_c``, ``perfusion`` (1/s) are [k, j, i] arrays on ``grid``; ``dirichlet`` marks voxels held at
    ``body_c`` (vessels). ``source_w_m3`` is one power-density array switched on for the whole run, or a list of
    ``(array, on_s)`` pairs, one per probe, all switched on at t = 0 and each off after its own ``on_s``: the heat
    sources of several probes add up (combined heating).
    """
    progress = ensure(progress)
    shape = grid.GetSize()[::-1]
    sources = list(source_w_m3) if isinstance(source_w_m3, (list, tuple)) else [(source_w_m3, float(duration_s))]
    for name, arr in (("k", k), ("rho_c", rho_c), ("perfusion", perfusion), *(("source", a) for a, _ in sources)):
        if np.shape(arr) != shape:
            raise ImagioError(f"Bioheat input '{name}' has shape {np.shape(arr)}, the grid {shape}",
                              "Give every tissue map on the simulation grid")
    if not math.isfinite(duration_s) or duration_s <= 0 or any(not math.isfinite(on) or on <= 0 for _, on in sources):
        raise ImagioError(f"Ablation time {duration_s} s is not a positive number", "Give a time in seconds > 0")
    if criterion not in ("isotherm", "cem43"):
        raise ImagioError(f"Unknown zone criterion '{criterion}'", "Use 'isotherm' or 'cem43'")
    sp = np.array(grid.GetSpacing()[::-1]) * 1e-3  # (k, j, i) in m
    f32 = np.float32
    k = np.asarray(k, f32)
    rho_c = np.asarray(rho_c, f32)
    wcb = (np.asarray(perfusion, f32) * f32(BLOOD_RHO_C)).astype(f32)
    dt_max = stable_dt(sp, float(k.max()), float(rho_c.min()), float(wcb.max()))
    dt = dt_max if dt_s is None else float(dt_s)
    if dt > dt_max * 1.0001:
        raise ImagioError(f"Time step {dt:.3g} s exceeds the stable limit {dt_max:.3g} s of this grid",
                          "Leave dt_s unset to use the stable step")
    steps = max(int(math.ceil(duration_s / dt)), 1)
    dt = duration_s / steps
    # conductances / h^2 per face, and dt / (rho c)
    g = [(_face_conductance(k, ax) / f32(sp[ax] ** 2)).astype(f32) for ax in range(3)]
    inv = (dt / rho_c).astype(f32)
    fixed = np.zeros(shape, bool)
    fixed[0, :, :] = fixed[-1, :, :] = True
    fixed[:, 0, :] = fixed[:, -1, :] = True
    fixed[:, :, 0] = fixed[:, :, -1] = True
    if dirichlet is not None:
        fixed |= np.asarray(dirichlet, bool)
    free = (~fixed).astype(f32)  # 0 on Dirichlet voxels: their rise stays 0
    theta = np.zeros(shape, f32)  # T - body temperature
    theta_max = np.zeros(shape, f32)
    cem = np.zeros(shape, np.float64)
    lap = np.empty(shape, f32)
    lo_hi = []
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax] = slice(0, -1)
        hi[ax] = slice(1, None)
        lo_hi.append((tuple(lo), tuple(hi), np.empty(theta[tuple(lo)].shape, f32)))
    rec_idx = None
    history = {"time_s": [], "points_c": []}
    if record_points_ras is not None:
        ijk = np.rint(geometry.ras_to_ijk(grid, np.atleast_2d(record_points_ras))).astype(int)
        ijk = np.clip(ijk, 0, np.array(grid.GetSize()) - 1)
        rec_idx = (ijk[:, 2], ijk[:, 1], ijk[:, 0])
    rec_every = max(int(round(record_every_s / dt)), 1)
    shutdown = None if perfusion_shutdown_c is None else f32(perfusion_shutdown_c - body_c)
    wcb_eff = wcb.copy()
    report_every = max(steps // 50, 1)
    # the summed source, rebuilt only when a probe switches off
    off_steps = sorted({min(int(round(on / dt)), steps) for _, on in sources})
    q = np.zeros(shape, f32)

    def source_at(n_step: int) -> None:
        q[...] = 0.0
        for arr, on in sources:
            if n_step < min(int(round(on / dt)), steps):
                q[...] += np.asarray(arr, f32)

    source_at(0)
    dose_box = None  # index box of the voxels that have passed 39 C: CEM43 is accumulated there
    t43 = f32(43.0 - body_c)
    for n in range(steps):
        if n in off_steps and n > 0:
            source_at(n)
        if shutdown is not None:
            np.multiply(wcb, theta_max < shutdown, out=wcb_eff)  # coagulated tissue: no perfusion
        np.multiply(wcb_eff, theta, out=lap)
        np.subtract(q, lap, out=lap)
        for g_ax, (lo, hi, buf) in zip(g, lo_hi, strict=True):
            np.subtract(theta[hi], theta[lo], out=buf)
            buf *= g_ax
            lap[lo] += buf
            lap[hi] -= buf
        lap *= inv
        lap *= free
        theta += lap
        np.maximum(theta_max, theta, out=theta_max)
        if n % 10 == 0 or dose_box is None:
            dose_box = mask_box(theta_max >= f32(39.0 - body_c))
        if dose_box is not None:
            t = crop(theta, dose_box)
            e = np.where(t >= t43, t - t43, 2.0 * (t - t43))  # R^(43 - T): R = 0.5 above 43 C, 0.25 below
            crop(cem, dose_box)[...] += (dt / 60.0) * np.exp2(np.minimum(e, 110.0).astype(np.float64))
        if rec_idx is not None and (n % rec_every == 0 or n == steps - 1):
            history["time_s"].append(round((n + 1) * dt, 3))
            history["points_c"].append([float(v) for v in theta[rec_idx] + body_c])
        if n % report_every == 0:
            progress.update(n / steps, f"bioheat {int((n + 1) * dt)} of {int(duration_s)} s")
    t_max = theta_max + f32(body_c)
    if criterion == "isotherm":
        zone = (t_max >= threshold_c).astype(np.uint8)
    else:
        zone = (cem >= cem43_threshold_min).astype(np.uint8)
    progress.update(1.0, "bioheat done")
    return BioheatResult(grid, theta + f32(body_c), t_max, cem, zone, criterion, float(duration_s), dt, steps, history)


def tissue_maps(labels: np.ndarray, tissue_of_label: dict[int, Tissue], perfusion_scale: float = 1.0):
    """(k, rho_c, perfusion) arrays from an integer label map."""
    k = np.empty(labels.shape, np.float32)
    rc = np.empty(labels.shape, np.float32)
    w = np.empty(labels.shape, np.float32)
    for lab, t in tissue_of_label.items():
        m = labels == lab
        k[m] = t.k_w_per_m_k
        rc[m] = t.rho_c_j_per_m3_k
        w[m] = t.perfusion_per_s * perfusion_scale
    unknown = ~np.isin(labels, list(tissue_of_label))
    if unknown.any():
        t = TISSUES["soft-tissue"]
        k[unknown], rc[unknown], w[unknown] = t.k_w_per_m_k, t.rho_c_j_per_m3_k, t.perfusion_per_s * perfusion_scale
    return k, rc, w


def voxel_centres_ras(grid: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS coordinates (x, y, z arrays [k, j, i]) of every voxel centre of ``grid``."""
    m = geometry.ijk_to_ras_matrix(grid)
    ni, nj, nk = grid.GetSize()
    kk, jj, ii = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    return tuple(m[r, 0] * ii + m[r, 1] * jj + m[r, 2] * kk + m[r, 3] for r in range(3))


def line_source(grid: sitk.Image, tip_ras, entry_ras, power_w: float, active_length_mm: float,
                sigma_mm: float) -> np.ndarray:
    """Power density (W/m^3) spread as a Gaussian of ``sigma_mm`` around the active segment; sums to ``power_w``."""
    tip = np.asarray(tip_ras, float)
    u = tip - np.asarray(entry_ras, float)
    u /= np.linalg.norm(u)
    x, y, z = voxel_centres_ras(grid)
    px, py, pz = x - tip[0], y - tip[1], z - tip[2]
    s = -(px * u[0] + py * u[1] + pz * u[2])  # distance back from the tip along the shaft
    sc = np.clip(s, 0.0, active_length_mm)
    d2 = (px + sc * u[0]) ** 2 + (py + sc * u[1]) ** 2 + (pz + sc * u[2]) ** 2
    f = np.exp(-d2 / (2.0 * sigma_mm ** 2))
    vox_m3 = float(np.prod(grid.GetSpacing())) * 1e-9
    total = float(f.sum()) * vox_m3
    if total <= 0:
        raise ImagioError("The probe's active tip lies outside the simulation grid",
                          "Place the tip inside the image")
    return (f * (power_w / total)).astype(np.float32)


def point_source(grid: sitk.Image, point_ras, power_w: float) -> np.ndarray:
    """All ``power_w`` in the voxel nearest to ``point_ras`` (W/m^3)."""
    q = np.zeros(grid.GetSize()[::-1], np.float32)
    i, j, k = np.rint(geometry.ras_to_ijk(grid, point_ras)).astype(int)
    q[k, j, i] = power_w / (float(np.prod(grid.GetSpacing())) * 1e-9)
    return q


def _erfc(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erfc, otypes=[float])(x)


def analytic_point_source(r_mm, t_s: float, power_w: float, k: float, rho_c: float, perfusion_per_s: float = 0.0):
    """Temperature rise (K) of a continuous point source switched on at t = 0 in an infinite medium.

    With perfusion (beta = w_b rho_b c_b / rho c, alpha = k / rho c, m = sqrt(w_b rho_b c_b / k)):
        dT = P / (8 pi k r) [e^{-m r} erfc(r / (2 sqrt(alpha t)) - sqrt(beta t))
                             + e^{m r} erfc(r / (2 sqrt(alpha t)) + sqrt(beta t))]
    which tends to P / (4 pi k r) e^{-m r} (steady state) and, without perfusion, to
    P / (4 pi k r) erfc(r / (2 sqrt(alpha t))).
    """
    r = np.asarray(r_mm, float) * 1e-3
    alpha = k / rho_c
    wcb = perfusion_per_s * BLOOD_RHO_C
    beta = wcb / rho_c
    m = math.sqrt(wcb / k)
    a = r / (2.0 * math.sqrt(alpha * t_s))
    b = math.sqrt(beta * t_s)
    if math.isinf(t_s):
        return power_w / (4 * math.pi * k * r) * np.exp(-m * r)
    return power_w / (8 * math.pi * k * r) * (np.exp(-m * r) * _erfc(a - b) + np.exp(m * r) * _erfc(a + b))


def zone_extent_mm(zone: np.ndarray, grid: sitk.Image, tip_ras, entry_ras) -> dict:
    """Long and short axes (mm) of a zone mask measured along / across the probe axis.

    Extents of the voxel centres plus one voxel (the size a ruler on the grid would show).
    """
    kji = np.argwhere(zone > 0)
    if len(kji) == 0:
        return {"zone_long_mm": 0.0, "zone_short_mm": 0.0, "tip_offset_mm": 0.0, "volume_ml": 0.0}
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    tip = np.asarray(tip_ras, float)
    u = tip - np.asarray(entry_ras, float)
    u /= np.linalg.norm(u)
    s = (pts - tip) @ u
    radial = np.linalg.norm((pts - tip) - np.outer(s, u), axis=1)
    spacing = np.array(grid.GetSpacing())
    d = (geometry.ijk_to_ras_matrix(grid)[:3, :3] / spacing).T @ u  # probe axis in index directions
    h_axis = 1.0 / float(np.sqrt(np.sum((d / spacing) ** 2)))  # voxel size along the probe
    h = float(np.mean(spacing))
    long_mm = float(s.max() - s.min()) + h_axis
    short_mm = 2.0 * float(radial.max()) + h
    centre = 0.5 * (s.max() + s.min())
    return {"zone_long_mm": long_mm, "zone_short_mm": short_mm, "tip_offset_mm": float(-centre),
            "volume_ml": len(kji) * float(np.prod(grid.GetSpacing())) / 1000.0}


# --------------------------------------------------------------------------------------------------
# Device sources calibrated to the device table


@dataclass(frozen=True)
class ProbeSource:
    """How a device's power enters the tissue: ``efficiency`` x power, Gaussian ``sigma_mm`` around a
    segment of ``active_length_mm`` centred ``centre_back_mm`` back from the tip."""

    efficiency: float
    active_length_mm: float
    sigma_mm: float
    centre_back_mm: float
    note: str = ""
    calibration_tissue: str = "liver"
    calibration_perfused: bool = False
    conditions: str = ""  # why these calibration conditions (from the setting's provenance)

    def density(self, grid: sitk.Image, tip_ras, entry_ras, power_w: float) -> np.ndarray:
        tip = np.asarray(tip_ras, float)
        u = tip - np.asarray(entry_ras, float)
        u /= np.linalg.norm(u)
        front = tip - u * max(self.centre_back_mm - self.active_length_mm / 2.0, 0.0)
        return line_source(grid, front, front - 100.0 * u, self.efficiency * power_w,
                           self.active_length_mm, self.sigma_mm)


_CALIBRATION_CACHE: dict = {}


def _homogeneous_grid(setting, spacing_mm: float, pad_mm: float):
    half = np.array([setting.zone_short_mm, setting.zone_short_mm, setting.zone_long_mm]) / 2 + pad_mm
    n = np.ceil(2 * half / spacing_mm).astype(int) + 1
    origin = -(n - 1) * spacing_mm / 2.0
    grid = geometry.make_image(n, [spacing_mm] * 3, origin_ras=origin)
    # probe along +S, zone centre at the origin
    tip = np.array([0.0, 0.0, setting.tip_offset_mm])
    entry = tip - np.array([0.0, 0.0, 100.0])
    return grid, tip, entry


#: Width (Gaussian sigma, mm) of the power deposition around the active tip: microwave antennas heat a wider
#: volume directly than RF electrodes (whose resistive heating is concentrated at the electrode).
SOURCE_SIGMA_MM = {"microwave": 5.0, "radiofrequency": 4.0}


def calibration_conditions(setting) -> tuple[str, bool, str]:
    """(tissue, perfused, why) of the conditions the table zone of ``setting`` was measured in, as far as its
    provenance says: 'ex vivo' is non-perfused, 'in vivo' and 'clinical' are perfused; an unstated tissue is
    taken as non-perfused liver (stated in the note)."""
    text = (setting.tissue or "").lower()
    organ = setting.organ if setting.organ in TISSUES else None
    if "ex vivo" in text:
        return organ or "liver", False, f"measured {setting.tissue}: non-perfused"
    if "in vivo" in text or "clinical" in text:
        return organ or "liver", True, f"measured {setting.tissue}: perfused, perfusion stopping at " \
                                       f"{LETHAL_ISOTHERM_C:g} C"
    return organ or "liver", False, (f"the source does not say where the zone was measured ({setting.tissue}): "
                                     f"assumed non-perfused {organ or 'liver'} (ex vivo conditions)")


def calibrate_source(device, setting, spacing_mm: float = 1.5, sigma_mm: float | None = None, pad_mm: float = 16.0,
                     progress: Progress | None = None) -> ProbeSource:
    """Fit a source to the device table in the conditions its zone was measured in (``calibration_conditions``).

    For a given source shape the efficiency that puts the lethal isotherm at the table's short axis is found
    first: without perfusion the problem is linear in the power, so one run gives it; with perfusion (which stops
    in coagulated tissue, a non-linear term) a few secant steps from that linear estimate. The active length is
    then chosen (a few runs) so the long axis matches too. The zone centre is placed at the table's tip offset.
    This is a calibration to the table, not a prediction of it.
    """
    if sigma_mm is None:
        sigma_mm = SOURCE_SIGMA_MM.get(device.modality, 5.0)
    tissue_name, perfused, why = calibration_conditions(setting)
    key = (device.id, setting.power_w, setting.time_s, setting.zone_long_mm, setting.zone_short_mm,
           setting.tip_offset_mm, tissue_name, perfused, spacing_mm, sigma_mm, pad_mm, LETHAL_ISOTHERM_C)
    if key in _CALIBRATION_CACHE:
        return _CALIBRATION_CACHE[key]
    if device.modality == "cryo":
        raise ImagioError(f"The bioheat model heats; device '{device.id}' is a cryoprobe",
                          "Use --model table for cryoablation")
    progress = ensure(progress)
    grid, tip, entry = _homogeneous_grid(setting, spacing_mm, pad_mm)
    tissue = TISSUES[tissue_name]
    shape = grid.GetSize()[::-1]
    k = np.full(shape, tissue.k_w_per_m_k, np.float32)
    rc = np.full(shape, tissue.rho_c_j_per_m3_k, np.float32)
    w = np.full(shape, tissue.perfusion_per_s if perfused else 0.0, np.float32)
    x, y, z = voxel_centres_ras(grid)
    rho = np.hypot(x, y)
    b = setting.zone_short_mm / 2.0
    power = max(setting.power_w, 1.0)
    d_theta = LETHAL_ISOTHERM_C - BODY_C
    outer = rho >= b - spacing_mm / 2.0  # voxels at or beyond the table's short semi-axis

    def rise(eff: float, src: ProbeSource) -> np.ndarray:
        res = simulate(grid, k, rc, w, src.density(grid, tip, entry, eff * power), setting.time_s,
                       perfusion_shutdown_c=LETHAL_ISOTHERM_C if perfused else None, threshold_c=1e9)
        return res.t_max_c - BODY_C

    guess = {"eff": None}

    def run(length_mm: float) -> tuple[float, float]:
        """(efficiency putting the lethal isotherm at the short semi-axis, long axis it gives) for this length."""
        src = ProbeSource(1.0, length_mm, sigma_mm, setting.tip_offset_mm)
        if not perfused:  # linear in the power: one run, scaled
            r = rise(1.0, src)
            eff = d_theta / float(r[outer].max())
            r = r * eff
        else:  # monotone in the efficiency: bracket, then regula falsi (Illinois) to 0.2 K
            e0 = guess["eff"] or 0.5
            r0 = rise(e0, src)
            f0 = float(r0[outer].max()) - d_theta
            e1, step = e0, 1.4 if f0 < 0 else 1 / 1.4
            for _ in range(12):
                e1 *= step
                r1 = rise(e1, src)
                f1 = float(r1[outer].max()) - d_theta
                if (f1 > 0) != (f0 > 0) or abs(f1) < 0.2:
                    break
                e0, r0, f0 = e1, r1, f1
            side = 0
            for _ in range(10):
                if abs(f1) < 0.2:
                    break
                e2 = e1 - f1 * (e1 - e0) / (f1 - f0)
                r2 = rise(e2, src)
                f2 = float(r2[outer].max()) - d_theta
                if (f2 > 0) == (f1 > 0):
                    if side == -1:
                        f0 /= 2.0
                    side = -1
                else:
                    e0, r0, f0 = e1, r1, f1
                    if side == 1:
                        f1 /= 2.0
                    side = 1
                e1, r1, f1 = e2, r2, f2
            eff, r = e1, r1
        guess["eff"] = eff
        zone = (r >= d_theta).astype(np.uint8)
        return eff, zone_extent_mm(zone, grid, tip, entry)["zone_long_mm"]

    target = setting.zone_long_mm
    lo, hi = 0.0, max(target - setting.zone_short_mm, 0.0) + 2 * spacing_mm
    eff_lo, long_lo = run(lo)
    best = (abs(long_lo - target), lo, eff_lo, long_lo)
    if long_lo < target:
        eff_hi, long_hi = run(hi)
        while long_hi < target and hi < target:
            lo, long_lo = hi, long_hi
            hi = min(hi * 2 + spacing_mm, target)
            eff_hi, long_hi = run(hi)
        best = min(best, (abs(long_hi - target), hi, eff_hi, long_hi))
        for it in range(4):
            progress.update(0.2 + 0.2 * it, "calibrating the source to the device table")
            mid = lo + (hi - lo) * (target - long_lo) / max(long_hi - long_lo, 1e-6)
            mid = float(np.clip(mid, lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo)))
            eff_m, long_m = run(mid)
            best = min(best, (abs(long_m - target), mid, eff_m, long_m))
            if long_m < target:
                lo, long_lo = mid, long_m
            else:
                hi, long_hi = mid, long_m
    _, length, eff, long_fit = best
    note = (f"source calibrated to the table of '{device.id}' at {setting.power_w:g} W / {setting.time_s:g} s in "
            f"{'perfused' if perfused else 'non-perfused'}, vessel-free {tissue_name} ({why}) on a {spacing_mm:g} mm "
            f"grid: efficiency {eff:.3f} of the nominal power, active length {length:.1f} mm, Gaussian sigma "
            f"{sigma_mm:g} mm (fitted long axis {long_fit:.1f} mm vs table {target:g} mm)")
    out = ProbeSource(float(eff), float(length), float(sigma_mm), float(setting.tip_offset_mm), note,
                      tissue_name, perfused, why)
    _CALIBRATION_CACHE[key] = out
    progress.update(1.0, "source calibrated")
    return out


def ray_extent_mm(zone: np.ndarray, grid: sitk.Image, origin_ras, direction, tube_mm: float = 1.0) -> float:
    """How far (mm) a zone reaches from ``origin_ras`` along ``direction``: the farthest zone voxel centre within
    ``tube_mm`` of the ray (e.g. the zone radius towards a vessel)."""
    kji = np.argwhere(zone > 0)
    if len(kji) == 0:
        return 0.0
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    q = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float)) - np.asarray(origin_ras, float)
    s = q @ d
    off = np.linalg.norm(q - np.outer(s, d), axis=1)
    sel = (s >= 0) & (off <= tube_mm)
    return float(s[sel].max()) if sel.any() else 0.0
