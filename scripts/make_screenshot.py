"""Compose docs/screenshot.png (the Extensions Index screenshot) from the pictures of an `imagio demo` run.

    imagio demo --out DEMO_OUT_DIR && python scripts/make_screenshot.py DEMO_OUT_DIR

Four views in Slicer's four-up arrangement, each under a view bar coloured as Slicer colours its
views (red axial, green coronal, blue-grey 3D), with what the view shows; the pictures are the demo
report's own (rendered offscreen on the digital phantom), not a capture of the Slicer application.
"""

import io
import sys
from pathlib import Path

import matplotlib
from PIL import Image

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

VIEWS = [  # file, view bar colour (Slicer's red / green / 3D view bars), title
    ("ablation_axial.png", "#f34a33", "IMAGIOAblationZone: planned and bioheat zones, liver tumour (axial)"),
    ("planning_model_1_coronal.png", "#6e9b4b", "IMAGIOPlanning: ONNX model vs. truth, liver tumour (coronal)"),
    ("lungnav_3d.png", "#5a6e8c", "IMAGIOLungNav: bronchoscopic route to the lung nodule (3D)"),
    ("margin_3d.png", "#5a6e8c", "IMAGIOMargin: ablative margin on the tumour surface, mm (3D)"),
]


def main(demo_dir: Path, out: Path | None = None) -> Path:
    out = out or Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"
    fig = plt.figure(figsize=(10, 7.2), dpi=100, facecolor="#1e1e1e")
    for n, (name, colour, title) in enumerate(VIEWS):
        img = mpimg.imread(demo_dir / "images" / name)
        ax = fig.add_axes([0.005 + 0.5 * (n % 2), 0.005 + 0.5 * (1 - n // 2), 0.49, 0.455])
        ax.imshow(img, interpolation="lanczos")
        ax.set_axis_off()
        bar = fig.add_axes([0.005 + 0.5 * (n % 2), 0.46 + 0.5 * (1 - n // 2), 0.49, 0.035])
        bar.set_facecolor(colour)
        bar.set_xticks([])
        bar.set_yticks([])
        bar.text(0.01, 0.5, title, color="white", fontsize=9, va="center", transform=bar.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    plt.close(fig)
    buf.seek(0)
    # a 256-colour palette keeps the file small (the Index downloads it for every catalogue view)
    Image.open(buf).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
