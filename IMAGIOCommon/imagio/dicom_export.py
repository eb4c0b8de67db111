"""DICOM out: a DICOM SEG of the segments and a TID 1500 measurement report (Comprehensive 3D SR).

``export_dicom(ct_dir, segments, out_dir, margin=..., plan=..., route=...)`` writes

* ``seg.dcm``: one DICOM Segmentation (binary), a segment per input segment, each coded with
  SNOMED CT category and type from its terminology (the ``.seg.nrrd`` tag, else
  :func:`imagio.naming.terminology_from_name`), on the CT's patient, study and frame of reference
  and referencing every CT slice it covers;
* ``sr.dcm``: a TID 1500 Measurement Report referencing the SEG and the CT: per lesion (and per
  ablation zone) its volume, and from the step JSON files the minimal ablative margin, coverage,
  residual tumour volume and shell coverages (``margin.json``), the planned coverage and margin
  (``plan.json``), route length, exit generation, gap and narrowest lumen (``route.json``), each
  with its UCUM unit;
* ``export.json``: what was written (UIDs, segments with codes and voxel counts, every number in
  the SR with its code, unit and the JSON key it came from) and, when ``dciodvfy`` (dicom3tools) is
  on the PATH, its verdict on both files.

Codes: SNOMED CT and DCM codes come from pydicom's DICOM code dictionary. Quantities DICOM has no
code for (minimal ablative margin, shell coverage, ...) use the private coding scheme
``99IMAGIO`` (private schemes start with "99", PS3.16 section 8), declared in the SR's Coding
Scheme Identification Sequence.

highdicom (optional extra ``dicom``) builds both objects: it implements the SEG and SR IODs and
TID 1500 as the standard defines them; writing them by hand with pydicom would be ours to get
right. :func:`read_back` reads both files again, through highdicom and through IMAGIO's own
readers (:func:`imagio.io.read_segmentation` for the masks, :func:`read_sr_measurements` for the
numbers), for the tests and the user.

The Slicer modules call :func:`export_dicom_nodes` with a segmentation node, its CT volume node
and the CT's DICOM files.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, naming
from .cli_utils import check_out_dir, staged_output
from .errors import ImagioError
from .jobs import Job

if TYPE_CHECKING:  # the heavy imports wait until an export runs (`imagio --help` stays quick)
    import SimpleITK as sitk

    from .io import Segment

log = logging.getLogger(__name__)

PRIVATE_SCHEME = "99IMAGIO"
PRIVATE_SCHEME_NAME = "IMAGIO private codes for ablation and navigation quantities"
MANUFACTURER = "IMAGIO"
SEG_SERIES_NUMBER = 9801
SR_SERIES_NUMBER = 9802


def _need_highdicom():
    try:
        import highdicom
    except ImportError:
        raise ImagioError("DICOM SEG/SR export needs the optional package highdicom",
                          'Install it: pip install "imagio[dicom]" (or pip install highdicom)') from None
    return highdicom


# ============================================================================================ codes and units
@dataclass(frozen=True)
class Quantity:
    """One number of the SR: its concept, its unit (UCUM) and where it comes from."""

    key: str  # JSON path, e.g. "margin.minimal_margin_mm"
    code: tuple[str, str, str]  # (value, scheme, meaning)
    unit: tuple[str, str, str]  # UCUM (value, "UCUM", meaning)
    value: float
    group: str  # segment name the measurement belongs to


MM = ("mm", "UCUM", "millimeter")
ML = ("ml", "UCUM", "milliliter")
PERCENT = ("%", "UCUM", "percent")
NO_UNITS = ("1", "UCUM", "no units")
VOLUME = ("118565006", "SCT", "Volume")
PATH_LENGTH = ("121211", "DCM", "Path length")


def _p(code: str, meaning: str) -> tuple[str, str, str]:
    return (code, PRIVATE_SCHEME, meaning)


#: JSON key -> (code, unit) of the quantities taken from the step files.
MARGIN_QUANTITIES = {
    "minimal_margin_mm": (_p("MAM", "Minimal ablative margin"), MM),
    "coverage_percent": (_p("TUMCOV", "Tumour coverage by the ablation zone"), PERCENT),
    "residual_tumor_ml": (_p("RESIDVOL", "Residual tumour volume outside the ablation zone"), ML),
    "margin_ci_mm.0": (_p("MAMCILO", "Minimal ablative margin, 95% interval, lower bound"), MM),
    "margin_ci_mm.1": (_p("MAMCIHI", "Minimal ablative margin, 95% interval, upper bound"), MM),
}
PLAN_QUANTITIES = {
    "coverage_percent": (_p("PLANCOV", "Planned coverage of tumour plus safety margin"), PERCENT),
    "tumor_coverage_percent": (_p("PLANTUMCOV", "Planned tumour coverage"), PERCENT),
    "minimal_margin_mm": (_p("PLANMAM", "Planned minimal ablative margin"), MM),
    "margin_mm": (_p("PLANSAFETY", "Requested safety margin"), MM),
    "probe_count": (_p("PROBES", "Number of ablation probes planned"), NO_UNITS),
}
ROUTE_QUANTITIES = {
    "path_length_mm": (PATH_LENGTH, MM),
    "generation": (_p("EXITGEN", "Airway generation of the route exit"), NO_UNITS),
    "gap_to_target_mm": (_p("EXITGAP", "Gap from the route exit to the target"), MM),
    "min_lumen_diameter_mm": (_p("MINLUMEN", "Narrowest airway lumen diameter on the route"), MM),
}


def _shell_code(shell_mm: str) -> tuple[str, str, str]:
    tag = re.sub(r"[^0-9A-Za-z]", "P", str(shell_mm))
    return _p(f"SHELLCOV{tag}", f"Coverage of the tumour plus a {shell_mm} mm shell")


def _json_value(data: dict, key: str):
    cur = data
    for part in key.split("."):
        if isinstance(cur, list):
            cur = cur[int(part)] if part.isdigit() and int(part) < len(cur) else None
        elif isinstance(cur, dict):
            cur = cur.get(part)
        else:
            return None
    return cur


def _finite(v) -> float | None:
    import numpy as np

    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


# ============================================================================================ the CT
@dataclass
class CTSeries:
    """A CT series: its image (LPS) and its DICOM headers, each with the image slice it lies on."""

    image: sitk.Image
    datasets: list  # pydicom Datasets (headers), in file order
    slice_index: list[int]  # k of each dataset in ``image``
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def read_ct_series(ct_dir, series_uid: str | None = None) -> CTSeries:
    """The CT image and its DICOM headers (a DICOM SEG refers to them slice by slice)."""
    import pydicom

    from .dicom import list_series
    from .io import read_image

    p = Path(ct_dir).expanduser()
    if not p.is_dir():
        raise ImagioError(f"{p} is not a DICOM folder",
                          "DICOM SEG and SR refer to the CT's DICOM files: give the CT's DICOM series folder")
    image = read_image(p, series_uid)
    uid = image.GetMetaData("imagio:SeriesInstanceUID") if image.HasMetaDataKey("imagio:SeriesInstanceUID") else None
    files = [Path(f) for f in list_series(p).get(uid, [])] if uid else []
    if not files:
        raise ImagioError(f"No DICOM image series in {p}", "Give the CT's DICOM series folder")
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    ks, notes = _slice_indices(image, datasets)
    return CTSeries(image, datasets, ks, files, notes)


def _slice_indices(image: sitk.Image, datasets) -> tuple[list[int], list[str]]:
    """k of every DICOM slice in ``image``; refuses slices that are not planes of the image grid."""
    import numpy as np

    direction = np.array(image.GetDirection()).reshape(3, 3)
    size = image.GetSize()
    ks, notes, off = [], [], 0.0
    for ds in datasets:
        iop = np.array(ds.ImageOrientationPatient, float)
        if not (np.allclose(iop[:3], direction[:, 0], atol=1e-4) and np.allclose(iop[3:], direction[:, 1], atol=1e-4)):
            raise ImagioError("The CT's DICOM slices are not oriented like its image", "Export from the original series")
        if int(ds.Rows) != size[1] or int(ds.Columns) != size[0]:
            raise ImagioError("The CT's DICOM slices do not match its image size", "Export from the original series")
        idx = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient]))
        if abs(idx[0]) > 0.01 or abs(idx[1]) > 0.01:
            raise ImagioError("The CT's DICOM slices are shifted in-plane against its image",
                              "Export from the original series")
        k = int(round(idx[2]))
        off = max(off, abs(idx[2] - k))
        if not 0 <= k < size[2]:
            raise ImagioError("A CT slice lies outside the CT image", "Export from the original series")
        ks.append(k)
    if off > 0.01:
        notes.append(f"the CT's slices are not evenly spaced; each DICOM slice takes the mask of the nearest "
                     f"resampled slice (up to {off:.2f} slice off)")
    return ks, notes


# ============================================================================================ SEG
@dataclass
class ExportedSegment:
    number: int
    name: str
    role: str | None
    terminology: naming.Terminology
    algorithm_type: str
    voxels: int
    volume_ml: float
    color: tuple[float, float, float]


def _algorithm_type(seg: Segment, role: str | None) -> str:
    tagged = str(seg.tags.get("algorithm_type", "")).upper() if seg.tags else ""
    if tagged in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
        return tagged
    return "AUTOMATIC" if role == "ablation_zone" else "MANUAL"


def _check_unique_names(segments) -> None:
    names = [s.name for s in segments]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ImagioError(f"Several segments are called {', '.join(dup)}",
                          "Rename them (in Slicer's Segmentations module, or imagio convert --rename OLD=NEW) so the "
                          "SEG's labels are unambiguous")


def build_seg(ct: CTSeries, segments: list[Segment]):
    """A highdicom Segmentation of ``segments`` (masks on ``ct.image``'s grid) -> (dataset, ExportedSegment list)."""
    import numpy as np

    hd = _need_highdicom()
    import SimpleITK as sitk
    from highdicom.sr.coding import CodedConcept
    from pydicom.uid import generate_uid

    from .geometry import same_grid

    if not segments:
        raise ImagioError("No segments to export", "Give one or more --seg files with segments")
    _check_unique_names(segments)
    frames = np.zeros((len(ct.datasets), ct.image.GetSize()[1], ct.image.GetSize()[0], len(segments)), np.uint8)
    described, descriptions = [], []
    for n, s in enumerate(segments, start=1):
        if not same_grid(s.mask, ct.image):
            raise ImagioError(f"Segment '{s.name}' is not on the CT grid", "Read it with the CT as reference")
        arr = sitk.GetArrayViewFromImage(s.mask) > 0
        if not arr.any():
            raise ImagioError(f"Segment '{s.name}' is empty", "Leave empty segments out of the export")
        frames[:, :, :, n - 1] = arr[ct.slice_index]
        role = naming.role_of(s)
        term = naming.terminology_of(s)
        algo = _algorithm_type(s, role)
        kwargs = {}
        if algo != "MANUAL":
            kwargs["algorithm_identification"] = hd.AlgorithmIdentificationSequence(
                name=f"IMAGIO {role or 'segmentation'}"[:64], version=__version__,
                family=CodedConcept("123110", "DCM", "Artificial Intelligence") if role != "ablation_zone"
                else CodedConcept("110001", "DCM", "Image Processing"))
        r, g, b = (int(round(255 * float(np.clip(c, 0, 1)))) for c in s.color)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=s.name[:64],
            segmented_property_category=CodedConcept(*term.category.as_tuple()),
            segmented_property_type=CodedConcept(*term.type.as_tuple()),
            algorithm_type=algo, tracking_uid=generate_uid(), tracking_id=s.name[:64],
            display_color=hd.color.CIELabColor.from_rgb(r, g, b), **kwargs))
        if term.modifier is not None:
            descriptions[-1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                CodedConcept(*term.modifier.as_tuple())]
        voxels = int(arr.sum())
        described.append(ExportedSegment(n, s.name, role, term, algo, voxels,
                                         voxels * float(np.prod(s.mask.GetSpacing())) / 1000.0, tuple(s.color)))
    ref = ct.datasets[0]
    with warnings.catch_warnings():  # highdicom's remarks on the source's own attributes (e.g. a one-part name)
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(hd, ct, frames, descriptions, ref, generate_uid)
    return seg, described


def _segmentation(hd, ct, frames, descriptions, ref, generate_uid):
    return hd.seg.Segmentation(
        source_images=ct.datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="IMAGIO", software_versions=__version__, device_serial_number="none",
        content_label="IMAGIO", content_description="IMAGIO segmentation"[:64],
        series_description=f"IMAGIO SEG of {ref.get('SeriesDescription', 'CT')}"[:64])


# ============================================================================================ SR
def collect_quantities(described: list[ExportedSegment], margin: dict | None = None, plan: dict | None = None,
                       route: dict | None = None) -> tuple[list[Quantity], list[str]]:
    """Every number the SR will hold, with its code, unit, source key and the segment it belongs to."""
    out: list[Quantity] = []
    notes: list[str] = []
    lesions = [d for d in described if d.role == "lesion"]
    for d in described:  # every segment's volume (lesions, zones and organs alike)
        out.append(Quantity(f"segments.{d.name}.volume_ml", VOLUME, ML, d.volume_ml, d.name))

    def target(data: dict | None, hint_keys: tuple[str, ...], what: str) -> str | None:
        names = {d.name.lower(): d.name for d in described}
        for k in hint_keys:
            hint = _json_value(data, k) if data else None
            if isinstance(hint, str) and hint.lower() in names:
                return names[hint.lower()]
        if len(lesions) == 1:
            return lesions[0].name
        if lesions:
            notes.append(f"{what}: {len(lesions)} lesions exported and the JSON does not name one; its numbers are "
                         f"attached to the first, '{lesions[0].name}'")
            return lesions[0].name
        notes.append(f"{what}: no lesion among the segments; its numbers stand in a group of their own")
        return None

    if margin is not None:
        group = target(margin, ("inputs.tumor_segment",), "margin.json")
        for key, (code, unit) in MARGIN_QUANTITIES.items():
            v = _finite(_json_value(margin, key))
            if v is not None:
                out.append(Quantity(f"margin.{key}", code, unit, v, group))
        for shell, v in (margin.get("shell_coverage_percent") or {}).items():
            if _finite(v) is not None:
                out.append(Quantity(f"margin.shell_coverage_percent.{shell}", _shell_code(shell), PERCENT, float(v),
                                    group))
    if plan is not None:
        group = target(plan, ("inputs.tumor_segment", "tumor_segment"), "plan.json")
        for key, (code, unit) in PLAN_QUANTITIES.items():
            v = _finite(_json_value(plan, key))
            if v is not None:
                out.append(Quantity(f"plan.{key}", code, unit, v, group))
    if route is not None:
        group = target(route, ("inputs.lesion_segment", "lesion_segment"), "route.json")
        for key, (code, unit) in ROUTE_QUANTITIES.items():
            v = _finite(_json_value(route, key))
            if v is not None:
                out.append(Quantity(f"route.{key}", code, unit, v, group))
    return out, notes


def build_sr(ct: CTSeries, seg, described: list[ExportedSegment], quantities: list[Quantity]):
    """A TID 1500 Measurement Report (Comprehensive 3D SR) with one measurement group per segment measured."""
    hd = _need_highdicom()
    from highdicom.sr.coding import CodedConcept
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    def cc(t):
        return CodedConcept(*t)

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="IMAGIO", manufacturer_name=MANUFACTURER, model_name=f"IMAGIO {__version__}"))
    context = hd.sr.ObservationContext(observer_device_context=observer)
    by_name = {d.name: d for d in described}
    groups = []
    for name in dict.fromkeys(q.group for q in quantities):
        qs = [q for q in quantities if q.group == name]
        measurements = [hd.sr.Measurement(name=cc(q.code), value=float(q.value), unit=cc(q.unit)) for q in qs]
        if name is not None and name in by_name:
            d = by_name[name]
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=name[:64]),
                referenced_segment=_referenced_segment(hd, seg, d.number),
                finding_type=cc(d.terminology.type.as_tuple()),
                measurements=measurements))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="route and plan"),
                measurements=measurements))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*ct.datasets, seg], content=report, series_instance_uid=generate_uid(),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer=MANUFACTURER, is_complete=True, series_description="IMAGIO measurement report")
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "IMAGIO developers"
    existing = list(getattr(sr, "CodingSchemeIdentificationSequence", []))
    sr.CodingSchemeIdentificationSequence = existing + [scheme]
    return sr


def _referenced_segment(hd, seg, number: int):
    """The SR's reference to one segment and the CT slices it was drawn on."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    refs = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ident = frame.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        if ident is None or int(ident[0].ReferencedSegmentNumber) != number:
            continue
        for src in frame.DerivationImageSequence[0].SourceImageSequence:
            refs[str(src.ReferencedSOPInstanceUID)] = str(src.ReferencedSOPClassUID)
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_images=[hd.sr.SourceImageForSegmentation(cls, uid) for uid, cls in refs.items()])


# ============================================================================================ export
@dataclass
class DicomExport:
    out_dir: Path
    seg_path: Path
    sr_path: Path
    json_path: Path
    info: dict


def export_dicom(ct_dir, segments: list[Segment], out_dir, margin: dict | None = None, plan: dict | None = None,
                 route: dict | None = None, series_uid: str | None = None, ct: CTSeries | None = None,
                 validate: bool = True) -> DicomExport:
    """Write ``seg.dcm``, ``sr.dcm`` and ``export.json`` into ``out_dir`` (an existing folder)."""
    ct = ct if ct is not None else read_ct_series(ct_dir, series_uid)
    out = Path(out_dir)
    seg, described = build_seg(ct, segments)
    quantities, notes = collect_quantities(described, margin, plan, route)
    sr = build_sr(ct, seg, described, quantities)
    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    seg.save_as(str(seg_path))
    sr.save_as(str(sr_path))
    ref = ct.datasets[0]
    info = {
        "files": ["seg.dcm", "sr.dcm", "export.json"],
        "patient_id": str(ref.get("PatientID", "")), "study_instance_uid": str(ref.StudyInstanceUID),
        "frame_of_reference_uid": str(ref.get("FrameOfReferenceUID", "")),
        "ct_series_instance_uid": str(ref.SeriesInstanceUID), "ct_slices": len(ct.datasets),
        "seg": {"sop_instance_uid": str(seg.SOPInstanceUID), "series_instance_uid": str(seg.SeriesInstanceUID),
                "frames": int(seg.NumberOfFrames)},
        "sr": {"sop_instance_uid": str(sr.SOPInstanceUID), "series_instance_uid": str(sr.SeriesInstanceUID),
               "template": "TID 1500 Measurement Report"},
        "segments": [{"number": d.number, "label": d.name, "role": d.role, "voxels": d.voxels,
                      "volume_ml": round(d.volume_ml, 4), "algorithm_type": d.algorithm_type,
                      "category": d.terminology.category.as_tuple(), "type": d.terminology.type.as_tuple(),
                      "type_modifier": d.terminology.modifier.as_tuple() if d.terminology.modifier else None,
                      "coded_from": d.terminology.source} for d in described],
        "measurements": [{"source": q.key, "segment": q.group, "value": q.value, "code": list(q.code),
                          "unit": list(q.unit)} for q in quantities],
        "notes": ct.notes + notes + ["segments not tagged otherwise are recorded as MANUAL (drawn or approved by a "
                                     "person), ablation zones as AUTOMATIC (computed by IMAGIO)"],
    }
    if validate:
        info["validation"] = validate_files(seg_path, sr_path, ct.files[0])
    json_path = out / "export.json"
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    return DicomExport(out, seg_path, sr_path, json_path, info)


def export_dicom_nodes(segmentation_node, ct_volume_node, ct_files, out_dir, segment_ids=None,
                       margin: dict | None = None, plan: dict | None = None, route: dict | None = None,
                       validate: bool = True) -> DicomExport:
    """The same export from MRML nodes, in this process (scripts; the Slicer panels use :func:`start_export_nodes`).

    ``segmentation_node``: a segmentation node, or a list of them (their segments, resampled onto the CT,
    go into one SEG); ``ct_files``: the CT's DICOM files (inside Slicer :func:`ct_files_for_volume_node`);
    ``segment_ids``: segment IDs or names of a single node (default all). Segment terminology tags travel
    with the segments. ``out_dir`` is an existing folder, as for :func:`export_dicom`.
    """
    args = export_arguments_nodes(segmentation_node, ct_volume_node, ct_files, segment_ids)
    return export_images(**args, out_dir=out_dir, margin=margin, plan=plan, route=route, validate=validate,
                         staged=False)


def export_arguments_nodes(segmentation_nodes, ct_volume_node, ct_files, segment_ids=None) -> dict:
    """The image-level arguments of :func:`export_images` read from MRML nodes (checked here, before any job)."""
    from .mrml import image_from_volume_node, segments_from_segmentation_node

    if ct_volume_node is None:
        raise ImagioError("No CT chosen for the DICOM export", "Choose the CT the segments were drawn on")
    nodes = list(segmentation_nodes) if isinstance(segmentation_nodes, (list, tuple)) else [segmentation_nodes]
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise ImagioError("No segmentation chosen for the DICOM export", "Check at least one segmentation")
    if segment_ids is not None and len(nodes) > 1:
        raise ValueError("segment_ids needs a single segmentation node")
    files = [str(f) for f in ct_files]
    if not files:
        raise ImagioError("No DICOM files for the CT", "Load the CT from DICOM (Slicer's DICOM module) and export again")
    segments = []
    for node in nodes:
        if node.GetSegmentation().GetNumberOfSegments() == 0:
            raise ImagioError(f"Segmentation '{node.GetName()}' has no segments", "Uncheck it, or add its segments")
        segments += segments_from_segmentation_node(node, ct_volume_node, segment_ids)  # with their tags
    _check_unique_names(segments)  # before any job starts
    return {"ct_image": image_from_volume_node(ct_volume_node), "ct_files": files, "segments": segments}


def export_images(ct_image, ct_files, segments, out_dir, margin: dict | None = None, plan: dict | None = None,
                  route: dict | None = None, validate: bool = True, staged: bool = True,
                  progress=None) -> DicomExport:
    """:func:`export_dicom` on a CT image (as loaded, LPS) and its DICOM files; the background job's function.

    With ``staged`` the files are written in a hidden staging folder and ``out_dir`` (new, or empty) appears
    with all of them at once, or not at all (an error or a cancel leaves no half export).
    """
    import pydicom

    if progress is not None:
        progress.update(0.05, "Reading the CT's DICOM headers")
    files = [Path(f) for f in ct_files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ImagioError(f"{len(missing)} of the CT's {len(files)} DICOM files are missing (e.g. {missing[0]})",
                          "Import the CT into Slicer's DICOM database again, or export with imagio export-dicom")
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    ks, notes = _slice_indices(ct_image, datasets)
    ct = CTSeries(ct_image, datasets, ks, files, notes)
    if progress is not None:
        progress.update(0.2, "Writing the DICOM SEG and SR")
    if not staged:
        return export_dicom(None, segments, out_dir, margin, plan, route, ct=ct, validate=validate)
    with staged_output(out_dir) as stage:
        res = export_dicom(None, segments, stage, margin, plan, route, ct=ct, validate=validate)
    out = Path(out_dir).resolve()
    return DicomExport(out, out / res.seg_path.name, out / res.sr_path.name, out / res.json_path.name, res.info)


EXPORT_JOB = "imagio.dicom_export.export_images"


def start_export_nodes(segmentation_nodes, ct_volume_node, ct_files, out_dir, segment_ids=None,
                       margin: dict | None = None, plan: dict | None = None, route: dict | None = None,
                       validate: bool = True, python: str | None = None):
    """:func:`export_dicom_nodes` as a background job (:class:`imagio.jobs.Job`): the nodes are read now, SEG,
    SR and dciodvfy run in the child; its result is the :class:`DicomExport` (``out_dir`` new or empty)."""
    check_out_dir(out_dir)  # refused before anything starts
    args = export_arguments_nodes(segmentation_nodes, ct_volume_node, ct_files, segment_ids)
    return Job(EXPORT_JOB, {**args, "out_dir": str(out_dir), "margin": margin, "plan": plan, "route": route,
                            "validate": validate}, python=python, prefix="imagio-dicom-export-")


def ct_files_for_volume_node(volume_node, database) -> list[Path]:
    """The DICOM files of a CT loaded through Slicer's DICOM module, in its slice order.

    Slicer's DICOM scalar-volume plugin records the SOP Instance UIDs of a loaded series in the volume's
    ``DICOM.instanceUIDs`` attribute (space-separated); ``database`` is Slicer's DICOM database
    (``slicer.dicomDatabase``, a ``ctkDICOMDatabase``), which knows each instance's file.
    """
    if volume_node is None:
        raise ImagioError("No CT chosen for the DICOM export", "Choose the CT the segments were drawn on")
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise ImagioError(f"The CT '{volume_node.GetName()}' was not loaded from DICOM, so a DICOM SEG cannot refer to "
                          "its slices", "Load the CT with the DICOM module (import its folder, then Load), or run "
                          "imagio export-dicom --ct DICOM_FOLDER")
    if database is None or not getattr(database, "isOpen", True):
        raise ImagioError("Slicer's DICOM database is not open", "Open the DICOM module once, then export again")
    files, lost = [], []
    for uid in uids:
        f = database.fileForInstance(uid)
        (files if f and Path(f).is_file() else lost).append(Path(f) if f else uid)
    if lost:
        raise ImagioError(f"{len(lost)} of the {len(uids)} slices of '{volume_node.GetName()}' are not in Slicer's DICOM "
                          "database or their files are gone", "Import the CT's DICOM folder again (DICOM module)")
    return files


def new_export_folder(parent, name: str, now=None) -> Path:
    """A new folder name under ``parent`` for one export: ``<name>-DICOM-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if
    taken), so an export never writes over an earlier one. ``parent`` must be an existing folder."""
    if parent is None or str(parent).strip() == "":
        raise ImagioError("No output folder chosen for the DICOM export", "Choose the folder to write into")
    base = Path(parent).expanduser()
    if not base.is_dir():
        raise ImagioError(f"The output folder {base} does not exist", "Choose an existing folder")
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "IMAGIO"
    out = base / f"{clean}-DICOM-{stamp}"
    n = 2
    while os.path.lexists(out):
        out = base / f"{clean}-DICOM-{stamp}-{n}"
        n += 1
    return out


def export_summary(res: DicomExport) -> str:
    """What an export wrote, for a panel or a log: files, segments with volumes (ml), measurements, dciodvfy."""
    info = res.info
    segs = ", ".join(f"{s['label']} {s['volume_ml']:.2f} ml" for s in info["segments"])
    n_seg, n_num = len(info["segments"]), len(info["measurements"])
    text = (f"Wrote seg.dcm ({n_seg} segment{'s' * (n_seg != 1)}: {segs}) and sr.dcm ({n_num} "
            f"measurement{'s' * (n_num != 1)}) to {res.out_dir}.")
    v = info.get("validation")
    if v and "seg" in v:
        n = len(v["seg"]["errors"]) + len(v["sr"]["errors"])
        text += (f" dciodvfy: {n} error{'s' * (n != 1)} of their own"
                 + (f" ({len(v['ct_errors'])} in the source CT)" if v["ct_errors"] else "") + ".")
    elif v:
        text += f" Not validated: dciodvfy {v.get('dciodvfy', 'not run')}."
    return text


class DicomExportLogicMixin:
    """The DICOM export of a module's Logic (no Qt, no global scene: nodes in, a background job out).

    A module's Logic records its last result as the JSON the matching command writes (``margin.json``,
    ``plan.json`` or ``route.json``) with :meth:`setExportResults`; :meth:`startDicomExport` exports the
    chosen segmentations on the chosen CT with those numbers in the SR, into a new folder.
    """

    _exportResults: dict | None = None
    _exportResultsText: str = ""

    def setExportResults(self, kind: str | None, data: dict | None = None, text: str = "") -> None:
        """``kind`` "margin", "plan" or "route" (``data``: that command's JSON), or None: segment volumes only."""
        if kind is not None and kind not in ("margin", "plan", "route"):
            raise ValueError(f"unknown result kind {kind!r}")
        self._exportResults = {kind: data} if kind is not None and data is not None else None
        self._exportResultsText = text if self._exportResults else ""

    @property
    def exportResults(self) -> dict:
        """The keyword arguments (``margin=``, ``plan=`` or ``route=``) the SR gets; empty: volumes only."""
        return dict(self._exportResults or {})

    def describeExportResults(self) -> str:
        """One line for the panel: which numbers the SR will carry besides each segment's volume."""
        if not self._exportResults:
            return "The SR will hold each segment's volume (ml); this module has no result to add yet."
        return f"The SR will hold each segment's volume (ml) and {self._exportResultsText}."

    def startDicomExport(self, segmentationNodes, ctVolumeNode, ctFiles, outParent, python: str | None = None):
        """``(job, folder)``: SEG + SR of ``segmentationNodes`` on ``ctVolumeNode`` (its DICOM ``ctFiles``) into a
        new folder under ``outParent`` (:func:`new_export_folder`), as a background job whose result is a
        :class:`DicomExport`."""
        name = ctVolumeNode.GetName() if ctVolumeNode is not None else "IMAGIO"
        folder = new_export_folder(outParent, name)
        job = start_export_nodes(segmentationNodes, ctVolumeNode, ctFiles, folder, python=python,
                                 **self.exportResults)
        return job, folder


# ============================================================================================ validation
def dciodvfy_path() -> str | None:
    return shutil.which("dciodvfy")


def run_dciodvfy(path) -> dict:
    """``dciodvfy -new`` on one file: its error and warning lines (dicom3tools)."""
    exe = dciodvfy_path()
    if exe is None:
        return {"available": False}
    r = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=300)
    lines = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    return {"available": True, "errors": [ln for ln in lines if ln.startswith("Error")],
            "warnings": [ln for ln in lines if ln.startswith("Warning")], "output": lines}


def _normal(line: str) -> str:
    """A dciodvfy message without the element path, to match the same problem in two files."""
    return re.sub(r"\s+", " ", re.sub(r"^(Error|Warning) - ", "", line)).strip()


def validate_files(seg_path, sr_path, ct_file) -> dict:
    """dciodvfy on SEG, SR and one CT slice; errors of the outputs that the CT has too are set apart."""
    if dciodvfy_path() is None:
        return {"dciodvfy": "not found (install dicom3tools to validate)"}
    ct = run_dciodvfy(ct_file)
    ct_msgs = {_normal(e) for e in ct["errors"] + ct["warnings"]}
    out = {"dciodvfy": "dicom3tools", "ct_errors": ct["errors"]}
    for name, p in (("seg", seg_path), ("sr", sr_path)):
        res = run_dciodvfy(p)
        own = [e for e in res["errors"] if _normal(e) not in ct_msgs]
        out[name] = {"errors": own, "errors_also_in_ct": [e for e in res["errors"] if _normal(e) in ct_msgs],
                     "warnings": res["warnings"]}
    return out


# ============================================================================================ reading back
def read_sr_measurements(path) -> list[dict]:
    """IMAGIO's own SR reader (pydicom only): every NUM item with its concept, value, unit and the segment.

    Returns ``[{"code": (value, scheme, meaning), "value": float, "unit": (value, scheme, meaning),
    "segment_number": int | None, "tracking_id": str | None}]`` in document order.
    """
    import pydicom

    ds = pydicom.dcmread(str(path))
    out: list[dict] = []

    def code(item):
        return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))

    def walk(items, segment=None, tracking=None):
        # first pass: this level's segment reference and tracking identifier
        for it in items:
            vt = it.get("ValueType")
            if vt == "IMAGE" and "ReferencedSOPSequence" in it:
                ref = it.ReferencedSOPSequence[0]
                if "ReferencedSegmentNumber" in ref:
                    segment = int(ref.ReferencedSegmentNumber[0] if isinstance(ref.ReferencedSegmentNumber, list)
                                  else ref.ReferencedSegmentNumber)
            if vt == "TEXT" and "ConceptNameCodeSequence" in it and code(it.ConceptNameCodeSequence[0])[0] == "112039":
                tracking = str(it.TextValue)
        for it in items:
            vt = it.get("ValueType")
            if vt == "NUM" and "MeasuredValueSequence" in it:
                mv = it.MeasuredValueSequence[0]
                out.append({"code": code(it.ConceptNameCodeSequence[0]), "value": float(mv.NumericValue),
                            "unit": code(mv.MeasurementUnitsCodeSequence[0]), "segment_number": segment,
                            "tracking_id": tracking})
            if "ContentSequence" in it:
                walk(it.ContentSequence, segment, tracking)

    walk(ds.ContentSequence)
    return out


def read_back(out_dir, ct_dir=None, ct: CTSeries | None = None) -> dict:
    """Read ``seg.dcm`` and ``sr.dcm`` back through highdicom and through IMAGIO's readers.

    Returns voxel counts per segment label (``highdicom`` and ``imagio``) and the SR's numbers
    (``highdicom`` and ``imagio``: ``{(code value, segment label): (value, unit code)}``).
    """
    import numpy as np

    hd = _need_highdicom()
    from .io import read_segmentation

    out = Path(out_dir)
    ct = ct if ct is not None else read_ct_series(ct_dir)
    seg = hd.seg.segread(str(out / "seg.dcm"))
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    uids = [str(d.SOPInstanceUID) for d in ct.datasets]
    covered = {str(r.ReferencedSOPInstanceUID) for f in seg.PerFrameFunctionalGroupsSequence
               for r in f.DerivationImageSequence[0].SourceImageSequence}
    uids = [u for u in uids if u in covered]
    pix = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=sorted(labels))
    hd_counts = {labels[n]: int(np.count_nonzero(pix[..., i])) for i, n in enumerate(sorted(labels))}
    own = read_segmentation(out / "seg.dcm", reference=ct.image)
    own_counts = {s.name: s.voxel_count() for s in own}
    sr = hd.sr.srread(str(out / "sr.dcm"))
    hd_numbers = {}
    for grp in sr.content.get_volumetric_roi_measurement_groups():
        number = grp.referenced_segment.referenced_segment_numbers[0] if grp.referenced_segment else None
        for m in grp.get_measurements():
            hd_numbers[(str(m.name.value), labels.get(number))] = (float(m.value), str(m.unit.value))
    for grp in sr.content.get_planar_roi_measurement_groups():
        for m in grp.get_measurements():
            hd_numbers[(str(m.name.value), None)] = (float(m.value), str(m.unit.value))
    for grp in _measurement_groups_without_roi(sr):
        for m in grp.get_measurements():
            hd_numbers[(str(m.name.value), None)] = (float(m.value), str(m.unit.value))
    own_numbers = {(m["code"][0], labels.get(m["segment_number"])): (m["value"], m["unit"][0])
                   for m in read_sr_measurements(out / "sr.dcm")}
    return {"voxels": {"highdicom": hd_counts, "imagio": own_counts},
            "numbers": {"highdicom": hd_numbers, "imagio": own_numbers}, "segment_labels": labels}


def _measurement_groups_without_roi(sr) -> list:
    """TID 1501 groups (no image region): highdicom lists them with get_image_measurement_groups()."""
    getter = getattr(sr.content, "get_image_measurement_groups", None)
    return list(getter()) if getter is not None else []


# ============================================================================================ command line
def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "export-dicom", help="DICOM SEG of the segments + TID 1500 SR of the measurements, on the CT's DICOM series",
        description="Writes OUT/seg.dcm (DICOM SEG, SNOMED CT coded segments on the CT's patient, study and frame of "
                    "reference), OUT/sr.dcm (TID 1500 measurement report: lesion volumes and the numbers of "
                    "--margin, --plan and --route, with UCUM units) and OUT/export.json. Needs highdicom "
                    '(pip install "imagio[dicom]").')
    p.add_argument("--ct", required=True, help="the CT's DICOM series folder (the SEG and SR refer to its slices)")
    p.add_argument("--series-uid", help="series to use when the folder holds several")
    p.add_argument("--seg", required=True, action="extend", nargs="+", metavar="SEG",
                   help="segmentation file(s): .seg.nrrd, label NRRD/NIfTI, RTSTRUCT, DICOM SEG (on the CT's frame)")
    p.add_argument("--margin", help="margin.json of `imagio margin` (minimal margin, coverage, residual, shells)")
    p.add_argument("--plan", help="plan.json of `imagio ablation plan` (planned coverage and margin)")
    p.add_argument("--route", help="route.json of `imagio lungnav` (route length, exit generation, gap)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_export)


def _read_json(path, what: str) -> dict | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ImagioError(f"{what} file {p} does not exist", "Give the JSON file the step wrote")
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ImagioError(f"{p} is not a JSON file", f"Give the {what} file the step wrote") from None
    if not isinstance(data, dict):
        raise ImagioError(f"{p} does not hold a JSON object", f"Give the {what} file the step wrote")
    return data


def _cmd_export(args) -> int:
    from .io import read_segmentation

    margin, plan, route = (_read_json(args.margin, "margin.json"), _read_json(args.plan, "plan.json"),
                           _read_json(args.route, "route.json"))
    if margin is not None and "minimal_margin_mm" not in margin:
        raise ImagioError(f"{args.margin} has no minimal_margin_mm", "Give the margin.json written by `imagio margin`")
    if route is not None and "path_length_mm" not in route:
        raise ImagioError(f"{args.route} has no path_length_mm", "Give the route.json written by `imagio lungnav`")
    if plan is not None and "coverage_percent" not in plan:
        raise ImagioError(f"{args.plan} has no coverage_percent", "Give the plan.json written by `imagio ablation plan`")
    ct = read_ct_series(args.ct, args.series_uid)
    segments, skipped = [], []
    for path in args.seg:
        for s in read_segmentation(path, reference=ct.image):
            (segments if s.voxel_count() else skipped).append(s)
    if not segments:
        raise ImagioError("None of the segments has a voxel on this CT (they are empty, or drawn on another image)",
                          "Give the segmentations made on this CT series")
    inputs = [args.ct, *args.seg, *(p for p in (args.margin, args.plan, args.route) if p)]
    with staged_output(args.out, inputs=inputs) as stage:
        res = export_dicom(None, segments, stage, margin, plan, route, ct=ct)
        if skipped:
            res.info["notes"].append("empty segments left out: " + ", ".join(s.name for s in skipped))
            res.json_path.write_text(json.dumps(res.info, indent=2) + "\n")
    info = res.info
    print(f"wrote seg.dcm ({len(info['segments'])} segments, {info['seg']['frames']} frames), sr.dcm "
          f"({len(info['measurements'])} measurements) and export.json to {args.out}")
    for s in info["segments"]:
        print(f"  {s['number']}: {s['label']} ({s['type'][2]}, {s['volume_ml']:.2f} ml, {s['voxels']} voxels)")
    for s in skipped:
        print(f"  left out (empty): {s.name}")
    v = info.get("validation", {})
    if "seg" in v:
        print(f"dciodvfy: SEG {len(v['seg']['errors'])} errors, SR {len(v['sr']['errors'])} errors "
              f"(errors the CT itself has: {len(v['ct_errors'])}, not counted)")
        for e in v["seg"]["errors"] + v["sr"]["errors"]:
            print(f"imagio: warning: dciodvfy: {e}", file=sys.stderr)
    else:
        print(f"dciodvfy: {v.get('dciodvfy', 'not run')}")
    return 0


__all__ = ["register_cli", "export_dicom", "export_dicom_nodes", "start_export_nodes", "export_images",
           "ct_files_for_volume_node", "new_export_folder", "export_summary", "DicomExportLogicMixin", "read_ct_series", "build_seg",
           "build_sr", "collect_quantities", "read_back", "read_sr_measurements", "validate_files", "run_dciodvfy",
           "dciodvfy_path", "DicomExport", "PRIVATE_SCHEME"]
