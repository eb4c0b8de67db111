"""Reading and writing images and segmentations (RAS-aware, checked, user-facing errors).

Images come back as SimpleITK images in ITK's LPS frame; segmentations as a
list of :class:`Segment`, one binary uint8 mask each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import dicom
from .errors import ImagioError
from .geometry import bounds_overlap, describe_grid, resample_to, same_grid

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
    if path is None or str(path).strip() == "":
        raise ImagioError("No path given", "Give the path of an image or segmentation file")
    p = Path(path).expanduser()
    if not p.exists():
        raise ImagioError(f"{p} does not exist", "Check the path (and the current folder)")
    return p


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
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError:
        raise ImagioError(f"{p} is not an image file IMAGIO can read",
                          "Give a DICOM folder or a NRRD (.nrrd), NIfTI (.nii, .nii.gz) or MetaImage (.mha) file") from None
    image = _check_3d_scalar(image, p)
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImagioError(f"{p} contains NaN or infinite values", "Fix or re-export the volume")
    return image


# ---------------------------------------------------------------- segmentations

def _seg_nrrd_segments(image: sitk.Image, p: Path) -> list[Segment]:
    keys = set(image.GetMetaDataKeys())
    n = 0
    while f"Segment{n}_ID" in keys:
        n += 1
    if n == 0:
        return []
    ncomp = image.GetNumberOfComponentsPerPixel()
    layers = [sitk.VectorIndexSelectionCast(image, c) for c in range(ncomp)] if ncomp > 1 else [image]
    if image.GetDimension() == 4:  # layers as a 4th axis
        size = list(image.GetSize())
        layers = []
        for c in range(size[3]):
            ex = sitk.Extract(image, size[:3] + [0], [0, 0, 0, c])
            layers.append(ex)
    out = []
    for s in range(n):
        get = image.GetMetaData
        name = get(f"Segment{s}_Name") if f"Segment{s}_Name" in keys else f"Segment {s}"
        layer = int(get(f"Segment{s}_Layer")) if f"Segment{s}_Layer" in keys else 0
        value = int(get(f"Segment{s}_LabelValue")) if f"Segment{s}_LabelValue" in keys else 1
        color = PALETTE[s % len(PALETTE)]
        if f"Segment{s}_Color" in keys:
            color = tuple(float(c) for c in get(f"Segment{s}_Color").split()[:3])
        if layer >= len(layers):
            raise ImagioError(f"{p}: segment '{name}' refers to missing layer {layer}", "Re-save it from Slicer")
        mask = sitk.Cast(sitk.Equal(layers[layer], value), sitk.sitkUInt8)
        tags = {"terminology": get(f"Segment{s}_Tags")} if f"Segment{s}_Tags" in keys else {}
        out.append(Segment(name, mask, color, value, tags))
    return out


def _label_segments(image: sitk.Image, p: Path) -> list[Segment]:
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ImagioError(f"{p} has non-integer values, so it is not a label or binary mask",
                              "Give a binary mask (0/1) or a label map with integer labels")
    values = np.unique(arr)
    values = values[values != 0]
    if len(values) > 255:
        raise ImagioError(f"{p} has {len(values)} different values: it looks like an image, not a segmentation",
                          "Give a binary mask (0/1) or a label map")
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
    (nearest neighbour); a mask outside the CT's physical extent is refused.
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
        return segs
    if modality == "SEG":
        segs = [Segment(name, img, color, num) for name, color, num, img in dicom.read_dicom_seg(p)]
    elif modality is not None:
        raise ImagioError(f"{p} is a DICOM {modality} object, not a segmentation",
                          "Give a .seg.nrrd, a label NRRD/NIfTI, an RTSTRUCT or a DICOM SEG")
    else:
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError:
            raise ImagioError(f"{p} is not a segmentation file IMAGIO can read",
                              "Give a .seg.nrrd, a label NRRD/NIfTI, an RTSTRUCT or a DICOM SEG") from None
        segs = _seg_nrrd_segments(image, p)
        if not segs:
            if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (2, 3):
                raise ImagioError(f"{p} is not a 3D label map", "Give a binary mask or label map")
            if image.GetDimension() == 2:
                image = sitk.JoinSeries(image)
            segs = _label_segments(image, p)
    if reference is not None:
        segs = [Segment(s.name, on_reference_grid(s.mask, reference, p.name), s.color, s.label_value, s.tags)
                for s in segs]
    return segs


def on_reference_grid(mask: sitk.Image, reference: sitk.Image, what: str = "segmentation") -> sitk.Image:
    """``mask`` on ``reference``'s grid: as is, or resampled (nearest) if it lies in the same physical frame."""
    if same_grid(mask, reference):
        out = sitk.Cast(mask, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out
    if not bounds_overlap(mask, reference):
        raise ImagioError(
            f"The {what} ({describe_grid(mask)}) lies outside the image ({describe_grid(reference)})",
            "They do not share a physical frame: use the segmentation made on this image, or register them")
    return sitk.Cast(resample_to(mask, reference, nearest=True), sitk.sitkUInt8)


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
