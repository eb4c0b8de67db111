"""HTML reports with slice pictures (PNG, written with VTK) and inline SVG plots.

Every number in a report has a unit column; pictures are axial/coronal
slices in radiological convention (patient right on the left of the image).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import ras_to_lps


def _plane_reference(image: sitk.Image, point_ras, axis: str, width_px: int = 512) -> sitk.Image:
    """A one-slice LPS grid through ``point_ras`` covering the image's physical extent."""
    from .geometry import physical_bounds_ras

    lo, hi = physical_bounds_ras(image)
    lo_lps, hi_lps = ras_to_lps(lo), ras_to_lps(hi)
    lo_lps, hi_lps = np.minimum(lo_lps, hi_lps), np.maximum(lo_lps, hi_lps)
    p = ras_to_lps(np.asarray(point_ras, float))
    pix = float(max(hi_lps - lo_lps)) / max(int(width_px), 16) or float(min(image.GetSpacing()))
    # columns run to patient left (radiological), rows to posterior (axial) or inferior (coronal)
    if axis == "axial":
        u, v, w = np.eye(3)[0], np.eye(3)[1], np.eye(3)[2]
        origin = np.array([lo_lps[0], lo_lps[1], p[2]])
        nu, nv = (hi_lps[0] - lo_lps[0]) / pix, (hi_lps[1] - lo_lps[1]) / pix
    elif axis == "coronal":
        u, v, w = np.eye(3)[0], -np.eye(3)[2], np.eye(3)[1]
        origin = np.array([lo_lps[0], p[1], hi_lps[2]])
        nu, nv = (hi_lps[0] - lo_lps[0]) / pix, (hi_lps[2] - lo_lps[2]) / pix
    elif axis == "sagittal":
        u, v, w = np.eye(3)[1] * -1, -np.eye(3)[2], np.eye(3)[0]
        origin = np.array([p[0], hi_lps[1], hi_lps[2]])
        nu, nv = (hi_lps[1] - lo_lps[1]) / pix, (hi_lps[2] - lo_lps[2]) / pix
    else:
        raise ValueError(f"axis must be axial, coronal or sagittal, not {axis}")
    ref = sitk.Image([int(nu) + 1, int(nv) + 1, 1], sitk.sitkFloat32)
    ref.SetSpacing([pix, pix, pix])
    ref.SetOrigin(tuple(origin))
    ref.SetDirection(tuple(np.c_[u, v, w].ravel()))
    return ref


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


def slice_png(path, image: sitk.Image, overlays=(), point_ras=None, axis: str = "axial",
              window=(40.0, 400.0), markers_ras=(), fill_opacity: float = 0.3, width_px: int = 512) -> Path:
    """Write a slice picture through ``point_ras`` with coloured mask overlays (outline + translucent fill).

    ``overlays`` is a list of (mask image, (r, g, b) in 0..1); ``window`` is
    (centre, width) in the image's unit (HU for CT); ``markers_ras`` are
    points drawn as small crosses when they are near the slice.
    """
    path = Path(path)
    if point_ras is None:
        from .geometry import centroid_ras, ijk_to_ras

        point_ras = (centroid_ras(overlays[0][0]) if overlays
                     else ijk_to_ras(image, (np.array(image.GetSize()) - 1) / 2.0))
    ref = _plane_reference(image, point_ras, axis, width_px)
    grey = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(),
                                                sitk.sitkLinear, -1024.0))[0]
    c, w = window
    g = np.clip((grey - (c - w / 2)) / w, 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    for mask, color in overlays:
        m = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), ref, sitk.Transform(),
                                                 sitk.sitkNearestNeighbor, 0))[0] > 0
        if not m.any():
            continue
        col = np.asarray(color, float)
        rgb[m] = (1 - fill_opacity) * rgb[m] + fill_opacity * col
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        rgb[edge] = col
    for p in markers_ras:
        idx = np.array(ref.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in ras_to_lps(p))))
        if abs(idx[2]) > 3:
            continue
        i, j = int(round(idx[0])), int(round(idx[1]))
        for d in range(-9, 10):
            for a, b in ((j, i + d), (j + d, i)):
                if 0 <= a < rgb.shape[0] and 0 <= b < rgb.shape[1]:
                    rgb[a, b] = (0.1, 1.0, 0.1)
    _write_png(path, (rgb * 255).astype(np.uint8))
    return path


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
        h = c / cmax * ph
        parts.append(f'<rect x="{sx(a):.1f}" y="{mt + ph - h:.1f}" width="{max(sx(b) - sx(a) - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="{color}"/>')
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
    return "".join(parts)


class Report:
    """A small HTML report: sections of metrics (name, value, unit), pictures and plots."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[dict] = []

    def add_section(self, title: str, metrics=(), images=(), text: str = "", svgs=()) -> None:
        for m in metrics:
            if len(m) != 3:
                raise ValueError(f"metric {m!r} must be (name, value, unit)")
        self.sections.append({"title": title, "metrics": list(metrics), "images": [Path(i) for i in images],
                              "text": text, "svgs": list(svgs)})

    def write_html(self, path) -> Path:
        path = Path(path)
        out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
               f"<title>{html.escape(self.title)}</title><style>",
               "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}",
               "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}",
               "td.v{text-align:right;font-family:monospace}img{max-width:48%;margin:4px;border:1px solid #888}",
               ".note{color:#555;font-size:90%}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>",
               "<p class='note'>Coordinates are RAS millimetres (Slicer convention); slice pictures are in "
               "radiological convention (patient right on the left). Not for clinical use.</p>"]
        for s in self.sections:
            out.append(f"<h2>{html.escape(s['title'])}</h2>")
            if s["text"]:
                out.append(f"<p>{html.escape(s['text'])}</p>")
            if s["metrics"]:
                out.append("<table><tr><th>quantity</th><th>value</th><th>unit</th></tr>")
                for name, value, unit in s["metrics"]:
                    out.append(f"<tr><td>{html.escape(str(name))}</td><td class='v'>{html.escape(_fmt(value))}</td>"
                               f"<td>{html.escape(str(unit))}</td></tr>")
                out.append("</table>")
            for img in s["images"]:
                rel = img.relative_to(path.parent) if img.is_absolute() and img.is_relative_to(path.parent) else img
                out.append(f"<img src='{html.escape(str(rel))}' alt='{html.escape(img.stem)}'>")
            out.extend(s["svgs"])
        out.append("</body></html>")
        path.write_text("\n".join(out))
        return path


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)
