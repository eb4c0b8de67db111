"""MRML nodes from and to SimpleITK images, segments, points, surfaces and tables.

Every function takes the scene explicitly (no global scene) and adds new
nodes; none modifies existing ones.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .errors import ImagioError
from .geometry import ijk_to_ras_matrix, image_from_array
from .io import Segment

_VTK_TYPES = {
    np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR, np.dtype(np.int8): vtk.VTK_SIGNED_CHAR,
    np.dtype(np.int16): vtk.VTK_SHORT, np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT,
    np.dtype(np.int32): vtk.VTK_INT, np.dtype(np.uint32): vtk.VTK_UNSIGNED_INT,
    np.dtype(np.float32): vtk.VTK_FLOAT, np.dtype(np.float64): vtk.VTK_DOUBLE,
}


def _vtk_matrix(m: np.ndarray) -> vtk.vtkMatrix4x4:
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r, c]))
    return vm


def _np_matrix(vm: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


def _image_data(array_kji: np.ndarray) -> vtk.vtkImageData:
    arr = np.ascontiguousarray(array_kji)
    if arr.dtype not in _VTK_TYPES:
        arr = arr.astype(np.float32)
    img = vtk.vtkImageData()
    img.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr.ravel(), deep=True, array_type=_VTK_TYPES[arr.dtype]))
    return img


def volume_node_from_image(scene, image: sitk.Image, name: str, label: bool = False):
    """A new scalar (or labelmap) volume node holding ``image`` with its exact IJK-to-RAS matrix."""
    cls = slicer.vtkMRMLLabelMapVolumeNode if label else slicer.vtkMRMLScalarVolumeNode
    node = cls()
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.SetAndObserveImageData(_image_data(sitk.GetArrayViewFromImage(image)))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_matrix(image)))
    node.CreateDefaultDisplayNodes()
    return node


def image_from_volume_node(node) -> sitk.Image:
    """SimpleITK (LPS) image of a volume node (its parent transforms are not applied)."""
    if node is None or node.GetImageData() is None:
        raise ImagioError("The volume node has no image data", "Choose a loaded volume")
    if node.GetParentTransformNode() is not None:
        raise ImagioError(f"Volume '{node.GetName()}' is under a transform",
                          "Harden the transform first (Data module: right-click > Harden transform)")
    arr = slicer.util.arrayFromVolume(node)
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return image_from_array(arr, _np_matrix(m))  # SimpleITK copies the voxels


def _oriented_image(mask: sitk.Image):
    oi = slicer.vtkOrientedImageData()
    arr = (sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8)
    oi.ShallowCopy(_image_data(arr))
    oi.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras_matrix(mask)))
    return oi


def segmentation_node_from_segments(scene, segments: list[Segment], name: str, reference_node=None):
    """A new segmentation node with one segment per :class:`Segment` (binary labelmap master)."""
    from .scene import ensure_converters

    ensure_converters()
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    if reference_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    seg = node.GetSegmentation()
    for s in segments:
        sid = seg.AddEmptySegment("", s.name, list(s.color))
        _set_tags(seg.GetSegment(sid), s.tags)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                _oriented_image(s.mask), node, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
            raise ImagioError(f"Could not store segment '{s.name}'")
    seg.CollapseBinaryLabelmaps(False)
    return node


def _set_tags(segment, tags: dict | None) -> None:
    """Slicer segment tags from a Segment's ``tags`` (its ``terminology`` string is a .seg.nrrd Tags value)."""
    text = (tags or {}).get("terminology")
    for item in str(text or "").split("|"):
        key, sep, value = item.partition(":")
        if sep and key.strip():
            segment.SetTag(key.strip(), value)


def _get_tags(segment) -> dict:
    """The terminology of a Slicer segment as a Segment's ``tags`` ({} when it has none)."""
    value = vtk.reference("")
    if segment.GetTag("TerminologyEntry", value) and str(value):
        return {"terminology": f"TerminologyEntry:{value}|"}
    return {}


def segments_from_segmentation_node(node, reference_node=None, segment_ids=None) -> list[Segment]:
    """Segments of ``node`` as masks on ``reference_node``'s grid (or the segments' own grid).

    ``segment_ids`` (segment IDs or names) limits the export to those segments, in that order.
    """
    scene = node.GetScene()
    seg = node.GetSegmentation()
    all_ids = [seg.GetNthSegmentID(n) for n in range(seg.GetNumberOfSegments())]
    if segment_ids is None:
        wanted = all_ids
    else:
        by_name = {seg.GetSegment(i).GetName().lower(): i for i in all_ids}
        wanted = []
        for key in segment_ids:
            sid = key if key in all_ids else by_name.get(str(key).lower())
            if sid is None:
                raise ImagioError(f"Segmentation '{node.GetName()}' has no segment '{key}'",
                                  "Segments: " + ", ".join(seg.GetSegment(i).GetName() for i in all_ids))
            wanted.append(sid)
    out = []
    for sid in wanted:
        n = all_ids.index(sid)
        segment = seg.GetSegment(sid)
        lm = slicer.vtkMRMLLabelMapVolumeNode()
        existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        scene.AddNode(lm)
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(sid)
            if reference_node is not None:
                ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, lm, reference_node)
            else:
                ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, lm)
            if not ok or lm.GetImageData() is None:
                raise ImagioError(f"Segment '{segment.GetName()}' could not be exported as a labelmap")
            img = image_from_volume_node(lm)
            mask = sitk.Cast(img > 0, sitk.sitkUInt8)
            out.append(Segment(segment.GetName(), mask, tuple(segment.GetColor()), n + 1, _get_tags(segment)))
        finally:
            _remove_temporary(scene, lm, existing)
    return out


def _remove_temporary(scene, labelmap, existing: set) -> None:
    """Remove a temporary labelmap with the display and colour nodes the export made for it (not older ones)."""
    display = labelmap.GetDisplayNode()
    color = display.GetColorNode() if display is not None else None
    scene.RemoveNode(labelmap)
    for node in (display, color):
        if node is not None and node.GetID() not in existing and scene.GetNodeByID(node.GetID()) is node:
            scene.RemoveNode(node)


def _markups(scene, cls, name, points_ras, labels=None):
    node = cls()
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    pts = np.atleast_2d(np.asarray(points_ras, float))
    for n, p in enumerate(pts):
        idx = node.AddControlPoint(float(p[0]), float(p[1]), float(p[2]))
        if labels is not None:
            node.SetNthControlPointLabel(idx, str(labels[n]))
    return node


def add_fiducials(scene, name: str, points_ras, labels=None):
    """A new markups point list (RAS mm)."""
    return _markups(scene, slicer.vtkMRMLMarkupsFiducialNode, name, points_ras, labels)


def add_curve(scene, name: str, points_ras):
    """A new open markups curve through the RAS points (e.g. a route for Slicer's Endoscopy module)."""
    return _markups(scene, slicer.vtkMRMLMarkupsCurveNode, name, points_ras)


def add_line(scene, name: str, p0_ras, p1_ras):
    """A new markups line from ``p0_ras`` to ``p1_ras`` (e.g. a probe: entry to tip)."""
    return _markups(scene, slicer.vtkMRMLMarkupsLineNode, name, [p0_ras, p1_ras])


def points_from_markups(node) -> np.ndarray:
    """Control points of a markups node (RAS mm, world coordinates)."""
    n = node.GetNumberOfControlPoints()
    out = np.zeros((n, 3))
    for i in range(n):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        out[i] = p
    return out


def add_color_map(scene, name: str, points: list[tuple[float, float, float, float]]):
    """A procedural colour node from (value, r, g, b) points (values in the data unit, e.g. mm)."""
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(scene.GenerateUniqueName(name))
    ctf = vtk.vtkColorTransferFunction()
    for v, r, g, b in points:
        ctf.AddRGBPoint(float(v), float(r), float(g), float(b))
    node.SetAndObserveColorTransferFunction(ctf)
    scene.AddNode(node)
    return node


def add_model(scene, name: str, polydata: vtk.vtkPolyData, color=(1.0, 1.0, 0.0), scalars: str | None = None,
              opacity: float = 1.0, color_node=None, scalar_range=None):
    """A new model node (polydata in RAS mm); optionally coloured by a point-data array."""
    node = slicer.vtkMRMLModelNode()
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.SetAndObservePolyData(polydata)
    display = slicer.vtkMRMLModelDisplayNode()
    scene.AddNode(display)
    display.SetColor(*color)
    display.SetOpacity(opacity)
    display.SetVisibility2D(True)
    if scalars:
        display.SetActiveScalarName(scalars)
        if color_node is not None:
            display.SetAndObserveColorNodeID(color_node.GetID())
        if scalar_range is not None:
            display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
            display.SetScalarRange(*scalar_range)
        display.SetScalarVisibility(True)
    node.SetAndObserveDisplayNodeID(display.GetID())
    return node


def add_table(scene, name: str, rows: list[dict]):
    """A new table node; columns from the keys of the first row, numbers as doubles."""
    node = slicer.vtkMRMLTableNode()
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    if not rows:
        return node
    table = node.GetTable()
    keys = list(rows[0].keys())
    for k in keys:
        numeric = all(isinstance(r.get(k), (int, float, np.integer, np.floating)) and not isinstance(r.get(k), bool)
                      for r in rows)
        col = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        col.SetName(str(k))
        for r in rows:
            v = r.get(k)
            if numeric:
                col.InsertNextValue(float(v))
            else:
                col.InsertNextValue("" if v is None else str(v))
        table.AddColumn(col)
    node.Modified()
    return node


def mask_to_surface_ras(mask: sitk.Image, smoothing: bool = True, decimate: float = 0.0) -> vtk.vtkPolyData:
    """Closed surface (RAS mm) of a binary mask, at the 0.5 iso-level between voxel centres."""
    arr = (sitk.GetArrayViewFromImage(mask) > 0).astype(np.float32)
    if not arr.any():
        raise ImagioError("Cannot make a surface of an empty mask", "Give a segment that contains voxels")
    arr = np.pad(arr, 1)
    img = _image_data(arr)
    img.SetOrigin(-1.0, -1.0, -1.0)
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.5)
    fe.ComputeNormalsOff()
    fe.Update()
    poly = fe.GetOutput()
    if smoothing:
        sm = vtk.vtkWindowedSincPolyDataFilter()
        sm.SetInputData(poly)
        sm.SetNumberOfIterations(15)
        sm.SetPassBand(0.1)
        sm.NormalizeCoordinatesOn()
        sm.Update()
        poly = sm.GetOutput()
    if decimate > 0:
        dec = vtk.vtkDecimatePro()
        dec.SetInputData(poly)
        dec.SetTargetReduction(decimate)
        dec.PreserveTopologyOn()
        dec.Update()
        poly = dec.GetOutput()
    tf = vtk.vtkTransform()
    tf.SetMatrix(_vtk_matrix(ijk_to_ras_matrix(mask)))
    tpf = vtk.vtkTransformPolyDataFilter()
    tpf.SetInputData(poly)
    tpf.SetTransform(tf)
    tpf.Update()
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(tpf.GetOutput())
    normals.AutoOrientNormalsOn()
    normals.SplittingOff()
    normals.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out
