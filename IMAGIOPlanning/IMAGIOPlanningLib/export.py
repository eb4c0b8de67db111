"""``imagio export-onnx``: an nnU-Net v2 trained-model folder -> ``.onnx`` + IMAGIO model card.

Needs the optional ``export`` extra (torch, nnunetv2); nothing at run time
imports this module's heavy parts. The network is built from ``plans.json``
with ``nnunetv2.utilities.get_network_from_plans`` (no trainer discovery, so
models trained with custom trainer classes export too), its weights are read
with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects),
and the exported graph is checked against torch on a random patch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imagio.errors import ImagioError
from imagio.model_card import write_card
from imagio.progress import Progress, ensure

NORMALISATION_MAP = {"CTNormalization": "CT", "ZScoreNormalization": "ZScore", "NoNormalization": "NoNormalization"}
DEFAULT_RESAMPLING = "resample_data_or_seg_to_shape"


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
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ImagioError(f"{what} {path} is not readable JSON ({e})", "Check the model folder") from None


def _labels(dataset: dict) -> list[dict]:
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ImagioError("dataset.json has no 'labels'", "Give the dataset.json that nnU-Net trained with")
    out = []
    for name, value in raw.items():
        if name == "ignore":
            continue
        if not isinstance(value, int):
            raise ImagioError(f"Label {name!r} is a region ({value}); region-based models are not supported",
                              "Export a model trained with plain labels")
        out.append({"value": value, "name": name})
    out.sort(key=lambda d: d["value"])
    if [d["value"] for d in out] != list(range(len(out))):
        raise ImagioError(f"dataset.json labels {raw} are not numbered 0..N-1", "Check dataset.json")
    palette = [(0.9, 0.35, 0.2), (0.3, 0.6, 0.9), (0.4, 0.8, 0.3), (0.9, 0.8, 0.2), (0.7, 0.4, 0.8)]
    for d in out[1:]:
        d["color"] = list(palette[(d["value"] - 1) % len(palette)])
    return out


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


def export_nnunet(model_dir, out_dir, *, fold: str = "0", checkpoint: str = "checkpoint_final.pth",
                  configuration: str = "3d_fullres", name: str | None = None, description: str = "",
                  label_terminology: dict | None = None, progress: Progress | None = None) -> Path:
    """Export an nnU-Net v2 model folder; returns the path of the written model card (beside the .onnx)."""
    progress = ensure(progress)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    plans = _read_json(model_dir / "plans.json", "plans.json")
    dataset = _read_json(model_dir / "dataset.json", "dataset.json")
    ckpt_path = model_dir / f"fold_{fold}" / checkpoint
    if not ckpt_path.is_file():
        raise ImagioError(f"Checkpoint {ckpt_path} does not exist",
                          "Pick the fold and checkpoint with --fold and --checkpoint")
    confs = plans.get("configurations", {})
    if configuration not in confs:
        raise ImagioError(f"plans.json has no configuration {configuration!r} (has: {', '.join(confs)})",
                          "Pick one with --configuration")
    conf = dict(confs[configuration])
    while "inherits_from" in conf and "architecture" not in conf:
        parent = confs[conf.pop("inherits_from")]
        conf = {**parent, **conf}
    if len(conf.get("patch_size", [])) != 3:
        raise ImagioError(f"Configuration {configuration!r} is not 3D (patch {conf.get('patch_size')})",
                          "Export a 3d_fullres (or other 3D) configuration")
    if conf.get("previous_stage") or "cascade" in configuration:
        raise ImagioError("Cascade stages need the low-resolution prediction as input and are not supported",
                          "Export the 3d_fullres configuration")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if conf.get(key, DEFAULT_RESAMPLING) != DEFAULT_RESAMPLING:
            raise ImagioError(f"{key} = {conf.get(key)} is not nnU-Net's default resampling",
                              "Only models planned with resample_data_or_seg_to_shape are supported")
    schemes = conf.get("normalization_schemes", [])
    if any(s not in NORMALISATION_MAP for s in schemes):
        raise ImagioError(f"Normalisation {schemes} is not supported", f"Supported: {', '.join(NORMALISATION_MAP)}")
    if any(conf.get("use_mask_for_norm", [])):
        raise ImagioError("use_mask_for_norm (normalising inside the non-zero mask) is not supported",
                          "Export a model planned without use_mask_for_norm (CT models are)")
    labels = _labels(dataset)
    channel_names = dataset.get("channel_names") or dataset.get("modality") or {}
    n_in = len(channel_names)
    if n_in != len(schemes):
        raise ImagioError(f"dataset.json names {n_in} channels but plans.json normalises {len(schemes)}",
                          "Check the model folder")
    fg = plans.get("foreground_intensity_properties_per_channel", {})
    norms = []
    for ci, s in enumerate(schemes):
        n = {"scheme": NORMALISATION_MAP[s]}
        if s == "CTNormalization":
            props = fg.get(str(ci))
            if not props:
                raise ImagioError(f"plans.json lacks foreground intensity properties for channel {ci}",
                                  "CT normalisation needs them; check plans.json")
            n.update(clip_low=float(props["percentile_00_5"]), clip_high=float(props["percentile_99_5"]),
                     mean=float(props["mean"]), std=float(props["std"]))
        norms.append(n)

    _need_torch()
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    progress.update(0.1, "Building the network from plans.json")
    arch = conf["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch.get("_kw_requires_import", []),
                                 n_in, len(labels), allow_init=True, deep_supervision=False)
    try:
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ImagioError(f"Checkpoint {ckpt_path.name} could not be read safely ({str(e).splitlines()[0][:200]})",
                          "Give an nnU-Net v2 checkpoint (only tensors and plain values are loaded)") from None
    try:
        net.load_state_dict(_state_dict(ckpt))
    except RuntimeError as e:
        raise ImagioError(f"The checkpoint does not fit the network in plans.json ({str(e).splitlines()[0][:200]})",
                          "Use the plans.json the checkpoint was trained with") from None
    net.eval()
    mirror = [int(a) for a in ckpt.get("inference_allowed_mirroring_axes") or []]
    patch = [int(p) for p in conf["patch_size"]]

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or dataset.get("name") or plans.get("dataset_name") or model_dir.name
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(stem))
    onnx_path = out_dir / f"{stem}.onnx"
    card_path = out_dir / f"{stem}.json"
    for p in (onnx_path, card_path):
        if p.exists():
            raise ImagioError(f"{p} exists already", "Choose an empty output folder")
    progress.update(0.3, "Exporting to ONNX")
    dummy = torch.randn(1, n_in, *patch)
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(onnx_path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
        ref = net(dummy).numpy()
    progress.update(0.8, "Checking the ONNX graph against torch")
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": dummy.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    if diff > 1e-3 * max(scale, 1.0):
        onnx_path.unlink()
        raise ImagioError(f"The ONNX graph differs from torch by {diff:g} on a test patch",
                          "Report this model's architecture; the export is not trustworthy")
    terms = label_terminology or {}
    for lab in labels:
        if lab["name"] in terms:
            lab["terminology"] = terms[lab["name"]]
    card = {
        "imagio_model_card": 1,
        "name": stem,
        "version": str(ckpt.get("current_epoch", "")),
        "description": description or f"nnU-Net v2 model {plans.get('dataset_name', '')} ({configuration}, fold {fold})",
        "intended_use": "Research. Check every result; this card was written by imagio export-onnx.",
        "clinical_use": False,
        "source": {"framework": "nnU-Net v2", "plans": plans.get("plans_name", ""), "configuration": configuration,
                   "fold": fold, "checkpoint": checkpoint, "trainer": ckpt.get("trainer_name", ""),
                   "max_abs_logit_diff_onnx_vs_torch": diff},
        "onnx": onnx_path.name,
        "input": {"channels": n_in, "modality": [str(v) for v in (channel_names.values() if isinstance(
            channel_names, dict) else channel_names)]},
        "target_spacing_kji_mm": [float(s) for s in conf["spacing"]],
        "transpose_forward": [int(a) for a in plans.get("transpose_forward", [0, 1, 2])],
        "crop_to_nonzero": True,
        "normalization": norms,
        "patch_size_kji": patch,
        "overlap": 0.5,
        "mirror_axes_kji": mirror,
        "resampling": {"anisotropy_threshold": 3.0,
                       "force_separate_z": conf.get("resampling_fn_probabilities_kwargs", {}).get("force_separate_z")},
        "labels": labels,
    }
    write_card(card_path, card)
    progress.update(1.0, "Exported")
    return card_path
