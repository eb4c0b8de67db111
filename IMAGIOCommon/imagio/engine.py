"""ONNX inference for nnU-Net v2 models, driven by a model card: nnU-Net's answer without PyTorch.

The pipeline repeats nnU-Net v2's ``nnUNetPredictor`` (2.x, read from its
source) step by step, including the details that change labels:

1. :func:`preprocess` - transpose (``transpose_forward``), crop to the
   bounding box of non-zero voxels, normalise (CT: clip to the stored 0.5 / 99.5
   percentiles and z-score with the stored foreground mean / std, in float32;
   ZScore with the image's own statistics, inside the non-zero mask when the
   plans say ``use_mask_for_norm``), resample to the model spacing the way
   ``resample_data_or_seg_to_shape`` does: scikit-image ``resize`` semantics
   (``scipy.ndimage.zoom`` with ``grid_mode=True``, pixel edges aligned, edge
   mode ``nearest``, 12 voxels of edge padding before the cubic spline filter,
   output clipped to the input's range), computed in float64; with nnU-Net's
   anisotropy rule a separate low-resolution axis is resampled in-plane first
   (each slice clipped to its own range) and then along that axis with
   ``map_coordinates`` of ``order_z`` (0: nearest).
2. :class:`SlidingWindow` - pad to the patch (zeros, centred), nnU-Net's tile
   positions, Gaussian importance map (``scipy.ndimage.gaussian_filter`` of a
   centred impulse, sigma = patch / 8, scaled to 10, held in float16 with zeros
   replaced by the smallest weight), test-time mirroring averaged in float32 in
   nnU-Net's order, and window logits accumulated in **float16** exactly as
   nnU-Net does (``acc16 += pred * g``, ``n16 += g``, ``acc16 / n16`` rounded to
   float16); several folds are averaged as ``nnUNetv2_predict -f 0 1 2 3 4``
   does: their float16 logits summed and divided by the number of folds. The
   buffers hold those float16 values in float32 and each update is rounded by
   :func:`round_to_float16` (the same bits as numpy's cast, without its slow
   path for float16 subnormals).
3. :class:`LogitsToLabels` - logits resampled back to the cropped input grid
   (``order`` 1, ``order_z`` 0 along a separate axis, float64, stored as
   float16 as nnU-Net stores them), then argmax (first index on ties, as numpy)
   or, for region-based models, ``sigmoid > 0.5`` written in
   ``regions_class_order``; optional softmax / sigmoid probabilities.
4. :func:`restore` - un-crop, un-transpose, optional largest component per label.

What can still differ from nnU-Net: the network itself (ONNX Runtime or
OpenVINO against torch, about 1e-6 relative), and float rounding order in the
resampling (below 1e-15). Both move a label only where nnU-Net's own float16
logits tie to within one float16 step.

Bounded memory: logits never exist for the whole volume. Windows run in
nnU-Net's order (first axis outermost); a buffer (float16 values held in float32) one patch
deep per fold collects them, and every model slice that no later window touches is
finished and handed to :class:`LogitsToLabels`, which emits output slices.

Backends: OpenVINO when installed (``pip install openvino``, the optional
extra ``imagio[openvino]``), else onnxruntime; ``IMAGIO_BACKEND`` forces one
(``openvino`` or ``onnxruntime``), ``IMAGIO_ORT_PROVIDER`` an onnxruntime
execution provider.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.geometry import same_grid
from imagio.progress import Progress, ensure

from .model_card import ModelCard, load_card

log = logging.getLogger(__name__)

#: Preferred onnxruntime execution providers, best first; the first one that works is used.
PROVIDER_ORDER = ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider")
PROVIDER_ENV = "IMAGIO_ORT_PROVIDER"
BACKEND_ENV = "IMAGIO_BACKEND"
BACKENDS = ("openvino", "onnxruntime")
#: what ``provider`` says for the two CPU backends
CPU_PROVIDERS = ("CPUExecutionProvider", "OpenVINO CPU")
#: nnU-Net pads the image by this many voxels of edge before the cubic spline filter (scipy.ndimage.zoom, mode nearest)
SPLINE_PAD = 12
#: The most sliding windows (per fold, before mirroring) a run may need; a run needing more is refused before it
#: starts. Real nnU-Net models need tens to a few thousand (the benchmark's 48 x 64 x 64 patch on a 512 x 512 x 300
#: CT: 1,152); 20,000 windows of a small 32^3 model with mirroring already take tens of minutes on a CPU.
#: ``$IMAGIO_MAX_WINDOWS`` raises or lowers it.
MAX_WINDOWS = 20_000
MAX_WINDOWS_ENV = "IMAGIO_MAX_WINDOWS"


class Mirroring(enum.Enum):
    """Test-time mirroring: one type for every entry point, converted once with :meth:`coerce`.

    ``CARD``: the axes the model card allows (nnU-Net's default, the checkpoint's
    ``inference_allowed_mirroring_axes``); ``ON``: those axes, or all three when the
    card allows none; ``OFF``: none (nnU-Net's ``--disable_tta``).
    """

    CARD = "card"
    ON = "on"
    OFF = "off"

    @classmethod
    def coerce(cls, value) -> Mirroring:
        """``None`` -> CARD, ``True`` -> ON, ``False`` -> OFF, or a name ("card", "on", "off")."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls.CARD
        if isinstance(value, bool | np.bool_):
            return cls.ON if value else cls.OFF
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ImagioError(f"Unknown mirroring setting {value!r}", "Use card, on or off") from None

    def axes(self, card_axes) -> list[int]:
        card_axes = [int(a) for a in card_axes or []]
        if self is Mirroring.OFF:
            return []
        if self is Mirroring.ON and not card_axes:
            return [0, 1, 2]
        return card_axes


# ----------------------------------------------------------------------------- nnU-Net's geometry rules

def compute_steps(image_size, tile_size, tile_step_size: float) -> list[list[int]]:
    """Window start positions per axis (nnU-Net v2's ``compute_steps_for_sliding_window``)."""
    steps = []
    for i, k in zip(image_size, tile_size, strict=True):
        if i < k:
            raise ValueError("image smaller than tile; pad first")
        target = k * tile_step_size
        n = int(np.ceil((i - k) / target)) + 1
        if n > 1:
            actual = (i - k) / (n - 1)
            steps.append([int(np.round(actual * s)) for s in range(n)])
        else:
            steps.append([0])
    return steps


def gaussian_importance_map(tile_size, sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0) -> np.ndarray:
    """nnU-Net's ``compute_gaussian``: a filtered centred impulse scaled to ``value_scaling_factor``, in float16.

    Returned as float16; zeros (underflowed corners) are replaced by the smallest
    non-zero weight, as nnU-Net does to avoid dividing by zero.
    """
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tuple(int(t) for t in tile_size))
    tmp[tuple(int(t) // 2 for t in tile_size)] = 1
    g = gaussian_filter(tmp, [t * sigma_scale for t in tile_size], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scaling_factor
    g = g.astype(np.float16)
    nz = g[g != 0]
    g[g == 0] = nz.min()
    return g


def compute_new_shape(old_shape, old_spacing, new_spacing) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape`` (Python's round of old / new spacing x shape)."""
    return tuple(int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape, strict=True))


def _lowres_axis(spacing) -> list[int]:
    s = np.asarray(spacing, float)
    return [int(a) for a in np.where(max(s) / s == 1)[0]]


def separate_axis(current_spacing, new_spacing, threshold: float = 3.0, force: bool | None = None) -> int | None:
    """The axis nnU-Net resamples separately (``determine_do_sep_z_and_axis``), or None."""
    if force is not None:
        axes = _lowres_axis(current_spacing) if force else None
    elif max(current_spacing) / min(current_spacing) > threshold:
        axes = _lowres_axis(current_spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _lowres_axis(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return axes[0]


def window_count(model_shape, patch, overlap: float) -> int:
    """Sliding windows nnU-Net runs on a ``model_shape`` grid (padded to the patch) with this patch and overlap."""
    padded = [max(int(n), int(k)) for n, k in zip(model_shape, patch, strict=True)]
    steps = compute_steps(padded, [int(k) for k in patch], 1.0 - float(overlap))
    return int(np.prod([len(s) for s in steps]))


def max_windows() -> int:
    """The window bound: ``$IMAGIO_MAX_WINDOWS`` when set (a whole number >= 1), else :data:`MAX_WINDOWS`."""
    raw = os.environ.get(MAX_WINDOWS_ENV, "").strip()
    if not raw:
        return MAX_WINDOWS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ImagioError(f"${MAX_WINDOWS_ENV} must be a whole number at least 1, got {raw!r}",
                          f"Unset it (the default bound is {MAX_WINDOWS:,} windows) or give e.g. 50000")
    return value


def require_window_count(model_shape, card: ModelCard) -> int:
    """Refuse, before anything runs, a CT on which the card's sliding window needs more than :func:`max_windows`."""
    n = window_count(model_shape, card.patch_size_kji, card.overlap)
    bound = max_windows()
    if n > bound:
        shape = " x ".join(str(int(v)) for v in model_shape)
        patch = " x ".join(str(int(v)) for v in card.patch_size_kji)
        spacing = " x ".join(f"{v:g}" for v in card.target_spacing_kji_mm)
        raise ImagioError(
            f"Model '{card.name}' would need {n:,} sliding windows of {patch} voxels on this CT ({shape} voxels at "
            f"the model spacing {spacing} mm, overlap {card.overlap:g}), more than the {bound:,} windows allowed",
            f"Crop the CT to the region of interest, or use a card with nnU-Net's overlap 0.5 and a larger patch "
            f"(${MAX_WINDOWS_ENV} raises the bound)")
    return n


# ----------------------------------------------------------------------------- resampling (scikit-image / scipy semantics)

def _grid_coords(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinates of ``n_out`` output samples, pixel edges aligned (scipy's zoom with grid_mode=True)."""
    return (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output sample for order 0, rounded exactly as ``scipy.ndimage.map_coordinates`` does."""
    from scipy.ndimage import map_coordinates

    scale = float(n_in) / n_out
    coords = scale * (np.arange(n_out) + 0.5) - 0.5
    idx = map_coordinates(np.arange(n_in, dtype=np.float64), coords[None], order=0, mode="nearest")
    return idx.astype(np.intp)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    t2, t3 = t * t, t * t * t
    return [(1 - t) ** 3 / 6.0, (3 * t3 - 6 * t2 + 4) / 6.0, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6.0, t3 / 6.0]


def _take(a: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return np.take(a, idx, axis=axis)


def _bcast(w: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return w.reshape(shape)


def zoom_axis(x: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Resample float64 ``x`` along one axis to ``n_out`` samples as ``scipy.ndimage.zoom(order, mode='nearest',
    grid_mode=True)`` does along that axis (orders 0, 1, 3); the tensor product of these 1-D passes is the n-D zoom."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if order == 0:
        return _take(x, nearest_indices(n_in, n_out), axis)
    cc = _grid_coords(n_in, n_out)
    if order == 1:
        lo = np.floor(cc)
        t = cc - lo
        lo = lo.astype(np.intp)
        a = _take(x, np.clip(lo, 0, n_in - 1), axis)
        b = _take(x, np.clip(lo + 1, 0, n_in - 1), axis)
        return a * _bcast(1.0 - t, x.ndim, axis) + b * _bcast(t, x.ndim, axis)
    if order == 3:
        from scipy.ndimage import spline_filter1d

        pad = [(0, 0)] * x.ndim
        pad[axis] = (SPLINE_PAD, SPLINE_PAD)
        coef = spline_filter1d(np.pad(x, pad, mode="edge"), 3, axis=axis, mode="nearest", output=np.float64)
        cc = cc + SPLINE_PAD
        fl = np.floor(cc)
        start = fl.astype(np.intp) - 1
        out = None
        for k, w in enumerate(_cubic_weights(cc - fl)):
            term = _take(coef, start + k, axis) * _bcast(w, x.ndim, axis)
            out = term if out is None else out + term
        return out
    raise ImagioError(f"Interpolation order {order} is not supported", "nnU-Net's defaults are 3 (data) and 1 (logits)")


def resample_channel(holder: list, old_spacing, new_shape, *, order: int = 3, order_z: int = 0,
                     force_separate_z: bool | None = None, threshold: float = 3.0, new_spacing=None) -> np.ndarray:
    """One channel resampled as nnU-Net's ``resample_data_or_seg_to_shape(is_seg=False)``; returns float32.

    ``holder`` is a one-element list with the float32 [k, j, i] array; it is
    emptied so the input is freed as early as possible. ``new_spacing`` is the
    model spacing (decides the separate axis with ``old_spacing``).
    """
    arr = holder.pop()
    old_shape = tuple(arr.shape)
    new_shape = tuple(int(s) for s in new_shape)
    if old_shape == new_shape:
        return arr
    if new_spacing is None:
        new_spacing = np.asarray(old_spacing, float) * np.asarray(old_shape) / np.asarray(new_shape)
    axis = separate_axis(old_spacing, new_spacing, threshold, force_separate_z)
    if axis is None:
        # the full n-D zoom, done as 1-D passes: the two in-plane axes per slice of axis 0, then axis 0 in blocks
        lo, hi = float(arr.min()), float(arr.max())
        mid = np.empty((old_shape[0], new_shape[1], new_shape[2]), np.float64)
        for s in range(old_shape[0]):
            mid[s] = zoom_axis(zoom_axis(arr[s].astype(np.float64), 1, new_shape[2], order), 0, new_shape[1], order)
        del arr
        out = np.empty(new_shape, np.float32)
        block = max(1, int(4e6 // max(1, old_shape[0] * new_shape[2])))
        for j in range(0, new_shape[1], block):
            part = zoom_axis(mid[:, j:j + block], 0, new_shape[0], order)
            np.clip(part, lo, hi, out=part)
            out[:, j:j + block] = part
        return out
    # separate low-resolution axis: in-plane per slice (each clipped to its own range), then along the axis
    inplane = [a for a in range(3) if a != axis]
    mid_shape = list(new_shape)
    mid_shape[axis] = old_shape[axis]
    mid = np.empty(mid_shape, np.float64)
    for s in range(old_shape[axis]):
        sl = np.take(arr, s, axis=axis).astype(np.float64)
        r = zoom_axis(zoom_axis(sl, 1, new_shape[inplane[1]], order), 0, new_shape[inplane[0]], order)
        np.clip(r, sl.min(), sl.max(), out=r)
        idx = [slice(None)] * 3
        idx[axis] = s
        mid[tuple(idx)] = r
    del arr
    if old_shape[axis] == new_shape[axis]:
        return mid.astype(np.float32)
    if order_z not in (0, 1):
        raise ImagioError(f"order_z {order_z} is not supported", "nnU-Net's default is 0")
    return zoom_axis(mid, axis, new_shape[axis], order_z).astype(np.float32)


def resample_array(data, old_spacing, new_shape, threshold: float = 3.0, force_separate: bool | None = None,
                   order: int = 3, order_z: int = 0) -> np.ndarray:
    """Resample a [k, j, i] array (or a one-element list holding it) to ``new_shape`` as nnU-Net resamples images."""
    holder = data if isinstance(data, list) else [np.asarray(data, np.float32)]
    return resample_channel(holder, old_spacing, new_shape, order=order, order_z=order_z,
                            force_separate_z=force_separate, threshold=threshold)


# ----------------------------------------------------------------------------- backends

def _short(e: Exception | None) -> str:
    if e is None:
        return "unknown error"
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def _check_file(p: Path) -> None:
    if not p.is_file():
        raise ImagioError(f"Model file {p} does not exist", "Check the 'onnx' entry of the model card")
    with open(p, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise ImagioError(f"Model file {p} is empty or truncated", "Export or download the model again")


def _not_onnx(p: Path, e: Exception | None) -> ImagioError:
    return ImagioError(f"{p.name} is not a valid ONNX model or is truncated ({_short(e)})",
                       "Give the .onnx file written by `imagio export-onnx`, complete and unmodified")


class OrtBackend:
    """onnxruntime on the best execution provider that works, falling back towards CPU."""

    kind = "onnxruntime"

    def __init__(self, onnx_path: Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        p = Path(onnx_path)
        _check_file(p)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        if providers is None:
            forced = os.environ.get(PROVIDER_ENV)
            wanted = [forced] if forced else list(PROVIDER_ORDER)
            candidates = [pr for pr in wanted if pr in available] or ["CPUExecutionProvider"]
        else:
            candidates = list(providers)
        last_error = None
        for pr in candidates:
            chain = [pr] if pr == "CPUExecutionProvider" else [pr, "CPUExecutionProvider"]
            try:
                self.session = ort.InferenceSession(str(p), sess_options=opts, providers=chain)
                break
            except Exception as e:  # noqa: BLE001 - onnxruntime raises many types; report the first line
                last_error = e
                msg = _short(e)
                if any(s in msg for s in ("Protobuf parsing failed", "INVALID_PROTOBUF", "INVALID_GRAPH", "ModelProto",
                                          "No graph", "Load model", "model_path")):
                    break
                log.warning("Execution provider %s failed (%s); trying the next one", pr, msg)
        else:
            raise _not_onnx(p, last_error)
        if not hasattr(self, "session"):
            raise _not_onnx(p, last_error)
        self.provider = self.session.get_providers()[0]
        inp, outs = self.session.get_inputs(), self.session.get_outputs()
        self.n_inputs, self.n_outputs = len(inp), len(outs)
        self.input_name = inp[0].name if inp else "input"
        self.input_shape = list(inp[0].shape) if inp else []
        self.output_shape = list(outs[0].shape) if outs else []

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoBackend:
    """OpenVINO on the CPU, compiled for the card's patch, float32 inference precision (no bf16 down-casting)."""

    kind = "openvino"

    def __init__(self, onnx_path: Path, channels: int, patch, threads: int | None = None):
        import openvino as ov

        p = Path(onnx_path)
        _check_file(p)
        core = ov.Core()
        try:
            model = core.read_model(str(p))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses with long texts
            raise _not_onnx(p, e) from None
        inputs, outputs = model.inputs, model.outputs
        self.n_inputs, self.n_outputs = len(inputs), len(outputs)
        self.input_shape = [d.get_length() if d.is_static else "?" for d in inputs[0].get_partial_shape()] \
            if inputs else []
        self.output_shape = [d.get_length() if d.is_static else "?" for d in outputs[0].get_partial_shape()] \
            if outputs else []
        self.provider = "OpenVINO CPU"
        self._core, self._model, self._path = core, model, p
        self._channels, self._patch, self._threads = int(channels), [int(v) for v in patch], threads
        self.request = None

    def _compile(self) -> None:
        model = self._model
        try:
            model.reshape({model.inputs[0].any_name: [1, self._channels, *self._patch]})
        except Exception as e:  # noqa: BLE001
            raise ImagioError(f"Model {self._path.name} cannot take a {self._patch} patch ({_short(e)})",
                              "Fix 'patch_size_kji' in the card or re-export the model") from None
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = int(self._threads)
        self.request = self._core.compile_model(model, "CPU", config).create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.request is None:
            self._compile()
        self.request.infer({0: x})
        return np.array(self.request.get_output_tensor(0).data, copy=True)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False
    return True


def choose_backend(backend: str | None = None) -> str:
    """``backend``, else ``$IMAGIO_BACKEND``, else OpenVINO when installed, else onnxruntime."""
    name = (backend or os.environ.get(BACKEND_ENV) or "").strip().lower()
    if name:
        if name not in BACKENDS:
            raise ImagioError(f"Unknown inference backend {name!r}", f"Use one of {', '.join(BACKENDS)}")
        if name == "openvino" and not openvino_available():
            raise ImagioError("The OpenVINO backend was asked for but openvino is not installed",
                              "pip install openvino, or use the onnxruntime backend")
        return name
    return "openvino" if openvino_available() else "onnxruntime"


def open_backend(onnx_path: Path, card: ModelCard, backend: str | None = None, providers: list[str] | None = None,
                 threads: int | None = None):
    name = "onnxruntime" if providers else choose_backend(backend)
    if name == "openvino":
        return OpenVinoBackend(onnx_path, card.channels, card.patch_size_kji, threads)
    return OrtBackend(onnx_path, providers, threads)


def open_session(onnx_path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session (kept for callers that want the raw session)."""
    return OrtBackend(onnx_path, providers, threads).session


# ----------------------------------------------------------------------------- results

@dataclass
class SegmentationResult:
    labels: sitk.Image                      # uint8 label map on the input grid
    label_names: dict[int, str]
    provider: str
    runtime_s: float
    probabilities: dict[int, sitk.Image] = field(default_factory=dict)
    windows: int = 0
    folds: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Preprocessed:
    """The image as the network sees it, and how to put the answer back."""

    data: np.ndarray                        # (C, model shape) float32, normalised, at the model spacing
    bbox: list[tuple[int, int]]             # crop box in the transposed input
    full_shape_t: tuple[int, ...]           # transposed input shape
    cropped_shape: tuple[int, ...]
    spacing_t: np.ndarray                   # transposed input spacing (mm)

    @property
    def model_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])


# ----------------------------------------------------------------------------- step 1: preprocessing

def check_images(images, card: ModelCard) -> list[sitk.Image]:
    images = [images] if isinstance(images, sitk.Image) else list(images)
    if len(images) != card.channels:
        raise ImagioError(f"Model '{card.name}' needs {card.channels} input image(s) ({', '.join(card.modality)}), "
                          f"got {len(images)}", "Give one image per input channel")
    ref = images[0]
    if ref.GetDimension() != 3 or ref.GetNumberOfComponentsPerPixel() != 1:
        raise ImagioError(f"Input image is {ref.GetDimension()}D with {ref.GetNumberOfComponentsPerPixel()} "
                          "components; the model needs a 3D scalar volume", "Give a 3D CT volume")
    for im in images[1:]:
        if not same_grid(im, ref):
            raise ImagioError("The input channels are not on one grid", "Resample all channels onto the first")
    for im in images:
        _check_values(sitk.GetArrayViewFromImage(im))
    return images


def preprocess(images, card: ModelCard, progress: Progress | None = None) -> Preprocessed:
    """nnU-Net's ``DefaultPreprocessor.run_case_npy``: transpose, crop to non-zero, normalise, resample."""
    progress = ensure(progress)
    images = check_images(images, card)
    ref = images[0]
    t = card.transpose_forward
    spacing_t = np.array(ref.GetSpacing()[::-1], float)[t]
    chans = [sitk.GetArrayViewFromImage(im).transpose(t) for im in images]
    full_shape_t = tuple(chans[0].shape)
    bbox = _nonzero_bbox(chans) if card.crop_to_nonzero else [(0, n) for n in full_shape_t]
    crop = tuple(slice(a, b) for a, b in bbox)
    cropped_shape = tuple(b - a for a, b in bbox)
    target = np.array(card.target_spacing_kji_mm, float)
    model_shape = compute_new_shape(cropped_shape, spacing_t, target)
    if min(model_shape) < 1:
        raise ImagioError(f"The image ({cropped_shape} voxels) is too small for the model spacing {list(target)} mm",
                          "Give a larger image")
    require_window_count(model_shape, card)  # before normalising or resampling anything
    mask = None
    if any(n.get("use_mask_for_norm") for n in card.normalization):
        mask = _nonzero_mask([ch[crop] for ch in chans])
    rs = card.resampling_data
    out = np.empty((card.channels, *model_shape), np.float32)
    for ci, (ch, norm) in enumerate(zip(chans, card.normalization, strict=True)):
        holder = [_normalise(np.array(ch[crop], dtype=np.float32), norm, mask)]
        out[ci] = resample_channel(holder, spacing_t, model_shape, order=rs["order"], order_z=rs["order_z"],
                                   force_separate_z=rs["force_separate_z"], threshold=card.anisotropy_threshold,
                                   new_spacing=target)
        progress.update((ci + 1) / card.channels, "Resampled to the model spacing")
    return Preprocessed(out, bbox, full_shape_t, cropped_shape, spacing_t)


# float16 rounding without numpy's float32 <-> float16 casts (2-4 ns per value, but 50-90 ns for values in
# float16's subnormal range, common under the Gaussian's low corners; numpy 2.4.6 here): the
# accumulator is held in float32 holding only float16 values; ``round_to_float16`` rounds like
# ``x.astype(np.float16).astype(np.float32)`` (nearest, ties to even, float16 subnormals, -0), bit for bit.
_F32_EXP = 0x7F800000               # Python ints: numpy's bitwise loops with them are several times faster
_F32_SIGN = 0x80000000
_F16_MIN_NORMAL = np.float32(2.0 ** -14)
_F16_OVERFLOW = np.float32(65520.0)  # rounds to 65536: inf in float16


def round_to_float16(x: np.ndarray, out: np.ndarray | None = None, scratch: np.ndarray | None = None,
                     work: np.ndarray | None = None) -> np.ndarray:
    """``x`` (float32) rounded to the nearest float16 value, returned in float32 (into ``out``), bit for bit as
    ``x.astype(np.float16).astype(np.float32)``.

    With ``2**e`` the binade of ``|x|`` (at least 2**-14), ``M = 1.5 * 2**(e + 13)``: ``x + M`` lies in ``M``'s
    binade, so its one float32 rounding is to float16's step ``2**(e - 10)``, ties to even (``M`` is an even
    number of steps); subtracting ``M`` is exact (Sterbenz). Below 2**-14 the step stays 2**-24 (float16's
    subnormals). The sign bit of ``x`` is OR-ed in (a result that rounds to zero keeps it, -0). Values that round
    past 65504, infinities and NaNs take numpy's cast. ``out`` may be a strided view (an accumulator region);
    ``scratch`` (uint32) and ``work`` (float32) of ``x``'s shape are reused buffers.
    """
    if out is None:
        out = np.empty_like(x)
    if scratch is None:
        scratch = np.empty(x.shape, np.uint32)
    xb = x.view(np.uint32)
    a = np.abs(x, out=work)
    if not a.max(initial=0.0) < _F16_OVERFLOW:   # overflow to inf, inf or NaN (NaN fails the test)
        out[...] = x.astype(np.float16)
        return out
    np.bitwise_and(xb, _F32_EXP, out=scratch)
    m = scratch.view(np.float32)                 # 2**e (0 for zeros and float32 subnormals)
    np.maximum(m, _F16_MIN_NORMAL, out=m)
    m *= np.float32(1.5 * 2.0 ** 13)
    np.add(x, m, out=a)
    a -= m
    np.bitwise_and(xb, _F32_SIGN, out=scratch)
    np.bitwise_or(a.view(np.uint32), scratch, out=out.view(np.uint32))
    return out


# ----------------------------------------------------------------------------- step 2: sliding window

def _predict_mirrored(backend, tile: np.ndarray, mirror_axes) -> np.ndarray:
    """nnU-Net's ``_internal_maybe_mirror_and_predict`` for one tile (C, patch): float32, same summation order."""
    pred = np.array(backend.run(tile[None])[0], dtype=np.float32, copy=True)
    combos = [cmb for i in range(len(mirror_axes)) for cmb in itertools.combinations([m + 1 for m in mirror_axes], i + 1)]
    for axes in combos:
        out = backend.run(np.ascontiguousarray(np.flip(tile, axes))[None])[0]
        pred += np.flip(out, axes).astype(np.float32, copy=False)
    if combos:
        pred /= np.float32(len(combos) + 1)
    return pred


class SlidingWindow:
    """nnU-Net's sliding-window prediction with float16 aggregation, streamed slab by slab along axis 0."""

    def __init__(self, backends, card: ModelCard, mirror_axes):
        self.backends = list(backends)
        self.card = card
        self.mirror_axes = list(mirror_axes)
        self.gauss16 = gaussian_importance_map(card.patch_size_kji)
        self.gauss32 = self.gauss16.astype(np.float32)
        self.network_s = 0.0        # time inside the backend (network runs, mirrored ones included)

    def run(self, data: np.ndarray, sink, progress: Progress | None = None) -> int:
        """Feed finished float16 logits of the unpadded model grid to ``sink.push(logits16, start)``."""
        progress = ensure(progress)
        c = self.card
        patch = np.array(c.patch_size_kji)
        model_shape = np.array(data.shape[1:])
        pad = np.maximum(patch - model_shape, 0)
        pad_lo = pad // 2
        if pad.any():
            data = np.pad(data, [(0, 0)] + [(int(lo), int(n - lo)) for lo, n in zip(pad_lo, pad, strict=True)])
        pz, py, px = (int(v) for v in patch)
        padded = data.shape[1:]
        steps = compute_steps(padded, patch, 1.0 - c.overlap)
        total = len(steps[0]) * len(steps[1]) * len(steps[2])
        nout = c.num_outputs
        nf = len(self.backends)
        # float16 values held in float32 (see round_to_float16): the same numbers as nnU-Net's float16 buffers
        acc = np.zeros((nf, nout, pz, padded[1], padded[2]), np.float32)
        wsum = np.zeros((pz, padded[1], padded[2]), np.float32)
        scratch = np.empty((nout, pz, py, px), np.uint32)
        work = np.empty((nout, pz, py, px), np.float32)
        wtmp = np.empty((pz, py, px), np.float32)
        b0 = 0  # padded slice index of acc[..., 0, :, :]
        done = 0
        zlo, ylo, xlo = (int(v) for v in pad_lo)
        zm, ym, xm = (int(v) for v in model_shape)
        for ti, sz in enumerate(steps[0]):
            o = sz - b0
            for sy in steps[1]:
                for sx in steps[2]:
                    tile = np.ascontiguousarray(data[:, sz:sz + pz, sy:sy + py, sx:sx + px])
                    region = (slice(o, o + pz), slice(sy, sy + py), slice(sx, sx + px))
                    for f, backend in enumerate(self.backends):
                        tn = time.perf_counter()
                        pred = _predict_mirrored(backend, tile, self.mirror_axes)
                        self.network_s += time.perf_counter() - tn
                        if pred.shape != (nout, pz, py, px):
                            raise ImagioError(f"Model output has shape {list(pred.shape)}, expected "
                                              f"{[nout, pz, py, px]} from the card", "Use the card that belongs to the model")
                        pred *= self.gauss32
                        a = acc[(f, slice(None), *region)]
                        np.add(a, pred, out=pred)                  # float32 sum, then one float16 rounding
                        round_to_float16(pred, out=a, scratch=scratch, work=work)
                    w = wsum[region]
                    np.add(w, self.gauss32, out=wtmp)
                    round_to_float16(wtmp, out=w, scratch=scratch[0], work=work[0])
                    done += 1
                    progress.update(done / total, f"Window {done} of {total}")
            f_end = steps[0][ti + 1] if ti + 1 < len(steps[0]) else padded[0]
            n = f_end - b0
            lo_m, hi_m = max(b0, zlo), min(f_end, zlo + zm)
            if hi_m > lo_m:
                zs = slice(lo_m - b0, hi_m - b0)
                w32 = wsum[zs, ylo:ylo + ym, xlo:xlo + xm]
                total16 = None  # per slab numpy's cast is cheap: logits are rarely float16 subnormals
                for f in range(nf):
                    lf = (acc[f, :, zs, ylo:ylo + ym, xlo:xlo + xm] / w32).astype(np.float16)
                    total16 = lf if total16 is None else (total16.astype(np.float32) + lf).astype(np.float16)
                if nf > 1:
                    total16 = (total16.astype(np.float32) / np.float32(nf)).astype(np.float16)
                if np.isinf(total16).any():
                    raise ImagioError("The model's logits overflow float16 (as nnU-Net aggregates them)",
                                      "The model's outputs are far too large; check the export")
                sink.push(total16, lo_m - zlo)
            if n < pz:
                acc[:, :, :pz - n] = acc[:, :, n:].copy()
                wsum[:pz - n] = wsum[n:].copy()
                acc[:, :, pz - n:] = 0
                wsum[pz - n:] = 0
            else:
                acc[:] = 0
                wsum[:] = 0
            b0 = f_end
        sink.finish()
        return total


# ----------------------------------------------------------------------------- step 3: logits -> labels

class LogitsToLabels:
    """Float16 model-grid logits, pushed slab by slab along axis 0, to labels on the cropped input grid.

    nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape``:
    ``resample_data_or_seg_to_shape`` of the logits (``order`` 1; ``order_z``
    along a separate axis), in float64 and stored as float16, then argmax, or
    ``sigmoid > 0.5`` in ``regions_class_order`` for region-based models. The
    interpolation is ``scipy.ndimage.map_coordinates`` at the coordinates
    scipy's ``zoom(grid_mode=True)`` uses, on the few model slices an output
    slice needs: bit for bit what nnU-Net's whole-volume resize computes (linear
    interpolation of float16 values lands exactly on float16 rounding ties, so
    anything less exact changes labels).
    """

    def __init__(self, card: ModelCard, model_shape, out_shape, target_spacing, image_spacing,
                 keep_probabilities: bool = False):
        rs = card.resampling_probabilities
        if rs["order"] not in (0, 1) or rs["order_z"] not in (0, 1):
            raise ImagioError(f"Logit resampling order {rs['order']} / order_z {rs['order_z']} is not supported",
                              "nnU-Net's defaults (order 1, order_z 0) are")
        self.card = card
        self.model_shape, self.out_shape = tuple(model_shape), tuple(out_shape)
        self.resample = self.model_shape != self.out_shape
        sep = separate_axis(target_spacing, image_spacing, card.anisotropy_threshold, rs["force_separate_z"])
        self.orders = [rs["order_z"] if a == sep else rs["order"] for a in range(3)]
        # per axis: coordinates in the model grid (scipy's zoom / map_coordinates conventions)
        self.coords = []
        for a, (m, o) in enumerate(zip(self.model_shape, self.out_shape, strict=True)):
            if not self.resample or m == o:
                self.coords.append(("identity", np.arange(o, dtype=np.float64)))
            elif self.orders[a] == 0:
                self.coords.append(("nearest", nearest_indices(m, o).astype(np.float64)))
            else:
                self.coords.append(("linear", _grid_coords(m, o)))
        self.pick_only = all(kind != "linear" for kind, _ in self.coords)
        self.inplane = np.empty((2, self.out_shape[1], self.out_shape[2]), np.float64)
        self.inplane[0] = self.coords[1][1][:, None]
        self.inplane[1] = self.coords[2][1][None, :]
        self.regions = card.regions_class_order
        n_lab = card.num_classes
        self.labels = np.zeros(out_shape, np.uint8)
        # class value -> network output channel: softmax class c is channel c; region i (sigmoid) is channel i
        self.heads = {int(cls): i for i, cls in enumerate(self.regions)} if self.regions else \
            {c: c for c in range(1, n_lab)}
        self.probs = {cls: np.zeros(out_shape, np.float32) for cls in self.heads} if keep_probabilities else {}
        self.cache: dict[int, np.ndarray] = {}
        self.next_out = 0
        self.available = 0
        self.time_s = 0.0           # time spent resampling logits and deciding labels

    def _needs(self, k: int) -> tuple[int, int]:
        """Model slices [z0, z1) that output slice ``k`` reads, and nothing else."""
        kind, c = self.coords[0]
        n = self.model_shape[0]
        if kind == "linear":
            z0 = int(np.clip(np.floor(c[k]), 0, n - 1))
            return z0, min(z0 + 2, n)
        z = int(c[k])
        return z, z + 1

    def push(self, slab16: np.ndarray, start: int) -> None:
        t0 = time.perf_counter()
        for i in range(slab16.shape[1]):
            self.cache[start + i] = slab16[:, i]
        self.available = start + slab16.shape[1]
        self._emit(final=False)
        self.time_s += time.perf_counter() - t0

    def finish(self) -> None:
        t0 = time.perf_counter()
        self._emit(final=True)
        self.time_s += time.perf_counter() - t0

    def _slice(self, k: int) -> np.ndarray:
        z0, z1 = self._needs(k)
        if self.pick_only:
            s = self.cache[z0]
            yi = self.coords[1][1].astype(np.intp)
            xi = self.coords[2][1].astype(np.intp)
            return s[:, yi][:, :, xi] if self.resample else s
        from scipy.ndimage import map_coordinates

        sub = np.stack([self.cache[z] for z in range(z0, z1)], axis=1).astype(np.float64)  # (C, nz, Y, X)
        coords = np.empty((3, self.out_shape[1], self.out_shape[2]), np.float64)
        coords[0] = self.coords[0][1][k] - z0
        coords[1:] = self.inplane
        out = np.empty((sub.shape[0], self.out_shape[1], self.out_shape[2]), np.float16)
        for ch in range(sub.shape[0]):
            out[ch] = map_coordinates(sub[ch], coords, order=1, mode="nearest")
        return out

    def _emit(self, final: bool) -> None:
        while self.next_out < self.out_shape[0]:
            k = self.next_out
            if self._needs(k)[1] > self.available and not final:
                break
            self._decide(k, self._slice(k))
            self.next_out += 1
            keep_from = self._needs(self.next_out)[0] if self.next_out < self.out_shape[0] else self.available
            for key in [key for key in self.cache if key < keep_from]:
                del self.cache[key]

    def _decide(self, k: int, s16: np.ndarray) -> None:
        if self.regions:
            p = 1.0 / (1.0 + np.exp(-s16.astype(np.float32)))
            seg = np.zeros(s16.shape[1:], np.uint8)
            for i, cls in enumerate(self.regions):
                seg[p[i] > 0.5] = cls
            self.labels[k] = seg
            for cls in self.probs:
                self.probs[cls][k] = p[self.heads[cls]]
            return
        self.labels[k] = np.argmax(s16, axis=0).astype(np.uint8)
        if self.probs:
            x = s16.astype(np.float32)
            e = np.exp(x - x.max(axis=0, keepdims=True))
            e /= e.sum(axis=0, keepdims=True)
            for cls in self.probs:
                self.probs[cls][k] = e[self.heads[cls]]

    def result(self):
        if self.next_out != self.out_shape[0]:
            raise RuntimeError("the logit resampler did not produce every slice")
        return self.labels, self.probs


# ----------------------------------------------------------------------------- step 4: back to the input grid

def restore(labels_c: np.ndarray, pre: Preprocessed, card: ModelCard, ref: sitk.Image, dtype=np.uint8) -> sitk.Image:
    """Un-crop and un-transpose a cropped-grid array onto ``ref``'s grid."""
    full = np.zeros(pre.full_shape_t, dtype)
    full[tuple(slice(a, b) for a, b in pre.bbox)] = labels_c
    img = sitk.GetImageFromArray(np.ascontiguousarray(full.transpose(np.argsort(card.transpose_forward))))
    img.CopyInformation(ref)
    return img


# ----------------------------------------------------------------------------- the segmenter

class OnnxSegmenter:
    """Runs one model card's network(s) (one per fold) on SimpleITK images, as nnU-Net's predictor does."""

    def __init__(self, card: ModelCard | str | Path, providers: list[str] | None = None, threads: int | None = None,
                 backend: str | None = None, folds: list[str] | None = None):
        self.card = card if isinstance(card, ModelCard) else load_card(card)
        chosen = self.card.folds if folds is None else [f for f in self.card.folds if f.name in {str(x) for x in folds}]
        if not chosen:
            raise ImagioError(f"Model '{self.card.name}' has no fold {folds} (has: "
                              f"{', '.join(f.name for f in self.card.folds)})", "Pick folds that the card lists")
        self.folds = chosen
        self.backends = [open_backend(f.onnx_path, self.card, backend, providers, threads) for f in chosen]
        self.provider = self.backends[0].provider
        self.backend = self.backends[0].kind
        for f, b in zip(chosen, self.backends, strict=True):
            self._check_io(b, f.onnx_path)

    def _check_io(self, b, path: Path) -> None:
        c = self.card
        if b.n_inputs != 1 or b.n_outputs < 1:
            raise ImagioError(f"Model {path.name} has {b.n_inputs} inputs and {b.n_outputs} outputs; "
                              "expected one image input and one logits output", "Export a single-input 3D model")
        shape = b.input_shape
        if len(shape) != 5:
            raise ImagioError(f"Model {path.name} takes {len(shape) - 2}D input (shape {shape}), "
                              "but the card describes a 3D model", "Use a 3D model (input N x C x D x H x W)")
        if isinstance(shape[1], int) and shape[1] != c.channels:
            raise ImagioError(f"Model {path.name} expects {shape[1]} input channels but its card says "
                              f"{c.channels}", "Fix 'input.channels' in the card or use the matching model")
        for ax, (m, k) in enumerate(zip(shape[2:], c.patch_size_kji, strict=True)):
            if isinstance(m, int) and m != k:
                raise ImagioError(f"Model {path.name} has a fixed input size {shape[2:]} that differs from the "
                                  f"card's patch_size_kji {c.patch_size_kji} (axis {ax})",
                                  "Fix 'patch_size_kji' in the card or re-export the model")
        oshape = b.output_shape
        if len(oshape) != 5:
            raise ImagioError(f"Model {path.name} gives output of shape {oshape}, expected N x classes x D x H x W",
                              "Use a 3D segmentation model")
        if isinstance(oshape[1], int) and oshape[1] != c.num_outputs:
            what = "regions" if c.regions_class_order else "labels"
            raise ImagioError(f"Model {path.name} outputs {oshape[1]} classes but its card lists "
                              f"{c.num_outputs} {what}", "Fix 'labels' in the card or use the matching model")

    def predict(self, images, *, mirroring=Mirroring.CARD, probabilities: bool = False,
                largest_component: bool = False, progress: Progress | None = None) -> SegmentationResult:
        """Segment ``images`` (one SimpleITK image per input channel, same grid)."""
        t0 = time.perf_counter()
        progress = ensure(progress)
        c = self.card
        mirror = Mirroring.coerce(mirroring).axes(c.mirror_axes_kji)
        progress.update(0.0, "Preparing the image")
        images = [images] if isinstance(images, sitk.Image) else list(images)
        pre = preprocess(images, c, progress.sub(0.0, 0.05))
        t1 = time.perf_counter()
        sink = LogitsToLabels(c, pre.model_shape, pre.cropped_shape, c.target_spacing_kji_mm, pre.spacing_t,
                              probabilities)
        sw = SlidingWindow(self.backends, c, mirror)
        windows = sw.run(pre.data, sink, progress.sub(0.05, 0.95))
        t2 = time.perf_counter()
        del pre.data
        labels_c, probs_c = sink.result()
        progress.update(0.96, "Writing the label map")
        lab_img = restore(labels_c, pre, c, images[0])
        if largest_component:
            lab_img = keep_largest_components(lab_img, [lab.value for lab in c.labels[1:]])
        prob_imgs = {cls: restore(p, pre, c, images[0], np.float32) for cls, p in probs_c.items()}
        progress.update(1.0, "Done")
        t3 = time.perf_counter()
        return SegmentationResult(lab_img, {lab.value: lab.name for lab in c.labels}, self.provider, t3 - t0,
                                  prob_imgs, windows, [f.name for f in self.folds],
                                  {"preprocess_s": t1 - t0, "network_s": sw.network_s, "logits_to_labels_s": sink.time_s,
                                   "window_aggregation_s": t2 - t1 - sw.network_s - sink.time_s,
                                   "restore_s": t3 - t2})


# ----------------------------------------------------------------------------- helpers

def _check_values(a: np.ndarray) -> None:
    if a.size == 0:
        raise ImagioError("The image has no voxels", "Give a non-empty 3D CT")
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            n_bad = int(a.size - np.count_nonzero(finite))
            raise ImagioError(f"The image has {n_bad} NaN or infinite voxels",
                              "Fix or re-export the CT; IMAGIO never guesses missing values")
    lo, hi = float(a.min()), float(a.max())
    if lo == hi:
        raise ImagioError(f"The image has one constant value ({lo:g}) in every voxel",
                          "This is not a usable CT; check the file or series")


def _nonzero_bbox(chans) -> list[tuple[int, int]]:
    """Bounding box of voxels non-zero in any channel (nnU-Net's crop_to_nonzero; filling holes does not move it)."""
    mask = np.zeros(chans[0].shape, bool)
    for ch in chans:
        mask |= np.asarray(ch) != 0
    bbox = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.where(mask.any(axis=other))[0]
        if len(idx) == 0:
            return [(0, n) for n in mask.shape]
        bbox.append((int(idx[0]), int(idx[-1]) + 1))
    return bbox


def _nonzero_mask(chans) -> np.ndarray:
    """nnU-Net's ``create_nonzero_mask``: non-zero in any channel, holes filled."""
    from scipy.ndimage import binary_fill_holes

    mask = np.zeros(chans[0].shape, bool)
    for ch in chans:
        mask |= np.asarray(ch) != 0
    return binary_fill_holes(mask)


def _normalise(x: np.ndarray, norm: dict, mask: np.ndarray | None = None) -> np.ndarray:
    """nnU-Net's normalisation schemes, in float32 as nnU-Net computes them."""
    scheme = norm["scheme"]
    if scheme == "CT":
        np.clip(x, float(norm["clip_low"]), float(norm["clip_high"]), out=x)
        x -= np.float32(norm["mean"])
        x /= np.float32(max(float(norm["std"]), 1e-8))
    elif scheme == "ZScore":
        if norm.get("use_mask_for_norm") and mask is not None:
            m = x[mask].mean()
            s = x[mask].std()
            x[mask] = (x[mask] - m) / max(s, np.float32(1e-8))
        else:
            m, s = x.mean(), x.std()
            x -= m
            x /= max(s, np.float32(1e-8))
    return x


def keep_largest_components(labels: sitk.Image, classes) -> sitk.Image:
    """Keep, for each class value, only its largest 26-connected component."""
    arr = sitk.GetArrayFromImage(labels)
    for cls in classes:
        m = arr == cls
        if not m.any():
            continue
        box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(m))
        mb = m[box]
        cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mb.astype(np.uint8)), True),
                                   sortByObjectSize=True)
        cca = sitk.GetArrayFromImage(cc)
        sub = arr[box]
        sub[mb & (cca != 1)] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labels)
    return out
