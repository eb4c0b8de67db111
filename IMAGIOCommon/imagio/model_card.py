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

Optional entries:

* ``"folds": [{"fold": "0", "onnx": "m_fold0.onnx"}, ...]`` instead of ``onnx``: a
  fold ensemble (``fold_all`` is the fold named ``"all"``); the engine averages
  the folds' logits as ``nnUNetv2_predict -f 0 1 2 3 4`` does.
* ``"output": {"activation": "sigmoid", "regions_class_order": [1, 2, 3],
  "regions": [[1, 2, 3], [2, 3], [3]]}``: a region-based model (one sigmoid
  output per region, label ``regions_class_order[i]`` written where region ``i``
  has probability > 0.5, in that order). Default ``{"activation": "softmax"}``.
* ``"resampling": {"anisotropy_threshold": 3.0, "data": {"order": 3, "order_z": 0,
  "force_separate_z": null}, "probabilities": {"order": 1, "order_z": 0,
  "force_separate_z": null}}`` (nnU-Net's plans kwargs; ``force_separate_z`` null
  resamples the low-resolution axis separately when the spacing is anisotropic,
  true always, false never).
* ``"intended_use"``: a text, or ``{"summary", "modality", "body_region",
  "segments", "spacing_mm_kji": {"min", "max"}, "field_of_view_mm_kji": {"min",
  "max"}, "intensity": {"unit", "p01_min", "p01_max", "p99_min", "p99_max"}}``;
  :mod:`imagio.intended_use` checks an image against the ranges given.
* normalisation ``"use_mask_for_norm": true`` (ZScore inside the non-zero mask).

Normalisation schemes (as nnU-Net): ``CT`` clips to [clip_low, clip_high] and
subtracts the stored foreground ``mean`` / divides by ``std``; ``ZScore``
uses the image's own mean and std; ``NoNormalization`` passes values through.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio import schema as S
from imagio.errors import ImagioError

log = logging.getLogger(__name__)

CARD_KEY = "imagio_model_card"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"
MODELS_ENV = "IMAGIO_MODELS"
SCHEMES = ("CT", "ZScore", "NoNormalization")
#: nnU-Net's default resampling (plans: resampling_fn_data_kwargs / resampling_fn_probabilities_kwargs)
RESAMPLING_DEFAULTS = {"data": {"order": 3, "order_z": 0, "force_separate_z": None},
                       "probabilities": {"order": 1, "order_z": 0, "force_separate_z": None}}
SUPPORTED_ORDERS = {"data": (0, 1, 3), "probabilities": (0, 1)}
INTENSITY_KEYS = ("p01_min", "p01_max", "p99_min", "p99_max")


@dataclass
class Label:
    value: int
    name: str
    color: tuple[float, float, float] = (0.9, 0.6, 0.2)
    terminology: dict = field(default_factory=dict)


@dataclass
class Fold:
    name: str                  # "0" ... "4" or "all"
    onnx_path: Path


@dataclass
class IntendedUse:
    """What the model was made for; :func:`imagio.intended_use.check_intended_use` checks an image against it."""

    summary: str = ""
    modality: list[str] = field(default_factory=list)
    body_region: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    spacing_mm_kji: dict | None = None          # {"min": [k, j, i], "max": [k, j, i]}
    field_of_view_mm_kji: dict | None = None    # {"min": [...], "max": [...]}
    intensity: dict | None = None               # {"unit": "HU", "p01_min", "p01_max", "p99_min", "p99_max"}

    def to_dict(self) -> dict:
        d = {"summary": self.summary, "modality": self.modality, "body_region": self.body_region,
             "segments": self.segments}
        for key in ("spacing_mm_kji", "field_of_view_mm_kji", "intensity"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d

    def lines(self) -> list[str]:
        """Human-readable lines for `imagio models` and the Slicer module."""
        out = []
        if self.summary:
            out.append(self.summary)
        what = []
        if self.modality:
            what.append("/".join(self.modality))
        if self.body_region:
            what.append(", ".join(self.body_region))
        if what:
            out.append("for " + "; ".join(what))
        if self.segments:
            out.append("segments " + ", ".join(self.segments))
        for key, name, unit in (("spacing_mm_kji", "spacing", "mm"), ("field_of_view_mm_kji", "field of view", "mm")):
            r = getattr(self, key)
            if r:
                lo = "x".join(f"{v:g}" for v in r["min"])
                hi = "x".join(f"{v:g}" for v in r["max"])
                out.append(f"{name} {lo} to {hi} {unit} (k,j,i)")
        if self.intensity:
            i = self.intensity
            out.append(f"intensity: 1st percentile {i.get('p01_min', '-inf')} to {i.get('p01_max', 'inf')}, "
                       f"99th percentile {i.get('p99_min', '-inf')} to {i.get('p99_max', 'inf')} {i.get('unit', '')}"
                       .rstrip())
        return out


@dataclass
class ModelCard:
    path: Path
    name: str
    folds: list[Fold]
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
    resampling_data: dict = field(default_factory=lambda: dict(RESAMPLING_DEFAULTS["data"]))
    resampling_probabilities: dict = field(default_factory=lambda: dict(RESAMPLING_DEFAULTS["probabilities"]))
    regions_class_order: list[int] | None = None
    regions: list[list[int]] | None = None
    clinical_use: bool = False
    description: str = ""
    intended: IntendedUse = field(default_factory=IntendedUse)
    version: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        """The first fold's network (single-fold models have one)."""
        return self.folds[0].onnx_path

    @property
    def intended_use(self) -> str:
        return self.intended.summary

    @property
    def force_separate_z(self):
        return self.resampling_probabilities.get("force_separate_z")

    @property
    def num_classes(self) -> int:
        """Label values in the output, background included."""
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per label (softmax) or one per region (sigmoid)."""
        return len(self.regions_class_order) if self.regions_class_order else len(self.labels)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "card": str(self.path),
            "onnx": [str(f.onnx_path) for f in self.folds] if len(self.folds) > 1 else str(self.onnx_path),
            "folds": [f.name for f in self.folds],
            "modality": self.modality,
            "labels": [lab.name for lab in self.labels if lab.value != 0],
            "region_based": bool(self.regions_class_order),
            "target_spacing_kji_mm": self.target_spacing_kji_mm,
            "patch_size_kji": self.patch_size_kji,
            "clinical_use": self.clinical_use,
            "description": self.description,
            "intended_use": self.intended.to_dict(),
        }


def _require(d: dict, key: str, path: Path):
    if key not in d:
        raise ImagioError(f"Model card {path} has no '{key}'", "Write the card as described in imagio/model_card.py")
    return d[key]


def _bad(path: Path, what: str, hint: str = "Fix the card (see imagio/model_card.py)") -> ImagioError:
    return ImagioError(f"Model card {path}: {what}", hint)


def _resampling(d: dict, p: Path) -> tuple[float, dict, dict]:
    r = d.get("resampling", {}) or {}
    if not isinstance(r, dict):
        raise _bad(p, "'resampling' must be an object")
    legacy = r.get("force_separate_z", None)
    out = []
    for key in ("data", "probabilities"):
        v = {**RESAMPLING_DEFAULTS[key], "force_separate_z": legacy, **(r.get(key) or {})}
        if v["order"] not in SUPPORTED_ORDERS[key] or v["order_z"] not in (0, 1):
            raise _bad(p, f"resampling.{key} order {v['order']} / order_z {v['order_z']} is not supported "
                          f"(orders {SUPPORTED_ORDERS[key]}, order_z 0 or 1)")
        if v["force_separate_z"] not in (None, True, False):
            raise _bad(p, f"resampling.{key}.force_separate_z must be null, true or false")
        out.append(v)
    thr = float(r.get("anisotropy_threshold", 3.0))
    if not thr > 0:
        raise _bad(p, f"anisotropy_threshold {thr} must be positive")
    return thr, out[0], out[1]


def _range3(v, p: Path, key: str) -> dict | None:
    if v is None:
        return None
    try:
        lo, hi = [float(x) for x in v["min"]], [float(x) for x in v["max"]]
    except (KeyError, TypeError, ValueError):
        raise _bad(p, f"intended_use.{key} must be {{'min': [k, j, i], 'max': [k, j, i]}}") from None
    if len(lo) != 3 or len(hi) != 3 or any(a <= 0 or a > b for a, b in zip(lo, hi, strict=True)):
        raise _bad(p, f"intended_use.{key} needs 3 positive minima, each at most its maximum")
    return {"min": lo, "max": hi}


def _intended(d: dict, p: Path) -> IntendedUse:
    iu = d.get("intended_use", "")
    if isinstance(iu, str):
        return IntendedUse(summary=iu)
    if not isinstance(iu, dict):
        raise _bad(p, "'intended_use' must be a text or an object")

    def strings(key):
        v = iu.get(key, [])
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise _bad(p, f"intended_use.{key} must be a list of texts")
        return list(v)

    inten = iu.get("intensity")
    if inten is not None:
        if not isinstance(inten, dict) or not any(k in inten for k in INTENSITY_KEYS):
            raise _bad(p, f"intended_use.intensity must give some of {', '.join(INTENSITY_KEYS)}")
        try:
            inten = {k: (float(v) if k in INTENSITY_KEYS else str(v)) for k, v in inten.items()}
        except (TypeError, ValueError):
            raise _bad(p, "intended_use.intensity values must be numbers") from None
    return IntendedUse(summary=str(iu.get("summary", "")), modality=strings("modality"),
                       body_region=strings("body_region"), segments=strings("segments"),
                       spacing_mm_kji=_range3(iu.get("spacing_mm_kji"), p, "spacing_mm_kji"),
                       field_of_view_mm_kji=_range3(iu.get("field_of_view_mm_kji"), p, "field_of_view_mm_kji"),
                       intensity=inten)


def _folds(d: dict, p: Path) -> list[Fold]:
    if "folds" in d:
        raw = d["folds"]
        if not isinstance(raw, list) or not raw:
            raise _bad(p, "'folds' must be a non-empty list of {'fold', 'onnx'}")
        folds = []
        for f in raw:
            if not isinstance(f, dict) or "onnx" not in f:
                raise _bad(p, "each entry of 'folds' needs 'fold' and 'onnx'")
            folds.append(Fold(str(f.get("fold", len(folds))), (p.parent / str(f["onnx"])).resolve()))
        if len({f.name for f in folds}) != len(folds):
            raise _bad(p, "fold names repeat")
        return folds
    onnx_rel = _require(d, "onnx", p)
    src = d.get("source") if isinstance(d.get("source"), dict) else {}
    name = src.get("fold") or (src.get("folds") or ["0"])[0]
    return [Fold(str(name), (p.parent / str(onnx_rel)).resolve())]


#: Bounds of a card (issue 13): each keeps a run finite in memory and time, or a number meaningful.
MAX_PATCH_AXIS = 512
MAX_PATCH_VOXELS = 256 ** 3  # one window of a 10-class model: 10 x 16.8 M x 4 bytes = 671 MB of logits
MAX_OVERLAP = 0.9  # at 0.9 a window steps a tenth of the patch: at most 10^3 times a tiling's windows
SPACING_RANGE_MM = (0.05, 20.0)
MAX_CARD_BYTES = 1 << 20

_TERM = S.Obj({"scheme": S.Str(max_len=64), "code": S.Str(max_len=64), "meaning": S.Str(max_len=256)})
_NORM = S.Obj(
    {"scheme": S.Enum(*SCHEMES, name="normalisation scheme"),
     "clip_low": S.Num(min=-1e5, max=1e5), "clip_high": S.Num(min=-1e5, max=1e5),
     "mean": S.Num(min=-1e5, max=1e5), "std": S.Num(min=0, max=1e5, min_inclusive=False),
     "use_mask_for_norm": S.Bool()},
    required=("scheme",),
    checks=[S.Where(lambda n: n["scheme"] != "CT" or all(k in n for k in ("clip_low", "clip_high", "mean", "std")),
                    "scheme", "the CT scheme needs clip_low, clip_high, mean and std"),
            S.Less("clip_low", "clip_high")])
_LABEL = S.Obj({"value": S.Int(min=0, max=255), "name": S.Str(min_len=1, max_len=200),
                "color": S.List(S.Num(min=-1e3, max=1e3), length=3, what="numbers (RGB 0..1, clipped)"),
                "terminology": S.Obj({k: _TERM for k in ("category", "type", "anatomic_region")})},
               required=("value", "name"))
_RESAMPLE = S.Obj({"order": S.Int(min=0, max=5), "order_z": S.Int(min=0, max=5), "force_separate_z": S.Optional(S.Bool())})
CARD_SCHEMA = S.Obj(
    {CARD_KEY: S.Enum(1, name="model card version"),
     "name": S.Str(min_len=1, max_len=200), "version": S.Str(max_len=200), "description": S.Str(),
     "intended_use": S.OneOf(S.Str(), S.Obj({})), "clinical_use": S.Bool(),
     "onnx": S.RelPath(suffix=".onnx"),
     "folds": S.List(S.Obj({"fold": S.OneOf(S.Str(max_len=16), S.Int(min=0, max=99)), "onnx": S.RelPath(suffix=".onnx")},
                           required=("onnx",)), min_len=1, max_len=10, what="folds"),
     "input": S.Obj({"channels": S.Int(min=1, max=16), "modality": S.List(S.Str(max_len=64), min_len=1, max_len=16)},
                    defaults={"channels": 1},
                    checks=[S.Where(lambda i: "modality" not in i or len(i["modality"]) == i["channels"],
                                    "modality", "must name one modality per input channel")]),
     "target_spacing_kji_mm": S.List(S.Num(*SPACING_RANGE_MM, unit="mm"), length=3, what="spacings (3D models only)"),
     "patch_size_kji": S.List(S.Int(min=1, max=MAX_PATCH_AXIS), length=3, product_max=MAX_PATCH_VOXELS,
                              what="patch sizes (voxels, 3D models only)"),
     "overlap": S.Num(min=0, max=MAX_OVERLAP),
     "mirror_axes_kji": S.List(S.Int(min=0, max=2), max_len=3, unique=True, what="axes"),
     "transpose_forward": S.List(S.Int(min=0, max=2), length=3, unique=True, what="axes (a permutation of 0, 1, 2)"),
     "crop_to_nonzero": S.Bool(),
     "normalization": S.List(_NORM, min_len=1, max_len=16, what="entries"),
     "resampling": S.Obj({"anisotropy_threshold": S.Num(min=0, max=100, min_inclusive=False),
                          "force_separate_z": S.Optional(S.Bool()), "data": _RESAMPLE, "probabilities": _RESAMPLE}),
     "output": S.Obj({"activation": S.Enum("softmax", "sigmoid", name="output activation"),
                      "regions_class_order": S.List(S.Int(min=1, max=255), max_len=255),
                      "regions": S.List(S.List(S.Int(min=0, max=255), max_len=255), max_len=255)}),
     "labels": S.List(_LABEL, min_len=2, max_len=256, what="labels"),
     "source": S.Obj({}), "training": S.Obj({})},
    required=(CARD_KEY, "input", "target_spacing_kji_mm", "patch_size_kji", "normalization", "labels"),
    checks=[S.Where(lambda d: "onnx" in d or "folds" in d, "onnx", "is required (or 'folds') but missing"),
            S.Where(lambda d: [lab["value"] for lab in d["labels"]] == list(range(len(d["labels"]))), "labels",
                    "labels must be numbered 0..N-1 (background first), at least two"),
            S.Where(lambda d: len(d["normalization"]) == d["input"]["channels"], "normalization",
                    "needs one normalisation entry per input channel")])


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
    d = S.load_json(p, MAX_CARD_BYTES, what="Model card")
    if not isinstance(d, dict) or CARD_KEY not in d:
        raise ImagioError(f"{p} is not an IMAGIO model card (no '{CARD_KEY}' key)",
                          "Export the model with `imagio export-onnx`, which writes the card")
    # every key's type and range, the onnx files inside the card's folder (imagio.schema), before anything is used
    S.validate(CARD_SCHEMA, d, source=f"Model card {p}", base_dir=p.parent,
               hint="Fix the card (see imagio/model_card.py) or re-export the model")
    folds = _folds(d, p)
    inp = _require(d, "input", p)
    channels = int(inp.get("channels", 1))
    if channels < 1:
        raise _bad(p, f"input.channels {channels} must be at least 1")
    modality = list(inp.get("modality", ["CT"] * channels))
    spacing = [float(s) for s in _require(d, "target_spacing_kji_mm", p)]
    patch = [int(s) for s in _require(d, "patch_size_kji", p)]
    if len(spacing) != 3 or len(patch) != 3 or min(spacing) <= 0 or min(patch) <= 0:
        raise ImagioError(f"Model card {p}: target_spacing_kji_mm and patch_size_kji must be 3 positive numbers",
                          "Only 3D models are supported")
    labels = []
    for lab in _require(d, "labels", p):
        labels.append(Label(int(lab["value"]), str(lab["name"]),
                            tuple(min(max(float(c), 0.0), 1.0) for c in lab.get("color", (0.9, 0.6, 0.2))),
                            dict(lab.get("terminology", {}))))
    if [lab.value for lab in labels] != list(range(len(labels))) or len(labels) < 2:
        raise ImagioError(f"Model card {p}: labels must be numbered 0..N-1 (background first), at least two",
                          "Fix the card's labels")
    if len(labels) > 256:
        raise _bad(p, f"{len(labels)} labels; at most 256 fit the uint8 label map")
    output = d.get("output", {}) or {}
    order = None
    regions = None
    if output.get("activation", "softmax") == "sigmoid":
        order = [int(v) for v in output.get("regions_class_order", [])]
        if not order or sorted(order) != list(range(1, len(labels))):
            raise _bad(p, f"region-based card: regions_class_order {order} must list the labels 1..{len(labels) - 1}")
        regions = [[int(v) for v in r] for r in output.get("regions", [])] or None
    elif output.get("activation", "softmax") != "softmax":
        raise _bad(p, f"output.activation {output.get('activation')!r} must be softmax or sigmoid")
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
    mirror = [int(a) for a in d.get("mirror_axes_kji", [])]
    if any(a not in (0, 1, 2) for a in mirror):
        raise _bad(p, f"mirror_axes_kji {mirror} must be axes 0, 1, 2")
    thr, rs_data, rs_prob = _resampling(d, p)
    return ModelCard(
        path=p.resolve(), name=str(d.get("name", p.stem)), folds=folds, channels=channels,
        modality=modality, target_spacing_kji_mm=spacing, patch_size_kji=patch, labels=labels,
        normalization=norm, overlap=overlap, mirror_axes_kji=mirror,
        transpose_forward=transpose, crop_to_nonzero=bool(d.get("crop_to_nonzero", True)),
        anisotropy_threshold=thr, resampling_data=rs_data, resampling_probabilities=rs_prob,
        regions_class_order=order, regions=regions,
        clinical_use=bool(d.get("clinical_use", False)), description=str(d.get("description", "")),
        intended=_intended(d, p), version=str(d.get("version", "")), raw=d,
    )


def _is_card(path: Path) -> bool:
    """Whether a folder entry looks like a model card: a regular file whose start names the card key (read as
    bytes: a binary or non-UTF-8 .json beside the card is skipped, never a UnicodeDecodeError; a named pipe is never
    opened, which would block)."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"{CARD_KEY}"'.encode() in head


def model_dirs() -> list[Path]:
    """Folders searched for model cards: the shipped models, then each folder in ``$IMAGIO_MODELS``."""
    dirs = [SHIPPED_MODELS_DIR]
    for part in os.environ.get(MODELS_ENV, "").split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser())
    return dirs


def find_cards() -> list[ModelCard]:
    """Every valid model card in :func:`model_dirs` (recursively); a broken one is skipped with a logged warning."""
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
            except ImagioError as e:  # one broken card must not hide the others
                log.warning("warning: skipped a broken model card: %s", e)
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


# ----------------------------------------------------------------------------- intended use, checked

MODALITY_KEYS = ("imagio:Modality", "0008|0060")


def _fmt(v) -> str:
    return " x ".join(f"{float(x):.3g}" for x in v)


def check_intended_use(card: ModelCard, images) -> list[str]:
    """One-line reasons why ``images`` lie outside ``card``'s intended use; empty when they fit.

    Checked only where the card states it: the DICOM modality (when the image
    carries it), the voxel spacing and the field of view (mm, [k, j, i]) within
    the card's ranges, and the image's 1st / 99th intensity percentiles within
    the card's bounds. Body region and what the model segments are shown to the
    user, not checked (nothing in a CT volume states them reliably).
    """
    iu = card.intended
    ref = images if isinstance(images, sitk.Image) else list(images)[0]
    problems = []
    modality = next((ref.GetMetaData(k).strip() for k in MODALITY_KEYS if ref.HasMetaDataKey(k)), "")
    if iu.modality and modality and modality.upper() not in {m.upper() for m in iu.modality}:
        problems.append(f"the image is {modality}, the model is for {'/'.join(iu.modality)}")
    sp = np.array(ref.GetSpacing()[::-1], float)
    size = np.array(ref.GetSize()[::-1], float)
    for what, value, rng in (("voxel spacing", sp, iu.spacing_mm_kji),
                             ("field of view", sp * size, iu.field_of_view_mm_kji)):
        if rng is None:
            continue
        lo, hi = np.array(rng["min"]), np.array(rng["max"])
        if np.any(value < lo * (1 - 1e-6)) or np.any(value > hi * (1 + 1e-6)):
            problems.append(f"{what} {_fmt(value)} mm (k, j, i) is outside the model's {_fmt(lo)} to {_fmt(hi)} mm")
    if iu.intensity:
        arr = sitk.GetArrayViewFromImage(ref)
        step = max(1, int(arr.size // 2_000_000))
        p01, p99 = (float(v) for v in np.percentile(arr.ravel()[::step], [1, 99]))
        unit = iu.intensity.get("unit", "")
        for name, value, key, cmp in (("1st", p01, "p01_min", np.less), ("1st", p01, "p01_max", np.greater),
                                      ("99th", p99, "p99_min", np.less), ("99th", p99, "p99_max", np.greater)):
            bound = iu.intensity.get(key)
            if bound is not None and cmp(value, bound):
                side = "below" if key.endswith("min") else "above"
                problems.append(f"intensity {name} percentile {value:.0f} {unit} is {side} the model's {bound:.0f} {unit}"
                                .replace("  ", " "))
    return problems


def intended_use_refusal(card: ModelCard, problems: list[str]) -> ImagioError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ImagioError(f"Model '{card.name}' is not made for this image: {problems[0]}{more}",
                       "Use a model made for such images, or run it anyway with --force (the result is then marked "
                       "with a warning)")
