"""Pennes bioheat solver on an image grid (numpy, explicit finite differences).

    rho c dT/dt = div(k grad T) - w_b rho_b c_b (T - T_a) + Q

* k, rho c and perfusion w_b per voxel from tissue labels (``TISSUES``);
  conductance between voxels is the harmonic mean of the two sides.
* Large vessels are Dirichlet voxels held at blood temperature (heat sinks);
  the outer faces of the domain are held at body temperature.
* Q is the device power times an efficiency, spread as a Gaussian
  (``sigma_mm``) around the active segment of the probe at the tip.
* Explicit time stepping at 90 % of the stability limit of the grid, so the
  scheme is stable on anisotropic grids; oblique grids need nothing special
  (the direction matrix is orthonormal, the Laplacian is the same).
* The zone is the 60 C isotherm of the maximum temperature (default) or
  a thermal dose CEM43 >= 240 min, both computed.

Units inside: SI (m, s, W, K); in and out: mm, s, W, degrees C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.progress import Progress, ensure

from .zone import crop, mask_box

BODY_C = 37.0
BLOOD_RHO_C = 1050.0 * 3617.0  # J/(m^3 K), IT'IS database v4.1 (blood)


@dataclass(frozen=True)
class Tissue:
    """Thermal properties of one tissue (SI units)."""

    name: str
    k_w_per_m_k: float
    rho_c_j_per_m3_k: float
    perfusion_per_s: float  # volumetric blood perfusion w_b (m^3 blood / m^3 tissue / s)


#: Approximate values after the IT'IS Foundation tissue property database v4.1
#: (Hasgall et al.); perfusion in 1/s from ml/min/kg times density.
TISSUES: dict[str, Tissue] = {
    "soft_tissue": Tissue("soft_tissue", 0.47, 1090.0 * 3421.0, 0.6e-3),
    "liver": Tissue("liver", 0.52, 1079.0 * 3540.0, 1.5e-3),
    "tumor": Tissue("tumor", 0.55, 1079.0 * 3540.0, 1.0e-3),
    "blood": Tissue("blood", 0.52, BLOOD_RHO_C, 0.0),
}
SOURCE = "IT'IS Foundation tissue properties database v4.1 (approximate values)"


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


def simulate(grid: sitk.Image, k: np.ndarray, rho_c: np.ndarray, perfusion: np.ndarray, source_w_m3: np.ndarray,
             duration_s: float, dirichlet: np.ndarray | None = None, body_c: float = BODY_C,
             threshold_c: float = 60.0, cem43_threshold_min: float = 240.0, criterion: str = "isotherm",
             perfusion_shutdown_c: float | None = 60.0, record_points_ras=None, record_every_s: float = 10.0,
             dt_s: float | None = None, progress: Progress | None = None) -> BioheatResult:
    """Integrate Pennes' equation for ``duration_s`` (power on all the time).

    ``k``, ``rho_c``, ``perfusion`` (1/s) and ``source_w_m3`` are [k, j, i] arrays on ``grid``;
    ``dirichlet`` marks voxels held at ``body_c`` (vessels).
    """
    progress = ensure(progress)
    shape = grid.GetSize()[::-1]
    for name, arr in (("k", k), ("rho_c", rho_c), ("perfusion", perfusion), ("source", source_w_m3)):
        if np.shape(arr) != shape:
            raise ImagioError(f"Bioheat input '{name}' has shape {np.shape(arr)}, the grid {shape}",
                              "Give every tissue map on the simulation grid")
    if duration_s <= 0:
        raise ImagioError(f"Ablation time {duration_s} s is not positive", "Give a time in seconds > 0")
    if criterion not in ("isotherm", "cem43"):
        raise ImagioError(f"Unknown zone criterion '{criterion}'", "Use 'isotherm' or 'cem43'")
    sp = np.array(grid.GetSpacing()[::-1]) * 1e-3  # (k, j, i) in m
    f32 = np.float32
    k = np.asarray(k, f32)
    rho_c = np.asarray(rho_c, f32)
    wcb = (np.asarray(perfusion, f32) * f32(BLOOD_RHO_C)).astype(f32)
    q = np.asarray(source_w_m3, f32)
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
    dose_box = None  # index box of the voxels that have passed 39 C: CEM43 is accumulated there
    t43 = f32(43.0 - body_c)
    for n in range(steps):
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
        t = TISSUES["soft_tissue"]
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


def calibrate_source(device, setting, spacing_mm: float = 1.5, sigma_mm: float | None = None, pad_mm: float = 16.0,
                     threshold_c: float = 60.0, progress: Progress | None = None) -> ProbeSource:
    """Fit a source to the device table in non-perfused, vessel-free liver (ex-vivo conditions).

    Without perfusion the problem is linear in the power, so for a given source shape the
    efficiency that puts the 60 C isotherm at the table's short axis follows from one run. The
    active length is then chosen (a few runs) so the long axis matches too. The zone centre is
    placed at the table's tip offset. This is a calibration to the table, not a prediction of it.
    """
    if sigma_mm is None:
        sigma_mm = SOURCE_SIGMA_MM.get(device.modality, 5.0)
    key = (device.id, setting.power_w, setting.time_s, setting.zone_long_mm, setting.zone_short_mm,
           setting.tip_offset_mm, spacing_mm, sigma_mm, pad_mm, threshold_c)
    if key in _CALIBRATION_CACHE:
        return _CALIBRATION_CACHE[key]
    if device.modality == "cryo":
        raise ImagioError(f"The bioheat model heats; device '{device.id}' is a cryoprobe",
                          "Use --model table for cryoablation")
    progress = ensure(progress)
    grid, tip, entry = _homogeneous_grid(setting, spacing_mm, pad_mm)
    liver = TISSUES["liver"]
    shape = grid.GetSize()[::-1]
    k = np.full(shape, liver.k_w_per_m_k, np.float32)
    rc = np.full(shape, liver.rho_c_j_per_m3_k, np.float32)
    w = np.zeros(shape, np.float32)
    x, y, z = voxel_centres_ras(grid)
    rho = np.hypot(x, y)
    b = setting.zone_short_mm / 2.0
    power = max(setting.power_w, 1.0)
    d_theta = threshold_c - BODY_C

    def run(length_mm: float) -> tuple[float, float]:
        src = ProbeSource(1.0, length_mm, sigma_mm, setting.tip_offset_mm)
        res = simulate(grid, k, rc, w, src.density(grid, tip, entry, power), setting.time_s,
                       perfusion_shutdown_c=None, threshold_c=1e9)
        rise = res.t_max_c - BODY_C
        eff = d_theta / float(rise[rho >= b - spacing_mm / 2.0].max())
        zone = (eff * rise >= d_theta).astype(np.uint8)
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
            f"non-perfused, vessel-free liver on a {spacing_mm:g} mm grid: efficiency {eff:.3f} of the nominal power, "
            f"active length {length:.1f} mm, Gaussian sigma {sigma_mm:g} mm (fitted long axis {long_fit:.1f} mm vs "
            f"table {target:g} mm)")
    out = ProbeSource(float(eff), float(length), float(sigma_mm), float(setting.tip_offset_mm), note)
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
