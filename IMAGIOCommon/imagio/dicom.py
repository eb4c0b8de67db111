"""DICOM readers: CT series (with geometry checks), RTSTRUCT and DICOM SEG.

All geometry stays in LPS (DICOM's patient frame) here; conversion to RAS
happens only in :mod:`imagio.geometry`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ImagioError

log = logging.getLogger(__name__)


def _pydicom():
    import pydicom

    return pydicom


def list_series(folder: Path) -> dict[str, list[str]]:
    """Series UID -> sorted file names, for every image series in ``folder``."""
    reader = sitk.ImageSeriesReader()
    out = {}
    for uid in reader.GetGDCMSeriesIDs(str(folder)) or ():
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        if files:
            out[uid] = list(files)
    return out


def _describe_series(uid: str, files: list[str]) -> str:
    desc = ""
    try:
        ds = _pydicom().dcmread(files[0], stop_before_pixels=True)
        desc = f" {ds.get('Modality', '')} '{ds.get('SeriesDescription', '')}'"
    except Exception:  # noqa: BLE001 - description is best effort
        pass
    return f"{uid} ({len(files)} files{desc})"


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one CT/MR series from a folder, sorted by position along the slice normal.

    Several series: pick ``series_uid`` or refuse with the list. Gantry tilt:
    refuse. Non-uniform slice spacing (missing slices, variable thickness):
    resample onto a uniform grid with a logged warning.
    """
    series = list_series(folder)
    if not series:
        raise ImagioError(f"No DICOM image series found in {folder}",
                          "Give a folder that contains the DICOM files of one CT or MR series")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(_describe_series(u, f) for u, f in series.items())
            raise ImagioError(f"{folder} holds {len(series)} DICOM series: {listing}",
                              "Choose one with --series-uid UID (or series_uid=...)")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise ImagioError(f"Series {series_uid} is not in {folder}",
                          "Available: " + ", ".join(series))
    files = series[series_uid]
    pydicom = _pydicom()
    headers = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise ImagioError(f"{f} has no image position/orientation",
                              "This is not a cross-sectional image series IMAGIO can place in 3D")
        headers.append(ds)
    iop = np.array(headers[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ipp = np.array([np.array(h.ImagePositionPatient, float) for h in headers])
    order = np.argsort(ipp @ normal)
    files = [files[i] for i in order]
    ipp = ipp[order]
    if len(files) == 1:
        return sitk.ReadImage(files[0])
    steps = np.diff(ipp, axis=0)
    dist = steps @ normal
    if np.any(np.abs(dist) < 1e-3):
        raise ImagioError(f"Series {series_uid} has several slices at the same position",
                          "It may mix acquisitions (e.g. phases or echoes): split it and choose one")
    # gantry tilt: slice-to-slice offsets not along the normal
    along = np.abs(steps @ normal) / np.linalg.norm(steps, axis=1)
    if np.any(along < 0.9999):
        angle = float(np.degrees(np.arccos(np.clip(along.min(), -1, 1))))
        raise ImagioError(f"Series {series_uid} is acquired with a gantry tilt of {angle:.1f} deg",
                          "Resample it to an orthogonal grid first (e.g. Slicer's DICOM module with "
                          "acquisition geometry regularization)")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()
    image = reader.Execute()
    if np.ptp(dist) > max(0.01, 0.01 * np.median(dist)):
        image = _resample_uniform(image, ipp, normal, dist)
    image.SetMetaData("imagio:SeriesInstanceUID", series_uid)
    image.SetMetaData("imagio:FrameOfReferenceUID", str(headers[0].get("FrameOfReferenceUID", "")))
    return image


def _resample_uniform(image: sitk.Image, ipp: np.ndarray, normal: np.ndarray, dist: np.ndarray) -> sitk.Image:
    """Linear interpolation between slices onto the smallest spacing found."""
    pos = np.r_[0.0, np.cumsum(dist)]
    step = float(np.min(dist))
    n = int(np.floor(pos[-1] / step + 1e-6)) + 1
    target = np.arange(n) * step
    log.warning("Non-uniform slice spacing (%.3g-%.3g mm): resampled to %d slices of %.3g mm",
                dist.min(), dist.max(), n, step)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    idx = np.clip(np.searchsorted(pos, target, side="right") - 1, 0, len(pos) - 2)
    w = ((target - pos[idx]) / (pos[idx + 1] - pos[idx]))[:, None, None]
    out = (1 - w) * arr[idx] + w * arr[idx + 1]
    dtype = sitk.GetArrayViewFromImage(image).dtype
    if dtype.kind in "iu":
        out = np.rint(out)
    res = sitk.GetImageFromArray(out.astype(dtype))
    res.SetOrigin(tuple(ipp[0]))
    sp = list(image.GetSpacing())
    sp[2] = step
    res.SetSpacing(sp)
    res.SetDirection(image.GetDirection())
    res.SetMetaData("imagio:warning", f"non-uniform slice spacing resampled to {step:.3g} mm")
    return res


def dicom_modality(path: Path) -> str | None:
    """The Modality of a DICOM file, or None if it is not DICOM."""
    try:
        ds = _pydicom().dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001
        return None
    return str(ds.get("Modality", "")) or None


def _polygon_fill(shape_ji: tuple[int, int], poly_ij: np.ndarray) -> np.ndarray:
    """Even-odd fill of a polygon (continuous i, j) evaluated at voxel centres."""
    nj, ni = shape_ji
    out = np.zeros(shape_ji, bool)
    if len(poly_ij) < 3:
        return out
    i0 = max(int(np.floor(poly_ij[:, 0].min())), 0)
    i1 = min(int(np.ceil(poly_ij[:, 0].max())), ni - 1)
    j0 = max(int(np.floor(poly_ij[:, 1].min())), 0)
    j1 = min(int(np.ceil(poly_ij[:, 1].max())), nj - 1)
    if i1 < i0 or j1 < j0:
        return out
    ii = np.arange(i0, i1 + 1, dtype=float)
    x0, y0 = poly_ij[:, 0], poly_ij[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for j in range(j0, j1 + 1):
        yc = float(j)
        cross = (y0 <= yc) != (y1 <= yc)
        if not np.any(cross):
            continue
        xs = x0[cross] + (yc - y0[cross]) * (x1[cross] - x0[cross]) / (y1[cross] - y0[cross])
        counts = (xs[None, :] > ii[:, None]).sum(axis=1)
        out[j, i0:i1 + 1] = (counts % 2) == 1
    return out


def read_rtstruct(path: Path, reference: sitk.Image) -> list[tuple[str, tuple, np.ndarray]]:
    """Rasterise every ROI of an RTSTRUCT on ``reference``'s grid.

    Returns (name, colour 0..1, mask array [k, j, i]) per ROI with contours.
    A voxel belongs to a ROI when its centre lies inside the contour of its
    slice (even-odd rule, so holes drawn as inner contours stay empty).
    """
    from .geometry import ijk_to_lps_matrix

    ds = _pydicom().dcmread(str(path))
    if ds.get("Modality") != "RTSTRUCT":
        raise ImagioError(f"{path} is not a DICOM RTSTRUCT (Modality {ds.get('Modality')})")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    lps_to_ijk = np.linalg.inv(ijk_to_lps_matrix(reference))
    size = reference.GetSize()
    out = []
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        color = tuple(float(c) / 255.0 for c in roi.get("ROIDisplayColor", [255, 0, 0]))
        mask = np.zeros(size[::-1], bool)
        n_inside = n_points = 0
        for contour in roi.get("ContourSequence", []):
            pts = np.array(contour.ContourData, float).reshape(-1, 3)
            ijk = (np.c_[pts, np.ones(len(pts))] @ lps_to_ijk.T)[:, :3]
            n_points += len(ijk)
            k = int(np.round(np.median(ijk[:, 2])))
            if not 0 <= k < size[2]:
                continue
            n_inside += len(ijk)
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) == "POINT":
                continue
            mask[k] ^= _polygon_fill((size[1], size[0]), ijk[:, :2])
        if n_points and n_inside == 0:
            raise ImagioError(f"RTSTRUCT ROI '{names.get(number, number)}' lies outside the reference image",
                              "Give the CT series this structure set was drawn on")
        if n_points:
            out.append((names.get(number, f"ROI {number}"), color, mask))
    if not out:
        raise ImagioError(f"{path} contains no contours", "Export the structure set with its contours")
    return out


def read_dicom_seg(path: Path) -> list[tuple[str, tuple, int, sitk.Image]]:
    """Read a DICOM SEG (binary or fractional) into one LPS mask image per segment."""
    ds = _pydicom().dcmread(str(path))
    if ds.get("Modality") != "SEG":
        raise ImagioError(f"{path} is not a DICOM SEG (Modality {ds.get('Modality')})")
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        frames = frames >= (int(ds.get("MaximumFractionalValue", 255)) / 2)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    px = shared.PixelMeasuresSequence[0]
    row_sp, col_sp = (float(v) for v in px.PixelSpacing)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    ipps = np.array([np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in per_frame])
    def _segment_number(fg):
        for group in (fg, shared):
            if "SegmentIdentificationSequence" in group:
                return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        return int(ds.SegmentSequence[0].SegmentNumber) if len(ds.SegmentSequence) == 1 else 0

    seg_nums = np.array([_segment_number(f) for f in per_frame])
    labelmap = str(ds.get("SegmentationType", "")) == "LABELMAP"
    d = ipps @ normal
    levels = np.unique(np.round(d, 3))
    if len(levels) > 1:
        steps = np.diff(levels)
        spacing = float(np.min(steps))
        if np.ptp(steps) > 0.01 * spacing:
            spacing = float(getattr(px, "SpacingBetweenSlices", spacing) or spacing)
    else:
        spacing = float(getattr(px, "SpacingBetweenSlices", getattr(px, "SliceThickness", 1.0)) or 1.0)
    origin = ipps[np.argmin(d)]
    nk = int(np.round((levels[-1] - levels[0]) / spacing)) + 1 if len(levels) > 1 else 1
    direction = np.c_[row, col, normal]
    out = []
    for seg in ds.SegmentSequence:
        num = int(seg.SegmentNumber)
        arr = np.zeros((nk, frames.shape[1], frames.shape[2]), np.uint8)
        frame_ids = range(len(per_frame)) if labelmap else np.nonzero(seg_nums == num)[0]
        for fi in frame_ids:
            k = int(np.round((d[fi] - levels[0]) / spacing))
            hit = frames[fi] == num if labelmap else frames[fi] > 0
            arr[k] |= hit.astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(tuple(origin))
        img.SetSpacing((col_sp, row_sp, spacing))
        img.SetDirection(tuple(direction.ravel()))
        color = (1.0, 0.0, 0.0)
        if "RecommendedDisplayCIELabValue" in seg:
            color = _cielab_to_rgb(seg.RecommendedDisplayCIELabValue)
        out.append((str(seg.get("SegmentLabel", f"Segment {num}")), color, num, img))
    return out


def _cielab_to_rgb(lab16) -> tuple[float, float, float]:
    """DICOM scaled CIELab (0..65535) to sRGB 0..1."""
    L = lab16[0] * 100.0 / 65535.0
    a = lab16[1] * 255.0 / 65535.0 - 128
    b = lab16[2] * 255.0 / 65535.0 - 128
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def finv(t):
        return t ** 3 if t ** 3 > 0.008856 else (t - 16 / 116) / 7.787

    x, y, z = 0.95047 * finv(fx), 1.0 * finv(fy), 1.08883 * finv(fz)
    rgb = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]) @ [x, y, z]
    rgb = np.where(rgb > 0.0031308, 1.055 * np.power(np.clip(rgb, 0, None), 1 / 2.4) - 0.055, 12.92 * rgb)
    return tuple(float(v) for v in np.clip(rgb, 0, 1))
