"""Probe planning: the fewest probes, their straight paths and settings, keeping the requested margin.

A plan is *feasible* only when the planned (table) zones keep the requested margin all around the tumour: the
minimal margin, the distance from the tumour's surface to the zones' surface (``margins``), is at least the
requested margin, and the zones cover at least ``required_percent`` of tumour + margin. The steps, each a
function below:

1. ``build_target``: tumour + margin on the grid (voxels within the margin of the tumour's cells, exact), the
   tumour's surface samples, and a dense point set of tumour + (margin + a safety band) on a lattice of about
   1 mm that subdivides the grid's voxels (so 2.5-5 mm slices are sampled every 0.8-1 mm).
2. ``candidate_directions``: straight paths from the target centre within ``max_tilt_deg`` of the axial plane
   that keep ``clearance_mm`` from every avoid structure up to the skin (body outline) or the image edge.
3. ``cover``: in the frame where the device's largest zone is a unit ball, n ball centres covering every point
   (a k-centre problem: farthest-point seeding, then alternating assignment and smallest enclosing balls), on
   a sample of the dense points, then every dense point the zones miss is added and the cover re-solved
   (active set) until the zones hold all dense points or the radius shows n probes cannot.
4. ``place_probes``: each ball centre becomes a zone centre; its tip lies on the probe axis; the path must be
   clear (else the nearest clear candidate direction for that probe).
5. ``check_plan``: coverage of tumour + margin, and the minimal margin computed analytically on the tumour
   surface. Plans whose zones miss dense points or whose margin is short are not feasible.
6. ``lower_settings``: each probe's setting lowered to the smallest table setting that keeps margin and coverage.
7. When no plan keeps the margin, the safety band grows (0.5 mm steps) and steps 3-6 run again; when none does
   with ``max_probes`` probes, the best plan found (largest margin) is returned, not feasible, with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.progress import Progress, ensure

from .devices import Device, ZoneSetting
from .margins import Margin, Surface, _cell_distance, mask_surface, table_margin, target_mask, zones_mask
from .results import Probe as PlannedProbe
from .zone import EllipsoidZone, crop, mask_box, probe_axis, sub_grid

#: Safety bands (mm beyond the requested margin) tried in turn for the dense covering points.
SAFETY_STEPS_MM = (0.0, 0.5, 1.0, 2.0)


# ------------------------------------------------------------------------------------------------ 1. target
@dataclass
class PlanningTarget:
    """Tumour + margin: the voxel mask (coverage), the tumour surface (margin) and dense covering points."""

    grid: sitk.Image
    tumor: np.ndarray
    margin_mm: float
    target: np.ndarray
    surface: Surface
    box: tuple  # index box of the target (+1 voxel)
    tumor_count: int
    target_count: int
    voxel_ml: float
    centroid_ras: np.ndarray
    extent_mm: float
    dense: dict = field(default_factory=dict)  # safety band (mm) -> (points RAS, distance to the tumour mm)

    @property
    def target_ml(self) -> float:
        return self.target_count * self.voxel_ml

    @property
    def tumor_ml(self) -> float:
        return self.tumor_count * self.voxel_ml

    def dense_points(self, safety_mm: float, step_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Points of tumour + (margin + ``safety_mm``) on a lattice subdividing the grid's voxels to <= ``step_mm``,
        and their distance to the tumour's cells (mm)."""
        if safety_mm not in self.dense:
            self.dense[safety_mm] = _dense_points(self.tumor, self.grid, self.margin_mm + safety_mm, step_mm)
        return self.dense[safety_mm]

    def coverage(self, zones: list[EllipsoidZone]) -> tuple[float, float, np.ndarray]:
        """(% of tumour + margin, % of tumour) inside the zones, and the zones' mask on the target box."""
        sub = _sub_grid(self.grid, self.box)
        z = zones_mask(zones, sub)
        t = crop(self.target, self.box)
        tum = crop(self.tumor, self.box)
        return (100.0 * float((z & t).sum()) / self.target_count, 100.0 * float((z & tum).sum()) / self.tumor_count, z)


def _sub_grid(grid, box):
    return sub_grid(grid, box)


def _dense_points(tumor: np.ndarray, grid: sitk.Image, distance_mm: float, step_mm: float):
    """Centres of sub-voxels (each voxel cut into ceil(h / step) per axis) within ``distance_mm`` of the tumour."""
    sp = np.array(grid.GetSpacing(), float)  # i, j, k
    r = np.maximum(np.ceil(sp / step_mm - 1e-9).astype(int), 1)
    tb = mask_box(tumor)
    pad = np.ceil(distance_mm / sp[::-1]).astype(int) + 1
    lo = np.array([max(tb[2 * a] - pad[a], 0) for a in range(3)])
    hi = np.array([min(tb[2 * a + 1] + pad[a], tumor.shape[a]) for a in range(3)])
    sub = tumor[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    rk, rj, ri = r[::-1]
    fine = np.repeat(np.repeat(np.repeat(sub, rk, axis=0), rj, axis=1), ri, axis=2)
    fg = sitk.Image([int(v) for v in fine.shape[::-1]], sitk.sitkUInt8)
    fg.SetSpacing([float(v) for v in sp / r])
    fg.SetDirection(grid.GetDirection())
    # fine voxel (0, 0, 0) centre: coarse voxel lo centre moved back by (r - 1) / (2 r) of a voxel per axis
    start = lo[::-1].astype(float) - (r - 1) / (2.0 * r)
    fg.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in start]))
    inside = target_mask(fine, fg, distance_mm)
    kji = np.argwhere(inside)
    pts = geometry.ijk_to_ras(fg, kji[:, ::-1].astype(float))
    # distance to the tumour for the band selection (0 inside): from the fine lattice again
    dist = _cell_distance(fine, fg, distance_mm)[inside]
    return pts, dist


def build_target(grid: sitk.Image, tumor: np.ndarray, margin_mm: float) -> PlanningTarget:
    """Step 1: tumour + margin (voxels), the tumour's surface samples, its centre and size."""
    target = target_mask(tumor, grid, margin_mm)
    box = mask_box(target, pad=1)
    kji = np.argwhere(crop(target, box)) + np.array([box[0], box[2], box[4]])
    pts = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    centroid = pts.mean(axis=0)
    extent = float(np.ptp(pts, axis=0).max())
    return PlanningTarget(grid, tumor, float(margin_mm), target, mask_surface(tumor, grid), box, int(tumor.sum()),
                          int(target.sum()), geometry.voxel_volume_ml(grid), centroid, extent)


# ------------------------------------------------------------------------------------------------ 2. paths
def fibonacci_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]


class PathChecker:
    """Straight paths from a tip back along the probe to the skin, with their clearance from avoid structures."""

    def __init__(self, grid: sitk.Image, avoid: np.ndarray | None, body: np.ndarray | None = None, step_mm: float = 1.0):
        self.grid = grid
        self.size = np.array(grid.GetSize())
        self.r2i = geometry.ras_to_ijk_matrix(grid)
        self.step = step_mm
        self.body = body
        if avoid is not None and avoid.any():
            self.dist = geometry.signed_distance_mm(avoid, grid.GetSpacing())
        else:
            self.dist = None
        self.max_len = float(np.linalg.norm(self.size * np.array(grid.GetSpacing())))

    def _index(self, pts_ras: np.ndarray) -> np.ndarray:
        return pts_ras @ self.r2i[:3, :3].T + self.r2i[:3, 3]

    def trace(self, tip_ras: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, float]:
        """(entry_ras, min clearance in mm) of the path from ``tip_ras`` back along -u."""
        s = np.arange(0.0, self.max_len, self.step)
        pts = tip_ras[None, :] - s[:, None] * u[None, :]
        ijk = np.rint(self._index(pts)).astype(int)
        inside = np.all((ijk >= 0) & (ijk < self.size), axis=1)
        if not inside[0]:
            return tip_ras.copy(), -np.inf
        last = int(np.argmin(inside)) - 1 if not inside.all() else len(s) - 1
        if self.body is not None:
            in_body = self.body[ijk[: last + 1, 2], ijk[: last + 1, 1], ijk[: last + 1, 0]]
            outside = np.flatnonzero(~in_body)
            if len(outside):
                last = max(int(outside[0]), 1)
        ijk = ijk[: last + 1]
        clearance = np.inf if self.dist is None else float(self.dist[ijk[:, 2], ijk[:, 1], ijk[:, 0]].min())
        return pts[last], clearance


def candidate_directions(target: PlanningTarget, checker: PathChecker, clearance_mm: float, max_tilt_deg: float,
                         n_directions: int = 160) -> tuple[list, int]:
    """Step 2: (path length, direction, clearance) of the clear paths from the target centre, shortest first,
    and the number of directions tried."""
    dirs = fibonacci_directions(n_directions)
    dirs = dirs[np.abs(dirs[:, 2]) <= np.sin(np.deg2rad(max_tilt_deg)) + 1e-9]
    scored = []
    for u in dirs:
        entry, clear = checker.trace(target.centroid_ras, u)
        if clear >= clearance_mm:
            scored.append((float(np.linalg.norm(target.centroid_ras - entry)), u, clear))
    scored.sort(key=lambda x: (x[0], -x[2]))
    return scored, len(dirs)


# ------------------------------------------------------------------------------------------------ 3. cover
def _frame(u: np.ndarray, a: float, b: float) -> np.ndarray:
    """Columns map (p - origin) to the frame where the ellipsoid (a along u, b across) is the unit ball."""
    helper = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    v = np.cross(u, helper)
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    return np.c_[v / b, w / b, u / a]


def _enclosing_centre(pts: np.ndarray, start: np.ndarray, iterations: int = 16) -> np.ndarray:
    """Approximate centre of the smallest ball enclosing ``pts`` (Badoiu-Clarkson iterations from ``start``)."""
    c = start.copy()
    d2 = ((pts - c) ** 2).sum(axis=1)
    pts = pts[d2 >= 0.25 * d2.max()]  # only the outer points can be the farthest from a centre near start
    for t in range(iterations):
        far = pts[int(np.argmax(((pts - c) ** 2).sum(axis=1)))]
        c += (far - c) / (t + 2)
    return c


def _assign(points: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(cover radius, distance of each point to its nearest centre, that centre's index)."""
    d2 = np.empty((len(points), len(c)))
    for j in range(len(c)):
        d2[:, j] = ((points - c[j]) ** 2).sum(axis=1)
    lab = np.argmin(d2, axis=1)
    d = np.sqrt(d2[np.arange(len(points)), lab])
    return float(d.max()), d, lab


def _seed(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Farthest-point (Gonzalez) seeding: a 2-approximation of the k-centre radius."""
    centres = [points[rng.integers(len(points))]]
    d = np.linalg.norm(points - centres[0], axis=1)
    for _ in range(1, n):
        centres.append(points[int(np.argmax(d))])
        d = np.minimum(d, np.linalg.norm(points - centres[-1], axis=1))
    return np.array(centres, float)


def _smooth_minimax(points: np.ndarray, c: np.ndarray, iterations: int = 150) -> tuple[np.ndarray, float]:
    """Lower the cover radius by gradient descent on a smooth maximum (log-sum-exp over points) of a smooth
    minimum (over centres) of the distances, sharpened as it goes (Adam steps); returns the best centres seen."""
    c = c.copy()
    m1 = np.zeros_like(c)
    m2 = np.zeros_like(c)
    best = (c.copy(), _assign(points, c)[0])
    lr = 0.02
    for it in range(iterations):
        tau = 20.0 + 300.0 * it / iterations  # sharpness of the max over points
        beta = 40.0  # sharpness of the min over centres
        diff = points[:, None, :] - c[None, :, :]
        d = np.sqrt((diff ** 2).sum(axis=2)) + 1e-12
        dm = d.min(axis=1, keepdims=True)
        wj = np.exp(-beta * (d - dm))
        wj /= wj.sum(axis=1, keepdims=True)
        smin = dm[:, 0] - np.log((np.exp(-beta * (d - dm))).sum(axis=1)) / beta
        wp = np.exp(tau * (smin - smin.max()))
        wp /= wp.sum()
        grad = -np.einsum("p,pj,pjk->jk", wp, wj, diff / d[:, :, None])
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad ** 2
        c -= lr * (m1 / (1 - 0.9 ** (it + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (it + 1))) + 1e-9)
        if it % 10 == 9 or it == iterations - 1:
            r = _assign(points, c)[0]
            if r < best[1]:
                best = (c.copy(), r)
    return best


def cover(points: np.ndarray, n: int, rng: np.random.Generator, init: np.ndarray | None = None,
          restarts: int = 3, iterations: int = 20) -> tuple[np.ndarray, float]:
    """Step 3: centres of n balls covering ``points`` (scaled frame) with the smallest radius found.

    A k-centre heuristic: farthest-point seeding (or ``init``), then alternating assignment and per-cluster
    smallest enclosing balls; the best of a few restarts (stopping once the unit balls cover every point).
    Radius <= 1 means the unit balls cover every point."""
    best = (None, np.inf)
    starts = [np.array(init, float)] if init is not None else []
    starts += [None] * (restarts if init is None else 1)
    for c in starts:
        c = _seed(points, n, rng) if c is None else c
        for _ in range(iterations):
            rad, _, lab = _assign(points, c)
            if rad < best[1]:
                best = (c.copy(), rad)
            moved = c.copy()
            for j in range(n):
                sel = lab == j
                if sel.any():
                    moved[j] = _enclosing_centre(points[sel], c[j])
            if np.max(np.abs(moved - c)) < 1e-4:
                break
            c = moved
        rad = _assign(points, c)[0]
        if rad < best[1]:
            best = (c.copy(), rad)
        if best[1] <= 1.0:
            break
    if 1.0 < best[1] < 1.35:  # close: a smooth minimax descent often finds the few percent that are missing
        best = min(best, _smooth_minimax(points, best[0]), key=lambda x: x[1])
    return best


# ------------------------------------------------------------------------------------------------ 4. probes
def place_probes(centres: np.ndarray, u: np.ndarray, setting: ZoneSetting, checker: PathChecker, clearance_mm: float,
                 alternatives: list) -> list[PlannedProbe] | None:
    """Step 4: a probe per zone centre along ``u`` (or the nearest clear candidate direction) with a clear path."""
    probes = []
    for c in centres:
        for u2 in [u] + [x[1] for x in sorted(alternatives, key=lambda x: -float(x[1] @ u))[1:12]]:
            tip = c + setting.tip_offset_mm * u2
            entry, clear = checker.trace(tip, u2)
            if clear >= clearance_mm:
                probes.append(PlannedProbe(tip, entry, setting, clear))
                break
        else:
            return None
    return probes


# ------------------------------------------------------------------------------------------------ 5. check
@dataclass
class PlanCheck:
    coverage_percent: float
    tumor_coverage_percent: float
    margin: Margin
    dense_missed: int

    def keeps(self, margin_mm: float, required_percent: float) -> bool:
        return (self.dense_missed == 0 and self.margin.minimal_margin_mm >= margin_mm - 1e-6
                and self.coverage_percent >= required_percent - 1e-9)

    def key(self) -> tuple:
        """Order of 'better': fewer missed points, then larger margin, then coverage."""
        return (-self.dense_missed, round(self.margin.minimal_margin_mm, 3), self.coverage_percent)


def missed_points(zones: list[EllipsoidZone], points: np.ndarray) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    for z in zones:
        inside |= z.quadratic(points) <= 1.0
    return np.flatnonzero(~inside)


def check_plan(probes: list[PlannedProbe], target: PlanningTarget, dense: np.ndarray) -> PlanCheck:
    """Step 5: coverage and the analytic minimal margin of the probes' table zones."""
    zones = [p.zone() for p in probes]
    cov, cov_t, _ = target.coverage(zones)
    return PlanCheck(cov, cov_t, table_margin(zones, target.surface), len(missed_points(zones, dense)))


# ------------------------------------------------------------------------------------------------ 6. settings
def lower_settings(probes: list[PlannedProbe], settings: list[ZoneSetting], target: PlanningTarget,
                   dense: np.ndarray, checker: PathChecker, clearance_mm: float, margin_mm: float,
                   required_percent: float) -> tuple[list[PlannedProbe], PlanCheck]:
    """Step 6: each probe's setting lowered to the smallest one that keeps the margin and the coverage (same zone
    centre, so the tip moves with the setting's offset)."""
    best = check_plan(probes, target, dense)
    for idx in range(len(probes)):
        p = probes[idx]
        u = probe_axis(p.tip_ras, p.entry_ras)
        centre = p.tip_ras - p.setting.tip_offset_mm * u
        for s in settings:
            if s.volume_ml >= p.setting.volume_ml:
                break
            tip = centre + s.tip_offset_mm * u
            entry, clear = checker.trace(tip, u)
            if clear < clearance_mm:
                continue
            trial = list(probes)
            trial[idx] = PlannedProbe(tip, entry, s, clear)
            if len(missed_points([q.zone() for q in trial], dense)):
                continue  # cheap rejection before the margin
            chk = check_plan(trial, target, dense)
            if chk.keeps(margin_mm, required_percent):
                probes, best = trial, chk
                break
    return probes, best


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class PlanOutcome:
    """What ``plan_ablation`` found (the Logic turns it into the typed PlanResult)."""

    feasible: bool
    probes: list[PlannedProbe]
    check: PlanCheck | None
    reason: str
    target: PlanningTarget
    details: dict
    run_time_s: float


def plan_ablation(grid: sitk.Image, tumor: np.ndarray, device: Device, margin_mm: float = 5.0,
                  avoid: dict[str, np.ndarray] | None = None, body: np.ndarray | None = None,
                  clearance_mm: float = 3.0, required_percent: float = 99.0, max_probes: int = 5,
                  n_directions: int = 160, candidates: int = 12, max_points: int = 6000, seed: int = 0,
                  max_tilt_deg: float = 45.0, allow_unsourced: bool = False,
                  progress: Progress | None = None) -> PlanOutcome:
    """Plan probes for ``tumor`` (bool [k, j, i] on ``grid``); see the module docstring."""
    t_start = time.perf_counter()
    progress = ensure(progress)
    tumor = np.asarray(tumor, bool)
    if tumor.shape != grid.GetSize()[::-1]:
        raise ImagioError("The tumour mask does not lie on the planning grid", "Give masks on one grid")
    if not tumor.any():
        raise ImagioError("The tumour segment is empty", "Choose a segment that contains the tumour")
    avoid = {k: np.asarray(v, bool) for k, v in (avoid or {}).items()}
    for name, m in avoid.items():
        if m.shape != tumor.shape:
            raise ImagioError(f"Avoid structure '{name}' does not lie on the planning grid", "Give masks on one grid")
    progress.update(0.02, "tumour + margin")
    target = build_target(grid, tumor, margin_mm)
    avoid_union = None
    if avoid:
        avoid_union = np.zeros(tumor.shape, bool)
        for m in avoid.values():
            avoid_union |= m
        avoid_union &= ~tumor  # the tumour itself is never an obstacle
    progress.update(0.05, "distance to the structures to avoid")
    checker = PathChecker(grid, avoid_union, body)
    scored, tried = candidate_directions(target, checker, clearance_mm, max_tilt_deg, n_directions)
    settings = device.by_volume(allow_unsourced)
    largest = settings[-1]
    avoid_names = ", ".join(avoid) if avoid else "nothing"
    details = {"method": ("parallel probes; k-centre cover of tumour + margin (dense points) by the largest zone, "
                          "checked by the analytic minimal margin; then settings lowered"),
               "entry_definition": "skin (body outline)" if body is not None
               else "where the path leaves the image (no skin surface given: entry points unchecked)",
               "clearance_mm": clearance_mm, "max_tilt_deg": max_tilt_deg, "avoid": list(avoid), "device": device.id}
    if not scored:
        return PlanOutcome(False, [], None,
                           f"No straight path from the target centre keeps {clearance_mm:g} mm from {avoid_names} "
                           f"(tried {tried} directions within {max_tilt_deg:g} deg of the axial plane)",
                           target, details, time.perf_counter() - t_start)
    cand = probe_axes(scored, target, candidates)
    a, b = largest.zone_long_mm / 2, largest.zone_short_mm / 2
    rng = np.random.default_rng(seed)
    best: tuple | None = None  # (dense points missed, probes, n, PlanCheck or None)
    n_min = max(1, int(np.ceil(target.target_ml / largest.volume_ml - 1e-9)))  # n zones hold at most n volumes
    n_min = min(n_min, max_probes)
    n_steps = (max_probes - n_min + 1) * len(SAFETY_STEPS_MM)  # for progress only: most plans stop earlier
    step = 0
    for safety in SAFETY_STEPS_MM:
        short = False  # some plan held every dense point but its margin fell short: a wider band may help
        dense, dist = target.dense_points(safety)
        band = dist >= margin_mm + safety - 1.5
        sample = _sample(dense, band, max_points, rng)
        for n in range(n_min, max_probes + 1):
            progress.update(0.1 + 0.8 * step / n_steps, f"trying {n} probe(s), safety band {safety:g} mm")
            step += 1
            found = []
            for _length, u, _clear in cand:
                progress.check()
                centres = cover_along(u, a, b, n, sample, dense, target.centroid_ras, rng)
                probes = place_probes(centres, u, largest, checker, clearance_mm, scored)
                if probes is None:
                    continue
                n_miss = len(missed_points([p.zone() for p in probes], dense))
                if n_miss:  # cheap: the margin is not kept; remember the closest miss for the report
                    if best is None or (-n_miss, -n) > (-best[0], -best[2]):
                        best = (n_miss, probes, n, None)
                    continue
                chk = check_plan(probes, target, dense)
                if best is None or best[0] > 0 or (chk.key(), -n) > (best[3].key(), -best[2]):
                    best = (0, probes, n, chk)
                short |= chk.margin.minimal_margin_mm < margin_mm - 1e-6
                if chk.keeps(margin_mm, required_percent):
                    found.append((chk, -sum(np.linalg.norm(p.tip_ras - p.entry_ras) for p in probes), probes))
            if found:
                found.sort(key=lambda x: (x[0].margin.minimal_margin_mm >= margin_mm, x[1]), reverse=True)
                for chk, _neg, probes in found[:3]:
                    probes, chk = lower_settings(probes, settings, target, dense, checker, clearance_mm, margin_mm,
                                                 required_percent)
                    if chk.keeps(margin_mm, required_percent):
                        progress.update(1.0, "plan ready")
                        details["safety_band_mm"] = safety
                        return PlanOutcome(True, probes, chk,
                                           f"{len(probes)} probe(s) of {device.id} keep a minimal margin of "
                                           f"{chk.margin.minimal_margin_mm:.2f} mm (>= {margin_mm:g} mm) and cover "
                                           f"{chk.coverage_percent:.2f} % of tumour + {margin_mm:g} mm",
                                           target, details, time.perf_counter() - t_start)
        if not short:
            break
    progress.update(1.0, "no feasible plan")
    if best is None:
        reason = (f"No probe placement had clear paths keeping {clearance_mm:g} mm from {avoid_names} "
                  f"({len(scored)} clear directions from the target centre)")
        return PlanOutcome(False, [], None, reason, target, details, time.perf_counter() - t_start)
    _missed, probes, n, chk = best
    if chk is None:
        chk = check_plan(probes, target, target.dense_points(SAFETY_STEPS_MM[0])[0])
    reason = infeasible_reason(device, largest, target, margin_mm, max_probes, clearance_mm,
                               avoid_names if avoid else "", probes, chk)
    return PlanOutcome(False, probes, chk, reason, target, details, time.perf_counter() - t_start)


def probe_axes(scored: list, target: PlanningTarget, candidates: int) -> list:
    """The probe directions tried: the ``candidates`` shortest clear paths, and the four clear directions best
    aligned with the target's long axis (the zones' long axis along the target's helps an elongated target)."""
    cand = scored[:candidates]
    pts = target.dense_points(SAFETY_STEPS_MM[0])[0]
    axis = np.linalg.eigh(np.cov((pts - pts.mean(axis=0)).T))[1][:, -1]
    for x in sorted(scored, key=lambda x: -abs(float(x[1] @ axis)))[:4]:
        if not any(x[1] is c[1] for c in cand):
            cand.append(x)
    return cand


def cover_along(u: np.ndarray, a: float, b: float, n: int, sample: np.ndarray, dense: np.ndarray,
                centroid_ras: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 3 for one probe direction ``u``: ``n`` zone centres (RAS) covering the sample, in the frame where the
    zone (semi-axes ``a`` along ``u``, ``b`` across) is a unit ball; then up to four active-set rounds adding the
    dense points the balls miss (the 2000 farthest each round) and solving again."""
    frame = _frame(u, a, b)
    q = (sample - centroid_ras) @ frame
    centres_q, rad = cover(q, n, rng)
    for _round in range(4):
        if rad > 1.0 + 1e-9:
            break
        qd = (dense - centroid_ras) @ frame
        dd = _assign(qd, centres_q)[1]
        miss = np.flatnonzero(dd > 1.0)
        if not len(miss):
            break
        worst = miss[np.argsort(-dd[miss])[:2000]]
        q = np.concatenate([q, qd[worst]])
        centres_q, rad = cover(q, n, rng, init=centres_q)
    return centres_q @ np.linalg.inv(frame) + centroid_ras


def infeasible_reason(device: Device, largest: ZoneSetting, target: PlanningTarget, margin_mm: float,
                      max_probes: int, clearance_mm: float, avoid_names: str, probes: list, chk: PlanCheck) -> str:
    """Why no plan is feasible, with the best plan's true (analytic) margin and coverage."""
    return (f"No plan with at most {max_probes} probe(s) of {device.id} (largest zone {largest.zone_long_mm:g} x "
            f"{largest.zone_short_mm:g} mm, {largest.volume_ml:.1f} ml) keeps {margin_mm:g} mm around the tumour "
            f"({target.target_ml:.1f} ml with the margin, up to {target.extent_mm:.0f} mm across)"
            + (f" with paths keeping {clearance_mm:g} mm from {avoid_names}" if avoid_names else "")
            + f": the best found, {len(probes)} probe(s), keeps a minimal margin "
            f"of {chk.margin.minimal_margin_mm:.2f} mm and covers {chk.coverage_percent:.1f} % of tumour + "
            f"{margin_mm:g} mm")


def _sample(points: np.ndarray, band: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """A covering sample: mostly the outer band (where the cover is decided), some interior points."""
    outer = np.flatnonzero(band)
    inner = np.flatnonzero(~band)
    n_out = min(len(outer), int(0.8 * max_points))
    n_in = min(len(inner), max_points - n_out)
    idx = np.concatenate([rng.choice(outer, n_out, replace=False) if n_out < len(outer) else outer,
                          rng.choice(inner, n_in, replace=False) if n_in < len(inner) else inner])
    return points[idx]
