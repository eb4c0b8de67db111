"""Exactness of the margin metrics on real tumours: zones whose true margin is known by construction.

How the truth is made (independently of the module; README "Exactness")
-----------------------------------------------------------------------
* the tumour's own continuous surface: its native mask (on its own scan grid) smoothed by a Gaussian of one
  native voxel per axis, the 0.5 iso-surface as a closed triangle mesh (flying edges, physical LPS mm);
* a test grid around it: oblique (rotated 23 degrees about (1, 2, 3)), isotropic 1 mm or anisotropic
  0.8 x 0.9 x 2.5 mm;
* the exact signed distance ``sd`` of a point to that mesh (VTK point-to-triangle distance, negative inside);
* tumour raster: voxel centres with ``sd <= 0``; zone grown by exactly k mm: centres with ``sd <= k`` (the
  continuous zone is the tumour dilated by a ball of k mm, its margin is k everywhere it is not exceeded);
  shifted zone: centres x with ``sd(x - s) <= k``, whose minimal margin is exactly k - |s| for any shape
  (negative when |s| > k: the depth of the tumour outside the zone). sd is computed exactly in a band around
  each level (a rough distance from Euclidean distance transforms of an inside test picks the band; its
  error inside the band is checked to be smaller than the band).

Targets (issue 10): on the isotropic 1 mm grids |MAM - truth| <= 0.3 mm on every case and the mean signed error
within +-0.15 mm; on the anisotropic grids |MAM - truth| <= 0.3 x 2.5 mm. Coverage within 1.5 % of the truth's
raster coverage (voxel centres, an estimate of its own: 2.5 %).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imagio.geometry import make_image, rotation_matrix
from imagio.testing import data_path
from IMAGIOMarginLib.metrics import compute_margin

CASES = {  # name: mask path in ../shared/data
    "lidc0314-nodule": "chest-lidc0314/nodule_consensus50.seg.nrrd",
    "sts002-gtv": "sarcoma-sts002/nifti/mask/mask.nii.gz",
    "liver-p2-nodule1": "medmpd-liver-p2/nodule1.nii.gz",
    "liver-p3-nodule1": "medmpd-liver-p3/nodule1.nii.gz",
    "liver-p3-nodule2": "medmpd-liver-p3/nodule2.nii.gz",
    "lungs-p2-nodule": "medmpd-lungs-p2/nodule.nii.gz",
}
ISO = (1.0, 1.0, 1.0)
ANISO = (0.8, 0.9, 2.5)
# (k mm, shift mm along an oblique unit direction): truth k - |s|
ISO_ZONES = ((2.0, 0.0), (5.0, 0.0), (10.0, 0.0), (5.0, 3.0), (2.0, 4.0))
ANISO_ZONES = ((5.0, 0.0), (5.0, 3.0))
SHIFT_DIRECTION = np.array([0.48, -0.6, 0.64]) / np.linalg.norm([0.48, -0.6, 0.64])


def continuous_tumour(mask: sitk.Image):
    """Closed mesh (LPS mm) of the 0.5 iso-surface of the native mask smoothed by one native voxel per axis."""
    import vtk
    from scipy import ndimage
    from vtk.util import numpy_support as ns

    arr = sitk.GetArrayFromImage(mask) > 0
    kji = np.argwhere(arr)
    lo, hi = np.maximum(kji.min(0) - 4, 0), kji.max(0) + 5
    sub = np.zeros(tuple(hi - lo + 4), np.float32)
    crop = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    sub[2:2 + crop.shape[0], 2:2 + crop.shape[1], 2:2 + crop.shape[2]] = crop
    g = ndimage.gaussian_filter(sub, 1.0, mode="constant")
    img = vtk.vtkImageData()
    img.SetDimensions(*g.shape[::-1])
    img.GetPointData().SetScalars(ns.numpy_to_vtk(g.ravel(), deep=True))
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.5)
    fe.Update()
    poly = fe.GetOutput()
    ijk = ns.vtk_to_numpy(poly.GetPoints().GetData()).astype(float) + (lo[::-1] - 2)
    d = np.array(mask.GetDirection()).reshape(3, 3)
    lps = (ijk * np.array(mask.GetSpacing())) @ d.T + np.array(mask.GetOrigin())
    poly.GetPoints().SetData(ns.numpy_to_vtk(lps, deep=True))
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.SplittingOff()
    normals.Update()
    return normals.GetOutput(), lps


def exact_sd(poly, pts: np.ndarray) -> np.ndarray:
    """Signed point-to-triangle distance (mm, negative inside) to the closed mesh."""
    import vtk
    from vtk.util import numpy_support as ns

    f = vtk.vtkImplicitPolyDataDistance()
    f.SetInput(poly)
    out = vtk.vtkDoubleArray()
    f.FunctionValue(ns.numpy_to_vtk(np.ascontiguousarray(pts, float), deep=True), out)
    return ns.vtk_to_numpy(out).copy()


class Truth:
    """The tumour's continuous surface and rasters of it (and of zones around it) on one oblique grid."""

    def __init__(self, poly, lps, spacing, pad_mm=18.0):
        self.poly = poly
        centre = 0.5 * (lps.min(0) + lps.max(0))
        extent = float(np.ptp(lps, 0).max()) + 2 * pad_mm
        size = [int(np.ceil(extent / s)) + 1 for s in spacing]
        ref = make_image(size, spacing, (0, 0, 0), rotation_matrix((1.0, 2.0, 3.0), 23.0))
        c_idx = np.array(ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
        ref.SetOrigin(tuple(np.array(ref.GetOrigin()) + centre - c_idx))
        self.ref = ref
        self.spacing = np.array(spacing, float)
        kji = np.indices(size[::-1]).reshape(3, -1)[::-1].T.astype(float)
        d = np.array(ref.GetDirection()).reshape(3, 3)
        self.centres = (kji * self.spacing) @ d.T + np.array(ref.GetOrigin())
        # approximate signed distance: the mesh's inside by a fine-enough test, then a Maurer distance map
        coarse = self._rough_inside()
        from scipy import ndimage

        sp_kji = self.spacing[::-1]
        d_out = ndimage.distance_transform_edt(~coarse, sampling=sp_kji)  # to the nearest inside centre
        d_in = ndimage.distance_transform_edt(coarse, sampling=sp_kji)  # to the nearest outside centre
        h = 0.5 * float(self.spacing.max())
        self.sd_rough = np.where(coarse, -(d_in - h), d_out - h).ravel()
        self.band = 1.5 * float(self.spacing.max()) + 0.5

    def _rough_inside(self) -> np.ndarray:
        import vtk
        from vtk.util import numpy_support as ns

        sel = vtk.vtkSelectEnclosedPoints()
        pts = vtk.vtkPoints()
        pts.SetData(ns.numpy_to_vtk(np.ascontiguousarray(self.centres), deep=True))
        pd = vtk.vtkPolyData()
        pd.SetPoints(pts)
        sel.SetInputData(pd)
        sel.SetSurfaceData(self.poly)
        sel.SetTolerance(1e-6)
        sel.Update()
        inside = ns.vtk_to_numpy(sel.GetOutput().GetPointData().GetArray("SelectedPoints")) > 0
        return inside.reshape(self.ref.GetSize()[::-1])

    def level_raster(self, level: float, shift_mm: np.ndarray | None = None) -> sitk.Image:
        """Voxel centres x with sd(x - s) <= level, sd exact within the band around the level."""
        pts = self.centres if shift_mm is None else self.centres - shift_mm
        if shift_mm is None:
            rough = self.sd_rough
        else:  # the rough map at the shifted points (trilinear)
            img = sitk.GetImageFromArray(self.sd_rough.reshape(self.ref.GetSize()[::-1]).astype(np.float32))
            img.CopyInformation(self.ref)
            tx = sitk.TranslationTransform(3, [float(-v) for v in shift_mm])
            rough = sitk.GetArrayFromImage(sitk.Resample(img, self.ref, tx, sitk.sitkLinear, 1e3)).ravel()
        near = np.abs(rough - level) < self.band
        out = rough <= level
        exact = exact_sd(self.poly, pts[near])
        assert np.abs(exact - rough[near]).max() < self.band - 0.2  # so every centre outside the band is right
        out[near] = exact <= level
        img = sitk.GetImageFromArray(out.reshape(self.ref.GetSize()[::-1]).astype(np.uint8))
        img.CopyInformation(self.ref)
        return img


def run_case(name: str, spacing, zones, mask: sitk.Image | None = None) -> list[dict]:
    mask = sitk.ReadImage(str(data_path(CASES[name]))) if mask is None else mask
    poly, lps = continuous_tumour(mask)
    truth = Truth(poly, lps, spacing)
    tumor = truth.level_raster(0.0)
    t_arr = sitk.GetArrayViewFromImage(tumor) > 0
    rows = []
    for k, s in zones:
        shift = s * SHIFT_DIRECTION if s else None
        zone = truth.level_raster(k, shift)
        m = compute_margin(tumor, zone, threshold_mm=5.0)
        z_arr = sitk.GetArrayViewFromImage(zone) > 0
        raster_cov = 100.0 * np.count_nonzero(t_arr & z_arr) / np.count_nonzero(t_arr)
        rows.append({"case": name, "grid_mm": "x".join(f"{v:g}" for v in spacing), "k_mm": k, "shift_mm": s,
                     "truth_mm": k - s, "mam_mm": m.minimal_margin_mm, "error_mm": m.minimal_margin_mm - (k - s),
                     "raw_error_mm": m.minimal_margin_uncorrected_mm - (k - s), "replicates": m.grid_replicates,
                     "coverage_percent": m.coverage_percent, "raster_coverage_percent": raster_cov,
                     "residual_ml": m.residual_tumor_ml})
    return rows


@pytest.fixture(scope="module")
def table():
    rows = []
    for name in CASES:
        rows += run_case(name, ISO, ISO_ZONES)
        rows += run_case(name, ANISO, ANISO_ZONES)
    for r in rows:
        print(f"{r['case']:18s} {r['grid_mm']:11s} k {r['k_mm']:4.1f} shift {r['shift_mm']:3.1f} truth "
              f"{r['truth_mm']:+5.1f} MAM {r['mam_mm']:+7.3f} error {r['error_mm']:+.3f} mm (uncorrected "
              f"{r['raw_error_mm']:+.3f}, {r['replicates']} replicates) coverage "
              f"{r['coverage_percent']:6.2f} % (raster {r['raster_coverage_percent']:6.2f} %)")
    return rows


def test_isotropic_oblique_grids(table):
    """Issue 10 on the isotropic 1 mm grids: mean signed error (all zones) and the grown zones' mean within +-0.15 mm
    (every case within 0.3 mm: the next test)."""
    iso = [r for r in table if r["grid_mm"] == "1x1x1"]
    errors = np.array([r["error_mm"] for r in iso])
    assert len({r["case"] for r in iso}) >= 6
    assert abs(errors.mean()) <= 0.15
    grown = np.array([r["error_mm"] for r in iso if r["shift_mm"] == 0])
    assert abs(grown.mean()) <= 0.15, grown


def test_grid_phase_correction_removes_the_minimum_bias(table):
    """Without the grid-phase correction the grown zones' minimum is biased low (the minimum picks the worst of
    the map's residual quantisation error); the correction moves every grown case towards the truth on average."""
    grown = [r for r in table if r["grid_mm"] == "1x1x1" and r["shift_mm"] == 0]
    raw = np.array([r["raw_error_mm"] for r in grown])
    corrected = np.array([r["error_mm"] for r in grown])
    assert raw.mean() < -0.15  # the bias the issue describes
    assert np.abs(corrected).mean() < 0.6 * np.abs(raw).mean()
    assert all(2 <= r["replicates"] <= 8 for r in table)


def test_isotropic_every_case_within_issue_target(table):
    """Issue 10: |MAM - k| <= 0.3 mm on every isotropic case. The 0.8 ml lung P2 nodule with shifted zones was +0.54 and
    +0.42 mm before its thin protrusion (1-2 voxels wide, at the thinnest point) was held in the fit (step 3b)."""
    iso = [r for r in table if r["grid_mm"] == "1x1x1"]
    assert max(abs(r["error_mm"]) for r in iso) <= 0.3, [r for r in iso if abs(r["error_mm"]) > 0.3]


def test_anisotropic_oblique_grids(table):
    """Issue 10: every anisotropic case within 0.3 x the largest spacing (0.75 mm on 0.8 x 0.9 x 2.5 mm)."""
    an = [r for r in table if r["grid_mm"] != "1x1x1"]
    assert max(abs(r["error_mm"]) for r in an) <= 0.3 * max(ANISO), [r for r in an if abs(r["error_mm"]) > 0.75]


def test_margin_is_deterministic():
    """The grid-phase replicates use a fixed seed: the same masks give the same margin, to the bit."""
    mask = sitk.ReadImage(str(data_path(CASES["liver-p3-nodule1"])))
    poly, lps = continuous_tumour(mask)
    truth = Truth(poly, lps, ISO)
    tumor, zone = truth.level_raster(0.0), truth.level_raster(5.0)
    a, b = compute_margin(tumor, zone, 5.0), compute_margin(tumor, zone, 5.0)
    assert a.minimal_margin_mm == b.minimal_margin_mm and a.grid_correction_mm == b.grid_correction_mm
    assert a.minimal_margin_mm == pytest.approx(a.minimal_margin_uncorrected_mm + a.grid_correction_mm, abs=1e-12)


def test_coverage_and_residual(table):
    for r in table:
        # the raster coverage is itself a voxel-count estimate (0.8 ml nodule: ~800 voxels): 2.5 %
        assert abs(r["coverage_percent"] - r["raster_coverage_percent"]) <= 2.5, r
        if r["truth_mm"] > 0.5:
            assert r["coverage_percent"] == pytest.approx(100.0, abs=1e-9) and r["residual_ml"] == 0.0
        if r["truth_mm"] < -0.5:
            assert r["mam_mm"] < 0 and r["residual_ml"] > 0


def plate_on_thick_slices() -> sitk.Image:
    """A tumour drawn on 2.5 mm slices with a protrusion two slices thick: a ball of radius 11 mm (0.78 mm in-plane)
    and, on two slices, a plate 20 mm wide reaching 12 mm beyond it (contours drawn wider on a few slices, as in
    real thick-slice segmentations)."""
    spacing = (0.78, 0.78, 2.5)
    size = (80, 80, 24)
    img = make_image(size, spacing, (0.0, 0.0, 0.0), np.eye(3))
    k, j, i = np.indices(size[::-1]).astype(float)
    x, y, z = (i - 39.5) * 0.78, (j - 39.5) * 0.78, (k - 11.5) * 2.5
    ball = x ** 2 + y ** 2 + z ** 2 <= 11.0 ** 2
    plate = (k >= 11) & (k <= 12) & (x >= 0) & (x <= 23.0) & (np.abs(y) <= 10.0)
    out = sitk.GetImageFromArray((ball | plate).astype(np.uint8))
    out.CopyInformation(img)
    return out


def test_thick_slice_protrusion_is_not_widened():
    """A protrusion two slices thick on an oblique 0.8 x 0.9 x 2.5 mm grid, zone grown by exactly 5 mm (and grown
    and shifted): within 0.3 x the largest spacing. Smoothing by 2 voxels of each axis (5 mm across the slices, the
    previous rule) widened the protrusion: -1.44 mm here, and -2.6 mm on a real liver tumour drawn on 2.5 mm slices;
    the current rule (2 voxels of the finest axis, at least 1 of each) gives -0.48 mm here."""
    rows = run_case("plate-on-thick-slices", ANISO, ANISO_ZONES, mask=plate_on_thick_slices())
    for r in rows:
        print(f"plate {r['shift_mm']:.0f} mm shift: error {r['error_mm']:+.3f} mm (uncorrected {r['raw_error_mm']:+.3f})")
    assert max(abs(r["error_mm"]) for r in rows) <= 0.3 * max(ANISO), rows
