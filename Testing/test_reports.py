"""Reports: pictures in the right orientation and crop, a self-contained HTML, a PDF with the same text, CSV."""

import base64
import csv
import re
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from imagio import geometry as g
from imagio import report as rp
from imagio.testing import oblique_image


def _pixels(fig: rp.Figure) -> np.ndarray:
    return (fig.array()[..., :3] * 255).astype(int)


def _where(fig, rgb) -> np.ndarray:
    """(row, col) of pixels of exactly this colour in the picture (the legend strip below it left out)."""
    px = _pixels(fig)
    hits = np.argwhere(np.all(np.abs(px - np.asarray(rgb)) <= 2, axis=-1))
    return hits[hits[:, 0] < 0.9 * px.shape[0]]


def _ball(image: sitk.Image, centre_ras, radius_mm: float) -> sitk.Image:
    size = image.GetSize()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    ras = g.ijk_to_ras(image, ijk.astype(float))
    inside = np.linalg.norm(ras - np.asarray(centre_ras, float), axis=1) <= radius_mm
    arr = inside.reshape(size).transpose(2, 1, 0).astype(np.uint8)
    return g.copy_geometry(arr, image)


@pytest.mark.parametrize("oblique", [False, True])
def test_slices_are_radiological_with_letters_from_their_axes(oblique):
    """A ball on the patient's right shows on the image's left in axial and coronal pictures; one anterior is at
    the top of the axial picture, one superior at the top of the coronal picture; on an oblique grid too."""
    if oblique:
        ct = oblique_image(size=(60, 60, 40), spacing=(1.5, 1.5, 2.0), origin_ras=(40.0, 40.0, -40.0),
                           axis=(1.0, 2.0, 3.0), angle_deg=23.0, pixel=sitk.sitkInt16)
    else:
        ct = g.make_image((60, 60, 40), (1.5, 1.5, 2.0), (45.0, 45.0, -40.0), g.CT_AXES_RAS, sitk.sitkInt16)
    centre = g.ijk_to_ras(ct, (np.array(ct.GetSize()) - 1) / 2.0)
    right = _ball(ct, centre + [15.0, 0, 0], 6.0)
    front = _ball(ct, centre + [0, 15.0, 0], 6.0)
    top = _ball(ct, centre + [0, 0, 15.0], 6.0)
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)

    def picture(axis, mask, point):
        ov = rp.Overlay(mask, red, "ball", fill_opacity=1.0)
        return rp.slice_figure(ct, [ov], point_ras=point, axis=axis, roi=(), window=(0, 100))

    ax_fig = picture("axial", right, centre)
    rows_cols = _where(ax_fig, (255, 0, 0))
    width = _pixels(ax_fig).shape[1]
    assert len(rows_cols) > 50 and rows_cols[:, 1].mean() < 0.45 * width  # patient right on the left
    front_fig = picture("axial", front, centre)
    assert _where(front_fig, (255, 0, 0))[:, 0].mean() < _where(ax_fig, (255, 0, 0))[:, 0].mean() - 20  # anterior up
    cor_fig = picture("coronal", top, centre)
    cor_mid = picture("coronal", _ball(ct, centre, 6.0), centre)
    assert _where(cor_fig, (255, 0, 0))[:, 0].mean() < _where(cor_mid, (255, 0, 0))[:, 0].mean() - 20  # superior up
    assert blue  # (colour of the other overlay in the next test)
    for axis, (left, right_letter, up, down) in {"axial": "RLAP", "coronal": "RLSI", "sagittal": "APSI"}.items():
        u, v, _ = rp._AXES[axis]
        assert (rp.orientation_letter(-u), rp.orientation_letter(u), rp.orientation_letter(-v),
                rp.orientation_letter(v)) == (left, right_letter, up, down)


def test_crop_makes_a_small_lesion_fill_the_picture():
    """A 12 mm ball in a 300 mm CT: cropped to it (15 mm around), it spans a quarter of the picture or more, not
    a few pixels as the whole field of view would give."""
    ct = g.make_image((200, 200, 30), (1.5, 1.5, 2.0), (150.0, 150.0, -30.0), g.CT_AXES_RAS, sitk.sitkInt16)
    centre = g.ijk_to_ras(ct, (np.array(ct.GetSize()) - 1) / 2.0) + [40.0, -30.0, 0.0]
    ball = _ball(ct, centre, 6.0)
    ov = rp.Overlay(ball, (1.0, 0.0, 0.0), "lesion", fill_opacity=1.0)
    cropped = rp.slice_figure(ct, [ov], window=(0, 100))
    whole = rp.slice_figure(ct, [ov], roi=(), window=(0, 100))
    w_crop = np.ptp(_where(cropped, (255, 0, 0))[:, 1]) / _pixels(cropped).shape[1]
    w_whole = np.ptp(_where(whole, (255, 0, 0))[:, 1]) / _pixels(whole).shape[1]
    assert w_crop >= 0.2 and w_whole < 0.06, (w_crop, w_whole)
    # the field of view is the ball's extent + 2 x 15 mm, at least 50 mm
    origin, u, v, w, pix, nu, nv, p = rp._plane_geometry(ct, centre, "axial", [ball], pad_mm=15.0, min_fov_mm=50.0)
    assert (nu - 1) * pix == pytest.approx(max(2 * 6.0 + 2 * 15.0, 50.0), abs=3.1)


def _pdf_text(data: bytes) -> str:
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            s = zlib.decompress(m.group(1))
        except zlib.error:
            continue
        for arr in re.findall(rb"\[(.*?)\]\s*TJ", s, re.S):
            out.append(b"".join(re.findall(rb"\((.*?)\)", arr, re.S)).decode("latin-1"))
        out += [t.decode("latin-1") for t in re.findall(rb"\((.*?)\)\s*Tj", s)]
    return re.sub(r"[^A-Za-z0-9.]", "", "".join(out))


def test_report_is_self_contained_html_pdf_and_csv(tmp_path):
    ct = g.make_image((40, 40, 20), (1.0, 1.0, 2.0), (20.0, 20.0, -20.0), g.CT_AXES_RAS, sitk.sitkInt16)
    ball = _ball(ct, g.ijk_to_ras(ct, (19.5, 19.5, 9.5)), 5.0)
    r = rp.Report("Margin report", "test case")
    r.set_verdict("Insufficient margin: minimal margin 2.1 mm < 5 mm", "warn")
    fig = rp.slice_figure(ct, [rp.Overlay(ball, (1, 0, 0), "tumour")], caption="Axial slice through the tumour.")
    hist = rp.histogram_figure(np.r_[np.linspace(-1, 8, 50)], 10, "margin (mm)", caption="Margin histogram.")
    r.add_section("Margin", [("Minimal ablative margin", 2.1, "mm"), ("Coverage", 99.5, "%")], figures=[fig, hist],
                  tables=[rp.Table("probes", [{"probe": 1, "power_w": 100.0}, {"probe": 2, "power_w": 75.0}])],
                  svgs=[rp.histogram_svg(np.arange(10.0), 5, "margin (mm)")])
    files = r.write(tmp_path)
    names = {f.name for f in files}
    assert names == {"report.html", "report.pdf", "metrics.csv", "probes.csv"}
    html = (tmp_path / "report.html").read_text()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.index("Insufficient margin") < html.index("<table")  # the verdict comes first
    assert "Axial slice through the tumour." in html and "<svg" in html
    pdf = (tmp_path / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b(?!s)", pdf)) >= 1
    text = _pdf_text(pdf)
    for needle in ("minimalmargin2.1mm5mm", "Minimalablativemargin", "Axialslicethroughthetumour.", "power"):
        assert needle in text, needle
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["quantity"], float(r["value"]), r["unit"]) for r in rows] == [
        ("Minimal ablative margin", 2.1, "mm"), ("Coverage", 99.5, "%")]
    assert [r["power_w"] for r in csv.DictReader(open(tmp_path / "probes.csv"))] == ["100.0", "75.0"]


def test_3d_picture_colours_by_margin_and_faces_the_patient():
    """A ball coloured by its own R coordinate (the 'margin'): seen from the front, the patient's right (high values,
    green) is on the picture's left and the left (low values, red) on its right; the colour bar is drawn."""
    import vtk
    from vtk.util import numpy_support

    sph = vtk.vtkSphereSource()
    sph.SetRadius(20.0)
    sph.SetThetaResolution(64)
    sph.SetPhiResolution(64)
    sph.Update()
    poly = sph.GetOutput()
    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData())
    arr = numpy_support.numpy_to_vtk((pts[:, 0] / 2.0).astype(np.float32), deep=True)
    arr.SetName("margin_mm")
    poly.GetPointData().AddArray(arr)
    fig = rp.render_3d([rp.Surface(poly, scalars="margin_mm", colormap=rp.margin_colormap(5.0),
                                   scalar_title="margin (mm)")], size=(400, 400))
    assert fig is not None, "offscreen VTK rendering failed on this machine"
    px = _pixels(fig)
    h, w, _ = px.shape
    greenish = (px[..., 1] > px[..., 0] + 40) & (px[..., 2] < 120)
    reddish = (px[..., 0] > px[..., 1] + 80) & (px[..., 2] < 100)
    body = slice(0, int(w * 0.8))  # the colour bar sits on the right
    g_cols = np.argwhere(greenish[:, body])[:, 1]
    r_cols = np.argwhere(reddish[:, body])[:, 1]
    assert len(g_cols) > 200 and len(r_cols) > 200
    assert g_cols.mean() < r_cols.mean() - 50  # patient right (R > 0, margin > 0) on the picture's left
    assert reddish[:, int(w * 0.85):].any() and greenish[:, int(w * 0.85):].any()  # the colour bar


def test_without_matplotlib_the_report_says_what_is_missing(tmp_path, monkeypatch):
    """As inside Slicer (no matplotlib): HTML with plain pictures and a note, no PDF, no traceback."""
    monkeypatch.setattr(rp, "_have_matplotlib", lambda: False)
    ct = g.make_image((30, 30, 10), (1.0, 1.0, 2.0), (15.0, 15.0, -10.0), g.CT_AXES_RAS, sitk.sitkInt16)
    fig = rp.slice_figure(ct, [rp.Overlay(_ball(ct, g.ijk_to_ras(ct, (14.5, 14.5, 4.5)), 4.0), (1, 0, 0), "t")])
    assert fig.png[:8] == b"\x89PNG\r\n\x1a\n"
    r = rp.Report("No matplotlib")
    r.set_verdict("ok", "ok")
    r.add_section("S", [("a", 1.0, "mm")], figures=[fig, rp.histogram_figure([1.0, 2.0], 2, "x (mm)")])
    names = {f.name for f in r.write(tmp_path)}
    assert names == {"report.html", "metrics.csv"}
    assert "matplotlib is not installed" in (tmp_path / "report.html").read_text()
