"""Route from the trachea along the centerline tree to the best exit point near a target.

All points are RAS mm. The tree is a :class:`~IMAGIOLungNavLib.centerline.AirwayTree`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError

from .centerline import AirwayTree

#: keys of route.json, in order (the public CLI contract)
ROUTE_KEYS = ("reachable", "path_length_mm", "route_points_ras", "exit_point_ras", "gap_to_target_mm",
              "generation", "min_lumen_diameter_mm", "max_turn_angle_deg", "bronchus_sign")


@dataclass
class Route:
    reachable: bool
    path_length_mm: float
    route_points_ras: np.ndarray
    exit_point_ras: np.ndarray
    gap_to_target_mm: float
    generation: int
    min_lumen_diameter_mm: float
    max_turn_angle_deg: float
    bronchus_sign: bool
    # details beyond the contract
    target_ras: np.ndarray
    scope_diameter_mm: float
    scope_stop_point_ras: np.ndarray
    scope_stop_to_target_mm: float
    lumen_diameter_along_mm: np.ndarray
    route_nodes: list[int]
    exit_branch_name: str = ""
    branch_names: list[str] = field(default_factory=list)
    bridged_gaps_mm: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def contract_dict(self) -> dict:
        """Exactly the keys of route.json."""
        return {
            "reachable": bool(self.reachable),
            "path_length_mm": round(float(self.path_length_mm), 2),
            "route_points_ras": np.round(self.route_points_ras, 3).tolist(),
            "exit_point_ras": np.round(self.exit_point_ras, 3).tolist(),
            "gap_to_target_mm": round(float(self.gap_to_target_mm), 2),
            "generation": int(self.generation),
            "min_lumen_diameter_mm": round(float(self.min_lumen_diameter_mm), 2),
            "max_turn_angle_deg": round(float(self.max_turn_angle_deg), 1),
            "bronchus_sign": bool(self.bronchus_sign),
        }

    def details_dict(self) -> dict:
        return {
            "target_ras": np.round(self.target_ras, 3).tolist(),
            "scope_diameter_mm": float(self.scope_diameter_mm),
            "scope_stop_point_ras": np.round(self.scope_stop_point_ras, 3).tolist(),
            "scope_stop_to_target_mm": round(float(self.scope_stop_to_target_mm), 2),
            "exit_branch_name": self.exit_branch_name,
            "branches_along_route": self.branch_names,
            "bridged_gaps_mm": [round(g, 2) for g in self.bridged_gaps_mm],
            "warnings": list(self.warnings),
        }


class LesionDistance:
    """Distance (mm) from RAS points to a lesion mask: 0 inside, else to the nearest surface voxel."""

    def __init__(self, lesion: sitk.Image):
        m = sitk.Cast(lesion > 0, sitk.sitkUInt8)
        arr = sitk.GetArrayFromImage(m)
        if not np.any(arr):
            raise ImagioError("The lesion segment is empty", "Choose a lesion segment that contains voxels")
        self.image = m
        self.arr = arr
        self.centroid_ras = geometry.centroid_ras(m)
        surface = arr & ~sitk.GetArrayFromImage(sitk.BinaryErode(m, [1, 1, 1])).astype(bool)
        kji = np.argwhere(surface)
        self.surface_ras = geometry.ijk_to_ras(m, kji[:, ::-1].astype(float))
        # the surface lies about half a voxel outside the surface voxel centres
        self.half = 0.5 * float(np.min(m.GetSpacing()))

    def inside(self, points_ras) -> np.ndarray:
        p = np.atleast_2d(np.asarray(points_ras, float))
        idx = np.round(geometry.ras_to_ijk(self.image, p)).astype(int)
        size = np.array(self.image.GetSize())
        ok = np.all((idx >= 0) & (idx < size), axis=1)
        res = np.zeros(len(p), bool)
        k = idx[ok]
        res[ok] = self.arr[k[:, 2], k[:, 1], k[:, 0]] > 0
        return res

    def __call__(self, points_ras) -> np.ndarray:
        p = np.atleast_2d(np.asarray(points_ras, float))
        out = np.empty(len(p))
        chunk = max(1, 2_000_000 // max(len(self.surface_ras), 1))
        for i in range(0, len(p), chunk):
            d = np.linalg.norm(p[i:i + chunk, None, :] - self.surface_ras[None, :, :], axis=2)
            out[i:i + chunk] = np.maximum(d.min(axis=1) - self.half, 0.0)
        out[self.inside(p)] = 0.0
        return out


def _tree_path(tree: AirwayTree, start: int, end: int) -> list[int]:
    """Nodes from ``start`` to ``end`` along the tree (Dijkstra over parent/child edges)."""
    n = len(tree.parent)
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for c in np.flatnonzero(tree.parent >= 0):
        p = int(tree.parent[c])
        nbrs[p].append(int(c))
        nbrs[int(c)].append(p)
    dist = np.full(n, np.inf)
    prev = np.full(n, -1, np.int64)
    dist[start] = 0.0
    heap = [(0.0, start)]
    pts = tree.points_ras
    while heap:  # each node is settled once: bounded by the node count
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        if u == end:
            break
        for v in nbrs[u]:
            nd = d + float(np.linalg.norm(pts[v] - pts[u]))
            if nd < dist[v]:
                dist[v] = nd
                prev[v] = u
                heapq.heappush(heap, (nd, v))
    if not np.isfinite(dist[end]):
        raise ImagioError("The exit point is not connected to the start of the route",
                          "The airway tree is broken; check the segmentation for gaps")
    path = [end]
    for _ in range(n):
        if path[-1] == start:
            break
        path.append(int(prev[path[-1]]))
    return path[::-1]


def _resample(points: np.ndarray, step_mm: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    if s[-1] <= 0:
        return points[:1]
    t = np.arange(0.0, s[-1] + 1e-9, step_mm)
    return np.column_stack([np.interp(t, s, points[:, a]) for a in range(3)])


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-6 or nb < 1e-6:
        return 0.0
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))))


def _chord_angles(points: np.ndarray, lever_mm: float) -> float:
    """Largest angle between the chords ``lever_mm`` before and after any point of one branch."""
    if len(points) < 3:
        return 0.0
    p = _resample(points, 0.5)
    k = max(1, int(round(lever_mm / 0.5)))
    if len(p) < 2 * k + 1:
        return 0.0
    a = p[k:-k] - p[:-2 * k]
    b = p[2 * k:] - p[k:-k]
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max())


def _chord(points: np.ndarray, length_mm: float, from_end: bool) -> np.ndarray:
    """Direction of the chord over the last (or first) ``length_mm`` of a polyline."""
    p = points[::-1] if from_end else points
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]
    j = int(np.searchsorted(s, length_mm))
    j = min(max(j, 1), len(p) - 1)
    d = p[j] - p[0]
    return -d if from_end else d


def max_turn_angle_deg(points: np.ndarray, pieces: list[int] | None = None, lever_mm: float = 5.0,
                       branch_chord_mm: float = 10.0) -> float:
    """Largest turning angle (deg) a scope meets along a route.

    ``pieces`` gives the branch id of every point; the angle is the larger of
    the bends inside each branch (chords ``lever_mm`` before and after a
    point) and the angles between consecutive branches at their junction
    (chords of up to ``branch_chord_mm`` on either side).
    """
    points = np.asarray(points, float)
    if len(points) < 3:
        return 0.0
    if pieces is None:
        pieces = [0] * len(points)
    pieces = np.asarray(pieces)
    cut = np.flatnonzero(np.diff(pieces)) + 1
    parts = np.split(np.arange(len(points)), cut)
    best = 0.0
    for part in parts:
        best = max(best, _chord_angles(points[part], lever_mm))
    for a, b in zip(parts[:-1], parts[1:], strict=True):
        pa = points[np.r_[a, b[:1]]]    # parent up to the first node of the child
        pb = points[np.r_[a[-1:], b]]   # child from the junction on
        if len(pa) < 2 or len(pb) < 2:
            continue
        da = _chord(points[a] if len(a) > 1 else pa, branch_chord_mm, from_end=True)
        db = _chord(points[b] if len(b) > 1 else pb, branch_chord_mm, from_end=False)
        best = max(best, _angle_deg(da, db))
    return best


def plan_route(tree: AirwayTree, target_ras=None, lesion: sitk.Image | None = None,
               scope_diameter_mm: float = 4.2, start_ras=None, lesion_radius_mm: float = 5.0,
               max_gap_mm: float = 60.0, airway_mask: sitk.Image | None = None) -> Route:
    """Plan the route to ``target_ras`` (RAS mm) or to a ``lesion`` mask.

    The exit point is the centerline node nearest to the target (to the
    lesion surface for a lesion), ties broken by the shorter path. The route
    runs from the trachea (or the node nearest ``start_ras``) to it along the
    tree. ``reachable`` means the scope's outer diameter fits the lumen all
    along the route; the deepest point it fits is given in the details.
    """
    if not np.isfinite(scope_diameter_mm) or scope_diameter_mm <= 0:
        raise ImagioError(f"Scope diameter must be a positive number of mm, got {scope_diameter_mm}",
                          "Give the outer diameter of the bronchoscope, e.g. 4.2")
    if len(tree.points_ras) < 2:
        raise ImagioError("The airway tree has no centerline", "Check the airway segmentation")
    pts = tree.points_ras
    if lesion is not None:
        ld = LesionDistance(lesion)
        target = ld.centroid_ras
        gaps = ld(pts)
    elif target_ras is not None:
        target = np.asarray(target_ras, float).reshape(3)
        if not np.all(np.isfinite(target)):
            raise ImagioError("The target point is not a finite R,A,S triple", "Give the target as R,A,S in mm")
        gaps = np.linalg.norm(pts - target, axis=1)
    else:
        raise ImagioError("No target given", "Give a target point (R,A,S mm) or a lesion segment")
    best = float(gaps.min())
    near = np.flatnonzero(gaps <= best + 0.5)
    depth = _depth(tree)
    exit_node = int(near[np.argmin(depth[near])])
    gap = float(gaps[exit_node])
    gen = tree.generation_of(exit_node)
    exit_branch = tree.branches[int(tree.branch_of[exit_node])]
    # target inside the trachea or a main bronchus: nothing to navigate
    # (for a lesion: its centroid in the lumen of the trachea or a main bronchus)
    c_node = int(np.argmin(np.linalg.norm(pts - target, axis=1)))
    in_lumen = float(np.linalg.norm(pts[c_node] - target)) <= tree.radius_mm[c_node]
    if in_lumen and tree.generation_of(c_node) <= 1:
        gen, exit_branch = tree.generation_of(c_node), tree.branches[int(tree.branch_of[c_node])]
        raise ImagioError(f"The target lies inside the {exit_branch.name or 'central airway'} (generation {gen})",
                          "Choose a target in the lung periphery; a central airway needs no navigation")
    if gap > max_gap_mm:
        raise ImagioError(f"The target is {gap:.1f} mm from the nearest airway, more than {max_gap_mm:.0f} mm: "
                          "it does not seem to lie in the lungs",
                          "Check the target coordinates (R,A,S mm) and that the airway belongs to this patient")
    if start_ras is not None:
        start = int(np.argmin(np.linalg.norm(pts - np.asarray(start_ras, float), axis=1)))
    else:
        start = tree.root
    path = _tree_path(tree, start, exit_node)
    route_pts = pts[path]
    if airway_mask is not None:
        route_pts = _keep_inside(route_pts, airway_mask)
        # the gap is measured from the exit point as reported
        gap = float(ld(route_pts[-1:])[0]) if lesion is not None else float(np.linalg.norm(route_pts[-1] - target))
    diam = _lumen_along(tree, path)
    seg = np.linalg.norm(np.diff(route_pts, axis=0), axis=1)
    length = float(seg.sum())
    fits = diam >= scope_diameter_mm
    stop = len(path) - 1 if np.all(fits) else max(int(np.argmin(fits)) - 1, 0)
    stop_pt = route_pts[stop]
    if lesion is not None:
        stop_gap = float(ld(stop_pt[None])[0])
        bronchus = bool(np.any(gaps <= 0.0))
    else:
        stop_gap = float(np.linalg.norm(stop_pt - target))
        bronchus = bool(np.any(gaps <= lesion_radius_mm))
    names = []
    for n in path:
        nm = tree.branches[int(tree.branch_of[n])].name
        if nm and (not names or names[-1] != nm):
            names.append(nm)
    bridged = [b["gap_mm"] for b in tree.bridges if b["to_node"] in set(path)]
    warnings = []
    if bridged:
        gaps = ", ".join(f"{g:.1f}" for g in bridged)
        warnings.append(f"the route crosses {len(bridged)} bridged gap(s) in the segmented tree ({gaps} mm)")
    if tree.disconnected_volume_ml > 0:
        warnings.append(f"{tree.disconnected_volume_ml:.2f} ml of airway is not connected to the trachea")
    return Route(
        reachable=bool(np.all(fits)), path_length_mm=length, route_points_ras=route_pts,
        exit_point_ras=route_pts[-1], gap_to_target_mm=gap, generation=int(gen),
        min_lumen_diameter_mm=float(diam.min()), max_turn_angle_deg=max_turn_angle_deg(route_pts, [int(tree.branch_of[n]) for n in path]),
        bronchus_sign=bronchus, target_ras=target, scope_diameter_mm=float(scope_diameter_mm),
        scope_stop_point_ras=stop_pt, scope_stop_to_target_mm=stop_gap, lumen_diameter_along_mm=diam,
        route_nodes=[int(n) for n in path], exit_branch_name=exit_branch.name, branch_names=names,
        bridged_gaps_mm=bridged, warnings=warnings)


def _lumen_along(tree: AirwayTree, path: list[int]) -> np.ndarray:
    """Lumen diameter (mm) at each route node; in the closing cap of a branch tip (the last radius of a
    branch without children) the front is no cross-section, so the branch's own diameter is used."""
    diam = 2.0 * tree.radius_mm[path]
    last = tree.branches[int(tree.branch_of[path[-1]])]
    if last.children or len(last.nodes) < 3:
        return diam
    tip = tree.points_ras[last.nodes[-1]]
    r_branch = 0.5 * last.diameter_mm
    for n, node in enumerate(path):
        if tree.branch_of[node] == last.id and np.linalg.norm(tree.points_ras[node] - tip) < 1.5 * r_branch:
            diam[n] = max(diam[n], last.diameter_mm)
    return diam


def _depth(tree: AirwayTree) -> np.ndarray:
    """Path length (mm) of every node from the root."""
    n = len(tree.parent)
    depth = np.full(n, np.nan)
    depth[tree.root] = 0.0
    order = [tree.root]
    children: list[list[int]] = [[] for _ in range(n)]
    for c in np.flatnonzero(tree.parent >= 0):
        children[int(tree.parent[c])].append(int(c))
    i = 0
    while i < len(order):
        u = order[i]
        i += 1
        for c in children[u]:
            depth[c] = depth[u] + float(np.linalg.norm(tree.points_ras[c] - tree.points_ras[u]))
            order.append(c)
    return np.where(np.isnan(depth), np.inf, depth)


def _keep_inside(points: np.ndarray, mask: sitk.Image) -> np.ndarray:
    """Move route points that fall outside the airway mask to the nearest airway voxel centre
    (a few mm at most; centroids of curved fronts can sit just outside thin bends)."""
    arr = sitk.GetArrayViewFromImage(mask)
    ijk = np.round(geometry.ras_to_ijk(mask, points)).astype(int)
    size = np.array(mask.GetSize())
    out = points.copy()
    ok = np.all((ijk >= 0) & (ijk < size), axis=1)
    bad = [i for i in range(len(points)) if not ok[i] or arr[ijk[i, 2], ijk[i, 1], ijk[i, 0]] == 0]
    if not bad:
        return out
    for i in bad:
        c = np.clip(ijk[i], 0, size - 1)
        lo = np.maximum(c - 4, 0)
        hi = np.minimum(c + 5, size)
        sub = np.argwhere(arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] > 0)
        if len(sub) == 0:
            continue
        cand = geometry.ijk_to_ras(mask, (sub[:, ::-1] + lo).astype(float))
        out[i] = cand[np.argmin(np.linalg.norm(cand - points[i], axis=1))]
    return out
