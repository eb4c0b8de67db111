"""Compose docs/images/demo.png from the pictures of an `imagio demo` run.

    python scripts/make_readme_picture.py DEMO_OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

from imagio.report import _write_png

PANELS = ["case_coronal.png", "ablation_axial.png", "lungnav_3d.png", "margin_3d.png"]


def _read_png(path: Path) -> np.ndarray:
    r = vtk.vtkPNGReader()
    r.SetFileName(str(path))
    r.Update()
    img = r.GetOutput()
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    return arr[::-1]


def _fit(arr: np.ndarray, height: int) -> np.ndarray:
    h, w, _ = arr.shape
    scale = height / h
    rows = np.clip((np.arange(height) / scale).astype(int), 0, h - 1)
    cols = np.clip((np.arange(int(w * scale)) / scale).astype(int), 0, w - 1)
    return arr[rows][:, cols]


def main(demo_dir: Path) -> Path:
    panels = [_fit(_read_png(demo_dir / "images" / p), 300) for p in PANELS if (demo_dir / "images" / p).exists()]
    gap = np.full((300, 6, 3), 255, np.uint8)
    row = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    out = Path(__file__).resolve().parents[1] / "docs" / "images" / "demo.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_png(out, row.astype(np.uint8))
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
