"""Model cards: the JSON file beside an ``.onnx`` model that says how to run it.

A card (``<name>.json``, ``"imagio_model_card": 1``) holds everything the
engine needs and nothing it has to guess. Array axes follow numpy/nnU-Net
order ``[k, j, i]`` (slice, row, column), hence the ``_kji`` suffixes::

    {
      "imagio_model_card": 1,
      "name": "phantom-lesions", "version": "1", "description": "...",
      "intended_use": "...", "clinical_use": false,
      "onnx": "phantom_lesions.onnx",
      "input": {"channels": 1, "modality": ["CT"]},
      "target_spacing_kji_mm": [2.0, 2.0, 2.0],
      "transpose_forward": [0, 1, 2],
      "crop_to_nonzero": true,
      "normalization": [{"scheme": "CT", "clip_low": -1000, "clip_high": 400,
                         "mean": 40.0, "std": 120.0}],
      "patch_size_kji": [32, 48, 48],
      "overlap": 0.5,
      "mirror_axes_kji": [0, 1, 2],
      "resampling": {"anisotropy_threshold": 3.0, "force_separate_z": null},
      "labels": [{"value": 0, "name": "background"},
                 {"value": 1, "name": "Liver tumor", "color": [0.9, 0.4, 0.2],
                  "terminology": {"category": {...}, "type": {...}}}]
    }

``force_separate_z`` null resamples the low-resolution axis separately (nearest)
when the spacing is anisotropic, true always, false never (nnU-Net's rule).

Normalisation schemes (as nnU-Net): ``CT`` clips to [clip_low, clip_high] and
subtracts the stored foreground ``mean`` / divides by ``std``; ``ZScore``
uses the image's own mean and std; ``NoNormalization`` passes values through.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from imagio.errors import ImagioError

CARD_KEY = "imagio_model_card"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
MODELS_ENV = "IMAGIO_MODELS"
SCHEMES = ("CT", "ZScore", "NoNormalization")


@dataclass
class Label:
    value: int
    name: str
    color: tuple[float, float, float] = (0.9, 0.6, 0.2)
    terminology: dict = field(default_factory=dict)


@dataclass
class ModelCard:
    path: Path
    name: str
    onnx_path: Path
    channels: int
    modality: list[str]
    target_spacing_kji_mm: list[float]
    patch_size_kji: list[int]
    labels: list[Label]
    normalization: list[dict]
    overlap: float = 0.5
    mirror_axes_kji: list[int] = field(default_factory=list)
    transpose_forward: list[int] = field(default_factory=lambda: [0, 1, 2])
    crop_to_nonzero: bool = True
    anisotropy_threshold: float = 3.0
    force_separate_z: bool | None = None
    clinical_use: bool = False
    description: str = ""
    intended_use: str = ""
    version: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "card": str(self.path),
            "onnx": str(self.onnx_path),
            "modality": self.modality,
            "labels": [lab.name for lab in self.labels if lab.value != 0],
            "target_spacing_kji_mm": self.target_spacing_kji_mm,
            "patch_size_kji": self.patch_size_kji,
            "clinical_use": self.clinical_use,
            "description": self.description,
        }


def _require(d: dict, key: str, path: Path):
    if key not in d:
        raise ImagioError(f"Model card {path} has no '{key}'", "Write the card as described in imagio/model_card.py")
    return d[key]


def load_card(path_or_dir) -> ModelCard:
    """Read and check a model card; ``path_or_dir`` is the JSON or a folder holding exactly one card."""
    p = Path(path_or_dir)
    if not p.exists():
        raise ImagioError(f"Model card {p} does not exist", "Give the path of a model card (.json) or its folder")
    if p.is_dir():
        cards = [c for c in sorted(p.glob("*.json")) if _is_card(c)]
        if len(cards) != 1:
            found = ", ".join(c.name for c in cards) or "none"
            raise ImagioError(f"Folder {p} must hold exactly one model card, found {found}",
                              "Give the card's .json path instead")
        p = cards[0]
    if p.suffix.lower() == ".onnx":
        beside = p.with_suffix(".json")
        if not beside.exists():
            raise ImagioError(f"{p} has no model card beside it ({beside.name})",
                              "Export the model with `imagio export-onnx`, which writes the card")
        p = beside
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImagioError(f"Model card {p} is not readable JSON ({e})", "Check the file") from None
    if not isinstance(d, dict) or CARD_KEY not in d:
        raise ImagioError(f"{p} is not an IMAGIO model card (no '{CARD_KEY}' key)",
                          "Export the model with `imagio export-onnx`, which writes the card")
    onnx_rel = _require(d, "onnx", p)
    onnx_path = (p.parent / onnx_rel).resolve()
    inp = _require(d, "input", p)
    channels = int(inp.get("channels", 1))
    modality = list(inp.get("modality", ["CT"] * channels))
    spacing = [float(s) for s in _require(d, "target_spacing_kji_mm", p)]
    patch = [int(s) for s in _require(d, "patch_size_kji", p)]
    if len(spacing) != 3 or len(patch) != 3 or min(spacing) <= 0 or min(patch) <= 0:
        raise ImagioError(f"Model card {p}: target_spacing_kji_mm and patch_size_kji must be 3 positive numbers",
                          "Only 3D models are supported")
    labels = []
    for lab in _require(d, "labels", p):
        labels.append(Label(int(lab["value"]), str(lab["name"]), tuple(lab.get("color", (0.9, 0.6, 0.2))),
                            dict(lab.get("terminology", {}))))
    if [lab.value for lab in labels] != list(range(len(labels))) or len(labels) < 2:
        raise ImagioError(f"Model card {p}: labels must be numbered 0..N-1 (background first), at least two",
                          "Fix the card's labels")
    norm = list(_require(d, "normalization", p))
    if len(norm) != channels:
        raise ImagioError(f"Model card {p}: {len(norm)} normalisation entries for {channels} input channels",
                          "Give one normalisation per channel")
    for n in norm:
        if n.get("scheme") not in SCHEMES:
            raise ImagioError(f"Model card {p}: unknown normalisation scheme {n.get('scheme')!r}",
                              f"Use one of {', '.join(SCHEMES)}")
        if n["scheme"] == "CT":
            for key in ("clip_low", "clip_high", "mean", "std"):
                _require(n, key, p)
    overlap = float(d.get("overlap", 0.5))
    if not 0.0 <= overlap < 1.0:
        raise ImagioError(f"Model card {p}: overlap {overlap} must be in [0, 1)", "Use e.g. 0.5")
    transpose = [int(a) for a in d.get("transpose_forward", [0, 1, 2])]
    if sorted(transpose) != [0, 1, 2]:
        raise ImagioError(f"Model card {p}: transpose_forward {transpose} is not a permutation of 0, 1, 2",
                          "Fix the card")
    return ModelCard(
        path=p.resolve(), name=str(d.get("name", p.stem)), onnx_path=onnx_path, channels=channels,
        modality=modality, target_spacing_kji_mm=spacing, patch_size_kji=patch, labels=labels,
        normalization=norm, overlap=overlap, mirror_axes_kji=[int(a) for a in d.get("mirror_axes_kji", [])],
        transpose_forward=transpose, crop_to_nonzero=bool(d.get("crop_to_nonzero", True)),
        anisotropy_threshold=float(d.get("resampling", {}).get("anisotropy_threshold", 3.0)),
        force_separate_z=d.get("resampling", {}).get("force_separate_z", None),
        clinical_use=bool(d.get("clinical_use", False)), description=str(d.get("description", "")),
        intended_use=str(d.get("intended_use", "")), version=str(d.get("version", "")), raw=d,
    )


def _is_card(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"{CARD_KEY}"' in head


def model_dirs() -> list[Path]:
    """Folders searched for model cards: the shipped models, then each folder in ``$IMAGIO_MODELS``."""
    dirs = [SHIPPED_MODELS_DIR]
    for part in os.environ.get(MODELS_ENV, "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser())
    return dirs


def find_cards() -> list[ModelCard]:
    """Every readable model card in :func:`model_dirs` (recursively); unreadable ones are skipped."""
    cards, seen = [], set()
    for d in model_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*.json")):
            if p.resolve() in seen or not _is_card(p):
                continue
            seen.add(p.resolve())
            try:
                cards.append(load_card(p))
            except ImagioError:
                continue
    return cards


def find_card_by_name(name: str) -> ModelCard:
    cards = find_cards()
    for c in cards:
        if c.name.lower() == name.lower():
            return c
    names = ", ".join(c.name for c in cards) or "none"
    raise ImagioError(f"No model card named {name!r} (found: {names})",
                      f"Give a card path, or put the model folder on {MODELS_ENV}")


def write_card(path: Path, card: dict) -> None:
    d = dict(card)
    d.setdefault(CARD_KEY, 1)
    Path(path).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
