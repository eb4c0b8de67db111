"""Reading and writing images and segmentations (RAS-aware, checked, user-facing errors).

Images come back as SimpleITK images in ITK's LPS frame; segmentations as a
list of :class:`Segment`, one binary uint8 mask each.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import dicom
from .cli_utils import check_readable_path
from .dicom import MAX_LOST_SHARE, lost_share_error
from .errors import ImagioError
from .geometry import bounds_overlap, describe_grid, ijk_to_lps_matrix, resample_to, same_grid
from .guards import check_image_file, format_bytes, native_stderr, require_memory, require_voxels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")

#: Default colours for segments without one (Slicer-like palette).
PALETTE = [
    (0.945, 0.839, 0.569), (0.502, 0.682, 0.502), (0.847, 0.396, 0.310), (0.694, 0.478, 0.396),
    (0.435, 0.722, 0.824), (0.867, 0.510, 0.396), (0.565, 0.933, 0.565), (0.753, 0.408, 0.345),
    (0.863, 0.961, 0.078), (0.306, 0.247, 0.000), (1.000, 0.980, 0.863), (0.902, 0.863, 0.275),
]


@dataclass
class Segment:
    """One segment: a binary mask (uint8 0/1, LPS geometry), its name and colour."""

    name: str
    mask: sitk.Image
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    label_value: int = 1
    tags: dict = field(default_factory=dict)

    def array(self) -> np.ndarray:
        """The mask as a bool array [k, j, i] (a copy)."""
        return sitk.GetArrayFromImage(self.mask) > 0

    def voxel_count(self) -> int:
        return int(np.count_nonzero(sitk.GetArrayViewFromImage(self.mask)))

    def volume_ml(self) -> float:
        return self.voxel_count() * float(np.prod(self.mask.GetSpacing())) / 1000.0


def _check_path(path) -> Path:
    """An existing regular file or folder (a FIFO or device, which would hang or stream, is refused)."""
    if path is None or str(path).strip() == "":
        raise ImagioError("No path given", "Give the path of an image or segmentation file")
    return check_readable_path(path, "image or segmentation")


def _pixel_bytes(pixel_id: int) -> int:
    try:
        return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).itemsize
    except RuntimeError:
        return 8


def _read_file(p: Path, what: str, hint: str) -> sitk.Image:
    """Read an image file after checking its header: declared size against memory and against the bytes
    on disk (a file cut short is refused, with how much is missing). Native messages are captured."""
    check_image_file(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        with native_stderr():
            reader.ReadImageInformation()
        size = reader.GetSize()
        require_voxels(size, str(p))
        require_memory(int(np.prod(size, dtype=float)) * reader.GetNumberOfComponents()
                       * _pixel_bytes(reader.GetPixelID()), f"Reading {p} ({' x '.join(map(str, size))} voxels)")
        with native_stderr():
            return reader.Execute()
    except RuntimeError:
        check_image_file(p, count_compressed=True)  # a compressed file cut short: say how much is missing
        raise ImagioError(f"{p} is not {what} IMAGIO can read", hint) from None


def _has_suffix(p: Path, suffixes) -> bool:
    name = p.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _check_3d_scalar(image: sitk.Image, p: Path) -> sitk.Image:
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise ImagioError(f"{p} is a {image.GetDimension()}D image", "IMAGIO needs a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImagioError(f"{p} has {image.GetNumberOfComponentsPerPixel()} values per voxel",
                          "IMAGIO needs a scalar (grey-value) volume")
    if min(image.GetSize()) < 1:
        raise ImagioError(f"{p} has no voxels")
    return image


def read_image(path, series_uid: str | None = None) -> sitk.Image:
    """Read a CT/MR volume: a DICOM series folder or file, NRRD, NIfTI or MHA."""
    p = _check_path(path)
    if p.is_dir():
        return _check_3d_scalar(dicom.read_dicom_series(p, series_uid), p)
    modality = dicom.dicom_modality(p)
    if modality in ("RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "SR"):
        raise ImagioError(f"{p} is a DICOM {modality}, not an image", "Give the image series folder instead")
    if modality is not None:
        import pydicom

        uid = series_uid or str(pydicom.dcmread(str(p), stop_before_pixels=True).get("SeriesInstanceUID", ""))
        return _check_3d_scalar(dicom.read_dicom_series(p.parent, uid or None), p)
    image = _read_file(p, "an image file", "Give a DICOM folder or a NRRD (.nrrd), NIfTI (.nii, .nii.gz) or "
                       "MetaImage (.mha) file")
    image = _check_3d_scalar(image, p)
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImagioError(f"{p} contains NaN or infinite values", "Fix or re-export the volume")
    return image


# ---------------------------------------------------------------- segmentations

#: At most this many segments in one file (Slicer's label layers hold 255 labels each).
MAX_SEGMENTS = 1024


def _meta_int(image: sitk.Image, key: str, p: Path, default: int) -> int:
    if not image.HasMetaDataKey(key):
        return default
    text = image.GetMetaData(key).strip()
    if not re.fullmatch(r"[-+]?\d+", text):
        raise ImagioError(f"{p}: its {key} is {text[:40]!r}, not a whole number",
                          "The .seg.nrrd header is damaged: re-save it from Slicer")
    return int(text)


def _meta_color(image: sitk.Image, key: str, p: Path, default) -> tuple[float, float, float]:
    if not image.HasMetaDataKey(key):
        return default
    try:
        rgb = [float(c) for c in image.GetMetaData(key).split()[:3]]
    except ValueError:
        rgb = []
    if len(rgb) != 3 or not all(np.isfinite(rgb)):
        raise ImagioError(f"{p}: its {key} is {image.GetMetaData(key)[:40]!r}, not three numbers",
                          "The .seg.nrrd header is damaged: re-save it from Slicer")
    return tuple(min(max(c, 0.0), 1.0) for c in rgb)


def _seg_nrrd_segments(image: sitk.Image, p: Path) -> list[Segment]:
    """Slicer's .seg.nrrd: segment names, layers and label values read from the header, all checked."""
    keys = set(image.GetMetaDataKeys())
    n = 0
    while f"Segment{n}_ID" in keys and n <= MAX_SEGMENTS:
        n += 1
    if n == 0:
        return []
    if n > MAX_SEGMENTS:
        raise ImagioError(f"{p} declares more than {MAX_SEGMENTS} segments", "Split the segmentation")
    ncomp = image.GetNumberOfComponentsPerPixel()
    dim4 = image.GetDimension() == 4
    n_layers = image.GetSize()[3] if dim4 else ncomp
    if image.GetDimension() not in (3, 4) or (dim4 and ncomp != 1):
        raise ImagioError(f"{p} is a {image.GetDimension()}D image with {ncomp} values per voxel, not a segmentation",
                          "Give a 3D .seg.nrrd written by Slicer")
    specs = []
    for s in range(n):
        name = image.GetMetaData(f"Segment{s}_Name") if f"Segment{s}_Name" in keys else f"Segment {s}"
        layer = _meta_int(image, f"Segment{s}_Layer", p, 0)
        value = _meta_int(image, f"Segment{s}_LabelValue", p, 1)
        if not 0 <= layer < n_layers:
            raise ImagioError(f"{p}: segment '{name}' refers to layer {layer}, and the file has layers 0 to "
                              f"{n_layers - 1}", "The .seg.nrrd header is damaged: re-save it from Slicer")
        specs.append((s, name, layer, value))
    size3 = image.GetSize()[:3]
    require_memory(n * int(np.prod(size3, dtype=float)), f"{p}: {n} segments, one mask each "
                   f"({' x '.join(map(str, size3))} voxels)")
    layers = []
    for c in range(n_layers):
        if dim4:
            layers.append(sitk.Extract(image, list(size3) + [0], [0, 0, 0, c]))
        elif ncomp > 1:
            layers.append(sitk.VectorIndexSelectionCast(image, c))
        else:
            layers.append(image)
    out = []
    for s, name, layer, value in specs:
        dtype = sitk.GetArrayViewFromImage(layers[layer]).dtype
        if dtype.kind not in "iu":
            raise ImagioError(f"{p}: layer {layer} holds {dtype} values, not labels", "Re-save it from Slicer")
        info = np.iinfo(dtype)
        if not 1 <= value <= info.max:
            raise ImagioError(f"{p}: segment '{name}' has label value {value}; its {dtype} layer holds 1 to "
                              f"{info.max} (0 is the background)", "The .seg.nrrd header is damaged: re-save it "
                              "from Slicer")
        color = _meta_color(image, f"Segment{s}_Color", p, PALETTE[s % len(PALETTE)])
        mask = sitk.Cast(sitk.Equal(layers[layer], value), sitk.sitkUInt8)
        tags = {"terminology": image.GetMetaData(f"Segment{s}_Tags")} if f"Segment{s}_Tags" in keys else {}
        out.append(Segment(name, mask, color, value, tags))
    return out


def _label_values(arr: np.ndarray) -> np.ndarray:
    """The distinct values of a label array (bincount for small integer ranges: O(n), no sort)."""
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo < 1 << 20:
            # in chunks: bincount casts its input to int64, 8 bytes per voxel (+580 MB for a 512x512x275 mask)
            flat = arr.reshape(-1)
            counts = np.zeros(hi - lo + 1, np.int64)
            for start in range(0, flat.size, _BINCOUNT_CHUNK):
                part = flat[start:start + _BINCOUNT_CHUNK].astype(np.int64)
                counts += np.bincount(part - lo if lo else part, minlength=hi - lo + 1)
            return np.nonzero(counts)[0] + lo
    return np.unique(arr)


#: voxels per bincount call in :func:`_label_values` (32 MB of int64 at a time)
_BINCOUNT_CHUNK = 1 << 22


def _label_segments(image: sitk.Image, p: Path) -> list[Segment]:
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ImagioError(f"{p} has non-integer values, so it is not a label or binary mask",
                              "Give a binary mask (0/1) or a label map with integer labels")
    values = _label_values(arr)
    values = values[values != 0]
    if len(values) > 255:
        raise ImagioError(f"{p} has {len(values)} different values: it looks like an image, not a segmentation",
                          "Give a binary mask (0/1) or a label map")
    require_memory(max(len(values), 1) * arr.size, f"{p}: {len(values)} labels, one mask each "
                   f"({format_bytes(arr.size)} per mask)", "Extract the labels you need into a smaller label map")
    stem = re.sub(r"(\.seg)?\.(nrrd|nii\.gz|nii|mha|mhd|nhdr)$", "", p.name, flags=re.I)
    out = []
    for n, v in enumerate(values):
        mask = sitk.Cast(sitk.Equal(image, float(v)), sitk.sitkUInt8)
        name = stem if len(values) == 1 else f"{stem} label {int(v)}"
        out.append(Segment(name, mask, PALETTE[n % len(PALETTE)], int(v)))
    if not out:
        # keep the (empty) segment: callers decide whether empty is an error
        out.append(Segment(stem, sitk.Cast(image * 0, sitk.sitkUInt8), PALETTE[0], 1))
    return out


def read_segmentation(path, reference: sitk.Image | None = None) -> list[Segment]:
    """Read segments from .seg.nrrd, label/binary NRRD/NIfTI/MHA, DICOM RTSTRUCT or DICOM SEG.

    With ``reference`` (the CT), masks are returned on its grid: identical
    grids pass through; other grids in the same physical frame are resampled
    (nearest neighbour); a mask outside the CT's physical extent is refused, and so is one that loses more
    than 1 % of its voxels outside the CT (less is a logged warning). DICOM objects from another frame of
    reference than a DICOM CT are refused. Segment names are made unique (see :func:`combine_segments`).
    """
    p = _check_path(path)
    if p.is_dir():
        candidates = [f for f in sorted(p.iterdir()) if f.is_file() and dicom.dicom_modality(f) in ("RTSTRUCT", "SEG")]
        if len(candidates) != 1:
            raise ImagioError(f"{p} is a folder", "Give the segmentation file itself (.seg.nrrd, RTSTRUCT or SEG .dcm)")
        p = candidates[0]
    modality = dicom.dicom_modality(p)
    if modality == "RTSTRUCT":
        if reference is None:
            raise ImagioError(f"{p} is an RTSTRUCT: its contours need the CT they were drawn on",
                              "Give the CT too (e.g. --ct or --pre-ct)")
        segs = []
        for n, (name, color, arr) in enumerate(dicom.read_rtstruct(p, reference)):
            mask = sitk.GetImageFromArray(arr.astype(np.uint8))
            mask.CopyInformation(reference)
            segs.append(Segment(name, mask, color, n + 1))
        return combine_segments([segs], [p.name])
    if modality == "SEG":
        segs = [Segment(name, img, color, num) for name, color, num, img in dicom.read_dicom_seg(p, reference)]
    elif modality is not None:
        raise ImagioError(f"{p} is a DICOM {modality} object, not a segmentation",
                          "Give a .seg.nrrd, a label NRRD/NIfTI, an RTSTRUCT or a DICOM SEG")
    else:
        image = _read_file(p, "a segmentation file", "Give a .seg.nrrd, a label NRRD/NIfTI, an RTSTRUCT or a DICOM SEG")
        segs = _seg_nrrd_segments(image, p)
        if not segs:
            if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
                raise ImagioError(f"{p} is not a 3D label map", "Give a binary mask or label map")
            if image.GetDimension() == 2:
                image = sitk.JoinSeries(image)
            segs = _label_segments(image, p)
    if reference is not None:
        segs = [Segment(s.name, on_reference_grid(s.mask, reference, p.name, s.name), s.color, s.label_value, s.tags)
                for s in segs]
    return combine_segments([segs], [p.name])


def voxels_outside(mask: sitk.Image, reference: sitk.Image) -> tuple[int, int]:
    """(voxels of ``mask`` whose centres fall outside ``reference``'s grid, voxels of ``mask``), slice by slice."""
    arr = sitk.GetArrayViewFromImage(mask)
    a = np.linalg.inv(ijk_to_lps_matrix(reference)) @ ijk_to_lps_matrix(mask)
    hi = np.array(reference.GetSize(), float) - 0.5
    size = np.array(mask.GetSize(), float) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    c = corners @ a[:3, :3].T + a[:3, 3]
    if np.all(c >= -0.5) and np.all(c < hi):  # the whole mask grid lies inside: nothing can be lost
        return 0, int(np.count_nonzero(arr))
    lost = total = 0
    for k in range(arr.shape[0]):
        jj, ii = np.nonzero(arr[k])
        if not len(ii):
            continue
        pts = np.vstack([ii, jj, np.full(len(ii), k)]).T @ a[:3, :3].T + a[:3, 3]
        inside = np.all((pts >= -0.5) & (pts < hi), axis=1)
        lost += int(len(ii) - np.count_nonzero(inside))
        total += len(ii)
    return lost, total


def on_reference_grid(mask: sitk.Image, reference: sitk.Image, what: str = "segmentation",
                      name: str | None = None, max_lost_share: float = MAX_LOST_SHARE) -> sitk.Image:
    """``mask`` on ``reference``'s grid: as is, or resampled (nearest) if it lies in the same physical frame.

    Voxels of ``mask`` whose centres fall outside ``reference`` are counted: more than ``max_lost_share``
    (1 %) is refused, fewer are logged as a warning.
    """
    if same_grid(mask, reference):
        out = sitk.Cast(mask, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    if not bounds_overlap(mask, reference):
        raise ImagioError(
            f"The {what} ({describe_grid(mask)}) lies outside the image ({describe_grid(reference)})",
            "They do not share a physical frame: use the segmentation made on this image, or register them")
    lost, total = voxels_outside(mask, reference)
    label = f"{what}: {name}" if name and name != what else what
    if total and lost / total > max_lost_share:
        raise lost_share_error(label, lost, total, float(np.prod(mask.GetSpacing())) / 1000.0,
                               f"the image ({describe_grid(reference)})")
    if lost:
        log.warning("%d of %d voxels (%.2f %%) of '%s' lie outside the image and are left out",
                    lost, total, 100 * lost / total, label)
    return sitk.Cast(resample_to(mask, reference, nearest=True), sitk.sitkUInt8)


def combine_segments(groups: list[list[Segment]], sources: list[str] | None = None) -> list[Segment]:
    """The segments of several lists (files) in one list with unique names.

    A segment whose name (case-insensitive) is taken already is dropped when its mask is identical to the
    first one's (same grid, same voxels), and otherwise renamed ``"<name> (<source>)"`` (or ``"<name> 2"``)
    with a logged warning and ``tags["renamed_from"]``: never silently replaced.
    """
    sources = list(sources) if sources is not None else [f"file {n + 1}" for n in range(len(groups))]
    out: list[Segment] = []
    taken: dict[str, Segment] = {}
    for segs, source in zip(groups, sources, strict=True):
        for s in segs:
            key = s.name.lower()
            if key not in taken:
                taken[key] = s
                out.append(s)
                continue
            first = taken[key]
            if same_grid(first.mask, s.mask) and np.array_equal(sitk.GetArrayViewFromImage(first.mask) > 0,
                                                                sitk.GetArrayViewFromImage(s.mask) > 0):
                log.info("segment '%s' of %s repeats an identical segment: kept once", s.name, source)
                continue
            new = f"{s.name} ({source})"
            n = 2
            while new.lower() in taken:
                new = f"{s.name} {n}"
                n += 1
            log.warning("segment '%s' of %s has the name of an earlier, different segment: renamed '%s'",
                        s.name, source, new)
            renamed = Segment(new, s.mask, s.color, s.label_value, {**s.tags, "renamed_from": s.name})
            taken[new.lower()] = renamed
            out.append(renamed)
    return out


def find_segment(segments: list[Segment], name: str | None = None, default_index: int = 0) -> Segment:
    """Pick a segment by (case-insensitive) name, or the ``default_index``-th one."""
    if not segments:
        raise ImagioError("The segmentation has no segments", "Give a segmentation that contains a segment")
    if name is None:
        return segments[default_index]
    for s in segments:
        if s.name.lower() == name.lower():
            return s
    raise ImagioError(f"No segment named '{name}'", "Segments: " + ", ".join(s.name for s in segments))


def require_nonempty(segment: Segment, role: str = "segment") -> None:
    """Refuse an empty mask: results on it would be misleading."""
    if segment.voxel_count() == 0:
        raise ImagioError(f"The {role} '{segment.name}' is empty", f"Give a {role} that contains voxels")


def write_segmentation(path, segments: list[Segment], reference: sitk.Image | None = None) -> Path:
    """Write segments as a Slicer ``.seg.nrrd`` (names, colours and geometry kept)."""
    from .mrml import segmentation_node_from_segments, volume_node_from_image
    from .scene import new_scene

    p = Path(path)
    if not p.name.lower().endswith(".seg.nrrd"):
        raise ImagioError(f"{p.name}: a segmentation is written as .seg.nrrd", "Name the file *.seg.nrrd")
    import slicer

    scene = new_scene()
    ref_node = volume_node_from_image(scene, reference, "reference") if reference is not None else None
    node = segmentation_node_from_segments(scene, segments, p.name[:-9], ref_node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(p))
    if not storage.WriteData(node):
        raise ImagioError(f"Could not write {p}", "Check that the folder exists and is writable")
    return p


def write_image(path, image: sitk.Image) -> Path:
    """Write a volume (NRRD, NIfTI or MHA by extension), compressed."""
    p = Path(path)
    if not _has_suffix(p, IMAGE_SUFFIXES):
        raise ImagioError(f"{p.name}: unknown image file type", "Use .nrrd, .nii.gz or .mha")
    sitk.WriteImage(image, str(p), True)
    return p
