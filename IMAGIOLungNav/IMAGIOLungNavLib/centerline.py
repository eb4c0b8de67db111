"""Airway centerline graph by wave-front clustering of the geodesic distance.

Method (our own, no skeletonisation):

1. The airway mask is cropped, made near-isotropic when its voxels are very
   anisotropic, and its enclosed holes are filled.
2. A fast-marching front runs from the top of the trachea inside the mask
   (speed 1 inside, 0 outside): every voxel gets its geodesic distance (mm).
3. The distance is cut into bands of ``band_mm``; each connected piece of a
   band (one front position inside one airway) becomes a node at its
   centroid, with the lumen radius from the distance map of the mask.
4. A node's parent is the touching piece of the previous band; where a front
   splits, the tree branches. Short side branches (bumps, noise) are pruned.
5. Components that are not connected to the trachea are traced the same way
   from their point nearest to the main tree and bridged to it when the gap
   is at most ``bridge_max_mm``.

Every loop is bounded by the number of voxels or nodes, so it cannot hang.
Points leave this module in RAS mm; the images inside are LPS (SimpleITK).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from imagio import geometry
from imagio.errors import ImagioError
from imagio.progress import Progress, ensure

# 13 offsets (half of the 26-neighbourhood) as (dk, dj, di)
_HALF26 = [(dk, dj, di) for dk in (-1, 0, 1) for dj in (-1, 0, 1) for di in (-1, 0, 1)
           if (dk, dj, di) > (0, 0, 0)]


@dataclass
class Branch:
    """One airway branch: a chain of centerline nodes between two junctions (or a tip)."""

    id: int
    parent: int | None
    generation: int
    nodes: list[int]
    points_ras: np.ndarray
    radius_mm: np.ndarray
    children: list[int] = field(default_factory=list)
    name: str = ""
    bridged_gap_mm: float = 0.0  # >0 when this branch was joined to its parent across a gap

    @property
    def length_mm(self) -> float:
        if len(self.points_ras) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(self.points_ras, axis=0), axis=1).sum())

    @property
    def diameter_mm(self) -> float:
        """Typical lumen diameter: median over the branch without its junction ends."""
        r = self.radius_mm
        inner = r[1:-1] if len(r) > 4 else r
        return float(2.0 * np.median(inner))

    def as_dict(self) -> dict:
        return {
            "id": self.id, "parent": self.parent, "generation": self.generation, "name": self.name,
            "length_mm": round(self.length_mm, 2), "diameter_mm": round(self.diameter_mm, 2),
            "min_diameter_mm": round(float(2 * self.radius_mm.min()), 2),
            "bridged_gap_mm": round(self.bridged_gap_mm, 2), "children": list(self.children),
            "points_ras": np.round(self.points_ras, 3).tolist(),
        }


@dataclass
class AirwayTree:
    """Centerline graph: nodes (RAS mm) with parents, grouped into branches."""

    points_ras: np.ndarray          # (M, 3)
    radius_mm: np.ndarray           # (M,)
    parent: np.ndarray              # (M,) int, -1 for the root
    branch_of: np.ndarray           # (M,) int branch id
    branches: list[Branch]
    root: int
    spacing_mm: float               # working grid spacing
    n_components: int = 1           # connected components of the mask (after cleaning)
    disconnected_volume_ml: float = 0.0  # volume of pieces that are neither the tree nor bridged
    bridges: list[dict] = field(default_factory=list)

    @property
    def n_branches(self) -> int:
        return len(self.branches)

    @property
    def total_length_mm(self) -> float:
        return float(sum(b.length_mm for b in self.branches))

    @property
    def max_generation(self) -> int:
        return max((b.generation for b in self.branches), default=0)

    def path_to_root(self, node: int) -> list[int]:
        """Node ids from ``node`` up to the root (bounded by the node count)."""
        path = [int(node)]
        for _ in range(len(self.parent)):
            p = int(self.parent[path[-1]])
            if p < 0:
                break
            path.append(p)
        return path

    def generation_of(self, node: int) -> int:
        return self.branches[int(self.branch_of[node])].generation

    def polydata_ras(self):
        """vtkPolyData of the centerlines (one polyline per branch) with a ``radius_mm`` point array."""
        import vtk
        from vtk.util.numpy_support import numpy_to_vtk

        pts = vtk.vtkPoints()
        lines = vtk.vtkCellArray()
        radii = []
        gen = []
        for b in self.branches:
            ids = []
            for p, r in zip(b.points_ras, b.radius_mm, strict=True):
                ids.append(pts.InsertNextPoint(*map(float, p)))
                radii.append(float(r))
                gen.append(b.generation)
            if len(ids) >= 2:
                line = vtk.vtkPolyLine()
                line.GetPointIds().SetNumberOfIds(len(ids))
                for n, i in enumerate(ids):
                    line.GetPointIds().SetId(n, i)
                lines.InsertNextCell(line)
        poly = vtk.vtkPolyData()
        poly.SetPoints(pts)
        poly.SetLines(lines)
        arr = numpy_to_vtk(np.asarray(radii, float), deep=True)
        arr.SetName("radius_mm")
        poly.GetPointData().AddArray(arr)
        garr = numpy_to_vtk(np.asarray(gen, float), deep=True)
        garr.SetName("generation")
        poly.GetPointData().AddArray(garr)
        return poly

    def summary(self) -> dict:
        return {
            "branch_count": self.n_branches,
            "max_generation": self.max_generation,
            "centerline_length_mm": round(self.total_length_mm, 1),
            "trachea_diameter_mm": round(self.branches[0].diameter_mm, 2) if self.branches else None,
            "mask_components": self.n_components,
            "bridged_gaps_mm": [round(b["gap_mm"], 2) for b in self.bridges],
            "disconnected_volume_ml": round(self.disconnected_volume_ml, 3),
        }


# ----------------------------------------------------------------------------- preparation

def _prepare_mask(mask: sitk.Image, max_anisotropy: float = 1.6) -> sitk.Image:
    """Binary uint8 mask cropped to its bounding box (+3 voxels), near-isotropic, holes filled."""
    m = mask if mask.GetPixelID() == sitk.sitkUInt8 else sitk.Cast(mask != 0, sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(m)
    if not stats.GetLabels():
        raise ImagioError("The airway mask is empty", "Give a segmentation that contains the airway tree")
    boxes = np.array([stats.GetBoundingBox(v) for v in stats.GetLabels()])  # (x, y, z, size_x, size_y, size_z)
    lo = np.maximum(boxes[:, :3].min(axis=0) - 3, 0)
    hi = np.minimum((boxes[:, :3] + boxes[:, 3:]).max(axis=0) + 3, np.array(m.GetSize()))
    m = sitk.RegionOfInterest(m, [int(v) for v in hi - lo], [int(v) for v in lo])
    m = sitk.Cast(m != 0, sitk.sitkUInt8)
    sp = np.array(m.GetSpacing())
    if sp.max() / sp.min() > max_anisotropy:
        iso = max(sp.min(), sp.max() / 3.0)
        new_size = [max(1, int(round(n * s / iso))) for n, s in zip(m.GetSize(), sp, strict=True)]
        ref = sitk.Image(new_size, sitk.sitkUInt8)
        ref.SetDirection(m.GetDirection())
        ref.SetSpacing([iso] * 3)
        # keep the physical box: first voxel centre shifted by half the change of voxel size
        shift = (iso - sp) / 2.0
        d = np.array(m.GetDirection()).reshape(3, 3)
        ref.SetOrigin(tuple(np.array(m.GetOrigin()) + d @ shift))
        smooth = sitk.Resample(sitk.Cast(m, sitk.sitkFloat32), ref, sitk.Transform(), sitk.sitkLinear, 0.0)
        m = sitk.Cast(smooth >= 0.5, sitk.sitkUInt8)
        # re-pad so the front never touches the border
        m = sitk.ConstantPad(m, [2, 2, 2], [2, 2, 2], 0)
    m = sitk.BinaryFillhole(m, fullyConnected=False, foregroundValue=1)
    return m


def _top_seed(comp_arr: np.ndarray, label: int, dist: np.ndarray, image: sitk.Image) -> np.ndarray:
    """[k, j, i] of the most central voxel among the most superior 4 mm of a component."""
    kji = np.argwhere(comp_arr == label)
    ras = geometry.ijk_to_ras(image, kji[:, ::-1].astype(float))
    top = ras[:, 2] >= ras[:, 2].max() - 4.0
    cand = kji[top]
    best = np.argmax(dist[tuple(cand.T)])
    return cand[best]


def _trachea_top(comp: np.ndarray, label: int, image: sitk.Image, arr: np.ndarray,
                 slab_mm: float = 1.0, search_mm: float = 40.0) -> np.ndarray:
    """[k, j, i] of the voxels of the top cross-section of the trachea; voxels above it are removed
    from ``comp`` and ``arr`` (spurs of the larynx or a ragged cut would start false branches)."""
    kji = np.argwhere(comp == label)
    s = geometry.ijk_to_ras(image, kji[:, ::-1].astype(float))[:, 2]
    top = s.max()
    nslab = int(search_mm / slab_mm)
    slab = np.clip(((top - s) / slab_mm).astype(int), 0, nslab)
    area = np.bincount(slab, minlength=nslab + 1)[:nslab]
    ref = np.median(area[area > 0]) if np.any(area > 0) else 0
    first = int(np.argmax(area >= 0.5 * ref))
    above = slab < first
    comp[tuple(kji[above].T)] = 0
    arr[tuple(kji[above].T)] = 0
    return kji[slab == first]


def _component_seed_near(kji: np.ndarray, dist_to_main: np.ndarray,
                         face_mm: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Voxel of a piece (its voxels ``kji``) nearest to the main tree, the gap (mm), and the piece's
    face towards the tree (its voxels within ``face_mm`` of the nearest distance) where its front starts."""
    d = dist_to_main[tuple(kji.T)]
    i = int(np.argmin(d))
    return kji[i], float(d[i]), kji[d <= d[i] + face_mm]


# ----------------------------------------------------------------------------- main entry

def extract_centerlines(mask: sitk.Image, seed_ras=None, progress: Progress | None = None,
                        band_mm: float | None = None, min_branch_mm: float = 3.0,
                        prune_factor: float = 1.0, bridge_max_mm: float = 10.0,
                        min_fragment_voxels: int = 30) -> AirwayTree:
    """Centerline tree of an airway mask (SimpleITK, any grid/orientation).

    ``seed_ras``: a point in the trachea (RAS mm); by default the most central
    voxel at the top of the largest pieces. Raises ImagioError for an empty
    mask or a seed outside it.
    """
    progress = ensure(progress)
    progress.update(0.0, "Preparing the airway mask")
    m = _prepare_mask(mask)
    sp = float(np.mean(m.GetSpacing()))
    arr = sitk.GetArrayFromImage(m)
    # distance (mm) from each airway voxel to the nearest non-airway voxel centre
    dist = geometry.signed_distance_mm(m == 0)
    dist[arr == 0] = 0.0
    progress.update(0.15, "Finding connected pieces")
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(m, True), sortByObjectSize=True)
    comp = sitk.GetArrayFromImage(cc)
    sizes = np.bincount(comp.ravel())
    n_comp = len(sizes) - 1
    if seed_ras is not None:
        ijk = np.round(geometry.ras_to_ijk(m, np.asarray(seed_ras, float))).astype(int)
        kji = ijk[::-1]
        if np.any(kji < 0) or np.any(kji >= np.array(arr.shape)) or comp[tuple(kji)] == 0:
            raise ImagioError("The trachea seed point lies outside the airway mask",
                              "Place the seed inside the trachea or leave it out for automatic detection")
        main = int(comp[tuple(kji)])
        seed = kji
    else:
        # the trachea is the top of the pieces that hold a real share of the tree
        big = [lab for lab in range(1, n_comp + 1) if sizes[lab] >= 0.1 * sizes[1]]
        tops = []
        for lab in big:
            s = _top_seed(comp, lab, dist, m)
            tops.append((geometry.ijk_to_ras(m, s[::-1].astype(float))[2], lab, s))
        _, main, seed = max(tops, key=lambda t: t[0])
    # cut the main piece at the top of the trachea (first slab, from the top, whose cross-section is
    # at least half the usual one) and start the front from that whole cross-section
    top_kji = _trachea_top(comp, main, m, arr)
    seed = top_kji[int(np.argmax(dist[tuple(top_kji.T)]))]
    # pieces to bridge: near enough to the main piece and not tiny
    main_mask = sitk.GetImageFromArray((comp == main).astype(np.uint8))
    main_mask.CopyInformation(m)
    seeds = [(seed, main, 0.0)]
    faces = [top_kji]
    if n_comp > 1:
        d_main = geometry.signed_distance_mm(main_mask)
        # voxels of every piece at once (one pass, however many pieces a ragged mask has)
        flat = np.flatnonzero(comp)
        labs = comp.ravel()[flat]
        order = np.argsort(labs, kind="stable")
        starts = np.searchsorted(labs[order], np.arange(1, n_comp + 2))
        for lab in range(1, n_comp + 1):
            if lab == main or sizes[lab] < min_fragment_voxels:
                continue
            vox = flat[order[starts[lab - 1]:starts[lab]]]
            kji = np.column_stack(np.unravel_index(vox, comp.shape))
            s, gap, face = _component_seed_near(kji, d_main, max(m.GetSpacing()))
            if gap <= bridge_max_mm:
                seeds.append((s, lab, gap))
                faces.append(face)
    used = {lab for _, lab, _ in seeds}
    disconnected_ml = float(sum(sizes[lab] for lab in range(1, n_comp + 1) if lab not in used)) \
        * geometry.voxel_volume_ml(m)

    progress.update(0.25, "Propagating the front from the trachea")
    speed = sitk.Cast(m, sitk.sitkFloat32)
    fm = sitk.FastMarchingImageFilter()
    trial = [tuple(int(v) for v in p[::-1]) for face in faces for p in face]
    fm.SetTrialPoints(trial)
    fm.SetStoppingValue(1e6)
    geo = sitk.GetArrayFromImage(fm.Execute(speed))
    inside = (arr > 0) & (geo < 1e6) & np.isin(comp, list(used))
    if band_mm is None:
        band_mm = 1.5 * max(m.GetSpacing())
    progress.update(0.45, "Clustering the wave fronts")
    bands = np.zeros(arr.shape, np.uint32)
    bands[inside] = (geo[inside] / band_mm).astype(np.uint32) + 1
    # connected pieces of each band: bands of one parity are never face-neighbours (face neighbours
    # differ by at most one voxel of distance < band_mm), so a face-connected labelling of the even
    # bands and one of the odd bands separate every band; pairing label and band keeps it exact
    flat_idx = np.flatnonzero(inside)
    band_vox = bands.ravel()[flat_idx].astype(np.int64)
    lab = np.zeros(len(flat_idx), np.int64)
    offset = 0
    for parity in (0, 1):
        sel = np.zeros(arr.shape, np.uint8)
        sel.ravel()[flat_idx[band_vox % 2 == parity]] = 1
        cc_par = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(sel), False))
        mine = band_vox % 2 == parity
        lab[mine] = cc_par.ravel()[flat_idx[mine]].astype(np.int64) + offset
        offset = int(lab.max()) + 1
    key = lab * (int(band_vox.max()) + 1) + band_vox
    uniq, node_of_vox = np.unique(key, return_inverse=True)
    n_nodes = len(uniq)
    band_of_node = np.zeros(n_nodes, np.int64)
    band_of_node[node_of_vox] = bands.ravel()[flat_idx]
    comp_of_node = np.zeros(n_nodes, np.int64)
    comp_of_node[node_of_vox] = comp.ravel()[flat_idx]
    kji = np.column_stack(np.unravel_index(flat_idx, arr.shape)).astype(float)
    cnt = np.bincount(node_of_vox, minlength=n_nodes).astype(float)
    cen = np.column_stack([np.bincount(node_of_vox, weights=kji[:, a], minlength=n_nodes) for a in range(3)]) / cnt[:, None]
    dvox = dist.ravel()[flat_idx]
    order = np.lexsort((dvox, node_of_vox))
    last = np.r_[np.flatnonzero(np.diff(node_of_vox[order])), len(order) - 1]
    best_vox = order[last]                       # most central voxel of each node
    rmax = dvox[best_vox]
    # centroid unless it falls outside the airway, then the most central voxel
    cen_r = np.clip(np.round(cen).astype(int), 0, np.array(arr.shape) - 1)
    outside = arr[tuple(cen_r.T)] == 0
    cen[outside] = kji[best_vox[outside]]
    progress.update(0.6, "Linking the fronts")
    # adjacency between nodes of consecutive bands (26-neighbourhood)
    shape = np.array(arr.shape)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    node_map = np.full(arr.size, -1, np.int64)
    node_map[flat_idx] = node_of_vox
    pa, pb = [], []
    for off in _HALF26:
        nb = flat_idx + int(np.dot(off, strides))  # padding keeps neighbours inside the array
        ok = (nb >= 0) & (nb < arr.size)
        a = node_of_vox[ok]
        b = node_map[nb[ok]]
        keep = (b >= 0) & (b != a)
        pa.append(a[keep])
        pb.append(b[keep])
    pa = np.concatenate(pa)
    pb = np.concatenate(pb)
    # orient so that pa is in the lower band
    swap = band_of_node[pa] > band_of_node[pb]
    pa, pb = np.where(swap, pb, pa), np.where(swap, pa, pb)
    step = band_of_node[pb] - band_of_node[pa]
    sel = step >= 1
    pa, pb, step = pa[sel], pb[sel], step[sel]
    # parent of each node: touching node of the previous band with most contacts (then any lower band)
    parent = np.full(n_nodes, -1, np.int64)
    if len(pa):
        key = pb * n_nodes + pa
        ukey, contact = np.unique(key, return_counts=True)
        kb, ka = ukey // n_nodes, ukey % n_nodes
        kstep = band_of_node[kb] - band_of_node[ka]
        score = contact - 1e6 * (kstep - 1)      # prefer the directly previous band
        o = np.lexsort((score, kb))
        lastb = np.r_[np.flatnonzero(np.diff(kb[o])), len(o) - 1]
        parent[kb[o[lastb]]] = ka[o[lastb]]
    roots_seed = {}
    for s, c, gap in seeds:
        roots_seed[c] = (s, gap)
    pts_ijk = cen[:, ::-1]
    pts_ras = geometry.ijk_to_ras(m, pts_ijk)
    # lumen radius: the radius of a disc with the front's cross-section area (volume / band), kept
    # between the largest inscribed distance and one voxel more (junctions and tips are not discs)
    vox_mm3 = float(np.prod(m.GetSpacing()))
    r_area = np.sqrt(cnt * vox_mm3 / (np.pi * band_mm))
    radius = np.clip(r_area, rmax, rmax + sp)
    # nodes without a parent: the seeds' first bands; others (rare) are attached to the nearest lower node
    seed_node = {}
    for c, (s, _gap) in roots_seed.items():
        seed_node[c] = int(node_map[np.ravel_multi_index(tuple(s), arr.shape)])
    for n in np.flatnonzero(parent < 0):
        c = comp_of_node[n]
        if seed_node.get(c) == n:
            continue
        cand = np.flatnonzero((comp_of_node == c) & (band_of_node < band_of_node[n]))
        if len(cand):
            parent[n] = cand[np.argmin(np.linalg.norm(pts_ras[cand] - pts_ras[n], axis=1))]
    progress.update(0.7, "Building branches")
    main_root = seed_node[main]
    # bridge the other pieces: their seed node hangs from the nearest node of the tree
    bridges = []
    tree_nodes = np.flatnonzero(comp_of_node == main)
    for c, (_s, gap) in roots_seed.items():
        if c == main:
            continue
        r = seed_node[c]
        near = tree_nodes[np.argmin(np.linalg.norm(pts_ras[tree_nodes] - pts_ras[r], axis=1))]
        parent[r] = near
        bridges.append({"from_node": int(near), "to_node": int(r), "gap_mm": float(gap)})
    # break any cycle defensively (cannot happen with strictly increasing bands, but bounded anyway)
    parent = _break_cycles(parent, main_root)
    keep = _reachable(parent, main_root)
    tree = _build_tree(pts_ras, radius, parent, keep, main_root, sp, min_branch_mm, prune_factor, bridges)
    tree.n_components = n_comp
    tree.disconnected_volume_ml = disconnected_ml
    name_branches(tree)
    progress.update(1.0, f"{tree.n_branches} branches")
    return tree


def _break_cycles(parent: np.ndarray, root: int) -> np.ndarray:
    parent = parent.copy()
    parent[root] = -1
    state = np.zeros(len(parent), np.int8)  # 0 unknown, 1 ok
    state[root] = 1
    for n in range(len(parent)):
        path = []
        cur = n
        seen = set()
        while cur >= 0 and state[cur] == 0 and cur not in seen and len(path) <= len(parent):
            seen.add(cur)
            path.append(cur)
            cur = int(parent[cur])
        if cur >= 0 and cur in seen:
            parent[cur] = -1  # cut the cycle
        state[path] = 1
    return parent


def _reachable(parent: np.ndarray, root: int) -> np.ndarray:
    children = _children_lists(parent, np.ones(len(parent), bool))
    keep = np.zeros(len(parent), bool)
    stack = [root]
    while stack:
        n = stack.pop()
        if keep[n]:
            continue
        keep[n] = True
        stack.extend(children[n])
    return keep


def _children_lists(parent: np.ndarray, keep: np.ndarray) -> list[list[int]]:
    children: list[list[int]] = [[] for _ in range(len(parent))]
    for n in np.flatnonzero(keep & (parent >= 0)):
        if keep[parent[n]]:
            children[int(parent[n])].append(int(n))
    return children


def _chains(parent, keep, root, children):
    """Branches as node chains: (parent_branch_index, [junction node, nodes...])."""
    chains = []
    stack = [(None, root, None)]
    while stack:
        pbranch, start, junction = stack.pop()
        chain = [] if junction is None else [junction]
        cur = start
        for _ in range(len(parent)):
            chain.append(cur)
            ch = children[cur]
            if len(ch) != 1:
                break
            cur = ch[0]
        idx = len(chains)
        chains.append((pbranch, chain))
        for c in children[chain[-1]]:
            stack.append((idx, c, chain[-1]))
    return chains


def _build_tree(pts, radius, parent, keep, root, sp, min_branch_mm, prune_factor, bridges) -> AirwayTree:
    keep = keep.copy()
    bridged_nodes = {b["to_node"] for b in bridges}
    for _ in range(50):  # pruning rounds, bounded
        children = _children_lists(parent, keep)
        chains = _chains(parent, keep, root, children)
        removed = False
        has_child = {pb for pb, _ in chains if pb is not None}
        for bi, (pb, chain) in enumerate(chains):
            if pb is None or bi in has_child:
                continue
            if any(n in bridged_nodes for n in chain[1:]):
                continue
            seg = np.linalg.norm(np.diff(pts[chain], axis=0), axis=1).sum()
            jr = radius[chain[0]]
            # what sticks out of the parent's lumen must be longer than the parent is wide (half);
            # a thin short leaf on a wide airway (a third of its radius, shorter than 3 radii) is a bump
            r_leaf = float(np.median(radius[chain[1:]]))
            if seg - jr < max(min_branch_mm, prune_factor * jr) or (r_leaf < 0.3 * jr and seg < 3.0 * jr):
                keep[chain[1:]] = False
                removed = True
        if not removed:
            break
    children = _children_lists(parent, keep)
    chains = _chains(parent, keep, root, children)
    branch_of = np.full(len(parent), -1, np.int64)
    branches: list[Branch] = []
    for bi, (pb, chain) in enumerate(chains):
        gen = 0 if pb is None else branches[pb].generation + 1
        br = Branch(id=bi, parent=pb, generation=gen, nodes=list(chain),
                    points_ras=pts[chain].copy(), radius_mm=radius[chain].copy())
        for b in bridges:
            if b["to_node"] in chain[1:2]:
                br.bridged_gap_mm = b["gap_mm"]
        branches.append(br)
        if pb is not None:
            branches[pb].children.append(bi)
        owned = chain if pb is None else chain[1:]
        branch_of[owned] = bi
    _assign_generations(branches)
    # node arrays restricted to kept nodes, re-indexed
    old = np.flatnonzero(keep)
    new_id = np.full(len(parent), -1, np.int64)
    new_id[old] = np.arange(len(old))
    new_parent = np.where(parent[old] >= 0, new_id[np.maximum(parent[old], 0)], -1)
    for br in branches:
        br.nodes = [int(new_id[n]) for n in br.nodes]
    new_bridges = [{"from_node": int(new_id[b["from_node"]]), "to_node": int(new_id[b["to_node"]]),
                    "gap_mm": b["gap_mm"]} for b in bridges if keep[b["to_node"]]]
    return AirwayTree(points_ras=pts[old], radius_mm=radius[old], parent=new_parent,
                      branch_of=branch_of[old], branches=branches, root=int(new_id[root]),
                      spacing_mm=sp, bridges=new_bridges)


def _is_connector(b: Branch) -> bool:
    """A very short inner branch (two bifurcations closer than half a lumen radius): one split."""
    return bool(b.children) and b.length_mm < max(2.0, 0.5 * float(b.radius_mm[0]))


def effective_children(branches: list[Branch], b: Branch) -> list[int]:
    """Children of ``b``, looking through connectors (their children count as ``b``'s)."""
    out, stack = [], list(b.children)
    for _ in range(len(branches)):
        if not stack:
            break
        c = stack.pop(0)
        if _is_connector(branches[c]):
            stack.extend(branches[c].children)
        else:
            out.append(c)
    return out


def _assign_generations(branches: list[Branch]) -> None:
    """Generation = number of bifurcations above a branch. Connectors do not count; on the trachea,
    a junction whose other children are all short leaves (stubs shorter than max(10 mm, 3 junction
    radii): larynx, ragged top) keeps the trachea at generation 0 and the stubs count one more."""
    sub = [0.0] * len(branches)
    for b in reversed(branches):  # children come after their parents
        sub[b.id] = b.length_mm + sum(sub[c] for c in b.children)
    for b in branches:
        if b.parent is None:
            b.generation = 0
        if not b.children or (b.parent is not None and _is_connector(b)):
            continue
        kids = sorted(effective_children(branches, b), key=lambda c: -sub[c])
        jr = float(b.radius_mm[-1])
        # stubs only on the trachea (no real branch leaves it before the carina)
        stubs = b.generation == 0 and all(not branches[c].children and sub[c] < max(10.0, 3.0 * jr)
                                          for c in kids[1:])
        for n, c in enumerate(kids):
            branches[c].generation = b.generation + (0 if (n == 0 and stubs) else 1)
            p = branches[c].parent  # connectors between b and c
            for _ in range(len(branches)):
                if p is None or p == b.id:
                    break
                branches[p].generation = b.generation + 1
                p = branches[p].parent


# ----------------------------------------------------------------------------- names

def _direction(b: Branch) -> np.ndarray:
    p = b.points_ras
    d = p[-1] - p[0]
    n = np.linalg.norm(d)
    return d / n if n > 0 else d


def _subtree_length(tree: AirwayTree, bid: int) -> float:
    total, stack = 0.0, [bid]
    for _ in range(len(tree.branches)):
        if not stack:
            break
        b = tree.branches[stack.pop()]
        total += b.length_mm
        stack.extend(b.children)
    return total


def name_branches(tree: AirwayTree) -> None:
    """Anatomical names where the topology and directions agree: trachea, main bronchi, lobar bronchi.

    Conservative: a lobar name is given only when the split looks like the textbook one (the trunk
    that carries the larger subtree continues; the side branch points the expected way), else the
    branch stays unnamed.
    """
    if not tree.branches:
        return
    br = tree.branches
    # the trachea runs down to the first junction where the tree really splits (stubs of the
    # larynx or of a ragged segmentation on the way keep its generation 0)
    trachea = br[0]
    for _ in range(len(br)):
        trachea.name = "trachea"
        cont = [br[c] for c in effective_children(br, trachea) if br[c].generation == trachea.generation]
        if not cont:
            break
        trachea = cont[0]
    kids = sorted((br[c] for c in effective_children(br, trachea)), key=lambda b: -_subtree_length(tree, b.id))[:2]
    if len(kids) != 2:
        return
    carina_r = trachea.points_ras[-1][0]
    left, right = sorted(kids, key=lambda b: b.points_ras[-1][0])  # by R coordinate of the end
    if not (left.points_ras[-1][0] < carina_r < right.points_ras[-1][0]):
        return
    left.name, right.name = "left main bronchus", "right main bronchus"

    def split(parent: Branch):
        """(trunk, side): the child carrying the largest subtree and the next largest, when that one
        carries at least 8 % of the tree below the parent (small stubs are no lobar bronchi)."""
        ch = sorted((br[c] for c in effective_children(br, parent)), key=lambda b: -_subtree_length(tree, b.id))
        if len(ch) < 2:
            return None
        below = sum(_subtree_length(tree, b.id) for b in ch)
        if _subtree_length(tree, ch[1].id) < 0.08 * below:
            return None
        return ch[0], ch[1]

    sp = split(right)
    if sp is not None:
        trunk, side = sp
        if _direction(side)[2] > _direction(trunk)[2] + 0.3 and _direction(trunk)[2] < 0.0:
            side.name, trunk.name = "right upper lobe bronchus", "bronchus intermedius"
            sp2 = split(trunk)
            if sp2 is not None:
                lower, middle = sp2
                if _direction(middle)[1] > _direction(lower)[1] + 0.2 and _direction(lower)[2] < 0.0:
                    middle.name, lower.name = "right middle lobe bronchus", "right lower lobe bronchus"
    sp = split(left)
    if sp is not None:
        a, b = sorted(sp, key=lambda x: _direction(x)[2])
        if _direction(b)[2] - _direction(a)[2] > 0.3 and _direction(a)[2] < 0.0:
            b.name, a.name = "left upper lobe bronchus", "left lower lobe bronchus"
