"""ONNX Runtime inference for nnU-Net-class 3D segmentation models, driven by a model card.

The pipeline reproduces nnU-Net v2's predictor step by step, so that a model
exported with ``imagio export-onnx`` gives the labels nnU-Net gives:

1. transpose (card ``transpose_forward``), crop to the bounding box of
   non-zero voxels, normalise (CT: clip + z-score with the stored foreground
   statistics), resample to the model spacing (cubic B-spline; for anisotropic
   data in-plane cubic and nearest along the low-resolution axis, as nnU-Net);
2. sliding windows with nnU-Net's step rule and Gaussian importance weighting
   (sigma = 1/8 of the patch), optional test-time mirroring;
3. logits resampled back to the cropped input grid (linear; nearest along the
   low-resolution axis when anisotropic), argmax (or softmax probabilities),
   un-crop, un-transpose, optional largest-connected-component per label.

Bounded memory: logits are never held for the whole volume. Windows are run
in order of their first slice; a buffer one patch deep (all classes, float32)
collects them, and every model slice that no later window touches is handed
at once to a streaming resampler, which turns it into output slices
(labels, and probabilities only when asked). So the footprint is the input
volume (int16 + one float32 copy at each of the two resolutions), the uint8
labels, and O(classes x patch depth x slice) for logits, whatever the number
of classes or slices. ``probabilities=True`` adds one float32 volume per
foreground class at the input resolution (documented, on request only).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from imagio.errors import ImagioError
from imagio.progress import Progress, ensure

from .model_card import ModelCard, load_card

log = logging.getLogger(__name__)

#: Preferred execution providers, best first; the first one that works is used.
PROVIDER_ORDER = ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider")
PROVIDER_ENV = "IMAGIO_ORT_PROVIDER"


# ----------------------------------------------------------------------------- nnU-Net's geometry rules

def compute_steps(image_size, tile_size, tile_step_size: float) -> list[list[int]]:
    """Window start positions per axis (nnU-Net v2's ``compute_steps_for_sliding_window``)."""
    steps = []
    for i, k in zip(image_size, tile_size, strict=True):
        if i < k:
            raise ValueError("image smaller than tile; pad first")
        target = k * tile_step_size
        n = int(np.ceil((i - k) / target)) + 1 if target > 0 else 1
        if n > 1:
            actual = (i - k) / (n - 1)
            steps.append([int(np.round(actual * s)) for s in range(n)])
        else:
            steps.append([0])
    return steps


def gaussian_importance_map(tile_size, sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10.0) -> np.ndarray:
    """nnU-Net's Gaussian window weights (scipy.ndimage.gaussian_filter of a centred impulse, truncate 4)."""
    axes = []
    for n in tile_size:
        sigma = n * sigma_scale
        c = n // 2
        radius = int(4.0 * sigma + 0.5)
        x = np.arange(n) - c
        kernel_x = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 * (kernel_x / sigma) ** 2)
        k /= k.sum()
        w = np.where(np.abs(x) <= radius, k[np.clip(x + radius, 0, 2 * radius)], 0.0)
        axes.append(w)
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / (g.max() / value_scaling_factor)
    # nnU-Net holds the map in float16: its corners underflow to 0 and are then set to the smallest non-zero
    # weight. Doing the same keeps the relative weights of overlapping windows (and so the labels) identical.
    g = g.astype(np.float16)
    nz = g[g != 0]
    g[g == 0] = nz.min()
    return g.astype(np.float32)


def compute_new_shape(old_shape, old_spacing, new_spacing) -> tuple[int, ...]:
    return tuple(int(v) for v in np.round(np.asarray(old_spacing, float) / np.asarray(new_spacing, float)
                                          * np.asarray(old_shape, float)).astype(int))


def _lowres_axis(spacing) -> list[int]:
    s = np.asarray(spacing, float)
    return [int(a) for a in np.where(max(s) / s == 1)[0]]


def separate_axis(current_spacing, new_spacing, threshold: float, force: bool | None = None) -> int | None:
    """Axis resampled separately (nearest) as nnU-Net does for anisotropic data, or None."""
    if force is False:
        return None
    if force:
        axes = _lowres_axis(current_spacing)
        return axes[0] if len(axes) == 1 else None
    for sp in (current_spacing, new_spacing):
        sp = np.asarray(sp, float)
        if max(sp) / min(sp) > threshold:
            axes = _lowres_axis(sp)
            return axes[0] if len(axes) == 1 else None
    return None


def _interp_1d(n_in: int, n_out: int, nearest: bool):
    """Indices and weights mapping ``n_out`` samples onto ``n_in`` (pixel edges aligned, edge clamped)."""
    c = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if nearest:
        idx = np.clip(np.floor(c + 0.5).astype(int), 0, n_in - 1)
        return idx, idx, np.zeros(n_out, np.float32)
    lo = np.floor(c).astype(int)
    w = (c - lo).astype(np.float32)
    return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), w


def resample_array(data, old_spacing, new_shape, threshold: float = 3.0,
                   force_separate: bool | None = None) -> np.ndarray:
    """Cubic B-spline resampling of a [k, j, i] float32 array to ``new_shape`` (SimpleITK).

    Pixel edges are aligned (as scikit-image's resize that nnU-Net uses); for
    anisotropic spacing the low-resolution axis is resampled by nearest
    neighbour after an in-plane cubic pass, as nnU-Net does. ``data`` may be
    a one-element list, which is emptied, so the array is freed as soon as
    SimpleITK has its copy (one volume less at the peak).
    """
    arr = data.pop() if isinstance(data, list) else data
    del data
    old_shape = arr.shape
    if tuple(new_shape) == tuple(old_shape):
        return arr
    new_spacing = np.asarray(old_spacing, float) * np.asarray(old_shape) / np.asarray(new_shape)
    axis = separate_axis(old_spacing, new_spacing, threshold, force_separate)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in old_spacing[::-1]])
    del arr

    def _resample(src, shape_kji, interp):
        sp_in = np.array(src.GetSpacing())
        size_in = np.array(src.GetSize())
        size_out = np.array(shape_kji[::-1])
        sp_out = sp_in * size_in / size_out
        origin = (sp_out - sp_in) / 2.0
        return sitk.Resample(src, [int(s) for s in size_out], sitk.Transform(), interp, [float(o) for o in origin],
                             [float(s) for s in sp_out], src.GetDirection(), 0.0, sitk.sitkFloat32)

    if axis is None:
        out = _resample(img, new_shape, sitk.sitkBSpline)
    else:
        inplane = list(new_shape)
        inplane[axis] = old_shape[axis]
        tmp = _resample(img, inplane, sitk.sitkBSpline) if tuple(inplane) != tuple(old_shape) else img
        del img
        out = _resample(tmp, new_shape, sitk.sitkNearestNeighbor) if tuple(inplane) != tuple(new_shape) else tmp
    return sitk.GetArrayFromImage(out)


# ----------------------------------------------------------------------------- ONNX session

def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def open_session(onnx_path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session on the best execution provider that works, falling back towards CPU."""
    import onnxruntime as ort

    p = Path(onnx_path)
    if not p.is_file():
        raise ImagioError(f"Model file {p} does not exist", "Check the 'onnx' entry of the model card")
    with open(p, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise ImagioError(f"Model file {p} is empty or truncated", "Export or download the model again")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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
            sess = ort.InferenceSession(str(p), sess_options=opts, providers=chain)
            return sess
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types; report the first line
            last_error = e
            msg = _short(e)
            if any(s in msg for s in ("Protobuf parsing failed", "INVALID_PROTOBUF", "INVALID_GRAPH", "ModelProto",
                                      "No graph", "Load model", "model_path")):
                break
            log.warning("Execution provider %s failed (%s); trying the next one", pr, msg)
    raise ImagioError(f"{p.name} is not a valid ONNX model or is truncated ({_short(last_error)})",
                      "Give the .onnx file written by `imagio export-onnx`, complete and unmodified")


@dataclass
class SegmentationResult:
    labels: sitk.Image                      # uint8 label map on the input grid
    label_names: dict[int, str]
    provider: str
    runtime_s: float
    probabilities: dict[int, sitk.Image] = field(default_factory=dict)
    windows: int = 0


class OnnxSegmenter:
    """Runs one model card's ONNX network on SimpleITK images."""

    def __init__(self, card: ModelCard | str | Path, providers: list[str] | None = None, threads: int | None = None):
        self.card = card if isinstance(card, ModelCard) else load_card(card)
        self.session = open_session(self.card.onnx_path, providers, threads)
        self.provider = self.session.get_providers()[0]
        self._check_io()
        self._gauss = gaussian_importance_map(self.card.patch_size_kji)

    def _check_io(self) -> None:
        c = self.card
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ImagioError(f"Model {c.onnx_path.name} has {len(inputs)} inputs and {len(outputs)} outputs; "
                              "expected one image input and one logits output", "Export a single-input 3D model")
        shape = inputs[0].shape
        self.input_name = inputs[0].name
        if len(shape) != 5:
            raise ImagioError(f"Model {c.onnx_path.name} takes {len(shape) - 2}D input (shape {shape}), "
                              "but the card describes a 3D model", "Use a 3D model (input N x C x D x H x W)")
        if isinstance(shape[1], int) and shape[1] != c.channels:
            raise ImagioError(f"Model {c.onnx_path.name} expects {shape[1]} input channels but its card says "
                              f"{c.channels}", "Fix 'input.channels' in the card or use the matching model")
        for ax, (m, k) in enumerate(zip(shape[2:], c.patch_size_kji, strict=True)):
            if isinstance(m, int) and m != k:
                raise ImagioError(f"Model {c.onnx_path.name} has a fixed input size {shape[2:]} that differs from the "
                                  f"card's patch_size_kji {c.patch_size_kji} (axis {ax})",
                                  "Fix 'patch_size_kji' in the card or re-export the model")
        oshape = outputs[0].shape
        if len(oshape) != 5:
            raise ImagioError(f"Model {c.onnx_path.name} gives output of shape {oshape}, expected N x classes x D x H x W",
                              "Use a 3D segmentation model")
        if isinstance(oshape[1], int) and oshape[1] != c.num_classes:
            raise ImagioError(f"Model {c.onnx_path.name} outputs {oshape[1]} classes but its card lists "
                              f"{c.num_classes} labels", "Fix 'labels' in the card or use the matching model")

    # ------------------------------------------------------------------ public
    def predict(self, images, *, mirroring: bool | None = None, probabilities: bool = False,
                largest_component: bool = False, progress: Progress | None = None) -> SegmentationResult:
        """Segment ``images`` (one SimpleITK image per input channel, same grid)."""
        t0 = time.perf_counter()
        progress = ensure(progress)
        c = self.card
        images = [images] if isinstance(images, sitk.Image) else list(images)
        if len(images) != c.channels:
            raise ImagioError(f"Model '{c.name}' needs {c.channels} input image(s) ({', '.join(c.modality)}), "
                              f"got {len(images)}", "Give one image per input channel")
        ref = images[0]
        if ref.GetDimension() != 3 or ref.GetNumberOfComponentsPerPixel() != 1:
            raise ImagioError(f"Input image is {ref.GetDimension()}D with {ref.GetNumberOfComponentsPerPixel()} "
                              "components; the model needs a 3D scalar volume", "Give a 3D CT volume")
        from imagio.geometry import same_grid
        for im in images[1:]:
            if not same_grid(im, ref):
                raise ImagioError("The input channels are not on one grid", "Resample all channels onto the first")
        progress.update(0.0, "Preparing the image")
        spacing_kji = np.array(ref.GetSpacing()[::-1], float)
        t = c.transpose_forward
        chans = []
        for im in images:
            a = sitk.GetArrayViewFromImage(im)
            _check_values(a)
            chans.append(a.transpose(t))
        spacing_t = spacing_kji[t]
        full_shape_t = chans[0].shape
        if c.crop_to_nonzero:
            bbox = _nonzero_bbox(chans)
        else:
            bbox = [(0, n) for n in full_shape_t]
        crop = tuple(slice(a, b) for a, b in bbox)
        cropped_shape = tuple(b - a for a, b in bbox)
        target = np.array(c.target_spacing_kji_mm, float)
        model_shape = compute_new_shape(cropped_shape, spacing_t, target)
        if min(model_shape) < 1:
            raise ImagioError(f"The image ({cropped_shape} voxels) is too small for the model spacing {list(target)} mm",
                              "Give a larger image")
        resampled = []
        for ci, (ch, norm) in enumerate(zip(chans, c.normalization, strict=True)):
            holder = [_normalise(np.array(ch[crop], dtype=np.float32), norm)]
            resampled.append(resample_array(holder, spacing_t, model_shape, c.anisotropy_threshold,
                                            c.force_separate_z))
            progress.update(0.05 * (ci + 1) / c.channels, "Resampled to the model spacing")
        del chans
        data = resampled[0][None] if len(resampled) == 1 else np.stack(resampled)
        del resampled
        patch = np.array(c.patch_size_kji)
        pad_needed = np.maximum(patch - np.array(model_shape), 0)
        pad_lo = pad_needed // 2
        if pad_needed.any():
            data = np.pad(data, [(0, 0)] + [(int(lo), int(n - lo)) for lo, n in zip(pad_lo, pad_needed, strict=True)])
        mirror = c.mirror_axes_kji if (mirroring is None or mirroring) else []
        if mirroring and not c.mirror_axes_kji:
            mirror = [0, 1, 2]
        out_spacing_sep = separate_axis(target, spacing_t, c.anisotropy_threshold, c.force_separate_z)
        resampler = _StreamingResampler(model_shape, cropped_shape, c.num_classes, out_spacing_sep, probabilities)
        windows = self._sliding_window(data, model_shape, pad_lo, mirror, resampler, progress.sub(0.05, 0.95))
        del data
        labels_c, probs_c = resampler.result()
        progress.update(0.96, "Writing the label map")
        labels_t = np.zeros(full_shape_t, np.uint8)
        labels_t[crop] = labels_c
        del labels_c
        inv = np.argsort(t)
        labels = np.ascontiguousarray(labels_t.transpose(inv))
        del labels_t
        lab_img = sitk.GetImageFromArray(labels)
        lab_img.CopyInformation(ref)
        if largest_component:
            lab_img = keep_largest_components(lab_img, range(1, c.num_classes))
        prob_imgs = {}
        if probabilities:
            for cls, p in probs_c.items():
                full = np.zeros(full_shape_t, np.float32)
                full[crop] = p
                im = sitk.GetImageFromArray(np.ascontiguousarray(full.transpose(inv)))
                im.CopyInformation(ref)
                prob_imgs[cls] = im
        progress.update(1.0, "Done")
        return SegmentationResult(lab_img, {lab.value: lab.name for lab in c.labels}, self.provider,
                                  time.perf_counter() - t0, prob_imgs, windows)

    # ------------------------------------------------------------------ internals
    def _run(self, tile: np.ndarray, mirror_axes) -> np.ndarray:
        x = tile[None]
        pred = self.session.run(None, {self.input_name: x})[0][0].astype(np.float32, copy=False)
        combos = [cmb for i in range(len(mirror_axes)) for cmb in itertools.combinations([m + 1 for m in mirror_axes], i + 1)]
        if combos:
            pred = pred.copy()
            for axes in combos:
                xf = np.ascontiguousarray(np.flip(tile, axes))[None]
                out = self.session.run(None, {self.input_name: xf})[0][0]
                pred += np.flip(out, axes)
            pred /= len(combos) + 1
        return pred

    def _sliding_window(self, data, model_shape, pad_lo, mirror, resampler, progress) -> int:
        c = self.card
        pz, py, px = c.patch_size_kji
        padded = data.shape[1:]
        steps = compute_steps(padded, c.patch_size_kji, 1.0 - c.overlap)
        total = len(steps[0]) * len(steps[1]) * len(steps[2])
        ncls = c.num_classes
        acc = np.zeros((ncls, pz, padded[1], padded[2]), np.float32)
        wsum = np.zeros((pz, padded[1], padded[2]), np.float32)
        b0 = 0  # padded slice index of acc[:, 0]
        done = 0
        zlo, ylo, xlo = (int(v) for v in pad_lo)
        zm, ym, xm = model_shape
        for ti, sz in enumerate(steps[0]):
            for sy in steps[1]:
                for sx in steps[2]:
                    tile = data[:, sz:sz + pz, sy:sy + py, sx:sx + px]
                    pred = self._run(np.ascontiguousarray(tile), mirror)
                    if pred.shape[0] != ncls:
                        raise ImagioError(f"Model output has {pred.shape[0]} classes, card lists {ncls}",
                                          "Use the card that belongs to the model")
                    o = sz - b0
                    acc[:, o:o + pz, sy:sy + py, sx:sx + px] += pred * self._gauss
                    wsum[o:o + pz, sy:sy + py, sx:sx + px] += self._gauss
                    done += 1
                    progress.update(done / total, f"Window {done} of {total}")
            f = steps[0][ti + 1] if ti + 1 < len(steps[0]) else padded[0]
            n = f - b0
            logits = acc[:, :n] / wsum[None, :n]
            lo_m, hi_m = max(b0, zlo), min(f, zlo + zm)
            if hi_m > lo_m:
                resampler.push(logits[:, lo_m - b0:hi_m - b0, ylo:ylo + ym, xlo:xlo + xm], lo_m - zlo)
            del logits
            if n < pz:
                acc[:, :pz - n] = acc[:, n:].copy()
                wsum[:pz - n] = wsum[n:].copy()
                acc[:, pz - n:] = 0
                wsum[pz - n:] = 0
            else:
                acc[:] = 0
                wsum[:] = 0
            b0 = f
        resampler.finish()
        return total


class _StreamingResampler:
    """Turns model-resolution logits, pushed slab by slab along axis 0, into output labels.

    Linear interpolation (nearest along ``sep_axis``), pixel edges aligned: the
    rule nnU-Net applies to its logits before the argmax.
    """

    def __init__(self, model_shape, out_shape, ncls, sep_axis, keep_probabilities):
        self.model_shape, self.out_shape, self.ncls = model_shape, out_shape, ncls
        self.maps = [_interp_1d(m, o, nearest=(sep_axis == a)) for a, (m, o) in
                     enumerate(zip(model_shape, out_shape, strict=True))]
        self.identity = [m == o for m, o in zip(model_shape, out_shape, strict=True)]
        self.labels = np.zeros(out_shape, np.uint8)
        self.probs = {cls: np.zeros(out_shape, np.float32) for cls in range(1, ncls)} if keep_probabilities else {}
        self.cache: dict[int, np.ndarray] = {}
        self.next_out = 0
        self.available = 0  # model slices [0, available) have been pushed

    def _inplane(self, s: np.ndarray) -> np.ndarray:
        # s: (C, Ym, Xm) -> (C, Yo, Xo)
        if not self.identity[1]:
            lo, hi, w = self.maps[1]
            s = s[:, lo, :] * (1 - w)[None, :, None] + s[:, hi, :] * w[None, :, None]
        if not self.identity[2]:
            lo, hi, w = self.maps[2]
            s = s[:, :, lo] * (1 - w) + s[:, :, hi] * w
        return np.ascontiguousarray(s, dtype=np.float32)

    def push(self, slab: np.ndarray, start: int) -> None:
        for i in range(slab.shape[1]):
            self.cache[start + i] = self._inplane(slab[:, i])
        self.available = start + slab.shape[1]
        self._emit(final=False)

    def finish(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        lo, hi, w = self.maps[0]
        while self.next_out < self.out_shape[0]:
            k = self.next_out
            need = int(hi[k]) if not self.identity[0] else k
            if need >= self.available and not final:
                break
            if self.identity[0]:
                s = self.cache[k]
            else:
                a, b, wk = self.cache[int(lo[k])], self.cache[int(hi[k])], float(w[k])
                s = a if wk == 0 else a * (1 - wk) + b * wk
            self.labels[k] = np.argmax(s, axis=0).astype(np.uint8)
            if self.probs:
                e = np.exp(s - s.max(axis=0, keepdims=True))
                e /= e.sum(axis=0, keepdims=True)
                for cls in self.probs:
                    self.probs[cls][k] = e[cls]
            self.next_out += 1
            keep_from = int(lo[self.next_out]) if (self.next_out < self.out_shape[0] and not self.identity[0]) \
                else self.next_out
            for key in [key for key in self.cache if key < keep_from]:
                del self.cache[key]

    def result(self):
        if self.next_out != self.out_shape[0]:
            raise RuntimeError("streaming resampler did not produce every slice")
        return self.labels, self.probs


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


def _normalise(x: np.ndarray, norm: dict) -> np.ndarray:
    scheme = norm["scheme"]
    if scheme == "CT":
        np.clip(x, float(norm["clip_low"]), float(norm["clip_high"]), out=x)
        x -= np.float32(norm["mean"])
        x /= np.float32(max(float(norm["std"]), 1e-8))
    elif scheme == "ZScore":
        m, s = float(x.mean()), float(x.std())
        x -= np.float32(m)
        x /= np.float32(max(s, 1e-8))
    return x


def keep_largest_components(labels: sitk.Image, classes) -> sitk.Image:
    """Keep, for each class value, only its largest 26-connected component."""
    arr = sitk.GetArrayFromImage(labels)
    for cls in classes:
        m = arr == cls
        if not m.any():
            continue
        # only the bounding box of this class (fast on large volumes)
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
