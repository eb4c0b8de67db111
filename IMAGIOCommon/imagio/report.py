"""Reports a clinician reads: ``report.html`` (self-contained), ``report.pdf`` and CSV tables.

A :class:`Report` holds a verdict (shown first), sections of metrics (name, value, unit),
figures with captions, and tables (also written as CSV). Pictures are made here:

* :func:`slice_figure`: a CT slice with coloured masks (outline + translucent fill), markers and
  polylines (a route), cropped to the region that matters, with orientation letters from the
  slice's own axes, a scale bar, the slice position in RAS mm, the window (C/W in HU) and a
  colour legend. Radiological convention: patient right on the image's left (axial, coronal).
* :func:`render_3d`: surfaces (optionally coloured by a per-point scalar with a colour bar),
  lines and points rendered offscreen with VTK (EGL without a display), seen from the front.
* :func:`histogram_figure`: a histogram with its unit on the axis.

Pictures and PDF are drawn with matplotlib's Agg and PDF backends (object API, no pyplot, no
global state). matplotlib comes with every pip install of IMAGIO, because the ``vtk`` wheel
requires it; inside the Slicer application it is not bundled, and where it is missing the
report is written as HTML without pictures and without PDF, and says so.

``report.html`` embeds its pictures as ``data:`` URIs, so it can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io as _io
import logging
import math
import os
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .geometry import centroid_ras, ijk_to_ras, lps_to_ras, ras_to_lps

log = logging.getLogger(__name__)

#: CT windows (centre, width) in HU.
WINDOWS = {"soft tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "liver": (60.0, 180.0), "bone": (400.0, 1800.0),
           "mediastinum": (50.0, 350.0)}

#: Verdict levels -> colours (background, border).
LEVELS = {"ok": ("#e6f4ea", "#1e7b34"), "warn": ("#fff4e0", "#b36b00"), "bad": ("#fde8e8", "#b3261e"),
          "info": ("#e8f0fe", "#1a56b3")}

_AXES = {  # (u, v, w) in LPS: columns, rows (downwards), normal
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])),
    "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, 1.0, 0])),
    "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), np.array([-1.0, 0, 0])),
}


# ============================================================================================ figures
@dataclass
class Figure:
    """A picture of a report: PNG bytes, a caption (what is shown, with units) and a title."""

    png: bytes
    caption: str = ""
    title: str = ""
    name: str = "figure"

    def save(self, path) -> Path:
        p = Path(path)
        p.write_bytes(self.png)
        return p

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    def array(self) -> np.ndarray:
        return _png_to_array(self.png)

    @classmethod
    def from_file(cls, path, caption: str = "", title: str = "") -> Figure:
        p = Path(path)
        return cls(p.read_bytes(), caption, title, p.stem)


@dataclass
class Overlay:
    """A mask drawn on a slice: outline + translucent fill, with its legend label."""

    mask: sitk.Image
    color: tuple[float, float, float]
    label: str = ""
    fill_opacity: float = 0.3


@dataclass
class Marker:
    """A point drawn on a slice (when it lies within the slice's thickness) or in 3D."""

    point_ras: np.ndarray
    label: str = ""
    color: tuple[float, float, float] = (0.1, 1.0, 0.1)


@dataclass
class Polyline:
    """A line through RAS points (a route, a probe). On a slice: its projection dashed, solid near the plane."""

    points_ras: np.ndarray
    label: str = ""
    color: tuple[float, float, float] = (1.0, 0.85, 0.1)
    width: float = 2.0


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _new_figure(width_in: float, height_in: float, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig, dpi: int = 100) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buf.getvalue()


def _png_to_array(png: bytes) -> np.ndarray:
    from matplotlib import image as mpimg

    return mpimg.imread(_io.BytesIO(png), format="png")


def orientation_letter(direction_lps) -> str:
    """The patient direction ('R', 'L', 'A', 'P', 'S', 'I') closest to an LPS direction vector."""
    d = lps_to_ras(np.asarray(direction_lps, float))
    axis = int(np.argmax(np.abs(d)))
    return ("RL", "AP", "SI")[axis][0 if d[axis] > 0 else 1]


def _nice_length(target_mm: float) -> float:
    for v in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500):
        if v >= target_mm:
            return float(v)
    return 1000.0


def _plane_geometry(image: sitk.Image, point_ras, axis: str, roi=(), pad_mm: float = 15.0,
                    min_fov_mm: float = 50.0, size_px: int = 512):
    """Origin (LPS, top-left corner), u/v/w axes, pixel size and pixel counts of a slice plane.

    Without ``roi`` the plane covers the image's physical extent; with ``roi`` (masks and/or RAS
    points) it covers their extent on the plane, padded by ``pad_mm``, at least ``min_fov_mm``.
    """
    if axis not in _AXES:
        raise ValueError(f"axis must be axial, coronal or sagittal, not {axis}")
    u, v, w = _AXES[axis]
    p = ras_to_lps(np.asarray(point_ras, float))
    size = np.array(image.GetSize()) - 1
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
                        for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    cu, cv = (corners - p) @ u, (corners - p) @ v
    full = (cu.min(), cu.max(), cv.min(), cv.max())
    if roi:
        pts = []
        for item in roi:
            if isinstance(item, sitk.Image):
                kji = np.argwhere(sitk.GetArrayViewFromImage(item) > 0)
                if len(kji):
                    lo, hi = kji.min(axis=0)[::-1], kji.max(axis=0)[::-1]
                    box = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])],
                                   float)
                    pts.extend(item.TransformContinuousIndexToPhysicalPoint([float(x) for x in q]) for q in box)
            else:
                arr = np.atleast_2d(np.asarray(item, float))
                pts.extend(ras_to_lps(arr))
        if pts:
            pts = np.asarray(pts, float)
            ru, rv = (pts - p) @ u, (pts - p) @ v
            lo_u, hi_u, lo_v, hi_v = ru.min() - pad_mm, ru.max() + pad_mm, rv.min() - pad_mm, rv.max() + pad_mm
            side = max(hi_u - lo_u, hi_v - lo_v, min_fov_mm)
            cu0, cv0 = 0.5 * (lo_u + hi_u), 0.5 * (lo_v + hi_v)
            lo_u, hi_u, lo_v, hi_v = cu0 - side / 2, cu0 + side / 2, cv0 - side / 2, cv0 + side / 2
            # keep inside the image where the image is large enough
            for lo_name in ("u", "v"):
                lo, hi = (lo_u, hi_u) if lo_name == "u" else (lo_v, hi_v)
                flo, fhi = (full[0], full[1]) if lo_name == "u" else (full[2], full[3])
                if hi - lo <= fhi - flo:
                    shift = max(flo - lo, 0.0) - max(hi - fhi, 0.0)
                    lo, hi = lo + shift, hi + shift
                if lo_name == "u":
                    lo_u, hi_u = lo, hi
                else:
                    lo_v, hi_v = lo, hi
            full = (lo_u, hi_u, lo_v, hi_v)
    ext_u, ext_v = full[1] - full[0], full[3] - full[2]
    pix = max(ext_u, ext_v) / max(int(size_px), 16)
    pix = pix if pix > 0 else float(min(image.GetSpacing()))
    nu, nv = int(round(ext_u / pix)) + 1, int(round(ext_v / pix)) + 1
    origin = p + full[0] * u + full[2] * v
    return origin, u, v, w, pix, nu, nv, p


def _plane_image(origin, u, v, w, pix, nu, nv) -> sitk.Image:
    ref = sitk.Image([nu, nv, 1], sitk.sitkFloat32)
    ref.SetSpacing([pix, pix, pix])
    ref.SetOrigin(tuple(float(x) for x in origin))
    ref.SetDirection(tuple(np.c_[u, v, w].ravel()))
    return ref


def _near_plane(image: sitk.Image, plane: sitk.Image, pad: int = 2) -> sitk.Image:
    """The part of ``image`` around a one-slice ``plane`` grid (what resampling onto it reads), geometry kept."""
    n = np.array(plane.GetSize()) - 1
    corners = [plane.TransformIndexToPhysicalPoint([int(a), int(b), 0]) for a in (0, n[0]) for b in (0, n[1])]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - pad, 0, size - 1)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + pad + 1, lo + 1, size)
    if np.all(lo == 0) and np.all(hi == size):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _default_point(image: sitk.Image, overlays) -> np.ndarray:
    for ov in overlays:
        mask = ov.mask if isinstance(ov, Overlay) else ov[0]
        if np.any(sitk.GetArrayViewFromImage(mask)):
            return centroid_ras(mask)
    return ijk_to_ras(image, (np.array(image.GetSize()) - 1) / 2.0)


def _as_overlays(overlays) -> list[Overlay]:
    out = []
    for ov in overlays:
        if isinstance(ov, Overlay):
            out.append(ov)
        else:
            mask, color, *rest = ov
            out.append(Overlay(mask, tuple(color), rest[0] if rest else ""))
    return out


def _as_markers(markers) -> list[Marker]:
    return [m if isinstance(m, Marker) else Marker(np.asarray(m, float)) for m in markers]


def slice_figure(image: sitk.Image, overlays=(), point_ras=None, axis: str = "axial", window=(40.0, 400.0),
                 markers=(), polylines=(), roi=None, pad_mm: float = 15.0, min_fov_mm: float = 50.0,
                 caption: str = "", title: str = "", size_px: int = 560, unit: str = "HU",
                 name: str = "slice") -> Figure:
    """A slice picture through ``point_ras`` (RAS mm; default: the first overlay's centroid).

    ``overlays``: :class:`Overlay` or (mask, rgb[, label]) tuples; ``markers``: :class:`Marker` or RAS
    points; ``polylines``: :class:`Polyline`; ``roi``: masks and/or RAS points that must fill the
    picture (padded by ``pad_mm``); ``roi=None`` crops to the overlays, ``roi=()`` shows the whole
    image. ``window`` is (centre, width) in ``unit`` (``unit=None``: a blank background, no window shown).
    """
    overlays = _as_overlays(overlays)
    markers = _as_markers(markers)
    if point_ras is None:
        point_ras = _default_point(image, overlays)
    if roi is None:
        roi = [ov.mask for ov in overlays] + [m.point_ras for m in markers]
    origin, u, v, w, pix, nu, nv, p = _plane_geometry(image, point_ras, axis, roi, pad_mm, min_fov_mm, size_px)
    ref = _plane_image(origin, u, v, w, pix, nu, nv)
    grey = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(_near_plane(image, ref), sitk.sitkFloat32), ref,
                                                sitk.Transform(), sitk.sitkLinear, -1024.0))[0]
    c, wd = float(window[0]), float(window[1])
    g = np.clip((grey - (c - wd / 2)) / wd, 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    masks = []
    for ov in overlays:
        m = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(_near_plane(ov.mask, ref), sitk.sitkUInt8), ref,
                                                 sitk.Transform(), sitk.sitkNearestNeighbor, 0))[0] > 0
        masks.append(m)
        if m.any() and ov.fill_opacity > 0:
            col = np.asarray(ov.color, float)
            rgb[m] = (1 - ov.fill_opacity) * rgb[m] + ov.fill_opacity * col
    if not _have_matplotlib():
        return Figure(_rgb_png(rgb), caption, title, name)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    width_mm, height_mm = (nu - 1) * pix, (nv - 1) * pix
    n_items = len(overlays) + len(markers) + len(polylines)
    ncol = 1 if n_items <= 1 else 2 if n_items <= 6 else 3
    legend_rows = (n_items + ncol - 1) // ncol if n_items else 0
    fig_w = 6.0
    img_h = fig_w * height_mm / max(width_mm, 1e-6)
    leg_h = 0.24 * legend_rows + (0.12 if legend_rows else 0)
    fig = _new_figure(fig_w, img_h + leg_h)
    ax = fig.add_axes((0, leg_h / (img_h + leg_h), 1, img_h / (img_h + leg_h)))
    extent = (-0.5 * pix, width_mm + 0.5 * pix, height_mm + 0.5 * pix, -0.5 * pix)
    ax.imshow(rgb, extent=extent, interpolation="nearest")
    xs, ys = np.arange(nu) * pix, np.arange(nv) * pix
    handles = []
    for ov, m in zip(overlays, masks, strict=True):
        if m.any() and m.sum() < m.size:
            ax.contour(xs, ys, m.astype(float), levels=[0.5], colors=[tuple(ov.color)], linewidths=1.6)
        handles.append(Patch(facecolor=tuple(ov.color), edgecolor=tuple(ov.color),
                             label=_short(ov.label or "mask") + ("" if m.any() else " (not in slice)")))
    tol = max(float(max(image.GetSpacing())), pix)
    for pl in polylines:
        pts = ras_to_lps(np.atleast_2d(np.asarray(pl.points_ras, float)))
        pu, pv, pw = (pts - origin) @ u, (pts - origin) @ v, (pts - p) @ w
        ax.plot(pu, pv, linestyle=(0, (4, 3)), color=pl.color, linewidth=pl.width * 0.6, alpha=0.8)
        near = np.abs(pw) <= tol
        seg = np.where(near[:-1] & near[1:])[0]
        for s0 in seg:
            ax.plot(pu[s0:s0 + 2], pv[s0:s0 + 2], color=pl.color, linewidth=pl.width)
        handles.append(Line2D([], [], color=pl.color, linewidth=pl.width, label=_short(pl.label or "line")))
    for mk in markers:
        q = ras_to_lps(np.asarray(mk.point_ras, float))
        mu, mv, mw = (q - origin) @ u, (q - origin) @ v, (q - p) @ w
        shown = abs(mw) <= tol
        if shown:
            ax.plot([mu], [mv], marker="+", markersize=16, markeredgewidth=2.2, color=mk.color)
            ax.plot([mu], [mv], marker="o", markersize=16, markerfacecolor="none", markeredgewidth=1.0,
                    color=mk.color)
        handles.append(Line2D([], [], marker="+", linestyle="", markersize=10, markeredgewidth=2, color=mk.color,
                              label=_short(mk.label or "point") + ("" if shown else f" ({abs(mw):.0f} mm off slice)")))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()
    box = {"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.55, "edgecolor": "none"}
    txt = {"color": "white", "fontsize": 10, "bbox": box}
    ax.text(0.5, 0.985, orientation_letter(-v), transform=ax.transAxes, ha="center", va="top", fontweight="bold", **txt)
    ax.text(0.5, 0.015, orientation_letter(v), transform=ax.transAxes, ha="center", va="bottom", fontweight="bold", **txt)
    ax.text(0.012, 0.5, orientation_letter(-u), transform=ax.transAxes, ha="left", va="center", fontweight="bold", **txt)
    ax.text(0.988, 0.5, orientation_letter(u), transform=ax.transAxes, ha="right", va="center", fontweight="bold", **txt)
    p_ras = lps_to_ras(p)
    coord = {"axial": ("S", 2), "coronal": ("A", 1), "sagittal": ("R", 0)}[axis]
    ax.text(0.015, 0.985, f"{axis.capitalize()}  {coord[0]} = {p_ras[coord[1]]:.1f} mm", transform=ax.transAxes,
            ha="left", va="top", **txt)
    if unit is not None:  # None: no image under the masks, no window to state
        ax.text(0.985, 0.985, f"C {c:g} / W {wd:g} {unit}", transform=ax.transAxes, ha="right", va="top", **txt)
    bar = _nice_length(0.2 * width_mm)
    if bar > 0.6 * width_mm:
        bar = _nice_length(0.1 * width_mm)
    x0, y0 = 0.05 * width_mm, height_mm * 0.94
    ax.plot([x0, x0 + bar], [y0, y0], color="white", linewidth=4, solid_capstyle="butt")
    ax.plot([x0, x0 + bar], [y0, y0], color="black", linewidth=1, solid_capstyle="butt")
    ax.text(x0 + bar / 2, y0 - 0.015 * height_mm, f"{bar:g} mm", ha="center", va="bottom", **txt)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0), handlelength=1.4, columnspacing=1.0, borderaxespad=0.3)
    return Figure(_fig_png(fig), caption, title, name)


def _short(label: str, n: int = 34) -> str:
    label = str(label)
    return label if len(label) <= n else label[:n - 1] + "…"


def slice_png(path, image: sitk.Image, overlays=(), point_ras=None, axis: str = "axial",
              window=(40.0, 400.0), markers_ras=(), fill_opacity: float = 0.3, width_px: int = 512,
              labels=None, roi=None, caption: str = "", polylines=()) -> Path:
    """Write :func:`slice_figure` to ``path`` (PNG); the report embeds it with ``caption`` when given.

    ``overlays`` are (mask, rgb) or (mask, rgb, label); ``labels`` names them when the tuples do not.
    """
    ovs = _as_overlays(overlays)
    for n, ov in enumerate(ovs):
        ov.fill_opacity = fill_opacity
        if labels is not None and n < len(labels) and not ov.label:
            ov.label = labels[n]
    fig = slice_figure(image, ovs, point_ras, axis, window, markers=[Marker(np.asarray(m, float), "marker")
                                                                     for m in markers_ras],
                       polylines=polylines, roi=roi, size_px=width_px, caption=caption)
    path = Path(path)
    fig.save(path)
    if caption:
        _CAPTIONS[str(path.resolve())] = caption
    return path


#: captions given to slice_png, found again when a report embeds the file
_CAPTIONS: dict[str, str] = {}


def _rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB float (0..1) or uint8 array, written with VTK (no matplotlib needed)."""
    arr = (np.clip(rgb, 0, 1) * 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.png"
        _write_png(p, arr)
        return p.read_bytes()


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import vtk
    from vtk.util import numpy_support

    h, w, _ = rgb.shape
    img = vtk.vtkImageData()
    img.SetDimensions(w, h, 1)
    flipped = np.ascontiguousarray(rgb[::-1])  # VTK's first row is the bottom
    arr = numpy_support.numpy_to_vtk(flipped.reshape(-1, 3), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    arr.SetNumberOfComponents(3)
    img.GetPointData().SetScalars(arr)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(img)
    writer.Write()


# ============================================================================================ colour maps
#: The margin colour map (mm -> RGB control points), shared by the 3D picture, its colour bar and
#: the Slicer colour node: dark red = tumour outside the zone, red 0, orange, yellow at the
#: threshold, green above it.
def margin_colormap(threshold_mm: float = 5.0) -> list[tuple[float, float, float, float]]:
    thr = float(threshold_mm)
    top = max(2.0 * thr, 10.0)
    return [(-top, 0.5, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.5 * thr, 1.0, 0.55, 0.0), (thr, 1.0, 1.0, 0.0),
            (1.5 * thr, 0.4, 0.85, 0.2), (top, 0.0, 0.6, 0.2)]


def _mpl_cmap(points):
    from matplotlib.colors import LinearSegmentedColormap

    lo, hi = points[0][0], points[-1][0]
    return LinearSegmentedColormap.from_list("imagio", [((x - lo) / (hi - lo), (r, g, b)) for x, r, g, b in points])


@dataclass
class Surface:
    """A surface for :func:`render_3d` (RAS mm); ``scalars`` names a point array coloured by ``colormap``."""

    polydata: object
    color: tuple[float, float, float] = (0.9, 0.9, 0.9)
    opacity: float = 1.0
    label: str = ""
    scalars: str | None = None
    colormap: list | None = None  # [(value, r, g, b), ...]
    scalar_title: str = ""


#: Where the camera stands (RAS direction from the scene's centre) for each view.
VIEWS = {"anterior": (0, 1, 0), "posterior": (0, -1, 0), "right": (1, 0, 0), "left": (-1, 0, 0),
         "superior": (0, 0, 1), "inferior": (0, 0, -1)}


VIEW_NAMES = {"anterior": "the front", "posterior": "the back", "right": "the patient's right",
              "left": "the patient's left", "superior": "above", "inferior": "below"}


def view_towards(direction_ras) -> str:
    """The view (see :data:`VIEWS`) that looks at the scene from ``direction_ras`` (e.g. the thinnest point's side)."""
    d = np.asarray(direction_ras, float)
    if not np.all(np.isfinite(d)) or np.linalg.norm(d) == 0:
        return "anterior"
    d = d / np.linalg.norm(d)
    return max(VIEWS, key=lambda v: float(np.dot(VIEWS[v], d)))


def crop_to_mask(mask: sitk.Image, pad: int = 2) -> sitk.Image | None:
    """The mask cut to its bounding box (+ ``pad`` voxels), geometry kept (None when it is empty)."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if len(kji) == 0:
        return None
    size = np.array(mask.GetSize())
    lo = np.maximum(kji.min(axis=0)[::-1] - pad, 0)
    hi = np.minimum(kji.max(axis=0)[::-1] + pad + 1, size)
    return sitk.RegionOfInterest(mask, [int(v) for v in hi - lo], [int(v) for v in lo])


def surface_of(mask: sitk.Image, color=(0.9, 0.9, 0.9), opacity: float = 1.0, label: str = "") -> Surface | None:
    """A :class:`Surface` of a mask (None when the mask is empty); computed on the mask's bounding box."""
    from .mrml import mask_to_surface_ras

    small = crop_to_mask(mask)
    if small is None:
        return None
    return Surface(mask_to_surface_ras(small), tuple(color), opacity, label)


def blank_like(mask: sitk.Image) -> sitk.Image:
    """A flat grey image on a mask's grid, to draw masks on when no CT is given."""
    img = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    img.CopyInformation(mask)
    return img


def _render_window(width: int, height: int):
    import vtk

    if os.name == "posix" and not os.environ.get("DISPLAY") and hasattr(vtk, "vtkEGLRenderWindow"):
        win = vtk.vtkEGLRenderWindow()
    else:
        win = vtk.vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(int(width), int(height))
    win.SetMultiSamples(0)  # depth peeling needs it off
    win.SetAlphaBitPlanes(1)
    return win


def render_3d(surfaces=(), polylines=(), markers=(), view: str = "anterior", size=(720, 600), caption: str = "",
              title: str = "", name: str = "view3d", zoom: float = 1.0, focus=None,
              marker_radius_mm: float = 1.2) -> Figure | None:
    """An offscreen VTK picture (from the patient's front by default: patient right on the left).

    Returns None when this machine cannot render offscreen (the report says so instead).
    ``focus``: a surface index or RAS bounds to frame; default all surfaces.
    """
    try:
        return _render_3d(surfaces, polylines, markers, view, size, caption, title, name, zoom, focus,
                          marker_radius_mm)
    except Exception as e:  # noqa: BLE001 - no OpenGL here: the report goes on without the 3D picture
        log.warning("3D picture not rendered: %s", e)
        return None


def _render_3d(surfaces, polylines, markers, view, size, caption, title, name, zoom, focus, marker_radius_mm):
    import vtk
    from vtk.util import numpy_support

    w, h = size
    ren = vtk.vtkRenderer()
    ren.SetBackground(1.0, 1.0, 1.0)
    ren.SetUseDepthPeeling(1)  # translucent shells drawn in the right order
    ren.SetMaximumNumberOfPeels(8)
    bounds = None
    scalar_surface = None
    for n, s in enumerate(surfaces):
        if s is None:
            continue
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(s.polydata)
        if s.scalars and s.colormap:
            ctf = vtk.vtkColorTransferFunction()
            for x, r, g, b in s.colormap:
                ctf.AddRGBPoint(x, r, g, b)
            s.polydata.GetPointData().SetActiveScalars(s.scalars)
            mapper.SetLookupTable(ctf)
            mapper.SetScalarRange(s.colormap[0][0], s.colormap[-1][0])
            mapper.SetScalarModeToUsePointData()
            mapper.ScalarVisibilityOn()
            scalar_surface = s
        else:
            mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*s.color)
        prop.SetOpacity(s.opacity)
        prop.SetSpecular(0.2)
        prop.SetSpecularPower(20)
        ren.AddActor(actor)
        b = np.array(s.polydata.GetBounds(), float)
        if (focus is None or (isinstance(focus, int) and focus == n)) and s.polydata.GetNumberOfPoints() > 0:
            bounds = b if bounds is None else _merge_bounds(bounds, b)
    for pl in polylines:
        pts = np.atleast_2d(np.asarray(pl.points_ras, float))
        if len(pts) < 2:
            continue
        vpts = vtk.vtkPoints()
        vpts.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(pts), deep=True))
        line = vtk.vtkPolyLine()
        line.GetPointIds().SetNumberOfIds(len(pts))
        for i in range(len(pts)):
            line.GetPointIds().SetId(i, i)
        cells = vtk.vtkCellArray()
        cells.InsertNextCell(line)
        poly = vtk.vtkPolyData()
        poly.SetPoints(vpts)
        poly.SetLines(cells)
        tube = vtk.vtkTubeFilter()
        tube.SetInputData(poly)
        tube.SetRadius(max(pl.width * 0.6, 0.8))
        tube.SetNumberOfSides(12)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(tube.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*pl.color)
        ren.AddActor(actor)
    for mk in _as_markers(markers):
        sph = vtk.vtkSphereSource()
        sph.SetCenter(*[float(x) for x in mk.point_ras])
        sph.SetRadius(marker_radius_mm)
        sph.SetThetaResolution(24)
        sph.SetPhiResolution(24)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(sph.GetOutputPort())
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*mk.color)
        ren.AddActor(actor)
    if focus is not None and not isinstance(focus, int):
        bounds = np.asarray(focus, float)
    if bounds is None:
        ren.ResetCamera()
    else:
        cam = ren.GetActiveCamera()
        centre = 0.5 * (bounds[::2] + bounds[1::2])
        direction = VIEWS[view]
        up = (0, 0, 1) if view not in ("superior", "inferior") else (0, 1, 0)
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre + 500.0 * np.asarray(direction, float)))
        cam.SetViewUp(*up)
        ren.ResetCamera(*bounds)
        cam.Zoom(zoom)
    ren.ResetCameraClippingRange()
    win = _render_window(w, h)
    win.AddRenderer(ren)
    win.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(win)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    img = grab.GetOutput()
    dims = img.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[1], dims[0], -1)[::-1, :, :3]
    win.Finalize()
    rgb = np.ascontiguousarray(rgb)
    if not _have_matplotlib():
        return Figure(_rgb_png(rgb), caption, title, name)
    return _decorate_3d(rgb, surfaces, polylines, markers, view, scalar_surface, caption, title, name, bounds, ren)


def _merge_bounds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(6)
    out[0::2] = np.minimum(a[0::2], b[0::2])
    out[1::2] = np.maximum(a[1::2], b[1::2])
    return out


def _decorate_3d(rgb, surfaces, polylines, markers, view, scalar_surface, caption, title, name, bounds, ren):
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    h, w, _ = rgb.shape
    surfaces = [s for s in surfaces if s is not None]
    handles = [Patch(facecolor=s.color, edgecolor="#555", label=s.label) for s in surfaces
               if s.label and not (s.scalars and s.colormap)]
    handles += [Line2D([], [], color=pl.color, linewidth=3, label=pl.label) for pl in polylines if pl.label]
    handles += [Line2D([], [], marker="o", linestyle="", color=m.color, label=m.label)
                for m in _as_markers(markers) if m.label]
    cbar_w = 1.0 if scalar_surface is not None else 0.0
    fig_w = 6.0 + cbar_w
    img_h = 6.0 * h / w
    ncol = 1 if len(handles) <= 1 else 2 if len(handles) <= 6 else 3
    leg_h = 0.26 * ((len(handles) + ncol - 1) // ncol) + 0.12 if handles else 0.0
    fig = _new_figure(fig_w, img_h + leg_h)
    ax = fig.add_axes((0, leg_h / (img_h + leg_h), 6.0 / fig_w, img_h / (img_h + leg_h)))
    ax.imshow(rgb)
    ax.set_axis_off()
    letters = {"anterior": ("R", "L", "S", "I"), "posterior": ("L", "R", "S", "I"), "right": ("P", "A", "S", "I"),
               "left": ("A", "P", "S", "I"), "superior": ("L", "R", "A", "P"), "inferior": ("R", "L", "A", "P")}[view]
    box = {"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.55, "edgecolor": "none"}
    txt = {"color": "white", "fontsize": 10, "fontweight": "bold", "bbox": box, "transform": ax.transAxes}
    ax.text(0.012, 0.5, letters[0], ha="left", va="center", **txt)
    ax.text(0.988, 0.5, letters[1], ha="right", va="center", **txt)
    ax.text(0.5, 0.985, letters[2], ha="center", va="top", **txt)
    ax.text(0.5, 0.015, letters[3], ha="center", va="bottom", **txt)
    ax.text(0.015, 0.985, f"3D, seen from {VIEW_NAMES[view]}", ha="left", va="top",
            **{k: v for k, v in txt.items() if k != "fontweight"})
    # scale bar from the camera's parallel-projection-free estimate: world size of the view at the focal plane
    cam = ren.GetActiveCamera()
    dist = cam.GetDistance()
    view_h_mm = 2.0 * dist * math.tan(math.radians(cam.GetViewAngle() / 2.0))
    mm_per_px = view_h_mm / h
    bar = _nice_length(0.2 * w * mm_per_px)
    bar_px = bar / mm_per_px
    x0, y0 = 0.05 * w, 0.94 * h
    ax.plot([x0, x0 + bar_px], [y0, y0], color="black", linewidth=4, solid_capstyle="butt")
    ax.text(x0 + bar_px / 2, y0 - 0.015 * h, f"{bar:g} mm (at the centre depth)", ha="center", va="bottom",
            fontsize=8.5, color="black")
    if scalar_surface is not None:
        cm = scalar_surface.colormap
        cax = fig.add_axes((6.15 / fig_w, 0.15 * img_h / (img_h + leg_h) + leg_h / (img_h + leg_h),
                            0.22 / fig_w, 0.7 * img_h / (img_h + leg_h)))
        cb = ColorbarBase(cax, cmap=_mpl_cmap(cm), norm=Normalize(cm[0][0], cm[-1][0]), orientation="vertical")
        cb.set_label(scalar_surface.scalar_title or scalar_surface.scalars, fontsize=9)
        cb.ax.tick_params(labelsize=8)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5 * 6.0 / fig_w, 0.0), borderaxespad=0.3)
    return Figure(_fig_png(fig), caption, title, name)


# ============================================================================================ plots
def histogram_figure(values, bins=20, xlabel: str = "value", weights=None, ylabel: str = "count",
                     vline: float | None = None, vline_label: str = "", caption: str = "", title: str = "",
                     color: str = "#3b7dd8", name: str = "histogram") -> Figure | None:
    """A histogram; ``xlabel`` (and ``ylabel`` with ``weights``) must name the unit, e.g. 'margin (mm)'."""
    if not _have_matplotlib():
        return None
    values = np.asarray(values, float)
    ok = np.isfinite(values)
    fig = _new_figure(6.0, 3.0)
    ax = fig.add_axes((0.12, 0.2, 0.84, 0.72))
    if np.isscalar(bins) or len(np.atleast_1d(bins)) == 1:
        nb = int(np.atleast_1d(bins)[0])
    else:
        nb = np.asarray(bins, float)
    ax.hist(values[ok], bins=nb, weights=None if weights is None else np.asarray(weights, float)[ok], color=color,
            edgecolor="white")
    if vline is not None:
        ax.axvline(vline, color="#c00", linestyle="--", linewidth=1.5)
        if vline_label:  # above the tallest bar, on white: readable wherever the line falls
            top = ax.get_ylim()[1]
            ax.set_ylim(0.0, top * 1.15)
            ax.text(vline, top * 1.13, " " + vline_label, color="#c00", va="top", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    return Figure(_fig_png(fig), caption, title, name)


class SvgPlot(str):
    """An inline SVG that also remembers its data, so the PDF can draw the same plot."""

    spec: dict


def histogram_svg(values, bins=20, xlabel: str = "value", width: int = 480, height: int = 240,
                  color: str = "#3b7dd8", vline: float | None = None, vline_label: str = "") -> str:
    """An inline SVG histogram; ``xlabel`` must name the unit, e.g. 'margin (mm)'."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "<p>(no values)</p>"
    counts, edges = np.histogram(values, bins=bins)
    ml, mb, mr, mt = 50, 40, 10, 10
    pw, ph = width - ml - mr, height - mt - mb
    cmax = max(int(counts.max()), 1)
    x0, x1 = float(edges[0]), float(edges[-1]) if edges[-1] > edges[0] else float(edges[0]) + 1

    def sx(v):
        return ml + (v - x0) / (x1 - x0) * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             f'font-family="sans-serif">']
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        hh = c / cmax * ph
        parts.append(f'<rect x="{sx(a):.1f}" y="{mt + ph - hh:.1f}" width="{max(sx(b) - sx(a) - 1, 1):.1f}" '
                     f'height="{hh:.1f}" fill="{color}"/>')
    parts.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="black"/>')
    parts.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>')
    for t in np.linspace(x0, x1, 5):
        parts.append(f'<text x="{sx(t):.1f}" y="{mt + ph + 14}" text-anchor="middle">{t:.3g}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end">{cmax}</text>')
    parts.append(f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{mt + ph / 2:.1f}" transform="rotate(-90 12 {mt + ph / 2:.1f})" '
                 f'text-anchor="middle">count</text>')
    if vline is not None and x0 <= vline <= x1:
        parts.append(f'<line x1="{sx(vline):.1f}" y1="{mt}" x2="{sx(vline):.1f}" y2="{mt + ph}" stroke="red" '
                     f'stroke-dasharray="4 3"/><text x="{sx(vline) + 3:.1f}" y="{mt + 10}" fill="red">'
                     f'{html.escape(vline_label)}</text>')
    parts.append("</svg>")
    out = SvgPlot("".join(parts))
    out.spec = {"values": values, "bins": bins, "xlabel": xlabel, "vline": vline, "vline_label": vline_label,
                "color": color}
    return out


# ============================================================================================ the report
@dataclass
class Table:
    """A table of a report, also written as ``<name>.csv``."""

    name: str
    rows: list[dict]
    title: str = ""
    #: rows shown in the HTML/PDF (all of them are in the CSV)
    max_rows: int = 30


@dataclass
class Section:
    title: str
    metrics: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    text: str = ""
    svgs: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    verdict: tuple[str, str] | None = None  # (text, level) of this step


class Report:
    """A report: a verdict first, then sections (metrics with units, figures with captions, tables)."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.verdicts: list[tuple[str, str]] = []  # (text, level), shown first
        self.sections: list[Section] = []
        self.notes: list[str] = []
        self.created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")

    # ---------------------------------------------------------------- building
    def set_verdict(self, text: str, level: str = "info") -> None:
        """The verdict shown first (replaces earlier ones)."""
        self.verdicts = [(str(text), _level(level))]

    def add_verdict(self, text: str, level: str = "info") -> None:
        """One more verdict line (the demo has one per step)."""
        self.verdicts.append((str(text), _level(level)))

    @property
    def verdict(self) -> tuple[str, str] | None:
        return self.verdicts[0] if self.verdicts else None

    def add_section(self, title: str, metrics=(), images=(), text: str = "", svgs=(), figures=(), tables=(),
                    notes=(), verdict: tuple[str, str] | None = None) -> Section:
        """A section; ``images`` are PNG paths (embedded), ``figures`` :class:`Figure` objects."""
        for m in metrics:
            if len(m) != 3:
                raise ValueError(f"metric {m!r} must be (name, value, unit)")
        figs = [f for f in figures if f is not None]
        for img in images:
            p = Path(img)
            figs.append(Figure.from_file(p, _CAPTIONS.get(str(p.resolve()), "")))
        sec = Section(title, list(metrics), figs, text, list(svgs), list(tables), list(notes), verdict)
        self.sections.append(sec)
        return sec

    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables]

    # ---------------------------------------------------------------- writing
    def write(self, out_dir, stem: str = "report", csv_tables: bool = True) -> list[Path]:
        """``<stem>.html``, ``<stem>.pdf`` (when matplotlib is there), ``metrics.csv`` and one CSV per table."""
        out = Path(out_dir)
        files = []
        if not _have_matplotlib():
            note = ("matplotlib is not installed here: the pictures lack their labels (orientation letters, scale bar, "
                    "legend) and no PDF was written (pip install matplotlib)")
            if note not in self.notes:
                self.notes.append(note)
        if csv_tables:
            files += self.write_csv(out)
        files.append(self.write_html(out / f"{stem}.html", csv_files=[f.name for f in files]))
        pdf = self.write_pdf(out / f"{stem}.pdf")
        if pdf is not None:
            files.append(pdf)
        return files

    def save_figures(self, folder) -> list[Path]:
        """Every figure also as ``<folder>/<name>.png`` (names made unique)."""
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        used, out = set(), []
        for sec in self.sections:
            for f in sec.figures:
                name = _safe_name(f.name)
                stem, n = name, 2
                while name in used:
                    name, n = f"{stem}_{n}", n + 1
                used.add(name)
                out.append(f.save(d / f"{name}.png"))
        return out

    def write_csv(self, out_dir) -> list[Path]:
        out = Path(out_dir)
        files = []
        rows = [{"section": s.title, "quantity": n, "value": _csv_value(v), "unit": u}
                for s in self.sections for n, v, u in s.metrics]
        if rows:
            files.append(_write_csv(out / "metrics.csv", rows))
        used = {"metrics"}
        for t in self.tables():
            name = _safe_name(t.name)
            while name in used:
                name += "_"
            used.add(name)
            if t.rows:
                files.append(_write_csv(out / f"{name}.csv", t.rows))
        return files

    def write_html(self, path, csv_files=()) -> Path:
        path = Path(path)
        e = html.escape
        out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
               "<meta name='viewport' content='width=device-width, initial-scale=1'>",
               f"<title>{e(self.title)}</title><style>", _CSS, "</style></head><body>",
               f"<header><h1>{e(self.title)}</h1>"]
        if self.subtitle:
            out.append(f"<p class='sub'>{e(self.subtitle)}</p>")
        out.append(f"<p class='sub'>Written {e(self.created)} by IMAGIO {e(_version())}. Research software, not "
                   "for clinical decisions.</p></header>")
        if self.verdicts:
            out.append("<section class='verdicts'>")
            for text, level in self.verdicts:
                out.append(f"<div class='verdict {level}'>{e(text)}</div>")
            out.append("</section>")
        out.append("<nav><b>Contents</b>: " + " &middot; ".join(
            f"<a href='#s{n}'>{e(s.title)}</a>" for n, s in enumerate(self.sections)) + "</nav>")
        for n, s in enumerate(self.sections):
            out.append(f"<section id='s{n}'><h2>{e(s.title)}</h2>")
            if s.verdict:
                out.append(f"<div class='verdict {_level(s.verdict[1])} small'>{e(s.verdict[0])}</div>")
            if s.text:
                out.append(f"<p>{e(s.text)}</p>")
            if s.metrics:
                out.append("<table class='metrics'><tr><th>quantity</th><th>value</th><th>unit</th></tr>")
                for name, value, unit in s.metrics:
                    out.append(f"<tr><td>{e(str(name))}</td><td class='v'>{e(_fmt(value))}</td>"
                               f"<td>{e(str(unit))}</td></tr>")
                out.append("</table>")
            if s.figures:
                out.append("<div class='figs'>")
                for f in s.figures:
                    cap = f"<figcaption>{e(f.caption)}</figcaption>" if f.caption else ""
                    ttl = f"<div class='ftitle'>{e(f.title)}</div>" if f.title else ""
                    out.append(f"<figure>{ttl}<img src='{f.data_uri()}' alt='{e(f.title or f.caption or f.name)}'>"
                               f"{cap}</figure>")
                out.append("</div>")
            out.extend(str(svg) for svg in s.svgs)
            for t in s.tables:
                out.append(_html_table(t))
            for note in s.notes:
                out.append(f"<p class='note'>{e(note)}</p>")
            out.append("</section>")
        out.append("<section class='conv'><h2>Conventions</h2><ul>"
                   "<li>Points are RAS millimetres (Slicer's convention: x to the patient's Right, y Anterior, "
                   "z Superior).</li><li>Slice pictures are in radiological convention (patient right on the "
                   "image's left); letters on their edges give the patient direction, the bar gives the scale, "
                   "the window is centre/width in HU.</li><li>Volumes in ml, distances in mm, times in s.</li>")
        for note in self.notes:
            out.append(f"<li>{e(note)}</li>")
        out.append("</ul>")
        if csv_files:
            out.append("<p>Tables as CSV beside this report: " + ", ".join(e(str(c)) for c in csv_files) + "</p>")
        out.append("</section></body></html>")
        path.write_text("\n".join(out), encoding="utf-8")
        return path

    def write_pdf(self, path) -> Path | None:
        """An A4 PDF (vector text, pictures as images), or None without matplotlib."""
        if not _have_matplotlib():
            return None
        _PdfWriter(self).write(Path(path))
        return Path(path)


# ============================================================================================ step reports
def metrics_from_rows(rows) -> list[tuple]:
    """``StepResult.table_rows()`` (``{"metric", "value", "unit"}``) as report metrics."""
    out = []
    for r in rows:
        v = r.get("value")
        try:
            v = float(v) if isinstance(v, str) and v.strip() not in ("", "nan") and not v.strip().isalpha() else v
        except ValueError:
            pass
        out.append((str(r.get("metric", "")), v, str(r.get("unit", ""))))
    return out


def step_report(title: str, verdict: tuple[str, str], metrics=(), figures=(), tables=(), notes=(),
                inputs: dict | None = None, subtitle: str = "", text: str = "", warnings=()) -> Report:
    """The report of one step command: the verdict first, its figures with units, tables, warnings, inputs."""
    r = Report(title, subtitle)
    r.set_verdict(*verdict)
    for w in warnings:
        r.add_verdict(f"Warning: {w}", "warn")
    r.add_section("Result", list(metrics), figures=[f for f in figures if f is not None], tables=list(tables),
                  notes=list(notes), text=text)
    if inputs:
        r.add_section("Inputs", tables=[Table("inputs", [{"input": k, "value": str(v)} for k, v in inputs.items()
                                                         if v not in (None, "", [])], "What this result was made from")])
    return r


def write_step_report(out_dir, report: Report) -> list[Path]:
    """``report.html``, ``report.pdf``, ``metrics.csv`` and the tables' CSV files into ``out_dir``."""
    return report.write(out_dir)


def _version() -> str:
    return __version__


def _level(level: str) -> str:
    return level if level in LEVELS else "info"


def _safe_name(name: str) -> str:
    s = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name).strip().lower())
    return s.strip("_") or "table"


def _csv_value(v):
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else repr(float(v))
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(_csv_value(x)) for x in v)
    return v


def _write_csv(path: Path, rows: list[dict]) -> Path:
    keys = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k, "")) for k in keys})
    return path


def _html_table(t: Table) -> str:
    e = html.escape
    if not t.rows:
        return ""
    keys = []
    for r in t.rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    out = [f"<h3>{e(t.title or t.name)}</h3><table class='data'><tr>" + "".join(f"<th>{e(str(k))}</th>" for k in keys)
           + "</tr>"]
    for r in t.rows[:t.max_rows]:
        out.append("<tr>" + "".join(f"<td>{e(_fmt(r.get(k, '')))}</td>" for k in keys) + "</tr>")
    out.append("</table>")
    if len(t.rows) > t.max_rows:
        out.append(f"<p class='note'>The first {t.max_rows} of {len(t.rows)} rows; all of them are in "
                   f"{e(_safe_name(t.name))}.csv.</p>")
    return "".join(out)


_CSS = """
body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#555;margin:.2em 0}
.verdicts{margin:1em 0}
.verdict{border-left:8px solid;padding:.7em 1em;margin:.4em 0;font-size:1.15em;font-weight:600;border-radius:3px}
.verdict.small{font-size:1em}
.ok{background:#e6f4ea;border-color:#1e7b34}.warn{background:#fff4e0;border-color:#b36b00}
.bad{background:#fde8e8;border-color:#b3261e}.info{background:#e8f0fe;border-color:#1a56b3}
nav{background:#f6f6f6;padding:.5em .8em;border-radius:3px;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}td.v{text-align:right;font-family:'DejaVu Sans Mono',monospace}
table.data td{font-family:'DejaVu Sans Mono',monospace;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;flex:1 1 520px;max-width:560px}
figure img{width:100%;border:1px solid #999;display:block}
figcaption{font-size:.9em;color:#333;margin-top:.3em}
.ftitle{font-weight:600;margin-bottom:.2em}
.note{color:#555;font-size:.92em}
.conv{font-size:.92em;color:#444}
"""


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


# ============================================================================================ PDF
class _PdfWriter:
    """Lays a report out on A4 pages with matplotlib's PDF backend (text stays text)."""

    W, H = 8.27, 11.69  # inches
    M = 0.6  # margin
    LINE = 0.19  # inches per 9 pt line

    def __init__(self, report: Report):
        self.r = report
        self.pages = []
        self.fig = None
        self.y = 0.0

    def write(self, path: Path) -> None:
        from matplotlib.backends.backend_pdf import PdfPages

        with PdfPages(str(path), metadata={"Title": self.r.title, "Creator": f"IMAGIO {_version()}"}) as pdf:
            self.pdf = pdf
            self._new_page()
            self._text(self.r.title, 16, bold=True)
            if self.r.subtitle:
                self._text(self.r.subtitle, 9, color="#555")
            self._text(f"Written {self.r.created} by IMAGIO {_version()}. Research software, not for clinical "
                       "decisions.", 8, color="#555")
            self.y -= 0.1
            for text, level in self.r.verdicts:
                self._verdict(text, level, 11)
            for s in self.r.sections:
                self._section(s)
            self._heading("Conventions", 11)
            for line in ["Points are RAS millimetres (x to the patient's Right, y Anterior, z Superior).",
                         "Slice pictures: radiological convention (patient right on the image's left); edge letters "
                         "give the patient direction, the bar the scale, the window is centre/width in HU.",
                         *self.r.notes]:
                self._text("- " + line, 8)
            self._flush()

    # -------------------------------------------------------------- primitives
    def _new_page(self):
        if self.fig is not None:
            self._flush()
        self.fig = _new_figure(self.W, self.H)
        self.y = self.H - self.M
        self.page_no = getattr(self, "page_no", 0) + 1

    def _flush(self):
        if self.fig is None:
            return
        self.fig.text(0.5, 0.25 / self.H, f"{self.r.title} - page {self.page_no}", ha="center", fontsize=7,
                      color="#777")
        self.pdf.savefig(self.fig)
        self.fig = None

    def _need(self, inches: float):
        if self.y - inches < self.M:
            self._new_page()

    def _wrap(self, text: str, size: float, width_in: float) -> list[str]:
        chars = max(int(width_in * 72 / (size * 0.55)), 10)
        lines = []
        for para in str(text).split("\n"):
            lines += textwrap.wrap(para, chars) or [""]
        return lines

    def _text(self, text: str, size: float = 9, bold: bool = False, color: str = "#222", indent: float = 0.0):
        for line in self._wrap(text, size, self.W - 2 * self.M - indent):
            h = size / 72 * 1.45
            self._need(h)
            self.fig.text((self.M + indent) / self.W, (self.y - h * 0.8) / self.H, line, fontsize=size,
                          fontweight="bold" if bold else "normal", color=color, va="baseline")
            self.y -= h

    def _heading(self, text: str, size: float = 12):
        self._need(0.6)
        self.y -= 0.12
        self._text(text, size, bold=True)
        self.fig.add_artist(_hline(self.M / self.W, 1 - self.M / self.W, (self.y + 0.02) / self.H))
        self.y -= 0.06

    def _verdict(self, text: str, level: str, size: float):
        from matplotlib.patches import Rectangle

        lines = self._wrap(text, size, self.W - 2 * self.M - 0.4)
        h = len(lines) * size / 72 * 1.45 + 0.16
        self._need(h + 0.05)
        bg, border = LEVELS[_level(level)]
        self.fig.add_artist(Rectangle((self.M / self.W, (self.y - h) / self.H), (self.W - 2 * self.M) / self.W,
                                      h / self.H, facecolor=bg, edgecolor="none", transform=self.fig.transFigure))
        self.fig.add_artist(Rectangle((self.M / self.W, (self.y - h) / self.H), 0.08 / self.W, h / self.H,
                                      facecolor=border, edgecolor="none", transform=self.fig.transFigure))
        self.y -= 0.08
        for line in lines:
            lh = size / 72 * 1.45
            self.fig.text((self.M + 0.2) / self.W, (self.y - lh * 0.8) / self.H, line, fontsize=size,
                          fontweight="bold", color="#222", va="baseline")
            self.y -= lh
        self.y -= 0.13

    def _table(self, header: list[str], rows: list[list[str]], widths: list[float], size: float = 8):
        lh = size / 72 * 1.5
        total = sum(widths)
        scale = (self.W - 2 * self.M) / total if total > self.W - 2 * self.M else 1.0
        widths = [w * scale for w in widths]

        def row(cells, bold=False):
            wrapped = [self._wrap(str(c), size, w - 0.08) for c, w in zip(cells, widths, strict=True)]
            n = max(len(x) for x in wrapped)
            self._need(n * lh + 0.02)
            x = self.M
            for lines, w in zip(wrapped, widths, strict=True):
                for k, line in enumerate(lines):
                    self.fig.text((x + 0.04) / self.W, (self.y - (k + 0.8) * lh) / self.H, line, fontsize=size,
                                  fontweight="bold" if bold else "normal", va="baseline",
                                  family="DejaVu Sans")
                x += w
            self.y -= n * lh
            self.fig.add_artist(_hline(self.M / self.W, (self.M + sum(widths)) / self.W, (self.y + 0.02) / self.H,
                                       color="#ccc"))

        row(header, bold=True)
        for r in rows:
            row(r)
        self.y -= 0.1

    def _figure(self, f: Figure, max_h: float = 4.6):
        arr = f.array()
        h_px, w_px = arr.shape[:2]
        width = min(self.W - 2 * self.M, 5.6)
        height = width * h_px / w_px
        if height > max_h:
            height, width = max_h, max_h * w_px / h_px
        cap = self._wrap(f.caption, 8, self.W - 2 * self.M) if f.caption else []
        self._need(height + 0.15 + len(cap) * 0.17 + (0.2 if f.title else 0))
        if f.title:
            self._text(f.title, 9, bold=True)
        ax = self.fig.add_axes(((self.W - width) / 2 / self.W, (self.y - height) / self.H, width / self.W,
                                height / self.H))
        ax.imshow(arr, interpolation="lanczos")
        ax.set_axis_off()
        self.y -= height + 0.08
        if f.caption:
            self._text(f.caption, 8, color="#333")
        self.y -= 0.1

    def _section(self, s: Section):
        self._heading(s.title)
        if s.verdict:
            self._verdict(s.verdict[0], s.verdict[1], 9.5)
        if s.text:
            self._text(s.text, 8.5)
            self.y -= 0.05
        if s.metrics:
            self._table(["quantity", "value", "unit"], [[str(n), _fmt(v), str(u)] for n, v, u in s.metrics],
                        [3.8, 2.2, 1.0])
        for f in s.figures:
            self._figure(f)
        for svg in s.svgs:
            spec = getattr(svg, "spec", None)
            if spec is not None:
                fig = histogram_figure(spec["values"], spec["bins"], spec["xlabel"], vline=spec["vline"],
                                       vline_label=spec["vline_label"], color=spec["color"])
                if fig is not None:
                    self._figure(fig, max_h=2.6)
            else:
                self._text("(a plot shown in the HTML report)", 8, color="#777")
        for t in s.tables:
            if not t.rows:
                continue
            keys = []
            for r in t.rows:
                for k in r:
                    if k not in keys:
                        keys.append(k)
            self._text(t.title or t.name, 9, bold=True)
            if len(t.rows) > t.max_rows:
                self._text(f"The first {t.max_rows} of {len(t.rows)} rows; all of them are in {_safe_name(t.name)}.csv.",
                           8, color="#555")
            self._table(keys, [[_fmt(r.get(k, "")) for k in keys] for r in t.rows[:t.max_rows]],
                        [max(0.7, min(2.5, 0.09 * max(len(str(k)), *(len(_fmt(r.get(k, ""))) for r in t.rows))))
                         for k in keys], size=7)
        for note in s.notes:
            self._text(note, 8, color="#555")


def _hline(x0: float, x1: float, y: float, color: str = "#bbb"):
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], color=color, linewidth=0.6)


__all__ = ["Report", "Section", "Table", "Figure", "Overlay", "Marker", "Polyline", "Surface", "WINDOWS", "VIEWS",
           "step_report", "write_step_report", "metrics_from_rows", "view_towards", "surface_of", "blank_like",
           "slice_figure", "slice_png", "render_3d", "histogram_figure", "histogram_svg", "margin_colormap",
           "orientation_letter"]
