"""``imagio export-onnx``: an nnU-Net v2 trained-model folder -> one ``.onnx`` per fold + one IMAGIO model card.

Needs the optional ``export`` extra (torch, nnunetv2); nothing at run time
imports this module's heavy parts. Named steps:

1. :func:`read_model_folder` - plans.json, dataset.json (labels or regions with
   ``regions_class_order``), the configuration (cascades refused), normalisation,
   resampling kwargs, the folds present (``fold_0`` ... ``fold_4``, ``fold_all``)
   and the training data's ranges from ``dataset_fingerprint.json`` (the
   model's intended spacing, field of view and intensities);
2. :func:`build_network` - the network from the plans with
   ``nnunetv2.utilities.get_network_from_plans`` (no trainer discovery, so
   models trained with custom trainer classes export too);
3. :func:`export_fold` - weights read with ``torch.load(weights_only=True)`` (no
   unpickling of arbitrary objects), the ONNX graph written and checked against
   torch on a random patch;
4. :func:`card_for` - the card: every fold, the mirroring axes, the intended use.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagio.errors import ImagioError
from imagio.model_card import write_card
from imagio.progress import Progress, ensure

NORMALISATION_MAP = {"CTNormalization": "CT", "ZScoreNormalization": "ZScore", "NoNormalization": "NoNormalization"}
DEFAULT_RESAMPLING = "resample_data_or_seg_to_shape"
#: the intended-use ranges are the training data's, widened by these factors (spacing, field of view)
SPACING_MARGIN = (0.8, 1.25)
FOV_MARGIN = (0.5, 2.0)
log = logging.getLogger(__name__)
PALETTE = [(0.9, 0.35, 0.2), (0.3, 0.6, 0.9), (0.4, 0.8, 0.3), (0.9, 0.8, 0.2), (0.7, 0.4, 0.8)]


def _need_torch():
    try:
        import torch  # noqa: F401
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: F401
    except ImportError as e:
        raise ImagioError(f"Exporting needs torch and nnunetv2, which are not installed ({e})",
                          "Install the optional extra: pip install 'imagio[export]'") from None


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ImagioError(f"{what} {path} does not exist",
                          "Give an nnU-Net v2 trained-model folder (plans.json, dataset.json, fold_X/checkpoint_*.pth)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImagioError(f"{what} {path} is not readable JSON ({e})", "Check the model folder") from None
    if not isinstance(d, dict):
        raise ImagioError(f"{what} {path} is not a JSON object", "Check the model folder")
    return d


@dataclass
class ModelFolder:
    """What an nnU-Net v2 trained-model folder says, checked, before torch is touched."""

    path: Path
    plans: dict
    dataset: dict
    configuration: str
    conf: dict
    labels: list[dict]
    output: dict
    n_in: int
    modality: list[str]
    normalization: list[dict]
    resampling: dict
    folds: dict[str, Path]                      # fold name -> checkpoint
    fingerprint: dict = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.output["regions_class_order"]) if self.output.get("activation") == "sigmoid" \
            else len(self.labels)


def _labels_and_output(dataset: dict) -> tuple[list[dict], dict]:
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ImagioError("dataset.json has no 'labels'", "Give the dataset.json that nnU-Net trained with")
    items = [(k, v) for k, v in raw.items() if k != "ignore"]
    is_region = any(isinstance(v, list | tuple) and len(v) > 1 for _, v in items)
    if not is_region:
        out = []
        for name, value in items:
            if isinstance(value, list | tuple):
                value = value[0]
            if not isinstance(value, int):
                raise ImagioError(f"dataset.json label {name!r} has value {value!r}, not an integer", "Check dataset.json")
            out.append({"value": value, "name": name})
        out.sort(key=lambda d: d["value"])
        if [d["value"] for d in out] != list(range(len(out))):
            raise ImagioError(f"dataset.json labels {raw} are not numbered 0..N-1", "Check dataset.json")
        output = {"activation": "softmax"}
    else:
        order = dataset.get("regions_class_order")
        regions = [(k, [int(x) for x in (v if isinstance(v, list | tuple) else [v])]) for k, v in items
                   if not (v == 0 or (isinstance(v, list | tuple) and set(v) == {0}))]
        if not isinstance(order, list) or len(order) != len(regions):
            raise ImagioError(f"Region-based dataset.json needs 'regions_class_order' with one label per region "
                              f"({len(regions)}), got {order!r}", "Give the dataset.json that nnU-Net trained with")
        order = [int(v) for v in order]
        out = [{"value": 0, "name": "background"}] + [{"value": c, "name": regions[i][0]} for i, c in enumerate(order)]
        out.sort(key=lambda d: d["value"])
        if [d["value"] for d in out] != list(range(len(out))):
            raise ImagioError(f"regions_class_order {order} must write the labels 1..{len(order)}",
                              "Such region models are not supported")
        output = {"activation": "sigmoid", "regions_class_order": order, "regions": [r for _, r in regions],
                  "region_names": [n for n, _ in regions]}
    for d in out[1:]:
        d["color"] = list(PALETTE[(d["value"] - 1) % len(PALETTE)])
    return out, output


def _find_folds(model_dir: Path, folds, checkpoint: str) -> dict[str, Path]:
    if folds is None:
        found = sorted(p.name[len("fold_"):] for p in model_dir.glob("fold_*") if (p / checkpoint).is_file())
        if not found:
            raise ImagioError(f"No fold_*/{checkpoint} in {model_dir}",
                              "Give an nnU-Net v2 trained-model folder, or pick the checkpoint with --checkpoint")
        # nnUNetv2_predict's default is the cross-validation folds (-f 0 1 2 3 4); fold_all (trained on every
        # case) is used alone, when it is the only one or when asked for (--folds all), never mixed in unasked
        numbered = [f for f in found if f != "all"]
        folds = numbered or found
        if numbered and "all" in found:
            log.info("%s also has fold_all; not included (pick it with --folds all)", model_dir)
    out = {}
    for f in [str(f) for f in folds]:
        ck = model_dir / f"fold_{f}" / checkpoint
        if not ck.is_file():
            raise ImagioError(f"Checkpoint {ck} does not exist", "Pick the folds and checkpoint with --folds and "
                              "--checkpoint")
        out[f] = ck
    return out


def read_model_folder(model_dir, *, folds=None, checkpoint: str = "checkpoint_final.pth",
                      configuration: str = "3d_fullres") -> ModelFolder:
    """Step 1: read and check the folder; refuses what the engine cannot reproduce."""
    model_dir = Path(model_dir)
    plans = _read_json(model_dir / "plans.json", "plans.json")
    dataset = _read_json(model_dir / "dataset.json", "dataset.json")
    confs = plans.get("configurations", {})
    if configuration not in confs:
        raise ImagioError(f"plans.json has no configuration {configuration!r} (has: {', '.join(confs)})",
                          "Pick one with --configuration")
    conf = dict(confs[configuration])
    seen = {configuration}
    while "inherits_from" in conf:
        parent_name = conf.pop("inherits_from")
        if parent_name in seen or parent_name not in confs:
            raise ImagioError(f"Configuration {configuration!r} inherits from {parent_name!r}, which is missing or "
                              "circular", "Check plans.json")
        seen.add(parent_name)
        conf = {**confs[parent_name], **conf}
    if conf.get("previous_stage") or "cascade" in configuration:
        raise ImagioError(f"Configuration {configuration!r} is a cascade stage: it needs the low-resolution "
                          "stage's prediction as an extra input, which IMAGIO does not run",
                          "Export the 3d_fullres or 3d_lowres configuration instead")
    if len(conf.get("patch_size", [])) != 3:
        raise ImagioError(f"Configuration {configuration!r} is not 3D (patch {conf.get('patch_size')})",
                          "Export a 3d_fullres (or other 3D) configuration")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if conf.get(key, DEFAULT_RESAMPLING) != DEFAULT_RESAMPLING:
            raise ImagioError(f"{key} = {conf.get(key)} is not nnU-Net's default resampling",
                              "Only models planned with resample_data_or_seg_to_shape are supported")
    resampling = {"anisotropy_threshold": 3.0}
    for key, name, orders in (("resampling_fn_data_kwargs", "data", (0, 1, 3)),
                              ("resampling_fn_probabilities_kwargs", "probabilities", (0, 1))):
        kw = conf.get(key) or {}
        r = {"order": int(kw.get("order", 3 if name == "data" else 1)), "order_z": int(kw.get("order_z", 0)),
             "force_separate_z": kw.get("force_separate_z")}
        if r["order"] not in orders or r["order_z"] not in (0, 1):
            raise ImagioError(f"{key} asks for order {r['order']} / order_z {r['order_z']}",
                              f"IMAGIO reproduces orders {orders} and order_z 0 or 1")
        if "separate_z_anisotropy_threshold" in kw:
            resampling["anisotropy_threshold"] = float(kw["separate_z_anisotropy_threshold"])
        resampling[name] = r
    schemes = conf.get("normalization_schemes", [])
    if any(s not in NORMALISATION_MAP for s in schemes):
        raise ImagioError(f"Normalisation {schemes} is not supported", f"Supported: {', '.join(NORMALISATION_MAP)}")
    masks = list(conf.get("use_mask_for_norm", [False] * len(schemes)))
    labels, output = _labels_and_output(dataset)
    channel_names = dataset.get("channel_names") or dataset.get("modality") or {}
    n_in = len(channel_names)
    if n_in != len(schemes):
        raise ImagioError(f"dataset.json names {n_in} channels but plans.json normalises {len(schemes)}",
                          "Check the model folder")
    fg = plans.get("foreground_intensity_properties_per_channel", {})
    norms = []
    for ci, s in enumerate(schemes):
        n = {"scheme": NORMALISATION_MAP[s]}
        if masks[ci] if ci < len(masks) else False:
            if s != "ZScoreNormalization":
                raise ImagioError(f"use_mask_for_norm with {s} is not supported", "Only ZScore uses the mask")
            n["use_mask_for_norm"] = True
        if s == "CTNormalization":
            props = fg.get(str(ci))
            if not props:
                raise ImagioError(f"plans.json lacks foreground intensity properties for channel {ci}",
                                  "CT normalisation needs them; check plans.json")
            n.update(clip_low=float(props["percentile_00_5"]), clip_high=float(props["percentile_99_5"]),
                     mean=float(props["mean"]), std=float(props["std"]))
        norms.append(n)
    fp_path = model_dir / "dataset_fingerprint.json"
    fingerprint = _read_json(fp_path, "dataset_fingerprint.json") if fp_path.is_file() else {}
    modality = [str(v) for v in (channel_names.values() if isinstance(channel_names, dict) else channel_names)]
    return ModelFolder(model_dir, plans, dataset, configuration, conf, labels, output, n_in, modality, norms,
                       resampling, _find_folds(model_dir, folds, checkpoint), fingerprint)


def build_network(folder: ModelFolder):
    """Step 2: the network from the plans (nnU-Net's own builder), in eval mode, no deep supervision."""
    _need_torch()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = folder.conf["architecture"]
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch.get("_kw_requires_import", []),
                                  folder.n_in, folder.num_outputs, allow_init=True, deep_supervision=False)


def _state_dict(ckpt: dict):
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise ImagioError("The checkpoint has no 'network_weights'", "Give an nnU-Net v2 checkpoint_*.pth")
    sd = {}
    for k, v in ckpt["network_weights"].items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v
    return sd


def load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ImagioError(f"Checkpoint {path.name} could not be read safely ({str(e).splitlines()[0][:200]})",
                          "Give an nnU-Net v2 checkpoint (only tensors and plain values are loaded)") from None


def export_fold(net, ckpt: dict, onnx_path: Path, n_in: int, patch) -> float:
    """Step 3: load one fold's weights, write the ONNX graph, return its largest logit difference from torch."""
    import onnxruntime as ort
    import torch

    try:
        net.load_state_dict(_state_dict(ckpt))
    except RuntimeError as e:
        raise ImagioError(f"The checkpoint does not fit the network in plans.json ({str(e).splitlines()[0][:200]})",
                          "Use the plans.json the checkpoint was trained with") from None
    net.eval()
    dummy = torch.randn(1, n_in, *patch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(onnx_path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
        ref = net(dummy).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": dummy.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    if diff > 1e-3 * max(scale, 1.0):
        onnx_path.unlink()
        raise ImagioError(f"The ONNX graph differs from torch by {diff:g} on a test patch",
                          "Report this model's architecture; the export is not trustworthy")
    return diff


def intended_use_from(folder: ModelFolder, summary: str = "", body_region=()) -> dict:
    """The card's intended use: the training data's spacing, field of view and foreground intensities, widened."""
    iu = {"summary": summary or "Research. Check every result; this card was written by imagio export-onnx from "
                                "the model folder; its ranges are those of the training data.",
          "modality": folder.modality, "body_region": list(body_region),
          "segments": [lab["name"] for lab in folder.labels[1:]]}
    fp = folder.fingerprint
    spacings = np.asarray(fp.get("spacings") or [], float)
    shapes = np.asarray(fp.get("shapes_after_crop") or [], float)
    if spacings.ndim == 2 and spacings.shape[1] == 3 and len(spacings):
        iu["spacing_mm_kji"] = {"min": [round(float(v), 4) for v in spacings.min(0) * SPACING_MARGIN[0]],
                                "max": [round(float(v), 4) for v in spacings.max(0) * SPACING_MARGIN[1]]}
        if shapes.shape == spacings.shape:
            fov = shapes * spacings
            iu["field_of_view_mm_kji"] = {"min": [round(float(v), 2) for v in fov.min(0) * FOV_MARGIN[0]],
                                          "max": [round(float(v), 2) for v in fov.max(0) * FOV_MARGIN[1]]}
    fg = (fp.get("foreground_intensity_properties_per_channel") or
          folder.plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
    if fg and folder.modality and folder.modality[0].upper() == "CT":
        # an image with this model's targets must reach the targets' intensity range
        iu["intensity"] = {"unit": "HU", "p99_min": float(fg["percentile_00_5"]), "p01_max": float(fg["percentile_99_5"])}
    return iu


def card_for(folder: ModelFolder, stem: str, fold_entries: list[dict], mirror, ckpt: dict, *, description: str = "",
             label_terminology: dict | None = None, intended_use: str = "", body_region=()) -> dict:
    """Step 4: the model card."""
    labels = [dict(lab) for lab in folder.labels]
    for lab in labels:
        if lab["name"] in (label_terminology or {}):
            lab["terminology"] = label_terminology[lab["name"]]
    plans = folder.plans
    names = [f["fold"] for f in fold_entries]
    card = {
        "imagio_model_card": 1,
        "name": stem,
        "version": str(ckpt.get("current_epoch", "")),
        "description": description or f"nnU-Net v2 model {plans.get('dataset_name', '')} ({folder.configuration}, "
                                      f"fold{'s' if len(names) > 1 else ''} {', '.join(names)})",
        "intended_use": intended_use_from(folder, intended_use, body_region),
        "clinical_use": False,
        "source": {"framework": "nnU-Net v2", "plans": plans.get("plans_name", ""),
                   "configuration": folder.configuration, "folds": names,
                   "checkpoint": fold_entries[0]["checkpoint"], "trainer": ckpt.get("trainer_name", ""),
                   "max_abs_logit_diff_onnx_vs_torch": max(f["max_abs_logit_diff_onnx_vs_torch"] for f in fold_entries)},
        "input": {"channels": folder.n_in, "modality": folder.modality},
        "target_spacing_kji_mm": [float(s) for s in folder.conf["spacing"]],
        "transpose_forward": [int(a) for a in plans.get("transpose_forward", [0, 1, 2])],
        "crop_to_nonzero": True,
        "normalization": folder.normalization,
        "patch_size_kji": [int(p) for p in folder.conf["patch_size"]],
        "overlap": 0.5,
        "mirror_axes_kji": [int(a) for a in mirror],
        "resampling": folder.resampling,
        "output": {k: v for k, v in folder.output.items() if k != "region_names"},
        "labels": labels,
    }
    if len(fold_entries) == 1:
        card["onnx"] = fold_entries[0]["onnx"]
    else:
        card["folds"] = [{"fold": f["fold"], "onnx": f["onnx"]} for f in fold_entries]
    return card


def export_nnunet(model_dir, out_dir, *, folds=None, fold: str | None = None, checkpoint: str = "checkpoint_final.pth",
                  configuration: str = "3d_fullres", name: str | None = None, description: str = "",
                  label_terminology: dict | None = None, intended_use: str = "", body_region=(),
                  progress: Progress | None = None) -> Path:
    """Export an nnU-Net v2 model folder (every fold found, or ``folds``); returns the written card's path."""
    progress = ensure(progress)
    if fold is not None and folds is None:
        folds = [fold]
    folder = read_model_folder(model_dir, folds=folds, checkpoint=checkpoint, configuration=configuration)
    progress.update(0.05, "Building the network from plans.json")
    net = build_network(folder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or folder.dataset.get("name") or folder.plans.get("dataset_name") or folder.path.name
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(stem))
    multi = len(folder.folds) > 1
    card_path = out_dir / f"{stem}.json"
    targets = [out_dir / (f"{stem}_fold_{f}.onnx" if multi else f"{stem}.onnx") for f in folder.folds]
    for p in [card_path, *targets]:
        if p.exists():
            raise ImagioError(f"{p} exists already", "Choose an empty output folder")
    patch = [int(p) for p in folder.conf["patch_size"]]
    entries, mirror, first = [], None, None
    for i, ((fname, ck), target) in enumerate(zip(folder.folds.items(), targets, strict=True)):
        progress.update(0.1 + 0.85 * i / len(folder.folds), f"Exporting fold {fname} to ONNX")
        ckpt = load_checkpoint(ck)
        axes = [int(a) for a in (ckpt.get("inference_allowed_mirroring_axes") or [])]
        if mirror is None:
            mirror, first = axes, ckpt
        elif axes != mirror:
            raise ImagioError(f"Fold {fname} allows mirroring axes {axes}, fold {list(folder.folds)[0]} {mirror}",
                              "Export the folds separately")
        diff = export_fold(net, ckpt, target, folder.n_in, patch)
        entries.append({"fold": fname, "onnx": target.name, "checkpoint": checkpoint,
                        "max_abs_logit_diff_onnx_vs_torch": diff})
    card = card_for(folder, stem, entries, mirror, first, description=description, label_terminology=label_terminology,
                    intended_use=intended_use, body_region=body_region)
    write_card(card_path, card)
    progress.update(1.0, "Exported")
    return card_path
