"""Draw the extension icon (Resources/Icons/IMAGIO.png): a lesion, its safety margin and a probe."""

from pathlib import Path

import numpy as np

from imagio.report import _write_png

ICON = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "IMAGIO.png"


def main(path: Path = ICON) -> None:
    n = 128
    y, x = np.mgrid[0:n, 0:n].astype(float)
    rgb = np.zeros((n, n, 3))
    rgb[:] = (0.09, 0.16, 0.30)
    r = np.hypot(x - 70, y - 70)
    rgb[r < 44] = (0.20, 0.55, 0.85)  # ablation zone
    rgb[(r < 44) & (r > 41)] = (0.85, 0.95, 1.0)
    rgb[r < 24] = (0.95, 0.75, 0.15)  # tumour
    # probe from the upper left to the zone centre
    t = np.clip(((x - 8) * 62 + (y - 8) * 62) / (62 * 62 * 2), 0, 1)
    d = np.hypot(x - (8 + 62 * t), y - (8 + 62 * t))
    rgb[d < 3.2] = (0.92, 0.92, 0.92)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(path, (rgb * 255).astype(np.uint8))


if __name__ == "__main__":
    main()
