"""DICOM readers: CT series (with geometry checks), RTSTRUCT and DICOM SEG.

All geometry stays in LPS (DICOM's patient frame) here; conversion to RAS
happens only in :mod:`imagio.geometry`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .cli_utils import check_readable_path
from .errors import ImagioError
from .geometry import ijk_to_lps_matrix
from .guards import format_bytes, native_stderr, require_memory, require_voxels

log = logging.getLogger(__name__)


def _pydicom():
    import pydicom

    return pydicom


def list_series(folder: Path) -> dict[str, list[str]]:
    """Series UID -> sorted file names, for every image series in ``folder``."""
    reader = sitk.ImageSeriesReader()
    out = {}
    with native_stderr():
        ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
        for uid in ids:
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


def _header(path):
    """A DICOM file's header (large values such as the pixel data deferred, not read); ImagioError if damaged."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(str(path), defer_size=1024, stop_before_pixels=False)
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for a damaged file
        raise ImagioError(f"{path} is a damaged DICOM file ({type(e).__name__}: {str(e)[:120]})",
                          "Copy or export the series again") from None


def _is_dicom_file(path: Path) -> bool:
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _floats(ds, key: str, n: int, f) -> np.ndarray:
    try:
        v = np.array([float(x) for x in ds[key].value], float)
    except Exception:  # noqa: BLE001 - missing, non-numeric, wrong multiplicity
        raise ImagioError(f"{f}: its {key} is missing or not {n} numbers", "The file is damaged; export the series again") from None
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ImagioError(f"{f}: its {key} is not {n} finite numbers ({v.tolist()})",
                          "The file is damaged; export the series again")
    return v


def _int(ds, key: str, f, default=None) -> int:
    if key not in ds:
        if default is None:
            raise ImagioError(f"{f} has no {key}", "The file is damaged; export the series again")
        return default
    try:
        return int(ds[key].value)
    except Exception:  # noqa: BLE001
        raise ImagioError(f"{f}: its {key} is not a whole number", "The file is damaged; export the series again") from None


def _pixel_data_element(ds):
    try:
        return ds.get_item(0x7FE00010, keep_deferred=True)  # pydicom >= 3
    except TypeError:
        return ds.get_item(0x7FE00010)


def _check_pixel_bytes(ds, f: str) -> None:
    """The pixel data a slice declares (rows x columns x samples x bits) are all in the file."""
    elem = _pixel_data_element(ds)
    if elem is None:
        raise ImagioError(f"{f} has no pixel data", "It is not an image slice; remove it from the series folder")
    length = getattr(elem, "length", None)
    tell = getattr(elem, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:  # read already, or encapsulated (compressed)
        return
    size = Path(f).stat().st_size
    rows, cols = _int(ds, "Rows", f), _int(ds, "Columns", f)
    need = rows * cols * _int(ds, "SamplesPerPixel", f, 1) * _int(ds, "BitsAllocated", f, 16) // 8 \
        * _int(ds, "NumberOfFrames", f, 1)
    have = max(min(length, size - tell), 0)
    if have < need:
        raise ImagioError(f"DICOM slice {f} is cut short: {need} bytes of pixel data declared, {have} there "
                          f"({need - have} bytes missing)", "Copy or export the series again")


#: Tolerances for the slices of one series: orientation cosines, pixel spacing (relative).
IOP_TOL = 1e-3
SPACING_TOL = 1e-3
#: A series is resampled across missing slices only up to this gap (in median slice steps); beyond,
#: linear interpolation would invent anatomy, and slices closer than MIN_STEP_SHARE of the median step
#: mean mixed acquisitions.
MAX_GAP_STEPS = 3.0
MIN_STEP_SHARE = 0.5


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one CT/MR series from a folder, sorted by position along the slice normal.

    Several series: pick ``series_uid`` or refuse with the list. Every slice must have the first one's
    orientation, rows, columns, pixel spacing and frame of reference and hold all its pixel data (the
    damaged slice is named). Gantry tilt: refuse. Missing slices (gaps up to 3 steps): resample onto a
    uniform grid with a logged warning; larger gaps, or slices much closer than the series' step, are
    refused. The volume (and any resampling target) is checked against the memory before it is read.
    """
    for entry in sorted(Path(folder).iterdir()):  # GDCM's scan skips files beside a FIFO: refuse those first
        if not entry.is_dir():
            check_readable_path(entry, f"content of the DICOM folder {folder}")
    series = list_series(folder)
    if not series:
        damaged = [f for f in sorted(Path(folder).iterdir()) if _is_dicom_file(f)][:1]
        if damaged:
            _header(damaged[0])  # names the damage when pydicom cannot read it either
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
    listed = {str(Path(f).resolve()) for fs in series.values() for f in fs}
    for f in sorted(Path(folder).iterdir()):  # files GDCM skipped: damaged slices of this series?
        if str(f.resolve()) in listed or not _is_dicom_file(f):
            continue
        ds = _header(f)
        media_class = str(getattr(getattr(ds, "file_meta", None), "get", lambda *_: "")("MediaStorageSOPClassUID", ""))
        if "SeriesInstanceUID" not in ds and media_class != "1.2.840.10008.1.3.10":  # not a DICOMDIR
            raise ImagioError(f"{f} is a damaged DICOM file (it has no series UID)",
                              "Copy or export the series again, or remove the file from the folder")
        if str(ds.get("SeriesInstanceUID", "")) == series_uid and "ImagePositionPatient" in ds:
            _check_pixel_bytes(ds, str(f))  # names the missing bytes of a slice cut short
            raise ImagioError(f"DICOM slice {f} of series {series_uid} cannot be read as an image",
                              "The file is damaged; copy or export the series again")
    headers = [_header(f) for f in files]
    first, f0 = headers[0], files[0]
    for ds, f in zip(headers, files, strict=True):
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise ImagioError(f"{f} has no image position/orientation",
                              "This is not a cross-sectional image series IMAGIO can place in 3D")
    iop0 = _floats(first, "ImageOrientationPatient", 6, f0)
    sp0 = _floats(first, "PixelSpacing", 2, f0) if "PixelSpacing" in first else None
    rows0, cols0 = _int(first, "Rows", f0), _int(first, "Columns", f0)
    for0 = str(first.get("FrameOfReferenceUID", ""))
    for ds, f in zip(headers, files, strict=True):
        iop = _floats(ds, "ImageOrientationPatient", 6, f)
        if np.max(np.abs(iop - iop0)) > IOP_TOL:
            raise ImagioError(f"DICOM slice {f} has another orientation ({np.round(iop, 4).tolist()}) than the "
                              f"series ({np.round(iop0, 4).tolist()})",
                              "It belongs to another acquisition or is damaged: remove it from the folder")
        if (_int(ds, "Rows", f), _int(ds, "Columns", f)) != (rows0, cols0):
            raise ImagioError(f"DICOM slice {f} is {ds.Rows} x {ds.Columns} pixels, the series {rows0} x {cols0}",
                              "It belongs to another acquisition or is damaged: remove it from the folder")
        if sp0 is not None:
            sp = _floats(ds, "PixelSpacing", 2, f) if "PixelSpacing" in ds else None
            if sp is None or np.max(np.abs(sp - sp0) / sp0) > SPACING_TOL:
                raise ImagioError(f"DICOM slice {f} has pixel spacing {None if sp is None else sp.tolist()} mm, "
                                  f"the series {sp0.tolist()} mm",
                                  "It belongs to another acquisition or is damaged: remove it from the folder")
        if str(ds.get("FrameOfReferenceUID", "")) != for0:
            raise ImagioError(f"DICOM slice {f} has another frame of reference than the series",
                              "It belongs to another scan: remove it from the folder")
        _check_pixel_bytes(ds, f)
    if sp0 is not None and np.min(sp0) <= 0:
        raise ImagioError(f"{f0}: pixel spacing {sp0.tolist()} mm is not positive", "The series is damaged")
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    if not 0.99 < np.linalg.norm(normal) < 1.01 or abs(float(row @ col)) > 1e-2:
        raise ImagioError(f"{f0}: its ImageOrientationPatient {iop0.tolist()} is not two perpendicular unit vectors",
                          "The series is damaged")
    ipp = np.array([_floats(h, "ImagePositionPatient", 3, f) for h, f in zip(headers, files, strict=True)])
    if np.max(np.abs(ipp)) > 1e5:
        raise ImagioError(f"{folder}: slice positions up to {np.max(np.abs(ipp)):.3g} mm from the origin",
                          "The series is damaged")
    order = np.argsort(ipp @ normal)
    files = [files[i] for i in order]
    ipp = ipp[order]
    nbytes = rows0 * cols0 * len(files) * max(_int(first, "BitsAllocated", f0, 16) // 8, 1) \
        * _int(first, "SamplesPerPixel", f0, 1)
    require_voxels((cols0, rows0, len(files)), f"Series {series_uid}")
    require_memory(nbytes, f"Series {series_uid} ({cols0} x {rows0} x {len(files)} voxels)")
    if len(files) == 1:
        with native_stderr():
            image = sitk.ReadImage(files[0])
        _tag_series(image, series_uid, for0, first)
        return image
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
    median = float(np.median(dist))
    if np.ptp(dist) > max(0.01, 0.01 * median):
        i_min, i_max = int(np.argmin(dist)), int(np.argmax(dist))
        if dist[i_min] < MIN_STEP_SHARE * median:
            raise ImagioError(f"Series {series_uid}: slices {Path(files[i_min]).name} and "
                              f"{Path(files[i_min + 1]).name} are {dist[i_min]:.3g} mm apart, while the series "
                              f"steps {median:.3g} mm", "It may mix acquisitions or hold a damaged slice position: "
                              "split it or remove the odd slice")
        if dist[i_max] > MAX_GAP_STEPS * median * 1.001:
            raise ImagioError(f"Series {series_uid} has a gap of {dist[i_max]:.3g} mm between slices "
                              f"{Path(files[i_max]).name} and {Path(files[i_max + 1]).name} (the series steps "
                              f"{median:.3g} mm: about {round(dist[i_max] / median) - 1} slices are missing)",
                              "Copy or export the complete series; interpolating across the gap would invent anatomy")
        n_out = int(np.floor(float(np.sum(dist)) / float(np.min(dist)) + 1e-6)) + 1
        require_voxels((cols0, rows0, n_out), f"Resampling series {series_uid}")
        need = rows0 * cols0 * n_out * 4 * 3  # float32 copy of the input, the output, and its cast
        require_memory(need, f"Resampling series {series_uid} to uniform slices ({n_out} slices, "
                       f"{format_bytes(need)})")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOff()
    try:
        with native_stderr():
            image = reader.Execute()
    except RuntimeError as e:
        raise ImagioError(f"Series {series_uid} in {folder} could not be read ({str(e).strip().splitlines()[-1][:120]})",
                          "A slice may be damaged or use an unsupported compression") from None
    if np.ptp(dist) > max(0.01, 0.01 * median):
        image = _resample_uniform(image, ipp, normal, dist)
    _tag_series(image, series_uid, for0, first)
    return image


def _tag_series(image: sitk.Image, series_uid: str, frame_uid: str, first) -> None:
    """What a DICOM series says about itself, kept on the image (the readers of segmentations and the model
    cards' intended-use check read these)."""
    image.SetMetaData("imagio:SeriesInstanceUID", series_uid)
    image.SetMetaData("imagio:FrameOfReferenceUID", frame_uid)
    modality = str(first.get("Modality", "") or "").strip()
    if modality:
        image.SetMetaData("imagio:Modality", modality)


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


#: A ROI, mask or SEG segment put on the CT grid may lose at most this share of its voxels (those whose
#: centres fall outside the CT); more is refused. 1 % of a volume is below the agreement of two readers
#: outlining the same tumour, so it cannot change a decision; a larger loss means the CT does not cover the
#: structure (a cropped or other scan) and every volume, coverage or margin on it would be wrong.
MAX_LOST_SHARE = 0.01
#: Contours may lie at most this far (in slices) from a CT slice; farther, they were drawn on another grid.
MAX_OFF_SLICE = 0.25


def lost_share_error(name: str, lost: int, total: int, voxel_ml: float, where: str) -> ImagioError:
    return ImagioError(
        f"{lost} of {total} voxels ({100 * lost / total:.1f} %, {lost * voxel_ml:.2f} ml) of '{name}' lie outside "
        f"{where}; more than {100 * MAX_LOST_SHARE:g} % would make its volume and every margin on it wrong",
        "Give the CT that covers the whole structure (the one it was drawn on), not a cropped or other scan")


def _contour_points(contour, name: str, n: int, path) -> np.ndarray:
    try:
        data = contour.get("ContourData")
        values = np.array([float(v) for v in data], float) if data is not None else np.zeros(0)
    except Exception:  # noqa: BLE001 - pydicom may hold non-numeric DS values
        raise ImagioError(f"{path}: contour {n} of ROI '{name}' has non-numeric coordinates",
                          "The structure set is damaged; export it again") from None
    if values.size == 0:
        raise ImagioError(f"{path}: contour {n} of ROI '{name}' has no points", "The structure set is damaged; "
                          "export it again (or delete the empty contour)")
    if values.size % 3:
        raise ImagioError(f"{path}: contour {n} of ROI '{name}' has {values.size} coordinates, not a multiple of 3",
                          "The structure set is damaged; export it again")
    if not np.all(np.isfinite(values)) or np.max(np.abs(values)) > 1e5:
        raise ImagioError(f"{path}: contour {n} of ROI '{name}' has NaN, infinite or absurd coordinates",
                          "The structure set is damaged; export it again")
    return values.reshape(-1, 3)


def _frame_of_reference_uids_rtstruct(ds) -> set[str]:
    uids = {str(r.get("FrameOfReferenceUID", "")) for r in ds.get("ReferencedFrameOfReferenceSequence", [])}
    uids |= {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", [])}
    return {u for u in uids if u}


def require_same_frame(uids: set[str], reference: sitk.Image, what: str) -> None:
    """Refuse ``what`` when its frame-of-reference UIDs do not include the reference CT's (if both are known)."""
    ref = reference.GetMetaData("imagio:FrameOfReferenceUID") if reference.HasMetaDataKey(
        "imagio:FrameOfReferenceUID") else ""
    if ref and uids and ref not in uids:
        raise ImagioError(f"{what} belongs to another frame of reference ({sorted(uids)[0]}) than the CT ({ref})",
                          "It was drawn on another scan: give the CT series it was made on, or register the scans "
                          "first (imagio margin --register)")


def read_rtstruct(path: Path, reference: sitk.Image) -> list[tuple[str, tuple, np.ndarray]]:
    """Rasterise every ROI of an RTSTRUCT on ``reference``'s grid.

    Returns (name, colour 0..1, mask array [k, j, i]) per ROI with contours.
    A voxel belongs to a ROI when its centre lies inside the contour of its
    slice (even-odd rule, so holes drawn as inner contours stay empty).
    Refused: another frame of reference than the CT; empty, malformed or non-finite contours; contours
    between the CT's slices; a ROI losing more than :data:`MAX_LOST_SHARE` of its voxels outside the CT
    (a smaller loss is logged as a warning).
    """
    try:
        ds = _pydicom().dcmread(str(path))
    except Exception as e:  # noqa: BLE001
        raise ImagioError(f"{path} is a damaged DICOM file ({type(e).__name__})", "Export the structure set again") from None
    if ds.get("Modality") != "RTSTRUCT":
        raise ImagioError(f"{path} is not a DICOM RTSTRUCT (Modality {ds.get('Modality')})")
    require_same_frame(_frame_of_reference_uids_rtstruct(ds), reference, f"The structure set {path}")
    names = {}
    for r in ds.get("StructureSetROISequence", []):
        try:
            names[int(r.ROINumber)] = str(r.get("ROIName", f"ROI {r.ROINumber}"))
        except Exception:  # noqa: BLE001
            raise ImagioError(f"{path}: a ROI has no valid ROINumber", "The structure set is damaged") from None
    lps_to_ijk = np.linalg.inv(ijk_to_lps_matrix(reference))
    size = reference.GetSize()
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    rois = list(ds.get("ROIContourSequence", []))
    require_memory(len(rois) * size[0] * size[1] * size[2], f"{path}: {len(rois)} ROIs, one mask each")
    out = []
    for roi in rois:
        try:
            number = int(roi.ReferencedROINumber)
        except Exception:  # noqa: BLE001
            raise ImagioError(f"{path}: a ROI contour has no valid ReferencedROINumber", "The structure set is damaged") from None
        name = names.get(number, f"ROI {number}")
        try:
            color = tuple(min(max(float(c) / 255.0, 0.0), 1.0) for c in roi.get("ROIDisplayColor", [255, 0, 0]))[:3]
        except Exception:  # noqa: BLE001
            color = (1.0, 0.0, 0.0)
        if len(color) != 3:
            color = (1.0, 0.0, 0.0)
        mask = np.zeros(size[::-1], bool)
        n_inside = n_points = 0
        outside_slices: dict[int, list[np.ndarray]] = {}
        for n, contour in enumerate(roi.get("ContourSequence", [])):
            pts = _contour_points(contour, name, n, path)
            ijk = (np.c_[pts, np.ones(len(pts))] @ lps_to_ijk.T)[:, :3]
            n_points += len(ijk)
            kf = float(np.median(ijk[:, 2]))
            k = int(np.round(kf))
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) == "POINT":
                if 0 <= k < size[2]:
                    n_inside += len(ijk)
                continue
            if np.ptp(ijk[:, 2]) > 2 * MAX_OFF_SLICE or abs(kf - k) > MAX_OFF_SLICE:
                raise ImagioError(f"{path}: contour {n} of ROI '{name}' lies between the CT's slices "
                                  f"(slice index {kf:.2f})", "The structure set was drawn on another grid: give "
                                  "the CT series it was drawn on")
            if 0 <= k < size[2]:
                n_inside += len(ijk)
                mask[k] ^= _polygon_fill((size[1], size[0]), ijk[:, :2])
            outside_slices.setdefault(k, []).append(ijk[:, :2])
        if n_points and n_inside == 0:
            raise ImagioError(f"RTSTRUCT ROI '{name}' lies outside the reference image",
                              "Give the CT series this structure set was drawn on")
        if not n_points:
            continue
        total = int(mask.sum())
        lost = _count_outside(outside_slices, mask, size)
        total += lost
        if total and lost / total > MAX_LOST_SHARE:
            raise lost_share_error(name, lost, total, voxel_ml, f"the CT ({path.name} on {size[0]}x{size[1]}x{size[2]})")
        if lost:
            log.warning("%d of %d voxels (%.2f %%) of ROI '%s' lie outside the CT and are left out",
                        lost, total, 100 * lost / total, name)
        out.append((name, color, mask))
    if not out:
        raise ImagioError(f"{path} contains no contours", "Export the structure set with its contours")
    return out


def _count_outside(contours_by_slice: dict[int, list[np.ndarray]], mask: np.ndarray, size) -> int:
    """Voxel centres inside each slice's contours (even-odd) that fall outside the grid (or on slices beyond it),
    counted on a slice grid extended to cover the contours."""
    lost = 0
    for k, polys in contours_by_slice.items():
        allp = np.vstack(polys)
        in_range = 0 <= k < size[2]
        if in_range and allp[:, 0].min() >= -0.5 and allp[:, 1].min() >= -0.5 and \
                allp[:, 0].max() <= size[0] - 0.5 and allp[:, 1].max() <= size[1] - 0.5:
            continue  # every voxel centre inside these contours is on the grid
        i0 = min(int(np.floor(allp[:, 0].min())), 0)
        j0 = min(int(np.floor(allp[:, 1].min())), 0)
        i1 = max(int(np.ceil(allp[:, 0].max())), size[0] - 1)
        j1 = max(int(np.ceil(allp[:, 1].max())), size[1] - 1)
        ni, nj = i1 - i0 + 1, j1 - j0 + 1
        if ni * nj > 64 * size[0] * size[1]:
            raise ImagioError(f"Contours reach {max(ni / size[0], nj / size[1]):.0f} times beyond the CT's width",
                              "The structure set was drawn on another scan: give the CT it was drawn on")
        sl = np.zeros((nj, ni), bool)
        for poly in polys:
            sl ^= _polygon_fill((nj, ni), poly - [i0, j0])
        lost += int(sl.sum()) - (int(mask[k].sum()) if in_range else 0)
    return max(lost, 0)


def read_dicom_seg(path: Path, reference: sitk.Image | None = None) -> list[tuple[str, tuple, int, sitk.Image]]:
    """Read a DICOM SEG (binary, fractional or labelmap) into one LPS mask image per segment.

    Before any pixel data are decoded: the frame count, rows and columns are checked against the pixel
    data's length and the memory; every frame must name a segment of the SegmentSequence, share the
    SEG's orientation and lie on the slice grid; two frames of one segment at one position are refused
    (never merged); a zero-frame SEG is refused; with ``reference`` the frames of reference must agree.
    """
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path), defer_size=1024)
    except Exception as e:  # noqa: BLE001
        raise ImagioError(f"{path} is a damaged DICOM file ({type(e).__name__})", "Export the segmentation again") from None
    if ds.get("Modality") != "SEG":
        raise ImagioError(f"{path} is not a DICOM SEG (Modality {ds.get('Modality')})")

    def bad(what: str) -> ImagioError:
        return ImagioError(f"DICOM SEG {path}: {what}", "The segmentation is damaged; export it again")

    if reference is not None:
        require_same_frame({str(ds.get("FrameOfReferenceUID", ""))} - {""}, reference, f"The DICOM SEG {path}")
    rows, cols = _int(ds, "Rows", path), _int(ds, "Columns", path)
    nframes = _int(ds, "NumberOfFrames", path, 1)
    bits = _int(ds, "BitsAllocated", path, 1)
    seg_type = str(ds.get("SegmentationType", "BINARY"))
    if nframes < 1:
        raise bad("it has no frames")
    if rows < 1 or cols < 1:
        raise bad(f"its frames are {rows} x {cols} pixels")
    if bits not in (1, 8, 16):
        raise bad(f"BitsAllocated {bits} is not 1, 8 or 16")
    segments = list(ds.get("SegmentSequence", []))
    if not segments:
        raise bad("it has no SegmentSequence")
    try:
        seg_numbers = [int(s.SegmentNumber) for s in segments]
    except Exception:  # noqa: BLE001
        raise bad("a segment has no valid SegmentNumber") from None
    if len(set(seg_numbers)) != len(seg_numbers):
        raise bad(f"segment numbers repeat ({seg_numbers})")
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != nframes:
        raise bad(f"NumberOfFrames is {nframes} but {len(per_frame)} frames are described")
    elem = _pixel_data_element(ds)
    if elem is None:
        raise bad("it has no pixel data")
    need = (nframes * rows * cols * bits + 7) // 8
    length = getattr(elem, "length", None)
    if length is not None and length != 0xFFFFFFFF:
        tell = getattr(elem, "value_tell", None)
        have = min(length, Path(path).stat().st_size - tell) if tell is not None else length
        if have < need:
            raise bad(f"{nframes} frames of {rows} x {cols} need {need} bytes of pixel data, {have} are there")
    try:
        shared = ds.SharedFunctionalGroupsSequence[0]
    except Exception:  # noqa: BLE001
        shared = None

    def group(fg, name):
        for g in (fg, shared):
            if g is not None and name in g and len(g[name].value):
                return g[name].value[0]
        raise bad(f"no {name} for a frame")

    iop = _floats(group(per_frame[0], "PlaneOrientationSequence"), "ImageOrientationPatient", 6, path)
    px = group(per_frame[0], "PixelMeasuresSequence")
    row_sp, col_sp = (float(v) for v in _floats(px, "PixelSpacing", 2, path))
    if min(row_sp, col_sp) <= 0:
        raise bad(f"pixel spacing {row_sp}, {col_sp} mm is not positive")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ipps = np.empty((nframes, 3))
    frame_segment = np.empty(nframes, int)
    labelmap = seg_type == "LABELMAP"
    for n, fg in enumerate(per_frame):
        f_iop = _floats(group(fg, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, path)
        if np.max(np.abs(f_iop - iop)) > IOP_TOL:
            raise bad(f"frame {n + 1} has another orientation than frame 1")
        ipps[n] = _floats(group(fg, "PlanePositionSequence"), "ImagePositionPatient", 3, path)
        if labelmap:
            frame_segment[n] = 0
            continue
        try:
            ref = group(fg, "SegmentIdentificationSequence")
            frame_segment[n] = int(ref.ReferencedSegmentNumber)
        except ImagioError:
            if len(seg_numbers) != 1:
                raise bad(f"frame {n + 1} does not say which segment it belongs to") from None
            frame_segment[n] = seg_numbers[0]
        except Exception:  # noqa: BLE001
            raise bad(f"frame {n + 1} has no valid ReferencedSegmentNumber") from None
        if frame_segment[n] not in seg_numbers:
            raise bad(f"frame {n + 1} refers to segment {frame_segment[n]}, which the SegmentSequence lacks "
                      f"({seg_numbers})")
    if np.max(np.abs(ipps)) > 1e5:
        raise bad("frame positions lie more than 100 m from the origin")
    d = ipps @ normal
    levels = np.unique(np.round(d, 3))
    try:
        declared = float(getattr(px, "SpacingBetweenSlices", 0) or 0)
    except (TypeError, ValueError):
        declared = 0.0
    ref_step = 0.0
    if reference is not None:  # the CT's slice step along the SEG's normal (frames may skip empty slices)
        rd = np.array(reference.GetDirection(), float).reshape(3, 3)
        if abs(abs(float(rd[:, 2] @ normal)) - 1.0) < 1e-4:
            ref_step = float(reference.GetSpacing()[2])

    def _divides(step: float) -> bool:
        q = np.diff(levels) / step
        return step > 1e-3 and bool(np.all(np.abs(q - np.round(q)) < 0.02))

    if len(levels) > 1:
        # slice step: the declared one, else the CT's, else the smallest gap; a SEG omits the frames of empty
        # slices, so the smallest gap between frames may span several slices (read as one, a slice was added)
        spacing = next((s for s in (declared, ref_step) if s > 0 and _divides(s)), float(np.min(np.diff(levels))))
    else:
        try:
            spacing = declared or ref_step or float(getattr(px, "SliceThickness", 1.0) or 1.0)
        except (TypeError, ValueError):
            spacing = 1.0
    if not np.isfinite(spacing) or spacing <= 1e-3:
        raise bad(f"its slice spacing {spacing} mm is not usable")
    kf = (d - levels[0]) / spacing
    k_of = np.round(kf).astype(np.int64)
    if np.max(np.abs(kf - k_of)) > MAX_OFF_SLICE:
        raise bad(f"frames do not lie on a regular slice grid of {spacing:.3g} mm")
    nk = int(k_of.max()) + 1
    require_voxels((cols, rows, nk), f"DICOM SEG {path}")
    n_out = len(segments)
    require_memory(nframes * rows * cols + n_out * nk * rows * cols,
                   f"DICOM SEG {path} ({nframes} frames of {rows} x {cols}, {n_out} segments on {nk} slices)")
    if not labelmap:
        keys = list(zip(frame_segment.tolist(), k_of.tolist(), strict=True))
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise bad(f"two frames of segment {dup[0]} lie on the same slice ({dup[1]}); they would be merged")
    try:
        frames = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom / its decoders
        raise bad(f"its pixel data cannot be decoded ({type(e).__name__}: {str(e)[:100]})") from None
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape != (nframes, rows, cols):
        raise bad(f"its pixel data decode to {frames.shape}, not {nframes} frames of {rows} x {cols}")
    if seg_type == "FRACTIONAL":
        try:
            max_frac = int(ds.get("MaximumFractionalValue", 255))
        except (TypeError, ValueError):
            max_frac = 255
        frames = frames >= (max(max_frac, 1) / 2)
    origin = ipps[int(np.argmin(d))]
    direction = np.c_[row, col, normal]
    out = []
    for seg in segments:
        num = int(seg.SegmentNumber)
        arr = np.zeros((nk, rows, cols), np.uint8)
        frame_ids = range(nframes) if labelmap else np.nonzero(frame_segment == num)[0]
        for fi in frame_ids:
            hit = frames[fi] == num if labelmap else frames[fi] > 0
            arr[k_of[fi]] |= hit.astype(np.uint8)
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(tuple(origin))
        img.SetSpacing((col_sp, row_sp, spacing))
        img.SetDirection(tuple(direction.ravel()))
        color = (1.0, 0.0, 0.0)
        if "RecommendedDisplayCIELabValue" in seg:
            try:
                color = _cielab_to_rgb([float(v) for v in seg.RecommendedDisplayCIELabValue][:3])
            except Exception:  # noqa: BLE001 - a colour is cosmetic
                color = (1.0, 0.0, 0.0)
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
