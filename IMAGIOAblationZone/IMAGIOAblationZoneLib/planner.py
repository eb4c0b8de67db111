"""Probe planning: the fewest probes, their straight paths and settings, covering tumour + margin.

Method (documented in the plan output):

1. Target = tumour grown by the margin (Euclidean, in mm, on the grid).
2. Candidate probe directions on a sphere (Fibonacci), within ``max_tilt_deg`` of the
   axial plane (default 45 deg, the usual sub- or intercostal approaches); a path is the straight
   segment from the tip back along the probe to the skin (where it leaves the
   body mask, or the image when no CT is given). It must keep ``clearance_mm``
   from every avoid structure (distance map in mm) and must not enter the
   lungs/ribs/etc. given as avoid structures.
3. For n = 1, 2, ... probes: in the frame where the device's largest zone is a
   unit ball, the target points are covered by n balls (k-centre heuristic:
   k-means++ seeds, then minimax updates), all probes parallel to one
   candidate direction (the usual practice for clustered probes), tips at
   their own depth. The first n whose union covers the required fraction with
   clear paths wins; then each probe's setting is lowered to the smallest
   table setting that keeps the coverage.
4. Infeasible plans say why: no clear path, or more probes needed than allowed
   (with the best coverage reached).
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
from .zone import EllipsoidZone, crop, mask_box, sub_grid


@dataclass
class PlannedProbe:
    tip_ras: np.ndarray
    entry_ras: np.ndarray
    setting: ZoneSetting
    min_clearance_mm: float

    def as_dict(self) -> dict:
        return {
            "tip_ras": [round(float(v), 3) for v in self.tip_ras],
            "entry_ras": [round(float(v), 3) for v in self.entry_ras],
            "power_w": self.setting.power_w,
            "time_s": self.setting.time_s,
            "zone_axes_mm": self.setting.axes_mm,
            "path_length_mm": round(float(np.linalg.norm(self.tip_ras - self.entry_ras)), 2),
            "min_clearance_mm": round(float(self.min_clearance_mm), 2),
        }

    def zone(self) -> EllipsoidZone:
        return EllipsoidZone.from_probe(self.tip_ras, self.entry_ras, self.setting)


@dataclass
class Plan:
    feasible: bool
    probes: list[PlannedProbe]
    coverage_percent: float  # of tumour + margin (the planning target)
    tumor_coverage_percent: float
    reason: str
    margin_mm: float
    required_percent: float
    target_volume_ml: float
    run_time_s: float = 0.0
    union_mask: sitk.Image | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "feasible": bool(self.feasible),
            "coverage_percent": round(self.coverage_percent, 3),
            "tumor_coverage_percent": round(self.tumor_coverage_percent, 3),
            "required_coverage_percent": self.required_percent,
            "margin_mm": self.margin_mm,
            "target_volume_ml": round(self.target_volume_ml, 3),
            "probe_count": len(self.probes),
            "probes": [p.as_dict() for p in self.probes],
            "reason": self.reason,
            "run_time_s": round(self.run_time_s, 3),
            **self.details,
        }


def fibonacci_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    return np.c_[np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)]


def grow_mask(mask: np.ndarray, grid: sitk.Image, margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean, physical spacing), computed on a crop."""
    if margin_mm <= 0:
        return mask.astype(bool)
    sp = np.array(grid.GetSpacing()[::-1])
    pad = np.ceil(margin_mm / sp).astype(int) + 1
    box = mask_box(mask)
    if box is None:
        return mask.astype(bool)
    lo = [max(box[2 * a] - pad[a], 0) for a in range(3)]
    hi = [min(box[2 * a + 1] + pad[a], mask.shape[a]) for a in range(3)]
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.uint8)
    img = sitk.GetImageFromArray(sub)
    img.SetSpacing(grid.GetSpacing())
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                                                  useImageSpacing=True))
    out = np.zeros(mask.shape, bool)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = dist <= margin_mm
    return out


class PathChecker:
    """Straight paths from a tip back along the probe to the skin, with their clearance from avoid structures."""

    def __init__(self, grid: sitk.Image, avoid: np.ndarray | None, body: np.ndarray | None = None, step_mm: float = 1.0):
        self.grid = grid
        self.size = np.array(grid.GetSize())
        self.r2i = geometry.ras_to_ijk_matrix(grid)
        self.step = step_mm
        self.body = body
        if avoid is not None and avoid.any():
            img = sitk.GetImageFromArray(avoid.astype(np.uint8))
            img.SetSpacing(grid.GetSpacing())
            self.dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
                img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)).astype(np.float32)
        else:
            self.dist = None
        diag = float(np.linalg.norm(self.size * np.array(grid.GetSpacing())))
        self.max_len = diag

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


def _enclosing_centre(pts: np.ndarray, start: np.ndarray, iterations: int = 16) -> np.ndarray:
    """Approximate centre of the smallest ball enclosing ``pts`` (Badoiu-Clarkson iterations).

    Only the outer points (beyond half the largest distance from ``start``) can be the farthest
    from a centre near ``start``, so the iterations run on those."""
    c = start.copy()
    d2 = np.einsum("ij,ij->i", pts - c, pts - c)
    pts = pts[d2 >= 0.25 * d2.max()]
    for t in range(iterations):
        far = pts[int(np.argmax(np.einsum("ij,ij->i", pts - c, pts - c)))]
        c += (far - c) / (t + 2)
    return c


def _refine(points: np.ndarray, c: np.ndarray, iterations: int = 40) -> tuple[np.ndarray, float]:
    """Coverage-maximising local search: each centre moves towards its points, uncovered ones weighing more."""
    def covered(cc):
        return float(np.mean(np.min(np.linalg.norm(points[:, None, :] - cc[None], axis=2), axis=1) <= 1.0))

    best_c, best = c.copy(), covered(c)
    for _ in range(iterations):
        d = np.linalg.norm(points[:, None, :] - c[None], axis=2)
        lab = np.argmin(d, axis=1)
        unc = d.min(axis=1) > 1.0
        if not unc.any():
            break
        moved = c.copy()
        for j in range(len(c)):
            sel = lab == j
            if sel.any():
                w = np.where(unc[sel], 3.0, 1.0)
                moved[j] = c[j] + 0.5 * ((points[sel] * w[:, None]).sum(axis=0) / w.sum() - c[j])
        c = moved
        cov = covered(c)
        if cov > best:
            best, best_c = cov, c.copy()
    return best_c, best


def _kcentre(points: np.ndarray, n: int, rng: np.random.Generator, restarts: int = 4,
             iterations: int = 25, need: float = 1.0) -> tuple[np.ndarray, float]:
    """Centres of n unit balls covering as many ``points`` (scaled frame) as possible; (centres, covered fraction).

    Farthest-point seeding, then alternating assignment and per-cluster smallest enclosing ball
    (a k-centre heuristic); the best of a few restarts (fewer when far from ``need``), then a
    coverage-maximising refinement when close to it.
    """
    best = (None, -1.0)
    for r in range(restarts):
        if r > 0 and best[1] < need - 0.08:
            break  # far from the required coverage: more restarts will not get there
        centres = [points[rng.integers(len(points))]]
        d = np.linalg.norm(points - centres[0], axis=1)
        for _ in range(1, n):
            centres.append(points[int(np.argmax(d))])
            d = np.minimum(d, np.linalg.norm(points - centres[-1], axis=1))
        c = np.array(centres, float)
        for _it in range(iterations):
            dist = np.linalg.norm(points[:, None, :] - c[None, :, :], axis=2)
            lab = np.argmin(dist, axis=1)
            covered = float(np.mean(dist[np.arange(len(points)), lab] <= 1.0))
            if covered > best[1]:
                best = (c.copy(), covered)
            if covered >= 1.0:
                return best
            moved = c.copy()
            for j in range(n):
                sel = lab == j
                if sel.any():
                    moved[j] = _enclosing_centre(points[sel], points[sel].mean(axis=0))
            if np.allclose(moved, c, atol=1e-4):
                break
            c = moved
    if need - 0.03 <= best[1] < need:
        best = _refine(points, best[0])
    return best


def plan_ablation(grid: sitk.Image, tumor: np.ndarray, device: Device, margin_mm: float = 5.0,
                  avoid: dict[str, np.ndarray] | None = None, body: np.ndarray | None = None,
                  clearance_mm: float = 3.0, required_percent: float = 99.0, max_probes: int = 5,
                  n_directions: int = 160, candidates: int = 16, max_points: int = 6000, seed: int = 0,
                  max_tilt_deg: float = 45.0, progress: Progress | None = None) -> Plan:
    """Plan probes for ``tumor`` (bool [k, j, i] on ``grid``); see the module docstring."""
    t_start = time.perf_counter()
    progress = ensure(progress)
    tumor = np.asarray(tumor, bool)
    if tumor.shape != grid.GetSize()[::-1]:
        raise ImagioError("The tumour mask does not lie on the planning grid", "Give masks on one grid")
    if not tumor.any():
        raise ImagioError("The tumour segment is empty", "Choose a segment that contains the tumour")
    if margin_mm < 0 or margin_mm > 30:
        raise ImagioError(f"Margin {margin_mm} mm is out of range", "Give a margin between 0 and 30 mm")
    avoid = {k: np.asarray(v, bool) for k, v in (avoid or {}).items()}
    for name, m in avoid.items():
        if m.shape != tumor.shape:
            raise ImagioError(f"Avoid structure '{name}' does not lie on the planning grid", "Give masks on one grid")
    progress.update(0.02, "growing the tumour by the margin")
    target = grow_mask(tumor, grid, margin_mm)
    vox_ml = geometry.voxel_volume_ml(grid)
    target_ml = float(target.sum()) * vox_ml
    kji = np.argwhere(target)
    pts_all = geometry.ijk_to_ras(grid, kji[:, ::-1].astype(float))
    rng = np.random.default_rng(seed)
    pts = pts_all if len(pts_all) <= max_points else pts_all[rng.choice(len(pts_all), max_points, replace=False)]
    centroid = pts_all.mean(axis=0)
    avoid_union = None
    if avoid:
        avoid_union = np.zeros(tumor.shape, bool)
        for m in avoid.values():
            avoid_union |= m
        avoid_union &= ~tumor  # the tumour itself is never an obstacle
    progress.update(0.05, "distance to the structures to avoid")
    checker = PathChecker(grid, avoid_union, body)
    # candidate directions: clear path from the target centre, shortest first
    dirs = fibonacci_directions(n_directions)
    # percutaneous paths stay within max_tilt_deg of the axial plane (sub- or intercostal approaches)
    dirs = dirs[np.abs(dirs[:, 2]) <= np.sin(np.deg2rad(max_tilt_deg)) + 1e-9]
    scored = []
    for u in dirs:
        entry, clear = checker.trace(centroid, u)
        if clear >= clearance_mm:
            scored.append((float(np.linalg.norm(centroid - entry)), u, clear))
    settings = device.by_volume()
    largest = settings[-1]
    avoid_names = ", ".join(avoid) if avoid else "nothing"
    details = {"method": "parallel probes, k-centre cover of tumour + margin by the largest zone, then settings lowered",
               "entry_definition": "skin (CT body outline)" if body is not None else "where the path leaves the image (no CT given)",
               "clearance_mm": clearance_mm, "max_tilt_deg": max_tilt_deg, "avoid": list(avoid), "device": device.id}
    if not scored:
        return Plan(False, [], 0.0, 0.0,
                    f"No straight path from the target centre keeps {clearance_mm:g} mm from {avoid_names} "
                    f"(tried {len(dirs)} directions within {max_tilt_deg:g} deg of the axial plane)", margin_mm, required_percent, target_ml,
                    time.perf_counter() - t_start, details=details)
    scored.sort(key=lambda x: (x[0], -x[2]))
    cand = scored[:candidates]
    a, b = largest.zone_long_mm / 2, largest.zone_short_mm / 2
    need = required_percent / 100.0
    best_overall = (0.0, None)
    # n zones cover at most n zone volumes: fewer probes than that cannot reach the required coverage
    n_min = max(1, int(np.ceil(need * target_ml / largest.volume_ml - 1e-9)))
    for n in range(min(n_min, max_probes), max_probes + 1):
        progress.update(0.1 + 0.8 * (n - 1) / max_probes, f"trying {n} probe(s)")
        found = []
        for _length, u, _clear in cand:
            progress.check()
            # frame: z along u scaled by 1/a, x, y across scaled by 1/b
            helper = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
            v = np.cross(u, helper)
            v /= np.linalg.norm(v)
            w = np.cross(u, v)
            frame = np.c_[v / b, w / b, u / a]  # scaled coords = (p - centroid) @ frame
            q = (pts - centroid) @ frame
            centres_q, cov = _kcentre(q, n, rng, need=need)
            if cov < best_overall[0] and cov < need:
                continue
            inv = np.linalg.inv(frame)
            centres = centres_q @ inv + centroid
            probes = []
            ok = True
            for c in centres:
                # this probe along u if its path is clear, else along the nearest clear candidate direction
                for u2 in [u] + [x[1] for x in sorted(scored, key=lambda x: -float(x[1] @ u))[1:12]]:
                    tip = c + largest.tip_offset_mm * u2
                    entry, clear = checker.trace(tip, u2)
                    if clear >= clearance_mm:
                        probes.append(PlannedProbe(tip, entry, largest, clear))
                        break
                else:
                    ok = False
                    break
            if not ok:
                continue
            if cov > best_overall[0]:
                best_overall = (cov, probes)
            if cov >= need:
                found.append((cov, -sum(np.linalg.norm(p.tip_ras - p.entry_ras) for p in probes), probes))
        if found:
            found.sort(key=lambda x: (x[0], x[1]), reverse=True)
            for _cov, _neg, probes in found[:3]:
                plan = _finish(grid, tumor, target, probes, settings, need, checker, clearance_mm)
                if plan[0] >= need:
                    cov_t, cov_tumor, probes, union = plan
                    progress.update(1.0, "plan ready")
                    return Plan(True, probes, 100 * cov_t, 100 * cov_tumor,
                                f"{len(probes)} probe(s) of {device.id} cover {100 * cov_t:.2f} % of tumour + {margin_mm:g} mm",
                                margin_mm, required_percent, target_ml, time.perf_counter() - t_start, union, details)
    # infeasible: report the best
    probes = best_overall[1] or []
    cov_t = cov_tumor = 0.0
    union = None
    if probes:
        cov_t, cov_tumor, probes, union = _finish(grid, tumor, target, probes, [largest], need, checker, clearance_mm)
    extent = float(np.ptp(pts_all @ np.eye(3), axis=0).max())
    reason = (f"Tumour + {margin_mm:g} mm margin ({target_ml:.1f} ml, up to {extent:.0f} mm across) needs more than "
              f"{max_probes} probe(s) of {device.id} (largest zone {largest.zone_long_mm:g} x {largest.zone_short_mm:g} mm, "
              f"{largest.volume_ml:.1f} ml) with paths keeping {clearance_mm:g} mm from {avoid_names}; "
              f"best coverage {100 * cov_t:.1f} % with {len(probes)} probe(s)")
    progress.update(1.0, "no feasible plan")
    return Plan(False, probes, 100 * cov_t, 100 * cov_tumor, reason, margin_mm, required_percent, target_ml,
                time.perf_counter() - t_start, union, details)


def _union(grid: sitk.Image, zones: list[EllipsoidZone], shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    for z in zones:
        box, sub = z.rasterise_box(grid)
        if box is not None:
            crop(out, box)[...] |= sub.astype(bool)
    return out


def _finish(grid, tumor, target, probes, settings, need, checker, clearance_mm):
    """Full-resolution coverage; then lower each probe's setting while coverage stays >= need."""
    box = mask_box(target, pad=1)
    sub = sub_grid(grid, box)
    target_c = crop(target, box)
    tumor_c = crop(tumor, box)
    n_target = float(target_c.sum())

    def coverage(ps):
        u = _union(sub, [p.zone() for p in ps], target_c.shape)
        return float((u & target_c).sum()) / n_target, u

    cov, union = coverage(probes)
    if cov >= need and len(settings) > 1:
        for idx in range(len(probes)):
            p = probes[idx]
            u = (p.tip_ras - p.entry_ras) / np.linalg.norm(p.tip_ras - p.entry_ras)
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
                c2, u2 = coverage(trial)
                if c2 >= need:
                    probes, cov, union = trial, c2, u2
                    break
    cov_tumor = float((union & tumor_c).sum()) / float(tumor.sum())
    full = _union(grid, [p.zone() for p in probes], tumor.shape)
    return cov, cov_tumor, probes, geometry.copy_geometry(full.astype(np.uint8), grid)
